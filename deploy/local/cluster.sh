#!/usr/bin/env bash
# deploy/local/cluster.sh: a ringcast cluster as plain processes on 127.0.0.1, no Docker.
#
#   cluster.sh up [--nodes N] [--gateway-port P] [--redis-port P] [--build] [--release] [--demo]
#   cluster.sh add             one more node, registering through the same Redis
#   cluster.sh drain NAME      SIGTERM one node (e.g. node-2): /healthz 503, 1012 to its clients
#   cluster.sh kill NAME       SIGKILL one node or redis (a crash; nothing is restarted)
#   cluster.sh restart NAME    start a stopped node or redis again: same port, same flags
#   cluster.sh status          each process, its URL and health
#   cluster.sh down            stops exactly what `up`/`add` started (by PID, identity checked)
#
# `up --demo` starts the gateway with --demo: the demo chat at http://127.0.0.1:8080/demo/.
#
# Redis (a private redis-server), N nodes started with --redis-url and --advertise (so they
# register themselves), and one gateway reading that registry. Logs, PIDs and the ports in use
# live under the state folder: $RINGCAST_LOCAL_STATE, default <repo>/.state/local (gitignored).
#
# Binaries: $RINGCAST_BIN_DIR if set; else the newer of target/release and target/debug that
# holds both; when neither does (or with --build) they are built with `cargo build --locked`
# (add --release for an optimized build). The script says which it uses.
#
# Extra node flags (e.g. `--rate-limit-per-sec 1000`): $RINGCAST_LOCAL_NODE_ARGS at `up`, split on
# spaces; recorded, so `add` and `restart` give later nodes the same.
# `kill` and `restart` are for fault drills (ringcast-loadtest faults): a restarted node keeps its
# node id and port, a restarted Redis its port and flags (no persistence: its data is gone).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${RINGCAST_LOCAL_STATE:-$ROOT/.state/local}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# Node drain: /healthz turns 503 and the node deregisters at once, clients get 1012 after the
# delay (time for the gateway to take the node off its ring), then up to the grace to close.
DRAIN_DELAY_SECS="${RINGCAST_LOCAL_DRAIN_DELAY_SECS:-2}"
SHUTDOWN_GRACE_SECS="${RINGCAST_LOCAL_SHUTDOWN_GRACE_SECS:-5}"
# shellcheck disable=SC2206 # split on spaces on purpose: a flag list
NODE_ARGS=(${RINGCAST_LOCAL_NODE_ARGS:-})

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# --- processes ------------------------------------------------------------------------------

# Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat); with the PID it
# names one process for good, even if the PID is reused later.
start_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # The command name (field 2) may hold spaces; everything after its ')' is space-separated.
    stat="${stat##*) }"
    set -- $stat
    # A zombie (Z) has exited; it only waits for its parent to reap it.
    [ "$1" != Z ] || return 1
    printf '%s\n' "${20}"
}

exe_of() { local e; e="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1; printf '%s\n' "${e% (deleted)}"; }

# Records NAME's PID, start time and executable (once it runs; `?` before) so `down` can tell
# the process is still ours.
record() {
    local name="$1" pid="$2" ticks exe="${3:-}"
    ticks="$(start_ticks "$pid")" || die "$name (pid $pid) exited right after start; see $STATE/$name.log"
    [ -n "$exe" ] || exe="$(exe_of "$pid")" || exe="?"
    printf '%s %s %s\n' "$pid" "$ticks" "$exe" > "$STATE/$name.pid"
}

# Prints the PID of NAME when the recorded process is still alive and still ours.
ours() {
    local f="$STATE/$1.pid" pid ticks exe
    [ -f "$f" ] || return 1
    read -r pid ticks exe < "$f" || return 1
    [ -n "$pid" ] && [ "$(start_ticks "$pid" 2>/dev/null)" = "$ticks" ] || return 1
    [ "$exe" = "?" ] || [ "$(exe_of "$pid")" = "$exe" ] || return 1
    printf '%s\n' "$pid"
}

# SIGTERM, wait up to $2 seconds, then SIGKILL; only a process that is verifiably ours.
stop_one() {
    local name="$1" wait_secs="$2" pid i
    if ! pid="$(ours "$name")"; then
        [ -f "$STATE/$name.pid" ] && log "$name: not running (or PID reused by another process); left alone"
        rm -f "$STATE/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_secs * 10; i++)); do
        ours "$name" >/dev/null || break
        sleep 0.1
    done
    if ours "$name" >/dev/null; then
        log "$name: still running ${wait_secs}s after SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do ours "$name" >/dev/null || break; sleep 0.1; done
    fi
    log "stopped $name (pid $pid)"
    rm -f "$STATE/$name.pid"
}

# --- network --------------------------------------------------------------------------------

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on, below the kernel's ephemeral range (32768 up by default) so outgoing
# connections are unlikely to hold it; a start that still loses the race is retried.
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        port_busy "$p" || { printf '%s\n' "$p"; return 0; }
    done
    die "no free port found"
}

# `GET PATH` on 127.0.0.1:PORT; prints `STATUS BODY` on one line (`000` when nothing answers).
# Bash's /dev/tcp, so no curl needed.
http_get() {
    local port="$1" path="$2" resp head
    resp="$(timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
        cat <&3' _ "$port" "$path" 2>/dev/null)" || { printf '000\n'; return 0; }
    head="${resp%%$'\r\n'*}"
    set -- $head
    printf '%s %s\n' "${2:-000}" "$(printf '%s' "${resp#*$'\r\n\r\n'}" | tr -d '\r\n')"
}

# Waits up to SECS for CHECK to pass while process NAME stays alive.
wait_for() {
    local name="$1" what="$2" secs="$3" i
    shift 3
    for ((i = 0; i < secs * 10; i++)); do
        "$@" && return 0
        ours "$name" >/dev/null || die "$name exited during startup; see $STATE/$name.log"
        sleep 0.1
    done
    die "$what not ready within ${secs}s (logs under $STATE)"
}

healthz_200() { [[ "$(http_get "$1" /healthz)" == "200 "* ]]; }
redis_up() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }
ring_is() { [[ "$(http_get "$1" /healthz)" == "200 "*"\"ring_size\":$2"[,}]* ]]; }

# --- binaries -------------------------------------------------------------------------------

has_binaries() { [ -x "$1/ringcast-node" ] && [ -x "$1/ringcast-gateway" ]; }

# Sets BIN: $RINGCAST_BIN_DIR; with --build a fresh `cargo build`; else the newer of the prebuilt
# target/release and target/debug; else a debug build.
find_binaries() {
    local build="$1" release="$2" profile=debug flag=()
    if [ -n "${RINGCAST_BIN_DIR:-}" ]; then
        BIN="$RINGCAST_BIN_DIR"
        log "binaries: \$RINGCAST_BIN_DIR=$BIN"
    elif [ "$build" = 1 ] || ! { has_binaries "$TARGET/release" || has_binaries "$TARGET/debug"; }; then
        [ "$release" = 1 ] && profile=release flag=(--release)
        log "binaries: building (cargo build --locked ${flag[*]:-}) into $TARGET/$profile"
        (cd "$ROOT" && cargo build --locked "${flag[@]}" -p ringcast-node -p ringcast-gateway) >&2
        BIN="$TARGET/$profile"
    elif has_binaries "$TARGET/release" && { ! has_binaries "$TARGET/debug" \
            || [ "$TARGET/release/ringcast-node" -nt "$TARGET/debug/ringcast-node" ]; }; then
        BIN="$TARGET/release"
        log "binaries: prebuilt $BIN (newer than target/debug; rebuild with --build --release)"
    else
        BIN="$TARGET/debug"
        log "binaries: prebuilt $BIN (rebuild with --build, or --build --release)"
    fi
    [ -x "$BIN/ringcast-node" ] && [ -x "$BIN/ringcast-gateway" ] \
        || die "ringcast-node / ringcast-gateway not found in $BIN"
    printf '%s\n' "$BIN" > "$STATE/bin_dir"
}

# --- commands -------------------------------------------------------------------------------

# `env` arguments for the binaries: unset every RINGCAST_* of the caller's shell, so only the
# flags below configure them. (Used inline: `env … BINARY &` keeps $! the binary's own PID.)
CLEAN_ENV=($(env | sed -n 's/^\(RINGCAST_[A-Za-z0-9_]*\)=.*/-u \1/p') "RUST_LOG=${RUST_LOG:-info}")

# The log of NAME's previous run (before a restart) stays as NAME.prev.log.
keep_log() { [ ! -f "$STATE/$1.log" ] || mv -f "$STATE/$1.log" "$STATE/$1.prev.log"; }

# start_node INDEX [PORT]: PORT (a restart) is tried first, then free ports.
start_node() {
    local index="$1" name="node-$1" port redis_port pid try want="${2:-}"
    redis_port="$(cat "$STATE/redis.port")"
    for try in 1 2 3; do
        if [ -n "$want" ]; then port="$want"; want=""; else port="$(free_port)"; fi
        keep_log "$name"
        env "${CLEAN_ENV[@]}" "$BIN/ringcast-node" \
            --listen "127.0.0.1:$port" --node-id "$name" \
            --redis-url "redis://127.0.0.1:$redis_port" --advertise "127.0.0.1:$port" \
            --drain-delay-secs "$DRAIN_DELAY_SECS" --shutdown-grace-secs "$SHUTDOWN_GRACE_SECS" \
            ${NODE_ARGS[@]+"${NODE_ARGS[@]}"} > "$STATE/$name.log" 2>&1 < /dev/null &
        pid=$!
        record "$name" "$pid" "?"
        sleep 0.2
        # Lost the port to another process between the check and the bind: pick another.
        if ! ours "$name" >/dev/null && grep -q "Address already in use" "$STATE/$name.log"; then
            log "$name: port $port was taken; retrying"
            continue
        fi
        break
    done
    printf '%s\n' "$port" > "$STATE/$name.port"
    wait_for "$name" "$name /healthz" 15 healthz_200 "$port"
    record "$name" "$pid"
    log "started $name (pid $(ours "$name")) ws://127.0.0.1:$port/ws"
    [ "$index" -gt "$(cat "$STATE/nodes" 2>/dev/null || echo 0)" ] && printf '%s\n' "$index" > "$STATE/nodes"
    return 0
}

# start_redis PORT: a private redis-server without persistence.
start_redis() {
    local port="$1" pid
    keep_log redis
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$STATE" --daemonize no > "$STATE/redis.log" 2>&1 < /dev/null &
    pid=$!
    record redis "$pid" "?"
    printf '%s\n' "$port" > "$STATE/redis.port"
    wait_for redis "redis-server" 10 redis_up "$port"
    record redis "$pid"
    log "started redis (pid $(ours redis)) redis://127.0.0.1:$port"
}

node_names() { local f; for f in "$STATE"/node-*.pid; do [ -e "$f" ] && basename "$f" .pid; done | sort -t- -k2 -n; }
running_nodes() { local n c=0; for n in $(node_names); do ours "$n" >/dev/null && c=$((c + 1)); done; printf '%s\n' "$c"; }

cmd_up() {
    local nodes=3 gateway_port=8080 redis_port="" build=0 release=0 gateway_args=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
            --gateway-port) gateway_port="${2:?}"; shift 2 ;;
            --redis-port) redis_port="${2:?}"; shift 2 ;;
            --build) build=1; shift ;;
            --release) release=1; shift ;;
            --demo) gateway_args+=(--demo); shift ;;
            *) die "up: unknown argument $1" ;;
        esac
    done
    [[ "$nodes" =~ ^[1-9][0-9]*$ ]] && [ "$nodes" -le 64 ] || die "--nodes must be 1..64"
    command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
    mkdir -p "$STATE"
    local n
    for n in redis gateway $(node_names); do
        ours "$n" >/dev/null && die "$n is already running from $STATE: run '$0 down' first"
    done
    rm -f "$STATE"/*.pid "$STATE"/*.port "$STATE/nodes"
    find_binaries "$build" "$release"
    printf '%s\n' "${NODE_ARGS[*]:-}" > "$STATE/node_args"
    [ -n "$redis_port" ] || redis_port="$(free_port)"
    port_busy "$gateway_port" && die "gateway port $gateway_port is in use: pass --gateway-port"
    port_busy "$redis_port" && die "redis port $redis_port is in use: pass --redis-port"
    # Anything failing from here on takes down what was already started.
    trap 'log "up failed; stopping what was started"; cmd_down >/dev/null 2>&1 || true' EXIT
    local pid

    start_redis "$redis_port"

    local i
    for ((i = 1; i <= nodes; i++)); do start_node "$i"; done

    env "${CLEAN_ENV[@]}" "$BIN/ringcast-gateway" --listen "127.0.0.1:$gateway_port" \
        --redis-url "redis://127.0.0.1:$redis_port" --shutdown-grace-secs "$SHUTDOWN_GRACE_SECS" \
        ${gateway_args[@]+"${gateway_args[@]}"} > "$STATE/gateway.log" 2>&1 < /dev/null &
    pid=$!
    record gateway "$pid" "?"
    printf '%s\n' "$gateway_port" > "$STATE/gateway.port"
    wait_for gateway "gateway with $nodes nodes on its ring" 20 ring_is "$gateway_port" "$nodes"
    record gateway "$pid"
    log "started gateway (pid $(ours gateway))"
    trap - ERR EXIT
    log "state, logs and PIDs: $STATE"
    printf 'ws://127.0.0.1:%s/ws\n' "$gateway_port"
    [ ${#gateway_args[@]} -eq 0 ] || log "demo chat: http://127.0.0.1:$gateway_port/demo/"
}

# The node flags `up` was given (not the caller's $RINGCAST_LOCAL_NODE_ARGS now).
recorded_node_args() {
    # shellcheck disable=SC2207 # split on spaces on purpose: a flag list
    [ ! -f "$STATE/node_args" ] || NODE_ARGS=($(cat "$STATE/node_args"))
}

cmd_add() {
    [ -f "$STATE/bin_dir" ] && ours redis >/dev/null || die "no cluster is up (run '$0 up' first)"
    BIN="$(cat "$STATE/bin_dir")"
    recorded_node_args
    local next=$(( $(cat "$STATE/nodes" 2>/dev/null || echo 0) + 1 ))
    start_node "$next"
    printf 'node-%s\n' "$next"
}

cmd_drain() {
    local name="${1:?drain needs a node name, e.g. node-2}"
    [[ "$name" == node-* ]] || die "only nodes are drained; use down for the rest"
    ours "$name" >/dev/null || die "$name is not running"
    stop_one "$name" $((DRAIN_DELAY_SECS + SHUTDOWN_GRACE_SECS + 5))
}

cmd_kill() {
    local name="${1:?kill needs a name, e.g. node-2 or redis}" pid i
    [[ "$name" == node-* || "$name" == redis ]] || die "only nodes and redis are killed; use down for the rest"
    pid="$(ours "$name")" || die "$name is not running"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do ours "$name" >/dev/null || break; sleep 0.1; done
    ours "$name" >/dev/null && die "$name (pid $pid) still alive 5 s after SIGKILL"
    log "killed $name (pid $pid)"
}

# Starts NAME again from what the state folder recorded (its port, the binaries of `up`). Its
# .pid file stays, so `down` still finds it.
cmd_restart() {
    local name="${1:?restart needs a name, e.g. node-2 or redis}" port
    [ -f "$STATE/bin_dir" ] || die "no cluster was started from $STATE (run '$0 up' first)"
    ours "$name" >/dev/null && die "$name is running; drain or kill it first"
    port="$(cat "$STATE/$name.port" 2>/dev/null)" || die "no port recorded for $name"
    BIN="$(cat "$STATE/bin_dir")"
    recorded_node_args
    case "$name" in
        redis) start_redis "$port" ;;
        node-*) [[ "${name#node-}" =~ ^[0-9]+$ ]] || die "bad node name $name"
                start_node "${name#node-}" "$port" ;;
        *) die "only nodes and redis are restarted" ;;
    esac
}

cmd_down() {
    [ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; return 0; }
    local n stoppers=()
    stop_one gateway $((SHUTDOWN_GRACE_SECS + 5))
    # Nodes drain in parallel; wait for those stoppers only (`up` failing has its own children).
    for n in $(node_names); do
        stop_one "$n" $((DRAIN_DELAY_SECS + SHUTDOWN_GRACE_SECS + 5)) &
        stoppers+=($!)
    done
    [ ${#stoppers[@]} -eq 0 ] || wait "${stoppers[@]}"
    stop_one redis 10
    rm -f "$STATE/nodes"
}

cmd_status() {
    [ -d "$STATE" ] || { echo "no cluster ($STATE does not exist)"; return 0; }
    local n pid port code any=1
    printf '%-10s %-8s %-32s %s\n' NAME PID URL HEALTH
    if pid="$(ours redis)"; then
        port="$(cat "$STATE/redis.port")"
        redis_up "$port" && code=PONG || code=unreachable
        printf '%-10s %-8s %-32s %s\n' redis "$pid" "redis://127.0.0.1:$port" "$code"
        any=0
    fi
    for n in $(node_names) gateway; do
        pid="$(ours "$n")" || continue
        port="$(cat "$STATE/$n.port")"
        printf '%-10s %-8s %-32s %s\n' "$n" "$pid" "ws://127.0.0.1:$port/ws" "$(http_get "$port" /healthz)"
        any=0
    done
    [ "$any" = 0 ] || echo "no process of this cluster is running"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    add) cmd_add ;;
    drain) shift; cmd_drain "$@" ;;
    kill) shift; cmd_kill "$@" ;;
    restart) shift; cmd_restart "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) usage ;;
esac
