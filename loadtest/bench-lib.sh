# Shell helpers the A/B bench scripts share (bench-history.sh, bench-presence.sh); sourced, not run.
# Set BIN (empty: build the release binaries here) and NAME (names the work dir) before sourcing.
# Gives: die, WORK (removed on exit), up ROOM_OPTIONS [NODE_FLAG...] (a fresh Redis, two nodes
# and a gateway; sets REDIS_PORT, NODE_PORTS, GW_PORT, PIDS), down (stops what up started, by
# PID, newest first), cpu (CPU seconds used so far by each process up started), idle (waits
# until those processes are quiet).
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
for c in redis-server redis-cli curl python3; do command -v "$c" >/dev/null || die "$c not found"; done
if [ -z "$BIN" ]; then
    cargo build --release --quiet -p ringcast-node -p ringcast-gateway -p ringcast-loadtest
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
# The gateway holds one descriptor per client: give the servers the hard open-files limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringcast-$NAME.XXXXXX")"
PIDS=()
down() {
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'down; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 200); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.05; done
    die "$1 did not answer within 10 s"
}
up() { # up ROOM_OPTIONS [NODE_FLAG...]: Redis, two nodes with RINGCAST_ROOM_OPTIONS=ROOM_OPTIONS and the flags, a gateway
    local opts="$1"; shift
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
    local nodes=()
    NODE_PORTS=()
    for i in 1 2; do
        local p; p=$(free_port)
        RINGCAST_ROOM_OPTIONS="$opts" "$BIN/ringcast-node" --listen "127.0.0.1:$p" --node-id "node$i" \
            --redis-url "redis://127.0.0.1:$REDIS_PORT" --announce-connections=false \
            --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 "$@" >"$WORK/node$i.log" 2>&1 &
        PIDS+=("$!")
        NODE_PORTS+=("$p")
        nodes+=(--node "node$i=127.0.0.1:$p")
        wait_http "http://127.0.0.1:$p/healthz"
    done
    GW_PORT=$(free_port)
    "$BIN/ringcast-gateway" --listen "127.0.0.1:$GW_PORT" "${nodes[@]}" >"$WORK/gateway.log" 2>&1 &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$GW_PORT/healthz"
}
cpu() { # CPU seconds (user + system) used so far by each started process, space-separated
    local out="" tick; tick=$(getconf CLK_TCK)
    for p in "${PIDS[@]}"; do
        # Fields 14 and 15 of /proc/PID/stat count from after the command name's ")".
        out+="$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk -v t="$tick" '{printf "%.2f", ($12 + $13) / t}') "
    done
    echo "$out"
}
idle() { # until the started processes used < 0.05 CPU s in the last 0.5 s (background work of the
    # last run done: closing tunnels, unsubscribing), at most 30 s
    local before after
    before=$(cpu)
    for _ in $(seq 1 60); do
        sleep 0.5
        after=$(cpu)
        python3 -c 'import sys; a, b = sys.argv[1:]; sys.exit(sum(float(x) - float(y) for x, y in zip(a.split(), b.split())) >= 0.05)' "$after" "$before" && return 0
        before=$after
    done
    echo "warning: the servers were still busy 30 s after a run" >&2
}
