#!/usr/bin/env bash
# What Redis Cluster costs and what a slot migration does to a live room (issue 23).
#
# 1. Fan-out: the standard cross-node fan-out through the gateway (two nodes behind it), spread
#    over 100 rooms (100 members each, one publisher per room at 100 msg/s: 10 000 msg/s, 1 M
#    deliveries/s offered), once on one Redis and once on a Redis Cluster of 3 primaries with one
#    replica each, alternating single, cluster, single… (--rounds). Each pass starts fresh
#    servers. Reports deliveries/s, loss, p50/p99, the ratio cluster ÷ single, and the CPU each
#    Redis process used during the run (/proc/PID/stat utime+stime), with the max ÷ min spread
#    over the primaries.
# 2. Migration under load (loadtest/bench_cluster_migrate.py): on a fresh cluster, a publisher
#    with ids sends --migrate-rate msg/s into one room with members on both nodes; the room's
#    slot moves to another primary (SETSLOT IMPORTING/MIGRATING, GETKEYSINSLOT + MIGRATE,
#    SETSLOT NODE); reports missing, duplicated, out-of-order, history_reset, and the time until
#    both nodes are subscribed on the new owner (PUBSUB SHARDNUMSUB polled there).
# 3. redis-benchmark, no ringcast: `redis-benchmark -p PORT -n 200000 -P 16 -q PUBLISH ch msg` and
#    the same with SPUBLISH, on one Redis and on the cluster primary that owns `ch` (replicas
#    attached), with 0 and with 2 subscribers to `ch` on that server (as two nodes would be).
#
#   loadtest/bench-cluster.sh [--bin-dir DIR] [--rounds N] [--duration-secs S] [--rooms R]
#       [--members M] [--rate N] [--replicas 0|1] [--migrate-rate N] [--migrations K]
#       [--no-fanout] [--no-migrate] [--no-redis-benchmark]
# Needs redis-server, redis-cli, curl, python3 (+ python websockets for the migration); builds
# the release binaries unless --bin-dir is given. Redis Cluster members use ports in
# 21000-29999 (bus ports +10000). Every process it starts is stopped on exit; every run is
# bounded in time. On a 2-core machine this measures the cluster's overhead, not its scale: all
# Redis processes, both nodes, the gateway and the load generator share the same cores.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="" ROUNDS=1 SECS=10 ROOMS=100 MEMBERS=100 RATE=100 REPLICAS=1 MRATE=250 MIGRATIONS=1
FANOUT=1 MIGRATE=1 RBENCH=1
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration-secs) SECS="$2"; shift ;;
        --rooms) ROOMS="$2"; shift ;;
        --members) MEMBERS="$2"; shift ;;
        --rate) RATE="$2"; shift ;;
        --replicas) REPLICAS="$2"; shift ;;
        --migrate-rate) MRATE="$2"; shift ;;
        --migrations) MIGRATIONS="$2"; shift ;;
        --no-fanout) FANOUT=0 ;;
        --no-migrate) MIGRATE=0 ;;
        --no-redis-benchmark) RBENCH=0 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$REPLICAS" in 0|1) ;; *) echo "error: --replicas must be 0 or 1" >&2; exit 2 ;; esac
NAME=bench-cluster
REDIS_REPLICAS=$REPLICAS
# shellcheck source=loadtest/bench-lib.sh
. "$ROOT/loadtest/bench-lib.sh"
# The migration client needs `websockets`: the first python3 that has it.
PY=""
for p in python3 /usr/bin/python3; do "$p" -c 'import websockets' 2>/dev/null && { PY=$p; break; }; done
[ "$MIGRATE" = 0 ] || [ -n "$PY" ] || die "no python3 with websockets (pip install websockets) for the migration"

TICK=$(getconf CLK_TCK)
busy() { awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat; }
waited() { # WAITED: CPU ticks of this shell's finished children (the load generator)
    times >"$WORK/times"
    WAITED=$(awk -v t="$TICK" 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } printf "%d\n", s * t }' "$WORK/times")
}
roles() { # the role (master/slave) of each Redis process up started, space-separated
    local p out=""
    for p in "${REDIS_PORTS[@]}"; do
        out+="$(redis-cli -p "$p" info replication | tr -d '\r' | sed -n 's/^role://p') "
    done
    echo "$out"
}
cmdstats() { # per Redis process: calls and usec of the commands the bus runs, as JSON
    local p
    for p in "${REDIS_PORTS[@]}"; do
        redis-cli -p "$p" info commandstats | tr -d '\r' | grep -E '^cmdstat_(evalsha|eval|publish|spublish):' | tr '\n' ' '
        echo
    done | python3 -c '
import json, re, sys
print(json.dumps([{m[0]: {"calls": int(m[1]), "usec": int(m[2])}
                   for m in re.findall(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", line)} for line in sys.stdin]))'
}
rooms_per_primary() { # how many rooms (history meta keys) each Redis process holds
    local p out=""
    for p in "${REDIS_PORTS[@]}"; do
        out+="$(redis-cli -p "$p" --scan --pattern '{ringcast:room:*}:meta' | wc -l) "
    done
    echo "$out"
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
SUBS=$((ROOMS * MEMBERS))
FAN=(fanout --subscribers "$SUBS" --rooms "$ROOMS" --publishers "$ROOMS" --rate "$RATE" --duration-secs "$SECS")
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$FANOUT" = 1 ]; then
    for round in $(seq 1 "$ROUNDS"); do
        for mode in single cluster; do
            REDIS_MODE=$mode
            echo "==> round $round, $mode: ringcast-loadtest --url ws://GATEWAY/ws ${FAN[*]}" >&2
            up ''
            idle
            waited; before=$(cpu) busy0=$(busy) waited0=$WAITED t0=$(date +%s.%N)
            rc=0
            timeout -s INT $((SECS + 180)) "$BIN/ringcast-loadtest" --no-progress --json \
                --id-prefix "c$round$mode" --url "ws://127.0.0.1:$GW_PORT/ws" "${FAN[@]}" \
                >"$WORK/out.json" 2>"$WORK/lt.log" || rc=$?
            waited; after=$(cpu) busy1=$(busy) waited1=$WAITED t1=$(date +%s.%N)
            python3 - "$mode" "$round" "$rc" "$WORK/out.json" "$before" "$after" "$TICK" "$t0" "$t1" \
                "$((waited1 - waited0))" "$((busy1 - busy0))" "${#REDIS_PIDS[@]}" "$(roles)" \
                "$(rooms_per_primary)" "$(cmdstats)" >>"$RESULTS" <<'PY'
import json, sys
mode, rnd, rc, path, before, after, tick, t0, t1, lt, machine, nredis, roles, rooms, stats = sys.argv[1:]
tick, nredis = int(tick), int(nredis)
used = [round(float(a) - float(b), 2) for a, b in zip(after.split(), before.split())]
try:
    r = json.load(open(path))
except Exception as e:
    r = {"failed": str(e)}
print(json.dumps({
    "kind": "fanout", "mode": mode, "round": int(rnd), "exit": int(rc), "result": r,
    "wall_secs": float(t1) - float(t0),
    "redis_cpu": used[:nredis], "roles": roles.split(), "rooms": [int(x) for x in rooms.split()],
    "cmdstats": json.loads(stats),
    "node_cpu": used[nredis:nredis + 2], "gateway_cpu": used[nredis + 2],
    "loadtest_cpu": int(lt) / tick,
    "others_cpu": max(0.0, int(machine) / tick - sum(used) - int(lt) / tick),
}))
PY
            [ "$rc" = 0 ] || echo "warning: loadtest exit $rc: $(tail -3 "$WORK/lt.log" | tr '\n' ' ')" >&2
            down
        done
    done
fi
if [ "$MIGRATE" = 1 ]; then
    for k in $(seq 1 "$MIGRATIONS"); do
        REDIS_MODE=cluster
        echo "==> migration $k: $MRATE msg/s into one room, its slot moved to another primary" >&2
        up ''
        idle
        rc=0
        timeout -s INT 90 "$PY" "$ROOT/loadtest/bench_cluster_migrate.py" \
            --nodes "ws://127.0.0.1:${NODE_PORTS[0]}/ws,ws://127.0.0.1:${NODE_PORTS[1]}/ws" \
            --metrics "http://127.0.0.1:${NODE_PORTS[0]}/metrics,http://127.0.0.1:${NODE_PORTS[1]}/metrics" \
            --redis-port "$REDIS_PORT" --room "migrate-$k" --rate "$MRATE" \
            >"$WORK/migrate.json" 2>"$WORK/migrate.log" || rc=$?
        if [ "$rc" = 0 ]; then
            python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); r["kind"] = "migrate"; print(json.dumps(r))' \
                "$WORK/migrate.json" >>"$RESULTS"
        else
            echo "warning: migration run exit $rc: $(tail -5 "$WORK/migrate.log" | tr '\n' ' ')" >&2
            echo "{\"kind\": \"migrate\", \"failed\": $rc}" >>"$RESULTS"
        fi
        down
    done
fi
if [ "$RBENCH" = 1 ]; then
    for mode in single cluster; do
        REDIS_PORTS=() REDIS_PIDS=()
        if [ "$mode" = cluster ]; then
            redis_cluster_up
            slot=$(redis-cli -p "${REDIS_PORTS[0]}" cluster keyslot ch)
            port=$(redis-cli -p "${REDIS_PORTS[0]}" cluster nodes | awk -v s="$slot" '$3 ~ /master/ {
                for (i = 9; i <= NF; i++) { n = split($i, r, "-"); if (n == 1) r[2] = r[1]
                    if (s >= r[1] && s <= r[2]) { split($2, a, "@"); sub(/.*:/, "", a[1]); print a[1] } } }')
        else
            port=$(free_port)
            redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/rb-redis.log" 2>&1 &
            PIDS+=("$!")
            for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
        fi
        for subs in 0 2; do
            for cmd in PUBLISH SPUBLISH; do
                sub_pids=()
                for ((i = 0; i < subs; i++)); do
                    [ "$cmd" = PUBLISH ] && verb=SUBSCRIBE || verb=SSUBSCRIBE
                    redis-cli -p "$port" "$verb" ch >/dev/null 2>&1 &
                    PIDS+=("$!") sub_pids+=("$!")
                done
                for _ in $(seq 1 100); do
                    [ "$(redis-cli -p "$port" pubsub "$( [ "$cmd" = PUBLISH ] && echo numsub || echo shardnumsub)" ch | tail -1)" = "$subs" ] && break
                    sleep 0.05
                done
                line=$(timeout 120 redis-benchmark -p "$port" -n 200000 -P 16 -q "$cmd" ch msg 2>&1 | tr '\r' '\n' | grep 'requests per second' | tail -1)
                printf '{"kind": "redis-benchmark", "mode": "%s", "replicas": %s, "subscribers": %s, "command": "%s", "line": "%s"}\n' \
                    "$mode" "$REPLICAS" "$subs" "$cmd" "${line# }" >>"$RESULTS"
                for p in "${sub_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
            done
        done
        down
    done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
echo "Started $STARTED; load average before: $LOAD_BEFORE, after: $LOAD_AFTER; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); redis-server $(redis-server --version | cut -d' ' -f3)."
echo
python3 - "$RESULTS" "${FAN[*]}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
fan = [r for r in rows if r["kind"] == "fanout"]
mig = [r for r in rows if r["kind"] == "migrate"]
ms = lambda us: "–" if us is None else f"{us / 1000:.1f} ms"
if fan:
    print(f"Fan-out through the gateway, `ringcast-loadtest {sys.argv[2]}`. CPU seconds are what each")
    print("process used during the whole loadtest invocation (connecting and joining every member, the")
    print("stream, the drain), whose wall time is given; \"others\" is the rest of the machine meanwhile.")
    print()
    print("| Redis | round | deliveries/s (msg/s) | loss | p50 | p99 | rooms per primary | CPU s: Redis primaries | replicas | primaries max ÷ min; max ÷ mean | node1 / node2 / gateway | loadtest; others | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by = {"single": [], "cluster": []}
    for r in fan:
        res = r["result"]
        if "deliveries_per_sec" not in res:
            print(f"| {r['mode']} | {r['round']} | failed (exit {r['exit']}): {res.get('failed', '')} | | | | | | | | | | |")
            continue
        by[r["mode"]].append(res["deliveries_per_sec"])
        lat = res.get("latency") or {}
        prim = [c for c, role in zip(r["redis_cpu"], r["roles"]) if role == "master"]
        repl = [c for c, role in zip(r["redis_cpu"], r["roles"]) if role != "master"]
        rooms = [n for n, role in zip(r["rooms"], r["roles"]) if role == "master"]
        spread = "–" if len(prim) < 2 else (("∞" if min(prim) == 0 else f"{max(prim) / min(prim):.2f}")
                                            + f"; {max(prim) / (sum(prim) / len(prim)):.2f}")
        problems = "".join(f"; {p}" for p in res.get("problems", []))
        print(f"| {r['mode']} | {r['round']} | **{res['deliveries_per_sec']:,.0f}** ({res['sent_per_sec']:,.0f}; "
              f"offered {res['expected'] / res['duration_secs']:,.0f}/s) | {res['lost']} of {res['expected']}{problems} "
              f"| {ms(lat.get('p50_us'))} | {ms(lat.get('p99_us'))} | {' / '.join(map(str, rooms))} "
              f"| {' / '.join(f'{c:.1f}' for c in prim)} | {' / '.join(f'{c:.1f}' for c in repl) or '–'} | {spread} "
              f"| {r['node_cpu'][0]:.1f} / {r['node_cpu'][1]:.1f} / {r['gateway_cpu']:.1f} "
              f"| {r['loadtest_cpu']:.1f}; {r['others_cpu']:.1f} | {r['wall_secs']:.1f} |")
    print()
    print("Redis commands behind each pass (`INFO commandstats`, summed over the primaries; fresh servers per pass, so")
    print("this includes the joins): the publish script runs as EVALSHA, presence scripts as EVAL.")
    print()
    print("| Redis | round | messages sent | EVALSHA calls | messages per call | µs per EVALSHA | Redis µs per message (EVALSHA) | EVAL calls, µs per call |")
    print("|---|---|---|---|---|---|---|---|")
    for r in fan:
        res = r["result"]
        if "sent" not in res:
            continue
        st = [x for x, role in zip(r["cmdstats"], r["roles"]) if role == "master"]
        tot = lambda c, k: sum(x.get(c, {}).get(k, 0) for x in st)  # noqa: E731
        calls, usec = tot("evalsha", "calls"), tot("evalsha", "usec")
        ecalls, eusec = tot("eval", "calls"), tot("eval", "usec")
        print(f"| {r['mode']} | {r['round']} | {res['sent']:,} | {calls:,} | {res['sent'] / max(calls, 1):.1f} "
              f"| {usec / max(calls, 1):.1f} | {usec / max(res['sent'], 1):.1f} | {ecalls:,}, {eusec / max(ecalls, 1):.1f} |")
    if by["single"] and by["cluster"]:
        s = sum(by["single"]) / len(by["single"])
        c = sum(by["cluster"]) / len(by["cluster"])
        print()
        print(f"Cluster ÷ single, mean deliveries/s: **{c / s:.3f}** ({c:,.0f} / {s:,.0f}).")
    print()
rb = [r for r in rows if r["kind"] == "redis-benchmark"]
if rb:
    print("`redis-benchmark -p PORT -n 200000 -P 16 -q CMD ch msg` (no ringcast running), requests/s and p50:")
    print()
    print("| server | subscribers to `ch` | PUBLISH | SPUBLISH |")
    print("|---|---|---|---|")
    for mode in ("single", "cluster"):
        for subs in (0, 2):
            got = {r["command"]: r["line"].split(": ", 1)[-1] for r in rb if r["mode"] == mode and r["subscribers"] == subs}
            if got:
                reps = next(r["replicas"] for r in rb if r["mode"] == mode)
                where = "one Redis" if mode == "single" else f"the cluster primary owning `ch` ({reps} replica{'s' if reps != 1 else ''})"
                print(f"| {where} | {subs} | {got.get('PUBLISH', '–')} | {got.get('SPUBLISH', '–')} |")
    print()
for r in mig:
    if "failed" in r:
        print(f"Migration run failed (exit {r['failed']}).")
        continue
    m = r["members"]
    print(f"Slot migration under load: room `{r['room']}` (slot {r['slot']}, {r['keys_moved']} keys) moved from "
          f"the primary on :{r['source_port']} to :{r['target_port']} while the publisher sent {r['rate']:.0f} msg/s "
          f"with ids to {r['subscribers']} members on both nodes"
          + (f"; migration error: {r['migration_error']}" if r["migration_error"] else "") + ".")
    print()
    print("| sent (during the migration) | acked | unacked | refused | resent | repeat acks | received | missing | duplicated | out of order (offset) | seq inversions | history_reset | keys moved at | owner set at | both nodes subscribed on the new owner at | node gap-filled / history resets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    gap = lambda k: sum(a.get(k, 0) - b.get(k, 0) for a, b in zip(r["nodes_after"], r["nodes_before"]))
    refused = ", ".join(f"{k} {v}" for k, v in r["refused"].items()) or "0"
    sub, after = r["ms_subscribed_on_target"], r["ms_subscribed_after_owner_set"]
    subscribed = "not within the timeout" if sub is None else f"{sub} ms ({after} ms after the owner was set)"
    print(f"| {r['sent']} ({r['sent_during_migration']}) | {r['acked']} | {r['unacked']} | {refused} | {r['resent']} "
          f"| {r['repeat_acks']} | {m['received']} | {m['missing']} | {m['duplicated']} | {m['out_of_order']} "
          f"| {m['seq_inversions']} | {m['history_reset']} | {r['ms_keys_moved']} ms | {r['ms_owner_set']} ms "
          f"| {subscribed} | {gap('ringcast_node_gap_filled_total'):.0f} / {gap('ringcast_node_history_resets_total'):.0f} |")
    print()
    print(f"`PUBSUB SHARDNUMSUB` on the new owner (ms since the migration started, subscribers): {r['shardnumsub_on_target']}"
          + (f"; member errors: {r['member_errors']}" if r["member_errors"] else ""))
    print()
PY
