#!/usr/bin/env bash
# scripts/test.sh — quick-start command 2: everything the test suite needs, then the suite.
#
#   scripts/test.sh                 # services, nginx + chromium, cargo test
#   scripts/test.sh sse_            # extra args go to the test binaries (filters, --nocapture)
#
# Redis and Postgres come from scripts/services.sh (which exports REDIS_URL,
# DATABASE_URL and JOBCAST_TEST_DATABASE_URL). nginx and chromium are installed
# from Debian if missing but never left running as services: the tests start
# their own nginx processes with their own configs and their own headless
# browsers. Exits with the status of cargo test.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The one place to tweak how the suite runs.
CARGO_TEST=(cargo test --workspace --all-targets -- --test-threads 2)

step() { printf '==> %s\n' "$*"; }

PATH="$PATH:/usr/sbin:/sbin"
command -v cargo >/dev/null 2>&1 || PATH="${HOME:-/root}/.cargo/bin:$PATH"

step "services: Redis on 127.0.0.1:6379, Postgres on 127.0.0.1:5432 (scripts/services.sh)"
# shellcheck source=scripts/services.sh
source scripts/services.sh

step "tools: nginx and chromium for the end-to-end tests"
installed_nginx=""
pkgs=()
if ! command -v nginx >/dev/null 2>&1; then
    jobcast_apt_update
    # nginx-light is enough (proxy only); newer Debian releases dropped it.
    if apt-cache policy nginx-light 2>/dev/null | grep -Eq 'Candidate: [^(]'; then
        pkgs+=(nginx-light)
    else
        pkgs+=(nginx)
    fi
    installed_nginx=1
fi
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
if ((${#pkgs[@]} > 0)); then
    jobcast_apt_install "${pkgs[@]}"
fi
if [[ -n "$installed_nginx" ]]; then
    # jobcast_apt_install keeps services from starting; should a default nginx
    # have started anyway, stop it (it would hold :80 and is not ours to use).
    if [[ -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
        nginx -s stop 2>/dev/null || kill "$(cat /run/nginx.pid)" 2>/dev/null || true
    fi
fi
command -v nginx >/dev/null 2>&1 || { echo "test.sh: nginx still missing" >&2; exit 1; }
command -v chromium >/dev/null 2>&1 || { echo "test.sh: chromium still missing" >&2; exit 1; }
JOBCAST_NGINX_BIN="$(command -v nginx)"
JOBCAST_CHROMIUM_BIN="$(command -v chromium)"
export JOBCAST_NGINX_BIN JOBCAST_CHROMIUM_BIN

step "tools: redis-py for the Python publisher example (and ioredis for the Node one, if node is here)"
if ! python3 -c 'import redis' 2>/dev/null; then
    python3 -m pip install --quiet redis 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages redis 2>/dev/null || {
        command -v python3 >/dev/null 2>&1 || jobcast_apt_install python3
        jobcast_apt_install python3-redis
    }
fi
if command -v node >/dev/null 2>&1 && [[ ! -d examples/node/node_modules ]]; then
    npm install --prefix examples/node --no-audit --no-fund --silent || echo "test.sh: npm install failed; the Node example test will be skipped"
fi

step "tests: ${CARGO_TEST[*]}${*:+ $*}"
exec "${CARGO_TEST[@]}" "$@"
