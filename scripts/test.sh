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
# browsers. The Python package and schemathesis go into a venv under .jobcast/;
# node/npm, promtool (prometheus) and systemd-analyze (systemd) come from
# Debian when missing, typescript, React and its types from npm (examples/react).
# Exits with the status of cargo test.
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

step "tools: nginx, chromium and psql for the end-to-end tests"
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
# psql applies docs/recipes/progress-columns.sql in the recipe's test.
command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client)
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
command -v psql >/dev/null 2>&1 || { echo "test.sh: psql (postgresql-client) still missing" >&2; exit 1; }
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
step "tools: PyJWT and cryptography, the independent token signer of the JWK Set tests"
if ! python3 -c 'import jwt, cryptography' 2>/dev/null; then
    python3 -m pip install --quiet PyJWT cryptography 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages PyJWT cryptography 2>/dev/null ||
        jobcast_apt_install python3-jwt python3-cryptography
fi
if command -v node >/dev/null 2>&1 && [[ ! -d examples/node/node_modules ]]; then
    npm install --prefix examples/node --no-audit --no-fund --silent || echo "test.sh: npm install failed; the Node example test will fail"
fi

step "tools: Python venv (.jobcast/venv): the jobcast package (clients/python), schemathesis, the examples' frameworks"
venv="$JOBCAST_STATE_DIR/venv"
mkdir -p "$JOBCAST_STATE_DIR"
[[ -e "$JOBCAST_STATE_DIR/.gitignore" ]] || printf '*\n' >"$JOBCAST_STATE_DIR/.gitignore"
if [[ ! -x "$venv/bin/pip" ]]; then
    command -v python3 >/dev/null 2>&1 || jobcast_apt_install python3
    # Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip).
    python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; jobcast_apt_install python3-venv; python3 -m venv "$venv"; }
fi
# schemathesis fuzzes docs/openapi.yaml; fastapi, httpx and celery run examples/python.
"$venv/bin/python" -c 'import schemathesis, fastapi, httpx, celery' 2>/dev/null ||
    "$venv/bin/pip" install --quiet schemathesis fastapi httpx celery
# The package is reinstalled (as `pip install ./clients/python` would) whenever its files change.
py_src_hash="$(find clients/python -type f -not -path '*/build/*' -not -path '*.egg-info*' -not -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$venv/.jobcast-src" 2>/dev/null)" != "$py_src_hash" ]]; then
    "$venv/bin/pip" install --quiet './clients/python[crypto]'
    "$venv/bin/pip" install --quiet --no-deps --force-reinstall ./clients/python
    printf '%s\n' "$py_src_hash" >"$venv/.jobcast-src"
fi
JOBCAST_PYTHON="$venv/bin/python"
JOBCAST_SCHEMATHESIS="$venv/bin/schemathesis"
export JOBCAST_PYTHON JOBCAST_SCHEMATHESIS

step "tools: node + typescript for the typed browser client (examples/react), promtool, systemd-analyze"
pkgs=()
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
if ((${#pkgs[@]} > 0)); then
    jobcast_apt_install "${pkgs[@]}"
fi
# node may have been installed just now: the Node publisher example needs ioredis too.
[[ -d examples/node/node_modules ]] || npm install --prefix examples/node --no-audit --no-fund --silent
if [[ ! -x examples/react/node_modules/.bin/tsc || ! -e examples/react/node_modules/jobcast ||
      examples/react/package.json -nt examples/react/node_modules/.package-lock.json ]]; then
    npm install --prefix examples/react --no-audit --no-fund --silent
fi

step "tests: ${CARGO_TEST[*]}${*:+ $*}"
exec "${CARGO_TEST[@]}" "$@"
