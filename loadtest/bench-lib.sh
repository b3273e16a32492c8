# Shell helpers the A/B bench scripts share (bench-history.sh, bench-presence.sh,
# bench-cluster.sh); sourced, not run.
# Set BIN (empty: build the release binaries here) and NAME (names the work dir) before sourcing.
# Gives: die, WORK (removed on exit), up ROOM_OPTIONS [NODE_FLAG...] (a fresh Redis, two nodes
# and a gateway; sets REDIS_PORT, REDIS_PORTS, REDIS_PIDS, NODE_PORTS, NODE_PIDS, GW_PORT, GW_PID,
# PIDS), down (stops what up started, by PID, newest first), cpu (CPU seconds used so far by each
# process up started), idle (waits until those processes are quiet).
# REDIS_MODE=cluster before `up`: a Redis Cluster of 3 primaries with REDIS_REPLICAS (default 1)
# replicas each instead of one Redis, on consecutive ports in 21000-29999 (bus ports +10000),
# and the nodes get --redis-cluster with every member as a seed (REDIS_SEEDS).
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
REDIS_MODE="${REDIS_MODE:-single}" REDIS_REPLICAS="${REDIS_REPLICAS:-1}"
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
cluster_base() { # cluster_base N: a first port P in 21000-29999 with P..P+N-1 and P+10000.. all free
    python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(500):
    p = random.randint(21000, 29999 - n)
    if all(free(p + i) and free(p + i + 10000) for i in range(n)):
        print(p)
        sys.exit()
sys.exit("no run of free ports (with bus ports) in 21000-29999")
PY
}
redis_cluster_up() { # 3 primaries with REDIS_REPLICAS replicas each; sets REDIS_PORTS, REDIS_PIDS, REDIS_SEEDS
    local n=$((3 * (1 + REDIS_REPLICAS))) base i p addrs=() seeds=()
    base=$(cluster_base "$n") || die "no free ports for a Redis Cluster"
    for ((i = 0; i < n; i++)); do
        p=$((base + i))
        # Own file names: a replica writes the RDB it syncs from its primary to disk, and a later
        # member on the same port must not load it (nor an old cluster view).
        rm -f "$WORK/nodes-$p.conf" "$WORK/dump-$p.rdb"
        redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
            --dbfilename "dump-$p.rdb" --cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
            >"$WORK/redis-$p.log" 2>&1 &
        PIDS+=("$!") REDIS_PIDS+=("$!") REDIS_PORTS+=("$p")
        addrs+=("127.0.0.1:$p") seeds+=("redis://127.0.0.1:$p")
    done
    for p in "${REDIS_PORTS[@]}"; do
        for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
    done
    timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$REDIS_REPLICAS" --cluster-yes \
        >"$WORK/cluster-create.log" 2>&1 </dev/null || die "redis-cli --cluster create failed: $(tail -3 "$WORK/cluster-create.log")"
    # cluster_state:ok on every member, and every member's view settled (each replica known as
    # one), so the nodes read the same topology wherever they ask.
    for p in "${REDIS_PORTS[@]}"; do
        for i in $(seq 1 300); do
            redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' \
                && [ "$(redis-cli -p "$p" cluster nodes 2>/dev/null | awk '$3 ~ /slave/' | wc -l)" = $((3 * REDIS_REPLICAS)) ] \
                && break
            [ "$i" -lt 300 ] || die "Redis Cluster member $p not cluster_state:ok (with every replica known) within 30 s"
            sleep 0.1
        done
    done
    REDIS_SEEDS=$(IFS=,; echo "${seeds[*]}")
}
up() { # up ROOM_OPTIONS [NODE_FLAG...]: Redis, two nodes with RINGCAST_ROOM_OPTIONS=ROOM_OPTIONS
    # (none when empty) and the flags, a gateway
    local opts="$1"; shift
    local redis=()
    REDIS_PORTS=() REDIS_PIDS=()
    if [ "$REDIS_MODE" = cluster ]; then
        redis_cluster_up
        REDIS_PORT=${REDIS_PORTS[0]}
        redis=(--redis-cluster "$REDIS_SEEDS")
    else
        REDIS_PORT=$(free_port)
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
        PIDS+=("$!") REDIS_PIDS+=("$!") REDIS_PORTS+=("$REDIS_PORT")
        for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
        redis=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
    fi
    local nodes=()
    NODE_PORTS=() NODE_PIDS=()
    for i in 1 2; do
        local p; p=$(free_port)
        # (env execs the node, so $! is the node's PID; an empty ROOM_OPTIONS sets nothing)
        env ${opts:+"RINGCAST_ROOM_OPTIONS=$opts"} "$BIN/ringcast-node" --listen "127.0.0.1:$p" --node-id "node$i" \
            "${redis[@]}" --announce-connections=false \
            --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 "$@" >"$WORK/node$i.log" 2>&1 &
        PIDS+=("$!") NODE_PIDS+=("$!")
        NODE_PORTS+=("$p")
        nodes+=(--node "node$i=127.0.0.1:$p")
        wait_http "http://127.0.0.1:$p/healthz"
    done
    GW_PORT=$(free_port)
    "$BIN/ringcast-gateway" --listen "127.0.0.1:$GW_PORT" "${nodes[@]}" >"$WORK/gateway.log" 2>&1 &
    PIDS+=("$!")
    GW_PID=$!
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
