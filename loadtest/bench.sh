#!/usr/bin/env bash
# The ringcast benchmark suite: starts Redis, N nodes, the gateway and nginx (loadtest/nginx.conf)
# on loopback, runs the standard loadtest scenarios through each, and writes a table with the
# machine, versions, exact commands and figures between the bench markers of BENCHMARKS.md.
#
#   loadtest/bench.sh                  full run (release build, every run bounded to 60 s)
#   loadtest/bench.sh --quick          CI smoke test (< 2 min): tiny runs, asserts only that every
#                                      scenario ran and lost nothing; never asserts speed
# Options: --profile release|debug (which build to use, default release), --no-build,
#          --bin-dir DIR (use the binaries in DIR, build nothing),
#          --nodes N (default 2), --fanout-rate R (msg/s per publisher, default 250),
#          --out FILE (default BENCHMARKS.md; --quick defaults to a file in the work dir),
#          --keep (leave the work dir with logs and JSON results).
# Needs redis-server, nginx and python3; a missing one is an error, never a skip.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

QUICK=0 PROFILE=release BUILD=1 BIN_DIR="" NODES=2 FANOUT_RATE=250 OUT="" KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --profile) PROFILE="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --bin-dir) BIN_DIR="$2"; BUILD=0; shift ;;
        --nodes) NODES="$2"; shift ;;
        --fanout-rate) FANOUT_RATE="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$PROFILE" in release|debug) ;; *) echo "error: --profile must be release or debug" >&2; exit 2 ;; esac
[ "$NODES" -ge 2 ] 2>/dev/null || { echo "error: --nodes must be at least 2" >&2; exit 2; }

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v redis-server >/dev/null || die "redis-server not found (apt-get install -y redis-server)"
NGINX="$(command -v nginx || true)"
[ -n "$NGINX" ] || { [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx; } || true
[ -n "$NGINX" ] || die "nginx not found (apt-get install -y nginx)"
command -v python3 >/dev/null || die "python3 not found (apt-get install -y python3)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"

if [ "$BUILD" = 1 ]; then
    flag=(); [ "$PROFILE" = release ] && flag=(--release)
    log "cargo build ${flag[*]} -p ringcast-node -p ringcast-gateway -p ringcast-loadtest"
    cargo build "${flag[@]}" --quiet -p ringcast-node -p ringcast-gateway -p ringcast-loadtest
fi
BIN="${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE}"
NODE_BIN="$BIN/ringcast-node" GATEWAY_BIN="$BIN/ringcast-gateway" LT="$BIN/ringcast-loadtest"
for b in "$NODE_BIN" "$GATEWAY_BIN" "$LT"; do [ -x "$b" ] || die "$b not built"; done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-bench.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    # Stop exactly the processes this script started, by PID, newest first.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL NAME PID: until URL answers at all (any HTTP status), or die.
wait_http() {
    for _ in $(seq 1 200); do
        kill -0 "$3" 2>/dev/null || die "$2 exited at startup; log: $(tail -5 "$WORK/$2.log")"
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.05
    done
    die "$2 did not answer on $1 within 10 s"
}

start() { # start NAME CMD...: runs CMD in the background with its log in the work dir
    local name="$1"; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    LAST_PID=$!
}

# ---- servers --------------------------------------------------------------------------------
REDIS_PORT=$(free_port)
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK"
REDIS_PID=$LAST_PID
for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited at startup"
    sleep 0.05
done
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

NODE_FLAGS=(--announce-connections=false --rate-limit-per-sec 1000000 --rate-limit-burst 1000000)
NODE_PORTS=() NODE_PIDS=() NODE_URLS=() GW_NODES=() NGINX_SERVERS=""
for i in $(seq 1 "$NODES"); do
    p=$(free_port)
    start "node$i" "$NODE_BIN" --listen "127.0.0.1:$p" --node-id "node$i" --redis-url "$REDIS_URL" \
        --redis-prefix "bench$$" "${NODE_FLAGS[@]}"
    NODE_PIDS+=("$LAST_PID") NODE_PORTS+=("$p") NODE_URLS+=("ws://127.0.0.1:$p/ws")
    GW_NODES+=(--node "node$i=127.0.0.1:$p")
    NGINX_SERVERS+="server 127.0.0.1:$p max_fails=0; "
    wait_http "http://127.0.0.1:$p/healthz" "node$i" "$LAST_PID"
done
STATS_URLS=$(printf 'http://127.0.0.1:%s/stats,' "${NODE_PORTS[@]}"); STATS_URLS=${STATS_URLS%,}
BOTH_NODES=$(IFS=,; echo "${NODE_URLS[*]}")

GW_PORT=$(free_port)
start gateway "$GATEWAY_BIN" --listen "127.0.0.1:$GW_PORT" "${GW_NODES[@]}"
GW_PID=$LAST_PID
wait_http "http://127.0.0.1:$GW_PORT/healthz" gateway "$GW_PID"
GW_URL="ws://127.0.0.1:$GW_PORT/ws"

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
sed -e "s|@PREFIX@|$WORK/nginx|g" -e "s|@LISTEN@|127.0.0.1:$NGINX_PORT|g" \
    -e "s|@SERVERS@|$NGINX_SERVERS|g" loadtest/nginx.conf >"$WORK/nginx/nginx.conf"
start nginx "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
NGINX_PID=$LAST_PID
wait_http "http://127.0.0.1:$NGINX_PORT/healthz" nginx "$NGINX_PID"
NGINX_URL="ws://127.0.0.1:$NGINX_PORT/ws"

# A lone node on the in-memory bus: local fan-out without Redis.
SOLO_PORT=$(free_port)
start solo "$NODE_BIN" --listen "127.0.0.1:$SOLO_PORT" --node-id solo "${NODE_FLAGS[@]}"
SOLO_PID=$LAST_PID
wait_http "http://127.0.0.1:$SOLO_PORT/healthz" solo "$SOLO_PID"
SOLO_URL="ws://127.0.0.1:$SOLO_PORT/ws"

# ---- scenarios ------------------------------------------------------------------------------
FAILED=()
ROWS="$WORK/rows.tsv"
: >"$ROWS"
# run NAME DESCRIPTION TARGETS-LABEL LOADTEST-ARGS...: one bounded loadtest run, JSON kept.
run() {
    local name="$1" what="$2" via="$3"; shift 3
    local cmd=(ringcast-loadtest --no-progress --json "$@")
    log "$name: ${cmd[*]}"
    local rc=0
    timeout -s INT 60 "$LT" --no-progress --json --id-prefix "${name//_/-}" "$@" \
        >"$WORK/$name.json" 2>"$WORK/$name.err" || rc=$?
    # Print the command with the URLs' real ports replaced by role names, for the table.
    local shown="${cmd[*]}"
    shown=${shown//$GW_URL/\$GATEWAY}
    shown=${shown//$NGINX_URL/\$NGINX}
    shown=${shown//$SOLO_URL/\$SOLO_NODE}
    shown=${shown//$STATS_URLS/\$NODE1_STATS,\$NODE2_STATS}
    shown=${shown//$BOTH_NODES/\$NODE1,\$NODE2}
    shown=${shown//${NODE_URLS[0]}/\$NODE1}
    shown=${shown//--server-pid $GW_PID,${NODE_PIDS[0]},${NODE_PIDS[1]}/--server-pid \$GATEWAY_PID,\$NODE1_PID,\$NODE2_PID}
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$what" "$via" "$rc" "$shown" >>"$ROWS"
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (exit $rc)")
        log "$name: exit $rc: $(tail -3 "$WORK/$name.err" | tr '\n' ' ')"
    fi
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
if [ "$QUICK" = 1 ]; then
    F=(fanout --quick)
    run fanout_gateway "fan-out, quick" "gateway → 2 nodes + Redis" --url "$GW_URL" "${F[@]}"
    run fanout_nginx "fan-out, quick" "nginx → 2 nodes + Redis" --url "$NGINX_URL" "${F[@]}"
    run fanout_nodes "fan-out, quick" "2 nodes + Redis, no proxy" --url "$BOTH_NODES" "${F[@]}"
    run fanout_node "fan-out, quick" "node1 directly (Redis bus)" --url "${NODE_URLS[0]}" "${F[@]}"
    run fanout_solo "fan-out, quick" "one node, memory bus" --url "$SOLO_URL" "${F[@]}"
    run connections_gateway "200 idle connections" "gateway → 2 nodes" --url "$GW_URL" \
        connections --connections 200 --connect-rate 0 --hold-secs 0.5 \
        --server-pid "$GW_PID,${NODE_PIDS[0]},${NODE_PIDS[1]}"
    run direct_nodes "direct, 20 pairs across nodes" "node1 ↔ node2 via Redis" --url "$BOTH_NODES" \
        direct --pairs 20 --rate 20 --duration-secs 1
    run churn_gateway "churn, 10×5 cycles" "gateway → 2 nodes" --url "$GW_URL" \
        churn --workers 10 --cycles 5 --rooms 3 --stats-url "$STATS_URLS"
else
    R="$FANOUT_RATE"
    # First, while the servers are fresh: memory growth per connection would read low on heaps
    # already grown by the fan-out runs.
    run connections_gateway "9 500 idle connections, 64 in flight" "gateway → 2 nodes" --url "$GW_URL" \
        --connect-concurrency 64 connections --connections 9500 --connect-rate 0 --hold-secs 5 \
        --server-pid "$GW_PID,${NODE_PIDS[0]},${NODE_PIDS[1]}"
    # The same storm through nginx, then both with 512 connects in flight (a reconnect storm
    # after a deploy has thousands in flight). These meet nodes already holding the first
    # storm's heap, so only the first row measures memory.
    C=(connections --connections 9500 --connect-rate 0 --hold-secs 1)
    run connections_nginx "9 500 idle connections, 64 in flight" "nginx → 2 nodes" --url "$NGINX_URL" \
        --connect-concurrency 64 "${C[@]}"
    run connections_gateway_512 "9 500 connections, 512 in flight" "gateway → 2 nodes" \
        --url "$GW_URL" --connect-concurrency 512 "${C[@]}"
    run connections_nginx_512 "9 500 connections, 512 in flight" "nginx → 2 nodes" \
        --url "$NGINX_URL" --connect-concurrency 512 "${C[@]}"
    F=(fanout --subscribers 1000 --rooms 1 --publishers 4 --rate "$R" --duration-secs 10)
    run fanout_gateway "fan-out 1 000 members, 4 pub × $R/s" "gateway → 2 nodes + Redis" --url "$GW_URL" "${F[@]}"
    run fanout_nginx "fan-out 1 000 members, 4 pub × $R/s" "nginx → 2 nodes + Redis" --url "$NGINX_URL" "${F[@]}"
    run fanout_nodes "fan-out 1 000 members, 4 pub × $R/s (issue 7)" "2 nodes + Redis, no proxy" --url "$BOTH_NODES" "${F[@]}"
    run fanout_node "fan-out 1 000 members, 4 pub × $R/s" "node1 directly (Redis bus)" --url "${NODE_URLS[0]}" "${F[@]}"
    run fanout_solo "fan-out 1 000 members, 4 pub × $R/s (issue 2)" "one node, memory bus" --url "$SOLO_URL" "${F[@]}"
    # The same million deliveries/s to 100 members at 10 000 messages/s each: how latency depends
    # on the number of sockets a message reaches, at the same delivery rate.
    S=(fanout --subscribers 100 --rooms 1 --publishers 4 --rate 2500 --duration-secs 10)
    run small_gateway "fan-out 100 members, 4 pub × 2 500/s" "gateway → 2 nodes + Redis" --url "$GW_URL" "${S[@]}"
    run small_nginx "fan-out 100 members, 4 pub × 2 500/s" "nginx → 2 nodes + Redis" --url "$NGINX_URL" "${S[@]}"
    run small_nodes "fan-out 100 members, 4 pub × 2 500/s" "2 nodes + Redis, no proxy" --url "$BOTH_NODES" "${S[@]}"
    # The same at a fifth of the rate: latency added by each proxy when the machine is not saturated.
    L=(fanout --subscribers 1000 --rooms 1 --publishers 4 --rate 50 --duration-secs 10)
    run light_gateway "fan-out 1 000 members, 4 pub × 50/s" "gateway → 2 nodes + Redis" --url "$GW_URL" "${L[@]}"
    run light_nginx "fan-out 1 000 members, 4 pub × 50/s" "nginx → 2 nodes + Redis" --url "$NGINX_URL" "${L[@]}"
    run light_nodes "fan-out 1 000 members, 4 pub × 50/s" "2 nodes + Redis, no proxy" --url "$BOTH_NODES" "${L[@]}"
    run direct_nodes "direct, 500 pairs × 100/s" "node1 ↔ node2 via Redis" --url "$BOTH_NODES" \
        direct --pairs 500 --rate 100 --duration-secs 10
    run churn_gateway "churn, 100×50 cycles" "gateway → 2 nodes" --url "$GW_URL" \
        churn --workers 100 --cycles 50 --rooms 10 --stats-url "$STATS_URLS"
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ---------------------------------------------------------------------------------
[ -n "$OUT" ] || { [ "$QUICK" = 1 ] && OUT="$WORK/BENCHMARKS.md" || OUT="$ROOT/BENCHMARKS.md"; }
export WORK ROWS OUT QUICK STARTED LOAD_BEFORE LOAD_AFTER PROFILE
export MACHINE_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
export MACHINE_NPROC="$(nproc)" MACHINE_MEM="$(free -g | awk '/^Mem:/ {print $2}')"
export V_RUSTC="$(rustc --version)" V_REDIS="$(redis-server --version | cut -d' ' -f3)"
export V_NGINX="$("$NGINX" -v 2>&1 | sed 's/.*version: //')" V_KERNEL="$(uname -r)"
export V_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- node gateway loadtest protocol 2>/dev/null || echo +changes)"
export NODES_N="$NODES" FANOUT_RATE
python3 "$ROOT/loadtest/bench_report.py"
log "table written to $OUT"

if [ ${#FAILED[@]} -gt 0 ]; then
    log "runs with problems: ${FAILED[*]}"
    [ "$QUICK" = 1 ] && die "quick bench failed: ${FAILED[*]}"
fi
[ "$QUICK" = 1 ] && log "quick bench: every scenario ran, nothing lost"
exit 0
