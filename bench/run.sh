#!/usr/bin/env bash
# bench/run.sh — jobcast against nginx + Nchan and the write() floor, same harness, same run.
#
#   bench/run.sh           full run (≈ 5-7 minutes after the builds)
#   bench/run.sh quick     smoke run with small numbers (≈ 2 minutes after the builds)
#
# What it does:
#   1. installs what is missing from Debian (nginx, libnginx-mod-nchan, redis-server,
#      jq, curl) without letting the packages start services;
#   2. builds, from this repository, the load generator (bench/loadgen), the floor
#      (bench/floor) and jobcast (`cargo build --release` in the work tree; see
#      BENCH_REV below);
#   3. starts its OWN redis-server, nginx + Nchan (bench/nchan.conf.template) and
#      `jobcast serve`, each on a free loopback port, and stops all three on exit;
#   4. runs every scenario against jobcast and then against Nchan with the same
#      loadgen flags, and the floor with the same connections and rates (the
#      capacity scenarios f and g run several jobcast instances sharing that
#      Redis, jobcast only), and writes
#        bench/results/<stamp>[-quick].jsonl   loadgen's and floor's JSON lines (+ scenario, gateway)
#        bench/results/<stamp>[-quick].md      the table: jobcast / Nchan / floor and the ratios
#      Logs of the servers and loadgen's human summaries: bench/target-run/<stamp>/.
#
# Environment:
#   BENCH_REV=<git rev>   build that commit (git archive into bench/target-jobcast/src)
#                         instead of the work tree — for a figure that names a commit
#                         while the work tree is being edited
#   JOBCAST_BIN=<path>    use this binary, build nothing for jobcast
#   BENCH_SCENARIOS="a b" run only these scenarios (a b c d e f g h; default a b c d e h:
#                         f, 100,000 connections over 6 instances, and g are asked for)
#   BENCH_F_CONNECTIONS=N connections of scenario f (default 100000; quick 3000)
#
# Every load is bounded: loadgen and floor have their own watchdogs and each call
# is also wrapped in `timeout`. Everything targets 127.0.0.1 only.
set -euo pipefail

MODE="${1:-full}"
case "$MODE" in
full | quick) ;;
*)
    echo "usage: $0 [full|quick]" >&2
    exit 2
    ;;
esac

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
STAMP="$(date -u +%Y-%m-%dT%H%MZ)"
SUFFIX=""
[[ "$MODE" == quick ]] && SUFFIX="-quick"
RESULTS_DIR="$BENCH_DIR/results"
JSONL="$RESULTS_DIR/$STAMP$SUFFIX.jsonl"
MD="$RESULTS_DIR/$STAMP$SUFFIX.md"
WORK="$BENCH_DIR/target-run/$STAMP$SUFFIX"
PATH="$PATH:/usr/sbin:/sbin"

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ------------------------------------------------------------------ cleanup

PIDS=() # servers we started, in start order
stop_pid() {
    local pid="$1" name="$2" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name ($pid) still running after 5 s, SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]%%:*}" "${PIDS[$i]#*:}"
    done
    wait 2>/dev/null || true
    ((rc == 0)) || log "failed (exit $rc); server logs in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ packages

apt_install() {
    local -a pkgs=("$@")
    ((${#pkgs[@]} > 0)) || return 0
    command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get; install them by hand"
    local sudo=()
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    local alog="$WORK/apt.log"
    log "apt-get install ${pkgs[*]}"
    # policy-rc.d "exit 101" keeps the packages from starting their own nginx / Redis;
    # an existing policy that already says so is left alone, any other put back after.
    local policy=/usr/sbin/policy-rc.d backup=""
    local own_policy=0
    if ! grep -qs 'exit 101' "$policy"; then
        if [[ -e "$policy" ]]; then
            backup="$WORK/policy-rc.d.orig"
            "${sudo[@]}" cp -p "$policy" "$backup"
        fi
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    local ok=1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300 update >>"$alog" 2>&1 &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300 \
            install --no-install-recommends "${pkgs[@]}" >>"$alog" 2>&1 || ok=0
    if ((own_policy)); then
        "${sudo[@]}" rm -f "$policy"
        [[ -z "$backup" ]] || "${sudo[@]}" cp -p "$backup" "$policy"
    fi
    ((ok)) || {
        tail -n 20 "$alog" >&2
        die "apt-get install ${pkgs[*]} failed (log: $alog)"
    }
}

NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
ensure_packages() {
    local -a pkgs=()
    # Debian's `nginx` package (bookworm: the full binary; nginx-light is a
    # transitional package) is built --with-compat and loads dynamic modules with
    # load_module; libnginx-mod-nchan depends on its ABI.
    command -v nginx >/dev/null || pkgs+=(nginx)
    [[ -e "$NCHAN_MODULE" ]] || pkgs+=(libnginx-mod-nchan)
    command -v redis-server >/dev/null || pkgs+=(redis-server)
    command -v redis-cli >/dev/null || pkgs+=(redis-tools)
    command -v jq >/dev/null || pkgs+=(jq)
    command -v curl >/dev/null || pkgs+=(curl)
    apt_install "${pkgs[@]}"
    [[ -e "$NCHAN_MODULE" ]] || die "$NCHAN_MODULE missing after installing libnginx-mod-nchan"
}

# ------------------------------------------------------------------ helpers

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
declare -A TAKEN=()
free_port() { # VAR — sets VAR to a free loopback port
    local p i
    for ((i = 0; i < 200; i++)); do
        # Below the ephemeral range (32768+), so the harness's own sockets never collide.
        p=$((20000 + RANDOM % 12000))
        [[ -z "${TAKEN[$p]:-}" ]] || continue
        if ! port_busy "$p" && ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
            TAKEN[$p]=1
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free port found"
}

wait_until() { # seconds description command...
    local secs="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready within ${secs}s (logs: $WORK)"
        sleep 0.2
    done
}

alive() { kill -0 "$1" 2>/dev/null; }

# stop_server PID — stop one server we started and forget it.
stop_server() {
    local pid="$1" i keep=()
    for i in "${PIDS[@]}"; do
        if [[ "${i%%:*}" == "$pid" ]]; then
            stop_pid "$pid" "${i#*:}"
        else
            keep+=("$i")
        fi
    done
    PIDS=("${keep[@]}")
    wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------ builds

# The harness is built from the work tree even with BENCH_REV: it is the ruler,
# not the thing measured.
# One cargo invocation for everything built from the work tree: the same
# package set every time means the same feature set, so nothing is built twice.
WORKTREE_PKGS=(-p jobcast -p jobcast-loadgen -p jobcast-floor)
build_tools() {
    [[ -z "${JOBCAST_BIN:-}${BENCH_REV:-}" ]] || WORKTREE_PKGS=(-p jobcast-loadgen -p jobcast-floor)
    log "building ${WORKTREE_PKGS[*]} (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet "${WORKTREE_PKGS[@]}") || die "release build failed"
    local tdir="${CARGO_TARGET_DIR:-$ROOT/target}"
    LOADGEN="$tdir/release/loadgen"
    FLOOR="$tdir/release/floor"
}

JOBCAST_REV_DESC=""
build_jobcast() {
    if [[ -n "${JOBCAST_BIN:-}" ]]; then
        [[ -x "$JOBCAST_BIN" ]] || die "JOBCAST_BIN=$JOBCAST_BIN is not executable"
        JOBCAST_REV_DESC="binary $JOBCAST_BIN (given)"
        return
    fi
    if [[ -n "${BENCH_REV:-}" ]]; then
        local rev src="$BENCH_DIR/target-jobcast/src"
        rev="$(git -C "$ROOT" rev-parse --verify "$BENCH_REV^{commit}")" || die "BENCH_REV=$BENCH_REV is not a commit"
        if [[ "$(cat "$src/.bench-rev" 2>/dev/null || true)" != "$rev" ]]; then
            log "exporting $rev to bench/target-jobcast/src"
            rm -rf "$src"
            mkdir -p "$src"
            git -C "$ROOT" archive "$rev" | tar -x -C "$src"
            echo "$rev" >"$src/.bench-rev"
        fi
        log "building jobcast $rev (release, target dir bench/target-jobcast/target)"
        (cd "$src" && cargo build --release --locked --quiet --target-dir "$BENCH_DIR/target-jobcast/target") ||
            die "jobcast build failed"
        JOBCAST_BIN="$BENCH_DIR/target-jobcast/target/release/jobcast"
        JOBCAST_REV_DESC="commit ${rev:0:12} (BENCH_REV=$BENCH_REV)"
    else
        # Built by build_tools with loadgen and floor (WORKTREE_PKGS).
        local tdir="${CARGO_TARGET_DIR:-$ROOT/target}"
        JOBCAST_BIN="$tdir/release/jobcast"
        JOBCAST_REV_DESC="work tree at $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    fi
}

# ------------------------------------------------------------------ servers

start_redis() {
    free_port REDIS_PORT
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    mkdir -p "$WORK/redis"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$WORK/redis" --logfile "$WORK/redis/redis.log" \
        --notify-keyspace-events 'K$hgsx' --maxclients 10000 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID:redis-server")
    wait_until 15 "redis-server on :$REDIS_PORT" bash -c "[[ \"\$(redis-cli -h 127.0.0.1 -p $REDIS_PORT ping)\" == PONG ]]"
    log "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"
}

start_nchan() {
    free_port NCHAN_PORT
    local d="$WORK/nginx"
    mkdir -p "$d"
    sed -e "s#@PREFIX@#$d#g" -e "s#@PORT@#$NCHAN_PORT#g" -e "s#@MODULE@#$NCHAN_MODULE#g" \
        "$BENCH_DIR/nchan.conf.template" >"$d/nginx.conf"
    nginx -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" || die "nginx -t failed for $d/nginx.conf"
    nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >>"$d/stdout.log" 2>&1 &
    NCHAN_PID=$!
    PIDS+=("$NCHAN_PID:nginx")
    wait_until 15 "nginx on :$NCHAN_PORT" curl -fsS -m 2 "http://127.0.0.1:$NCHAN_PORT/healthz"
    log "nginx+Nchan master pid $NCHAN_PID on 127.0.0.1:$NCHAN_PORT"
}

JWT_SECRET_BENCH="bench-secret-$(od -An -N24 -tx1 /dev/urandom | tr -d " \n")"  # 32+ bytes, as the gateway requires
# The running jobcast instances (one, or several for f and g), all on the same
# Redis and secret, each on its own port; instance i logs to jobcast/jobcast[-i].log.
JOBCAST_PIDS=()
JOBCAST_PORTS=()
start_jobcasts() { # N
    local n="$1" i port pid logf
    mkdir -p "$WORK/jobcast"
    for ((i = 0; i < n; i++)); do
        free_port port
        logf="$WORK/jobcast/jobcast.log"
        ((n == 1)) || logf="$WORK/jobcast/jobcast-$i.log"
        (cd "$ROOT" && exec env -u DATABASE_URL \
            JWT_SECRET="$JWT_SECRET_BENCH" REDIS_URL="$REDIS_URL" JOBCAST_LISTEN="127.0.0.1:$port" \
            JOBCAST_MAX_CONNECTIONS_PER_USER=0 JOBCAST_SHUTDOWN_SECS=2 RUST_LOG=warn \
            "$JOBCAST_BIN" serve) >>"$logf" 2>&1 &
        pid=$!
        PIDS+=("$pid:jobcast-$i")
        JOBCAST_PIDS+=("$pid")
        JOBCAST_PORTS+=("$port")
        wait_until 30 "jobcast on :$port" curl -fsS -m 2 "http://127.0.0.1:$port/healthz"
        log "jobcast pid $pid on 127.0.0.1:$port"
    done
}
stop_jobcasts() {
    local pid
    for pid in "${JOBCAST_PIDS[@]}"; do
        stop_server "$pid"
    done
    JOBCAST_PIDS=()
    JOBCAST_PORTS=()
}
jobcasts_alive() {
    local pid
    for pid in "${JOBCAST_PIDS[@]}"; do
        alive "$pid" || return 1
    done
}

# ------------------------------------------------------------------ scenarios

if [[ "$MODE" == quick ]]; then
    A_SUBS=200 B_JOBS=100 B_SUBS=500 B_RATE=200 D_SUBS=1000 D_JOBS=100 E_SUBS=100
    DUR=3 E_RATES=200,800 E_DUR=3 A_RATE=50
    F_SUBS=3000 F_JOBS=100 F_PROCS=2
else
    A_SUBS=2000 B_JOBS=1000 B_SUBS=10000 B_RATE=1000 D_SUBS=10000 D_JOBS=1000 E_SUBS=500
    DUR=10 E_RATES=200,400,800,1600,3200 E_DUR=6 A_RATE=50
    # 100,000 client sockets: 6 loadgen processes of 16,667 (open files 20,000
    # each), 16,667 per instance (each allows 20,000 − 256). The ephemeral range
    # (32768-60999) has 28,232 ports per (source, destination) pair, but connect()
    # first scans the ports of one parity (14,116): past that many to one
    # destination it scans them all for every new socket, and connecting slows
    # to seconds. Four source addresses (127.0.0.1-4) keep ~4,200 per pair.
    F_SUBS=100000 F_JOBS=1000 F_PROCS=6
fi
F_SUBS="${BENCH_F_CONNECTIONS:-$F_SUBS}"
# Capacity scenarios: jobcast instances on this machine, sharing the one Redis.
F_INST=6 G_INST=2
declare -A INSTANCES=([f]=$F_INST [g]=$G_INST)
declare -A TITLE=(
    [a]="fan-out SSE: 1 job × $A_SUBS, $A_RATE msg/s × ${DUR}s"
    [b]="many jobs SSE: $B_JOBS jobs × $((B_SUBS / B_JOBS)), $B_RATE msg/s × ${DUR}s"
    [h]="many jobs SSE from keyspace SETs: $B_JOBS jobs × $((B_SUBS / B_JOBS)), $B_RATE msg/s × ${DUR}s"
    [c]="fan-out WebSocket: 1 job × $A_SUBS, $A_RATE msg/s × ${DUR}s"
    [d]="idle SSE: $D_SUBS connections over $D_JOBS jobs"
    [e]="ceiling SSE: 1 job × $E_SUBS, steps $E_RATES msg/s × ${E_DUR}s"
    [f]="idle SSE on $F_INST jobcast instances: $F_SUBS connections over $F_JOBS jobs"
    [g]="fan-out SSE on $G_INST jobcast instances: 1 job × $A_SUBS, $A_RATE msg/s × ${DUR}s"
)
# Same loadgen flags for both gateways; only URLs, the publisher kind/target,
# the auth header + seed (jobcast) and the pid to sample differ.
scenario_args() {
    case "$1" in
    a) echo "--transport sse --jobs 1 --subscribers $A_SUBS --rate $A_RATE --duration $DUR --connect-rate 1000 --job-prefix fanout-sse-" ;;
    b) echo "--transport sse --jobs $B_JOBS --subscribers $B_SUBS --rate $B_RATE --duration $DUR --connect-rate 1000 --job-prefix many-" ;;
    # As (b), but jobcast hears the states through keyspace notifications of
    # SETs (the worker writes its state key and publishes nothing); Nchan's
    # publisher is its HTTP POST as in (b).
    h) echo "--transport sse --jobs $B_JOBS --subscribers $B_SUBS --rate $B_RATE --duration $DUR --connect-rate 1000 --job-prefix many-set-" ;;
    c) echo "--transport ws --jobs 1 --subscribers $A_SUBS --rate $A_RATE --duration $DUR --connect-rate 1000 --job-prefix fanout-ws-" ;;
    d) echo "--transport sse --jobs $D_JOBS --subscribers $D_SUBS --connect-rate 1000 --settle-ms 3000 --job-prefix idle-" ;;
    # Skipped states (conflation: a slow watcher jumps to the newest) are not
    # lost, so the step test may stop on real loss (> 1 %) as well as on p99 or
    # on a publisher below 95 % of its rate.
    e) echo "--transport sse --jobs 1 --subscribers $E_SUBS --rate $E_RATES --duration $E_DUR --drain-ms 1500 --stop-p99-ms 100 --connect-rate 1000 --job-prefix ceiling-" ;;
    # Capacity (jobcast only): subscriber i connects to instance i % instances.
    f) echo "--transport sse --jobs $F_JOBS --subscribers $F_SUBS --procs $F_PROCS --source-addrs 4 --connect-rate 1000 --settle-ms 5000 --job-prefix capacity-" ;;
    # As (a), the subscribers split half and half over the two instances.
    g) echo "--transport sse --jobs 1 --subscribers $A_SUBS --rate $A_RATE --duration $DUR --connect-rate 1000 --job-prefix fanout-sse-2-" ;;
    esac
}

SEED_DOC='{"seq":0,"owner_id":"bench","status":"running"}'
run_one() { # scenario gateway
    local s="$1" gw="$2" out err rc=0
    local -a args gwargs
    read -r -a args <<<"$(scenario_args "$s")"
    local transport=sse
    [[ " ${args[*]} " == *" --transport ws "* ]] && transport=ws
    local publish=1
    [[ "$s" == d || "$s" == f ]] && publish=0
    if [[ "$gw" == jobcast ]]; then
        jobcasts_alive || {
            log "a jobcast instance is not running any more (see $WORK/jobcast/); restarting them"
            local n=${#JOBCAST_PIDS[@]}
            stop_jobcasts
            start_jobcasts "$n"
        }
        gwargs=(--header "Authorization: Bearer $TOKEN" --redis "$REDIS_URL" --seed-doc "$SEED_DOC")
        local i url
        for i in "${!JOBCAST_PIDS[@]}"; do
            url="http://127.0.0.1:${JOBCAST_PORTS[$i]}/jobs/{job}/events"
            [[ "$transport" == ws ]] && url="ws://127.0.0.1:${JOBCAST_PORTS[$i]}/jobs/{job}/ws"
            gwargs+=(--url-template "$url" --server-pid "${JOBCAST_PIDS[$i]}")
        done
        if ((publish)) && [[ "$s" == h ]]; then
            gwargs+=(--publish redis-set --key-template 'progress:job:{job}')
        elif ((publish)); then
            gwargs+=(--publish redis-publish --channel-template 'progress:job:{job}')
        else
            gwargs+=(--publish none)
        fi
    else
        alive "$NCHAN_PID" || die "nginx (Nchan) is not running any more (see $WORK/nginx/error.log)"
        local url="http://127.0.0.1:$NCHAN_PORT/sub/{job}"
        [[ "$transport" == ws ]] && url="ws://127.0.0.1:$NCHAN_PORT/sub/{job}"
        gwargs=(--url-template "$url" --server-pid "$NCHAN_PID" --include-children)
        if ((publish)); then
            gwargs+=(--publish http-post --publish-url-template "http://127.0.0.1:$NCHAN_PORT/pub/{job}")
        else
            gwargs+=(--publish none)
        fi
    fi
    out="$WORK/$s-$gw.jsonl"
    err="$WORK/$s-$gw.log"
    log "scenario $s (${TITLE[$s]}) → $gw"
    timeout 400 "$LOADGEN" "${args[@]}" "${gwargs[@]}" --json --label "$s/$gw" >"$out" 2>"$err" || rc=$?
    grep -E '^\[phase|^  (subscribers|latency|cpu|stopping)|^idle:|^connected ' "$err" | sed 's/^/    /' >&2 || true
    if ((rc != 0)) || ! grep -q '^{' "$out"; then
        log "loadgen exited $rc for $s/$gw; last lines of $err:"
        tail -n 5 "$err" | sed 's/^/    /' >&2
        jq -cn --arg s "$s" --arg g "$gw" --arg t "${TITLE[$s]}" --arg stamp "$STAMP" --argjson rc "$rc" \
            --arg e "$(tail -n 5 "$err")" \
            '{run:$stamp, scenario:$s, gateway:$g, title:$t, error:("loadgen exit " + ($rc|tostring) + ": " + $e)}' >>"$JSONL"
    fi
    local line
    while IFS= read -r line; do
        [[ "$line" == \{* ]] || continue
        jq -c --arg s "$s" --arg g "$gw" --arg t "${TITLE[$s]}" --arg stamp "$STAMP" \
            '{run:$stamp, scenario:$s, gateway:$g, title:$t} + .' <<<"$line" >>"$JSONL"
    done <"$out"
    if [[ "$gw" == jobcast ]]; then
        # jobcast's own counters for this scenario (fresh processes): stale drops,
        # deliveries per transport, closes by reason; one file per instance.
        local i m
        for i in "${!JOBCAST_PIDS[@]}"; do
            m="$WORK/$s-jobcast.metrics"
            ((${#JOBCAST_PIDS[@]} == 1)) || m="$WORK/$s-jobcast-$i.metrics"
            if alive "${JOBCAST_PIDS[$i]}"; then
                curl -fsS -m 5 "http://127.0.0.1:${JOBCAST_PORTS[$i]}/metrics" 2>/dev/null |
                    grep -E '^jobcast_(events_delivered|documents_dropped|updates_total|connections_(opened|closed|refused))' \
                        >"$m" || true
            else
                log "WARNING: jobcast instance $i died during scenario $s (logs: $WORK/jobcast/)"
            fi
        done
    fi
    # Nchan is stopped during the jobcast-only scenarios.
    if [[ -z "${INSTANCES[$s]:-}" ]] && ! alive "$NCHAN_PID"; then
        log "WARNING: nginx died during scenario $s (log: $WORK/nginx/error.log)"
    fi
    sleep 2 # let closed connections drain before the next run
}

# run_floor scenario — the same connections, jobs and rates written by a program
# that does one send() of a ready event per delivery and nothing else: the CPU
# per delivery no gateway can go below on this machine.
run_floor() {
    local s="$1" conns jobs rates dur rate i=0 out err rc
    case "$s" in
    a | c) conns=$A_SUBS jobs=1 rates=$A_RATE dur=$DUR ;;
    b | h) conns=$B_SUBS jobs=$B_JOBS rates=$B_RATE dur=$DUR ;;
    e) conns=$E_SUBS jobs=1 rates=$E_RATES dur=$E_DUR ;;
    *) return 0 ;;
    esac
    out="$WORK/$s-floor.jsonl"
    err="$WORK/$s-floor.log"
    log "scenario $s → floor"
    for rate in ${rates//,/ }; do
        rc=0
        timeout 120 "$FLOOR" --conns "$conns" --jobs "$jobs" --rate "$rate" --duration "$dur" --label "$s/floor" \
            >"$out.$i" 2>>"$err" || rc=$?
        if ((rc != 0)) || ! grep -q '^{' "$out.$i"; then
            log "floor exited $rc for $s; last lines of $err:"
            tail -n 3 "$err" | sed 's/^/    /' >&2
        else
            tail -n 1 "$err" | sed 's/^/    /' >&2
            jq -c --arg s "$s" --arg t "${TITLE[$s]}" --arg stamp "$STAMP" --argjson ph "$i" \
                '{run:$stamp, scenario:$s, gateway:"floor", title:$t, phase:$ph} + (. | del(.label))' "$out.$i" >>"$JSONL"
        fi
        i=$((i + 1))
    done
}

# ------------------------------------------------------------------ report

write_report() {
    local load_start="$1" load_end="$2"
    local rows
    # One TSV row per (scenario, gateway, phase); the floor's lines have the same phases.
    rows="$(jq -r '
        def ms: if . == null then null else (. / 1000) end;
        [ .scenario, .gateway, (.phase // "-" | tostring), (.rate_target // "-" | tostring),
          (.latency_us.p50 | ms // "" | tostring), (.latency_us.p99 | ms // "" | tostring),
          (.delivered // "" | tostring), (.expected_deliveries // "" | tostring),
          (.skipped // "" | tostring), (.skipped_pct // "" | tostring),
          (.lost // "" | tostring), (.loss_pct // "" | tostring), (.final_missed // "" | tostring),
          (.rss_per_conn_bytes // "" | tostring), (.pss_per_conn_bytes // "" | tostring),
          ((.cpu_pct.publish.server_total // .cpu_pct.connect.server_total // .writer_cpu_pct) // "" | tostring),
          (.connected // .conns // "" | tostring), (.subscribers // "" | tostring),
          (.disconnects // "" | tostring), (.publish_rate_achieved // "" | tostring),
          ((.cpu_pct.publish.other_est // .cpu_pct.connect.other_est) // "" | tostring),
          (.error // "" | gsub("[\t\n]"; " ")),
          (.deliveries_per_sec // .writes_per_sec // "" | tostring),
          (.server_cpu_us_per_delivery // .cpu_us_per_write // "" | tostring),
          (.final_is_terminal // "" | tostring) ] | @tsv' "$JSONL")"

    {
        echo "# jobcast vs nginx + Nchan vs the write() floor — $STAMP ($MODE)"
        echo
        echo "Produced by \`bench/run.sh${SUFFIX:+ quick}\`; raw loadgen and floor lines: \`$(basename "$JSONL")\`."
        echo
        echo "- jobcast: $JOBCAST_REV_DESC"
        echo "- Nchan: libnginx-mod-nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), worker_processes auto, nchan_message_buffer_length 1"
        echo "- floor: bench/floor, one send() of a ready 190-byte event per delivery to its own loopback connections"
        echo "- Redis: $(redis-server --version | awk '{print $3}' | sed 's/v=//'), its own instance, notify-keyspace-events K\$hgx"
        echo "- machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), open files hard limit $(ulimit -Hn), loopback only"
        echo "- load average at start: $load_start; at end: $load_end"
        echo "- publishers: jobcast ← Redis PUBLISH \`progress:job:{job}\`; Nchan ← HTTP POST \`/pub/{job}\` (same loadgen flags otherwise)"
        echo
        echo "Cells are **jobcast / Nchan**, ratios jobcast ÷ Nchan unless named. Below 1 favours jobcast, except for delivered."
        echo "CPU µs/delivery: the server's CPU over the publish window (all its processes; nginx: master + workers) ÷ deliveries per second;"
        echo "the floor's is its sending thread's CPU per send(). Latency is publisher send → subscriber parse."
        echo "Skipped: states a subscriber never saw but saw a later one of the same job (conflation). Lost: never saw it nor anything later."
        echo "Terminal missed: subscribers that never got their job's last state of the phase (the terminal state in a run's last phase)."
        echo "RSS/conn is (idle RSS − RSS before connecting) / connections."
        echo "Rows f and g are jobcast only, several instances on this machine (see the capacity section): one figure per cell."
        echo
        echo "| scenario | rate msg/s | CPU µs/delivery jobcast / Nchan / floor | ÷ Nchan | jobcast ÷ floor | Nchan ÷ floor | delivered (of expected) | skipped | lost (terminal missed) | p50 ms | p99 ms | idle RSS/conn bytes |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
        awk -F'\t' -v titles="$(for k in a b c d e f g h; do printf '%s=%s\x1f' "$k" "${TITLE[$k]}"; done)" '
            function r(a, b,    x) {
                if (a == "" || b == "") return "—"
                if (b + 0 == 0) return (a + 0 == 0) ? "—" : "∞"
                x = a / b
                return (x >= 10) ? sprintf("%.0f×", x) : sprintf("%.2f×", x)
            }
            function f(v, d) { return (v == "") ? "—" : sprintf("%." d "f", v) }
            # Rows of f and g (jobcast only, several instances) show the jobcast figure alone.
            function pair(a, b, d) { return only ? f(a, d) : f(a, d) " / " f(b, d) }
            function cell(a, b, d) { return only ? f(a, d) : pair(a, b, d) " (" r(a, b) ")" }
            BEGIN {
                n = split(titles, t, "\x1f")
                for (i = 1; i <= n; i++) { if (t[i] == "") continue; k = substr(t[i], 1, 1); T[k] = substr(t[i], 3) }
            }
            {
                key = $1 SUBSEP $3
                if (!(key in seen)) { seen[key] = 1; order[++m] = key }
                for (i = 1; i <= NF; i++) V[$2, key, i] = $i
            }
            END {
                for (j = 1; j <= m; j++) {
                    key = order[j]; split(key, kk, SUBSEP); s = kk[1]
                    only = (s == "f" || s == "g")
                    jc = "jobcast"; nx = "nchan"; fl = "floor"
                    rate = V[jc, key, 4]; if (rate == "") rate = V[nx, key, 4]
                    label = s " " T[s]
                    if (s == "e") label = (kk[2] == "0") ? s " " T[s] ", step 1" : s " step " (kk[2] + 1)
                    err = V[jc, key, 22] V[nx, key, 22]
                    if (err != "") { printf "| %s | %s | error: %s ||||||||||\n", label, rate, err; continue }
                    if (s == "d" || s == "f") {
                        printf "| %s | — | — | — | — | — | connected %s of %s | — | disconnects %s | — | — | %s |\n", label,
                            pair(V[jc, key, 17], V[nx, key, 17], 0), V[jc, key, 18],
                            pair(V[jc, key, 19], V[nx, key, 19], 0), cell(V[jc, key, 14], V[nx, key, 14], 0)
                        continue
                    }
                    cj = V[jc, key, 24]; cn = V[nx, key, 24]; cf = V[fl, key, 24]
                    deliv = pair(V[jc, key, 7], V[nx, key, 7], 0) " (" pair(V[jc, key, 8], V[nx, key, 8], 0) ")"
                    skip = f(V[jc, key, 9], 0) " (" f(V[jc, key, 10], 2) "%)"
                    lost = f(V[jc, key, 11], 0) " (" f(V[jc, key, 13], 0) ")"
                    if (!only) {
                        skip = skip " / " f(V[nx, key, 9], 0) " (" f(V[nx, key, 10], 2) "%)"
                        lost = lost " / " f(V[nx, key, 11], 0) " (" f(V[nx, key, 13], 0) ")"
                    }
                    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label, rate,
                        only ? f(cj, 1) : pair(cj, cn, 1) " / " f(cf, 2), r(cj, cn), r(cj, cf), r(cn, cf),
                        deliv, skip, lost,
                        cell(V[jc, key, 5], V[nx, key, 5], 2), cell(V[jc, key, 6], V[nx, key, 6], 2),
                        cell(V[jc, key, 14], V[nx, key, 14], 0)
                }
            }' <<<"$rows"
        echo
        echo "## Per run"
        echo
        echo "| scenario | gateway | phase | connected | disconnects | publisher msg/s achieved | deliveries/s | server CPU % of a core | PSS/conn bytes | other CPU on the machine % |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        awk -F'\t' '{ printf "| %s | %s | %s | %s/%s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $17, $18, $19, $20, $23, $16, $15, $21 }' <<<"$rows"
        echo
        if [[ " ${SCEN[*]} " == *" f "* || " ${SCEN[*]} " == *" g "* ]]; then
            capacity_report
        fi
        if [[ " ${SCEN[*]} " == *" e "* ]]; then
            echo "## Throughput ceiling (scenario e)"
            echo
            echo "Per gateway: the highest step where the publisher kept ≥ 95 % of the target rate and p99 ≤ 100 ms,"
            echo "the loss and skips at that step, and the most deliveries per second (messages written to subscribers) of any step."
            echo
            local gw
            for gw in jobcast nchan; do
                printf -- '- %s: %s\n' "$gw" "$(jq -rs --arg g "$gw" '
                    [ .[] | select(.scenario == "e" and .gateway == $g and .phase != null) ] as $all
                    | [ $all[] | select((.latency_us.p99 // 1e18) <= 100000
                               and (.publish_rate_achieved // 0) >= 0.95 * .rate_target) ] as $ok
                    | (if ($ok | length) == 0 then "no step passed"
                       else ($ok | max_by(.rate_target)) as $b
                         | "\($b.rate_target) msg/s (lost \($b.loss_pct) %, skipped \($b.skipped_pct) %, p99 \($b.latency_us.p99 / 1000) ms)" end)
                      + ", at most \([ $all[].deliveries_per_sec ] | max // 0) deliveries/s"' "$JSONL")"
            done
            echo
        fi
        local notes
        notes="$(jq -r 'select(.gateway != "floor") | select((.disconnects // 0) > 0 or (.connect_errors // 0) > 0 or (.publish_errors // 0) > 0 or (.error != null))
            | "- \(.scenario)/\(.gateway) phase \(.phase): connect_errors \(.connect_errors // 0) \(.connect_error_kinds // {} | tostring), disconnects \(.disconnects // 0), first_disconnect \(.first_disconnect // "-" | tostring), publish_errors \(.publish_errors // 0) \(.first_publish_error // "")\(if .error then ", " + .error else "" end)"' "$JSONL")"
        if [[ -n "$notes" ]]; then
            echo "## Errors and disconnects"
            echo
            echo "$notes"
            echo
        fi
    } >"$MD"
}

# The capacity section: f (idle connections over several instances) and g
# (fan-out over two instances) beside a (the same fan-out on one instance).
capacity_report() {
    echo "## Capacity: several jobcast instances (scenarios f, g)"
    echo
    echo "jobcast only (Nchan stopped): each instance is its own \`jobcast serve\` on its own loopback port,"
    echo "all on the run's one Redis, same settings as above; subscriber *i* connects to instance *i* mod *n*"
    echo "directly (no proxy). RSS/conn: the instances' summed RSS growth (idle − before connecting) ÷ connections."
    echo
    if [[ " ${SCEN[*]} " == *" f "* ]]; then
        echo "Connect ms: from the start of an attempt to the response head, p50 / p99 / max of the connections that opened."
        echo "Errors at s: when the first and the last failed attempt started, seconds into the connect phase."
        echo
        echo "| scenario | instances | client processes | connected (of) | per instance | connect errors (at s) | disconnects | connect ms | RSS/conn bytes | PSS/conn bytes | idle RSS per instance MiB |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        jq -r 'select(.scenario == "f" and .gateway == "jobcast")
            | if .error then "| f | \(.title) | error: \(.error | gsub("[|\n]"; " ")) ||||||||"
              else "| f | \(.urls) | \(.procs) | \(.connected) (\(.subscribers)) | \(.connected_per_url | map(tostring) | join(" / "))"
                + " | \(.connect_errors)\(if .connect_errors > 0 then " " + (.connect_error_kinds | tostring) + " (\(.connect_error_secs | map(tostring) | join("–")))" else "" end)"
                + " | \(.disconnects) | \(.connect_ms // {} | [.p50, .p99, .max] | map(tostring) | join(" / "))"
                + " | \(.rss_per_conn_bytes) | \(.pss_per_conn_bytes)"
                + " | \(.rss_kib_per_pid.idle | [.[] | . / 1024 | floor | tostring] | join(" / ")) |" end' "$JSONL"
        echo
    fi
    if [[ " ${SCEN[*]} " == *" g "* ]]; then
        echo "Fan-out, the same loadgen flags on one instance (a) and on two (g, subscribers half and half),"
        echo "Redis PUBLISH reaching both. CPU per delivery is summed over the instances. On one machine the"
        echo "instances share the same cores, so (g) ÷ (a) is the cost of running the second instance"
        echo "(a second feed, Redis subscription and runtime per delivery), not a speed-up."
        echo
        echo "| scenario | instances | connected per instance | CPU µs/delivery | (g) ÷ (a) | server CPU % of a core | deliveries/s | delivered (of expected) | skipped | lost (terminal missed) | p50 ms | p99 ms |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
        jq -rs '
            def ms: if . == null then "—" else (. / 10 | round / 100 | tostring) end;
            [ .[] | select(.gateway == "jobcast" and (.scenario == "a" or .scenario == "g")) ] as $rows
            | ([ $rows[] | select(.scenario == "a") | .server_cpu_us_per_delivery ] | first) as $a
            | $rows[]
            | if .error then "| \(.scenario) | error: \(.error | gsub("[|\n]"; " ")) ||||||||||"
              else "| \(.scenario) | \(.urls // 1) | \(.connected_per_url // [.connected] | map(tostring) | join(" / "))"
                + " | \(.server_cpu_us_per_delivery // "—")"
                + " | \(if .scenario == "g" and $a != null and .server_cpu_us_per_delivery != null
                        then (.server_cpu_us_per_delivery / $a * 100 | round / 100 | tostring) + "×" else "—" end)"
                + " | \(.cpu_pct.publish.server_total) | \(.deliveries_per_sec)"
                + " | \(.delivered) (\(.expected_deliveries)) | \(.skipped) (\(.skipped_pct) %)"
                + " | \(.lost) (\(.final_missed)) | \(.latency_us.p50 | ms) | \(.latency_us.p99 | ms) |" end' "$JSONL"
        echo
    fi
}

# ------------------------------------------------------------------ main

mkdir -p "$WORK" "$RESULTS_DIR"
read -r -a SCEN <<<"${BENCH_SCENARIOS:-a b c d e h}"
log "mode $MODE, scenarios ${SCEN[*]}, results $JSONL"
ensure_packages
build_tools
build_jobcast
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
log "load average before starting servers: $LOAD_START"

start_redis
TOKEN="$(cd "$ROOT" && JWT_SECRET="$JWT_SECRET_BENCH" "$JOBCAST_BIN" token --sub bench --job '*' --ttl 7200)"
[[ -n "$TOKEN" ]] || die "jobcast token printed nothing"

: >"$JSONL"
NCHAN_PID=""
for s in "${SCEN[@]}"; do
    [[ -n "${TITLE[$s]:-}" ]] || die "unknown scenario $s (a b c d e f g h)"
    # Fresh gateway processes for every scenario: RSS per connection is then
    # measured from a cold start for both, not on whatever the previous scenario left.
    stop_jobcasts
    [[ -z "$NCHAN_PID" ]] || stop_server "$NCHAN_PID"
    NCHAN_PID=""
    if [[ -n "${INSTANCES[$s]:-}" ]]; then
        # Capacity: several jobcast instances on this machine, nothing else serving.
        start_jobcasts "${INSTANCES[$s]}"
        run_one "$s" jobcast
        continue
    fi
    start_nchan
    start_jobcasts 1
    run_one "$s" jobcast
    run_one "$s" nchan
    run_floor "$s"
done

LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
write_report "$LOAD_START" "$LOAD_END"
log "done: $MD"
cat "$MD"
