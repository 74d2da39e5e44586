#!/usr/bin/env bash
# scripts/dev.sh — quick-start command 1: services, release build, migrations,
# then `jobcast serve --dev` (prints the demo URL and a token, runs a simulated
# job). Extra args go to `jobcast serve`, e.g. scripts/dev.sh --listen 127.0.0.1:9090
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '==> %s\n' "$*"; }

command -v cargo >/dev/null 2>&1 || PATH="${HOME:-/root}/.cargo/bin:$PATH"

step "services: Redis on 127.0.0.1:6379, Postgres on 127.0.0.1:5432 (scripts/services.sh)"
# shellcheck source=scripts/services.sh
source scripts/services.sh

step "build: cargo build --release"
cargo build --release

step "migrate: target/release/jobcast migrate ($DATABASE_URL)"
target/release/jobcast migrate

step "serve: target/release/jobcast serve --dev${*:+ $*}"
exec target/release/jobcast serve --dev "$@"
