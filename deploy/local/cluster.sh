#!/usr/bin/env bash
# deploy/local/cluster.sh: a ringcast cluster as plain processes on 127.0.0.1, no Docker.
#
#   cluster.sh up [--nodes N] [--gateway-port P] [--redis-port P] [--redis-cluster] [--build] [--release] [--demo]
#   cluster.sh add             one more node, registering through the same Redis
#   cluster.sh drain NAME      SIGTERM one node (e.g. node-2): /healthz 503, 1012 to its clients
#   cluster.sh kill NAME       SIGKILL one node or redis (redis-N in cluster mode); nothing restarted
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
# --redis-cluster (or RINGCAST_LOCAL_REDIS_CLUSTER=1 at `up`): a Redis Cluster of 3 primaries and
# 3 replicas instead (redis-1…redis-6 on six consecutive ports from --redis-port, default a free
# run in 21000-29999; each also uses port+10000 for the cluster bus), and the nodes and the
# gateway get --redis-cluster with all six as seeds. No persistence; cluster-node-timeout 5 s, so
# a killed primary is replaced by its replica within ~6 s.
#
# Binaries: $RINGCAST_BIN_DIR if set; else the newer of target/release and target/debug that
# holds both; when neither does (or with --build) they are built with `cargo build --locked`
# (add --release for an optimized build). The script says which it uses.
#
# Extra node flags (e.g. `--rate-limit-per-sec 1000`): $RINGCAST_LOCAL_NODE_ARGS at `up`, split on
# spaces; recorded, so `add` and `restart` give later nodes the same.
# `kill` and `restart` are for fault drills (ringcast-loadtest faults): a restarted node keeps its
# node id and port, a restarted Redis its port and flags (no persistence: its data is gone); a
# restarted cluster member keeps its cluster identity (nodes-PORT.conf) and rejoins, as a replica
# when its replica took over meanwhile.
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

usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

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
    local index="$1" name="node-$1" port pid try want="${2:-}" redis=()
    mapfile -t redis < <(redis_flag)
    for try in 1 2 3; do
        if [ -n "$want" ]; then port="$want"; want=""; else port="$(free_port)"; fi
        keep_log "$name"
        env "${CLEAN_ENV[@]}" "$BIN/ringcast-node" \
            --listen "127.0.0.1:$port" --node-id "$name" \
            "${redis[@]}" --advertise "127.0.0.1:$port" \
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

# --- Redis Cluster mode ---------------------------------------------------------------------

REDIS_CLUSTER_SIZE=6  # 3 primaries, each with one replica

is_cluster_mode() { [ "$(cat "$STATE/redis_mode" 2>/dev/null)" = cluster ]; }

# Names of the Redis processes this state folder runs: `redis`, or redis-1..redis-6.
redis_names() {
    if is_cluster_mode; then
        local i; for ((i = 1; i <= REDIS_CLUSTER_SIZE; i++)); do printf 'redis-%s\n' "$i"; done
    else
        printf 'redis\n'
    fi
}

# Whether any of our Redis processes is running.
redis_running() { local n; for n in $(redis_names); do ours "$n" >/dev/null && return 0; done; return 1; }

# The flag the nodes and the gateway get: --redis-url URL, or --redis-cluster SEED,SEED,…
redis_flag() {
    if is_cluster_mode; then
        printf '%s\n' --redis-cluster "$(cat "$STATE/redis_seeds")"
    else
        printf '%s\n' --redis-url "redis://127.0.0.1:$(cat "$STATE/redis.port")"
    fi
}

# A first port P in 21000-29999 with P..P+5 and their bus ports P+10000.. all free.
free_cluster_base() {
    local p i j ok
    for ((i = 0; i < 200; i++)); do
        p=$((21000 + RANDOM % 8990)) ok=1
        for ((j = 0; j < REDIS_CLUSTER_SIZE; j++)); do
            if port_busy $((p + j)) || port_busy $((p + j + 10000)); then ok=0; break; fi
        done
        [ "$ok" = 1 ] && { printf '%s\n' "$p"; return 0; }
    done
    die "no run of $REDIS_CLUSTER_SIZE free ports (and bus ports) found in 21000-29999"
}

cluster_ok() { redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

# start_cluster_member NAME PORT: one cluster-enabled redis-server without persistence; its
# nodes-PORT.conf (the cluster's view: its id, its peers) stays in the state folder, so a
# restarted member rejoins with the same identity. A replica writes what it syncs from its
# primary to an RDB file even without `save`: each member has its own, removed before a start,
# so no member (nor the single Redis, whose file is dump.rdb) ever loads another's data.
start_cluster_member() {
    local name="$1" port="$2" pid
    keep_log "$name"
    rm -f "$STATE/dump-$port.rdb"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dbfilename "dump-$port.rdb" --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 5000 \
        --dir "$STATE" --daemonize no > "$STATE/$name.log" 2>&1 < /dev/null &
    pid=$!
    record "$name" "$pid" "?"
    printf '%s\n' "$port" > "$STATE/$name.port"
    wait_for "$name" "redis-server $name" 10 redis_up "$port"
    record "$name" "$pid"
    log "started $name (pid $(ours "$name")) redis://127.0.0.1:$port"
}

# start_redis_cluster BASE: six members on BASE..BASE+5, joined into 3 primaries + 3 replicas,
# then waits until every member says cluster_state:ok.
start_redis_cluster() {
    local base="$1" i port addrs=() seeds=()
    rm -f "$STATE"/nodes-*.conf
    for ((i = 0; i < REDIS_CLUSTER_SIZE; i++)); do
        port=$((base + i))
        start_cluster_member "redis-$((i + 1))" "$port"
        addrs+=("127.0.0.1:$port") seeds+=("redis://127.0.0.1:$port")
    done
    timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        > "$STATE/redis-cluster-create.log" 2>&1 < /dev/null \
        || die "redis-cli --cluster create failed; see $STATE/redis-cluster-create.log"
    for ((i = 0; i < REDIS_CLUSTER_SIZE; i++)); do
        wait_for "redis-$((i + 1))" "cluster_state:ok on redis-$((i + 1))" 30 cluster_ok $((base + i))
    done
    (IFS=,; printf '%s\n' "${seeds[*]}") > "$STATE/redis_seeds"
    log "redis cluster ok: 3 primaries + 3 replicas on 127.0.0.1:$base-$((base + REDIS_CLUSTER_SIZE - 1))"
}

# Every redis-N this state folder has a PID file for, whatever the recorded mode.
redis_names_any() { local f; for f in "$STATE"/redis-*.pid; do [ -e "$f" ] && basename "$f" .pid; done | sort -t- -k2 -n; }

node_names() { local f; for f in "$STATE"/node-*.pid; do [ -e "$f" ] && basename "$f" .pid; done | sort -t- -k2 -n; }
running_nodes() { local n c=0; for n in $(node_names); do ours "$n" >/dev/null && c=$((c + 1)); done; printf '%s\n' "$c"; }

cmd_up() {
    local nodes=3 gateway_port=8080 redis_port="" build=0 release=0 gateway_args=()
    local redis_cluster="${RINGCAST_LOCAL_REDIS_CLUSTER:-0}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
            --gateway-port) gateway_port="${2:?}"; shift 2 ;;
            --redis-port) redis_port="${2:?}"; shift 2 ;;
            --redis-cluster) redis_cluster=1; shift ;;
            --build) build=1; shift ;;
            --release) release=1; shift ;;
            --demo) gateway_args+=(--demo); shift ;;
            *) die "up: unknown argument $1" ;;
        esac
    done
    [[ "$nodes" =~ ^[1-9][0-9]*$ ]] && [ "$nodes" -le 64 ] || die "--nodes must be 1..64"
    command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
    mkdir -p "$STATE"
    case "$redis_cluster" in 0|1) ;; *) die "RINGCAST_LOCAL_REDIS_CLUSTER must be 0 or 1" ;; esac
    local n i
    for n in redis $(redis_names_any) gateway $(node_names); do
        ours "$n" >/dev/null && die "$n is already running from $STATE: run '$0 down' first"
    done
    rm -f "$STATE"/*.pid "$STATE"/*.port "$STATE/nodes" "$STATE/redis_mode" "$STATE/redis_seeds"
    find_binaries "$build" "$release"
    printf '%s\n' "${NODE_ARGS[*]:-}" > "$STATE/node_args"
    port_busy "$gateway_port" && die "gateway port $gateway_port is in use: pass --gateway-port"
    if [ "$redis_cluster" = 1 ]; then
        command -v redis-cli >/dev/null || die "redis-cli not found (apt-get install redis-tools)"
        [ -n "$redis_port" ] || redis_port="$(free_cluster_base)"
        [[ "$redis_port" =~ ^[0-9]+$ ]] && [ "$redis_port" -ge 1024 ] \
            && [ $((redis_port + REDIS_CLUSTER_SIZE - 1 + 10000)) -le 65535 ] \
            || die "--redis-port for a cluster must be 1024..$((65535 - 10000 - REDIS_CLUSTER_SIZE + 1)) (bus ports are +10000)"
        for ((i = 0; i < REDIS_CLUSTER_SIZE; i++)); do
            port_busy $((redis_port + i)) && die "redis port $((redis_port + i)) is in use: pass --redis-port"
            port_busy $((redis_port + i + 10000)) && die "cluster bus port $((redis_port + i + 10000)) is in use: pass --redis-port"
        done
    else
        [ -n "$redis_port" ] || redis_port="$(free_port)"
        port_busy "$redis_port" && die "redis port $redis_port is in use: pass --redis-port"
    fi
    # Anything failing from here on takes down what was already started.
    trap 'log "up failed; stopping what was started"; cmd_down >/dev/null 2>&1 || true' EXIT
    local pid redis=()

    if [ "$redis_cluster" = 1 ]; then
        printf 'cluster\n' > "$STATE/redis_mode"
        start_redis_cluster "$redis_port"
    else
        printf 'single\n' > "$STATE/redis_mode"
        start_redis "$redis_port"
    fi
    mapfile -t redis < <(redis_flag)

    for ((i = 1; i <= nodes; i++)); do start_node "$i"; done

    env "${CLEAN_ENV[@]}" "$BIN/ringcast-gateway" --listen "127.0.0.1:$gateway_port" \
        "${redis[@]}" --shutdown-grace-secs "$SHUTDOWN_GRACE_SECS" \
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
    [ -f "$STATE/bin_dir" ] && redis_running || die "no cluster is up (run '$0 up' first)"
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
    redis_name_ok "$name"
    [[ "$name" == node-* || "$name" == redis* ]] || die "only nodes and redis are killed; use down for the rest"
    pid="$(ours "$name")" || die "$name is not running"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do ours "$name" >/dev/null || break; sleep 0.1; done
    ours "$name" >/dev/null && die "$name (pid $pid) still alive 5 s after SIGKILL"
    log "killed $name (pid $pid)"
}

# Dies when NAME is a Redis name this mode does not have (`redis` in cluster mode, `redis-N` not).
redis_name_ok() {
    case "$1" in
        redis) ! is_cluster_mode || die "this cluster runs a Redis Cluster: name a member, redis-1..redis-$REDIS_CLUSTER_SIZE" ;;
        redis-*) is_cluster_mode && [[ "${1#redis-}" =~ ^[1-9][0-9]*$ ]] && [ "${1#redis-}" -le "$REDIS_CLUSTER_SIZE" ] \
                     || die "no $1 here (redis-N exists only with up --redis-cluster, N = 1..$REDIS_CLUSTER_SIZE)" ;;
    esac
}

# Starts NAME again from what the state folder recorded (its port, the binaries of `up`). Its
# .pid file stays, so `down` still finds it.
cmd_restart() {
    local name="${1:?restart needs a name, e.g. node-2 or redis}" port
    [ -f "$STATE/bin_dir" ] || die "no cluster was started from $STATE (run '$0 up' first)"
    redis_name_ok "$name"
    ours "$name" >/dev/null && die "$name is running; drain or kill it first"
    port="$(cat "$STATE/$name.port" 2>/dev/null)" || die "no port recorded for $name"
    BIN="$(cat "$STATE/bin_dir")"
    recorded_node_args
    case "$name" in
        redis) start_redis "$port" ;;
        redis-*) start_cluster_member "$name" "$port" ;;
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
    for n in $(redis_names_any); do stop_one "$n" 10; done
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
    for n in $(redis_names_any); do
        pid="$(ours "$n")" || continue
        port="$(cat "$STATE/$n.port")"
        code="$(redis-cli -p "$port" info replication 2>/dev/null | tr -d '\r' | sed -n 's/^role://p')"
        code="${code:-unreachable} $(redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:')"
        printf '%-10s %-8s %-32s %s\n' "$n" "$pid" "redis://127.0.0.1:$port" "$code"
        any=0
    done
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
