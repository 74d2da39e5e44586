#!/usr/bin/env bash
# scripts/services.sh — make Redis and Postgres usable on loopback for jobcast.
#
#   source scripts/services.sh      # ensure services, export the URLs below (silent)
#   eval "$(scripts/services.sh)"   # same from any shell
#   scripts/services.sh             # ensure services, print the export lines
#
# Afterwards:
#   Redis     answers PING on 127.0.0.1:6379            REDIS_URL=redis://127.0.0.1:6379
#   Postgres  accepts postgres/postgres on 127.0.0.1:5432 and has database jobcast
#             DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/jobcast
#             JOBCAST_TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres
#
# Works on a machine where both already run (anything that answers is used as
# it is) and on a fresh Debian machine with nothing but Rust: missing packages
# are installed with apt-get (services are kept from auto-starting during the
# install), Redis is started as a project-local daemon (.jobcast/), the Debian
# Postgres cluster is created if needed and started, and the postgres user gets
# the password "postgres" if TCP login with it fails. Idempotent; prints nothing
# on success when sourced; every wait is bounded.
#
# The work runs in a subshell under `set -euo pipefail`, so sourcing this file
# never changes the caller's shell options, and a failure returns non-zero
# instead of killing an interactive shell.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
fi

JOBCAST_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Project-local state: Redis log/pid, apt log, apt-update stamp.
JOBCAST_STATE_DIR="${JOBCAST_STATE_DIR:-$JOBCAST_ROOT/.jobcast}"

# The ports and cluster name are fixed for the project; the overrides exist to
# rehearse a fresh machine beside running services (another port, another cluster).
_JC_REDIS_PORT="${JOBCAST_SERVICES_REDIS_PORT:-6379}"
_JC_PG_PORT="${JOBCAST_SERVICES_PG_PORT:-5432}"
_JC_PG_CLUSTER="${JOBCAST_SERVICES_PG_CLUSTER:-main}"
_JC_PG_ADMIN_URL="postgres://postgres:postgres@127.0.0.1:${_JC_PG_PORT}/postgres"
_JC_PG_DB=jobcast
_JC_WAIT_SECS=30

_jc_log() { printf 'services.sh: %s\n' "$*" >&2; }
_jc_die() { _jc_log "error: $*"; exit 1; }

# Run a command as root (directly, or through sudo when we are not root).
_jc_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        _jc_die "need root (or sudo) to run: $*"
    fi
}

_jc_state_dir() {
    mkdir -p "$JOBCAST_STATE_DIR"
    # Keep the directory out of git without touching the repo's .gitignore.
    [[ -e "$JOBCAST_STATE_DIR/.gitignore" ]] || printf '*\n' >"$JOBCAST_STATE_DIR/.gitignore"
}

_JC_APT=(apt-get -y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)

# jobcast_apt_update — `apt-get update`, once: a stamp younger than an hour in
# the state dir means it already ran (in this run or a recent one). Output goes
# to .jobcast/apt.log and is shown only on failure.
jobcast_apt_update() (
    set -euo pipefail
    command -v apt-get >/dev/null 2>&1 || _jc_die "apt-get not found; install the missing packages by hand"
    _jc_state_dir
    local log="$JOBCAST_STATE_DIR/apt.log" stamp="$JOBCAST_STATE_DIR/apt-updated"
    [[ -z "$(find "$stamp" -mmin -60 2>/dev/null)" ]] || exit 0
    _jc_log "apt-get update"
    _jc_root "${_JC_APT[@]}" update >>"$log" 2>&1 ||
        { tail -n 30 "$log" >&2; _jc_die "apt-get update failed (full log: $log)"; }
    touch "$stamp"
)

# jobcast_apt_install PACKAGE... — install Debian packages (after
# jobcast_apt_update) without starting their services.
jobcast_apt_install() (
    set -euo pipefail
    (($# > 0)) || exit 0
    jobcast_apt_update
    # No `local` in this subshell body: the EXIT trap below reads these.
    log="$JOBCAST_STATE_DIR/apt.log"
    export DEBIAN_FRONTEND=noninteractive

    # policy-rc.d exit 101 keeps invoke-rc.d from starting services (a default
    # nginx on :80, a Redis we did not configure, ...); we start what we need
    # ourselves. An existing policy that already says 101 is left alone; any
    # other is put back afterwards.
    policy=/usr/sbin/policy-rc.d backup=""
    if ! grep -qs 'exit 101' "$policy"; then
        if [[ -e "$policy" ]]; then
            backup="$JOBCAST_STATE_DIR/policy-rc.d.orig"
            _jc_root cp -p "$policy" "$backup"
        fi
        trap '_jc_root rm -f "$policy"; [[ -z "$backup" ]] || _jc_root cp -p "$backup" "$policy"' EXIT
        printf '#!/bin/sh\nexit 101\n' | _jc_root tee "$policy" >/dev/null
        _jc_root chmod 755 "$policy"
    fi

    _jc_log "apt-get install $*"
    _jc_root "${_JC_APT[@]}" install "$@" >>"$log" 2>&1 ||
        { tail -n 30 "$log" >&2; _jc_die "apt-get install $* failed (full log: $log)"; }
)

_jc_pg_server_installed() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }

_jc_ensure_packages() {
    local -a pkgs=()
    command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
    _jc_pg_server_installed || pkgs+=(postgresql)
    command -v pg_ctlcluster >/dev/null 2>&1 || pkgs+=(postgresql-common)
    { command -v psql && command -v pg_isready; } >/dev/null 2>&1 || pkgs+=(postgresql-client)
    ((${#pkgs[@]} == 0)) || jobcast_apt_install "${pkgs[@]}"
    command -v redis-server >/dev/null 2>&1 || _jc_die "redis-server still missing after install"
    _jc_pg_server_installed || _jc_die "no /usr/lib/postgresql/*/bin/postgres after install"
}

# ---------------------------------------------------------------- Redis

_jc_redis_ping() { timeout 5 redis-cli -h 127.0.0.1 -p "$_JC_REDIS_PORT" ping 2>&1 || true; }

_jc_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_jc_ensure_redis() {
    local reply
    reply="$(_jc_redis_ping)"
    [[ "$reply" == PONG ]] && return 0
    if _jc_port_open "$_JC_REDIS_PORT"; then
        _jc_die "something listens on 127.0.0.1:$_JC_REDIS_PORT but does not answer PING with PONG (got: ${reply:-no reply within 5s})"
    fi

    _jc_state_dir
    local log="$JOBCAST_STATE_DIR/redis.log"
    _jc_log "starting redis-server on 127.0.0.1:$_JC_REDIS_PORT (log: $log)"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$_JC_REDIS_PORT" \
        --save "" --appendonly no --dir "$JOBCAST_STATE_DIR" \
        --logfile "$log" --pidfile "$JOBCAST_STATE_DIR/redis.pid" ||
        _jc_die "redis-server failed to start (log: $log)"

    local deadline=$((SECONDS + _JC_WAIT_SECS))
    until [[ "$(_jc_redis_ping)" == PONG ]]; do
        if ((SECONDS >= deadline)); then
            tail -n 20 "$log" >&2 || true
            _jc_die "Redis did not answer PING on 127.0.0.1:$_JC_REDIS_PORT within ${_JC_WAIT_SECS}s (log: $log)"
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------- Postgres

# pg_isready exit status: 0 accepting, 1 rejecting (starting up), 2 no answer.
_jc_pg_ready() {
    local rc=0
    pg_isready -q -h 127.0.0.1 -p "$_JC_PG_PORT" -t 3 || rc=$?
    return "$rc"
}

_jc_pg_wait() {
    local deadline=$((SECONDS + _JC_WAIT_SECS))
    until _jc_pg_ready; do
        ((SECONDS < deadline)) ||
            _jc_die "Postgres did not accept connections on 127.0.0.1:$_JC_PG_PORT within ${_JC_WAIT_SECS}s ($1)"
        sleep 0.5
    done
}

_jc_start_postgres() {
    local version cluster line
    _jc_state_dir
    version="$(basename "$(dirname "$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/postgres' |
        sort -V | tail -n 1)")")")"

    # The cluster that owns port 5432, whatever its version and name.
    line="$(pg_lsclusters -h 2>/dev/null | awk -v p="$_JC_PG_PORT" '$3 == p { print $1, $2, $4; exit }' || true)"
    if [[ -z "$line" ]]; then
        cluster="$_JC_PG_CLUSTER"
        local status
        status="$(pg_lsclusters -h 2>/dev/null | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c { print $4 }' || true)"
        if [[ "$status" == down ]]; then
            # The package's cluster got another port (pg_createcluster skips a
            # port that was busy at install time); nothing uses 5432 now.
            _jc_log "moving stopped Postgres cluster $version/$cluster to port $_JC_PG_PORT"
            _jc_root pg_conftool "$version" "$cluster" set port "$_JC_PG_PORT" ||
                _jc_die "could not set port $_JC_PG_PORT for cluster $version/$cluster"
        elif [[ -n "$status" ]]; then
            _jc_die "cluster $version/$cluster runs ($status) on another port than $_JC_PG_PORT; see pg_lsclusters"
        else
            _jc_log "creating Postgres cluster $version/$cluster on port $_JC_PG_PORT"
            _jc_root pg_createcluster --port "$_JC_PG_PORT" --locale C.UTF-8 "$version" "$cluster" \
                >"$JOBCAST_STATE_DIR/pg_createcluster.log" 2>&1 ||
                { cat "$JOBCAST_STATE_DIR/pg_createcluster.log" >&2; _jc_die "pg_createcluster $version $cluster failed"; }
        fi
        line="$version $cluster down"
    fi
    read -r version cluster _ <<<"$line"

    if pg_lsclusters -h 2>/dev/null | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c && $4 == "online" { f = 1 } END { exit !f }'; then
        # Running, but nothing accepted on TCP: give a starting server the
        # usual wait; a server without a TCP listener fails with a hint.
        _jc_pg_wait "cluster $version/$cluster is running; check listen_addresses in /etc/postgresql/$version/$cluster/postgresql.conf"
        return 0
    fi

    _jc_log "starting Postgres cluster $version/$cluster"
    local out
    out="$(_jc_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start 2>&1)" ||
        { printf '%s\n' "$out" >&2; _jc_die "pg_ctlcluster $version $cluster start failed (log: /var/log/postgresql/postgresql-$version-$cluster.log)"; }
    _jc_pg_wait "log: /var/log/postgresql/postgresql-$version-$cluster.log"
}

_jc_psql_admin() { PGCONNECT_TIMEOUT=5 psql -X -w -q -v ON_ERROR_STOP=1 -tA "$_JC_PG_ADMIN_URL" "$@"; }

_jc_ensure_postgres() {
    _jc_pg_ready || _jc_start_postgres

    # Password login over TCP (Debian's pg_hba uses scram on 127.0.0.1; the
    # dev machines use trust, where this succeeds at once).
    if ! _jc_psql_admin -c 'select 1' >/dev/null 2>&1; then
        _jc_log "setting the password of Postgres user postgres"
        local -a as_postgres
        if [[ $EUID -eq 0 ]]; then as_postgres=(runuser -u postgres --); else as_postgres=(sudo -u postgres); fi
        (cd / && "${as_postgres[@]}" psql -X -q -p "$_JC_PG_PORT" -v ON_ERROR_STOP=1 \
            -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null) ||
            _jc_die "could not set the postgres password over the local socket (peer auth as OS user postgres)"
        local err
        err="$(_jc_psql_admin -c 'select 1' 2>&1 >/dev/null)" ||
            _jc_die "cannot log in as postgres/postgres on 127.0.0.1:$_JC_PG_PORT even after setting the password: $err (check pg_hba.conf allows md5/scram-sha-256 for 127.0.0.1/32)"
    fi

    # Database jobcast, UTF8 whatever the cluster's default encoding.
    if [[ "$(_jc_psql_admin -c "select 1 from pg_database where datname = '$_JC_PG_DB'")" != 1 ]]; then
        _jc_psql_admin -c "CREATE DATABASE $_JC_PG_DB TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'" >/dev/null 2>&1 ||
            [[ "$(_jc_psql_admin -c "select 1 from pg_database where datname = '$_JC_PG_DB'")" == 1 ]] ||
            _jc_die "could not create database $_JC_PG_DB"
    fi
}

# ---------------------------------------------------------------- entry

# Ensure both services; runs in a subshell so failures and shell options stay inside.
jobcast_services_up() (
    set -euo pipefail
    PATH="$PATH:/usr/sbin:/sbin"
    _jc_ensure_packages
    _jc_ensure_redis
    _jc_ensure_postgres
)

# A plain statement, not `if`/`||`: bash ignores `set -e` inside a function
# called from a condition. A caller running with -e (dev.sh, test.sh) stops
# here on failure, after the error message.
jobcast_services_up
_jc_rc=$?
if ((_jc_rc == 0)); then
    export REDIS_URL="redis://127.0.0.1:${_JC_REDIS_PORT}"
    export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:${_JC_PG_PORT}/${_JC_PG_DB}"
    export JOBCAST_TEST_DATABASE_URL="$_JC_PG_ADMIN_URL"
    if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
        printf 'export %s=%q\n' REDIS_URL "$REDIS_URL" DATABASE_URL "$DATABASE_URL" \
            JOBCAST_TEST_DATABASE_URL "$JOBCAST_TEST_DATABASE_URL"
    fi
else
    _jc_log "Redis/Postgres are not ready (see the messages above)"
    # `return` when sourced, `exit` when executed.
    # shellcheck disable=SC2317
    return 1 2>/dev/null || exit 1
fi
