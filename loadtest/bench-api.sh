#!/usr/bin/env bash
# The server API's benchmarks (issue 22): a backend publishes over kept-alive HTTP/1.1 at the
# gateway while 10-member rooms of WebSocket clients, also through the gateway, measure delivery.
# Each round starts a fresh Redis, two nodes and a gateway (release build), all with the same
# API key (RINGCAST_API_KEYS) and the nodes with --room-options 'nohist*:history=0', then runs
# every row with history off (rooms `nohist-…`) and on (rooms `hist-…`, the default 500),
# interleaved: off before on in odd rounds, on before off in even ones. Rows:
#   publish          one `publish` per call, --connections connections calling as fast as answered
#   publish → node1  the same calls straight to node1's API (the members still on the gateway):
#                    what the gateway's forwarding costs
#   batch B          one `batch` of B publishes per call, on the connections --batches gives it
# Prints a Markdown table: API calls/s, messages/s accepted, deliveries/s at the members, loss,
# answers other than 200, delivery and call latency, and the CPU seconds each process used
# during the run (Redis, node1, node2, gateway, and the load generator itself), and what the
# rest of the machine used meanwhile (another user's work takes cores from the run).
#
#   loadtest/bench-api.sh [--bin-dir DIR] [--rounds N] [--duration-secs S] [--rooms R]
#                         [--members M] [--connections C] [--batches B:C,B:C]
# Defaults: 2 rounds of 10 s, 100 rooms × 10 members, 64 connections, --batches 100:8,1000:4.
# Needs redis-server, curl and python3; builds the release binaries unless --bin-dir is given.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="" ROUNDS=2 SECS=10 ROOMS=100 MEMBERS=10 CONNS=64 BATCHES="100:8,1000:4"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration-secs) SECS="$2"; shift ;;
        --rooms) ROOMS="$2"; shift ;;
        --members) MEMBERS="$2"; shift ;;
        --connections) CONNS="$2"; shift ;;
        --batches) BATCHES="$2"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
NAME=bench-api
# shellcheck source=loadtest/bench-lib.sh
. "$ROOT/loadtest/bench-lib.sh"
# Read by the nodes and the gateway (`up` starts them from this shell) and by the load generator.
export RINGCAST_API_KEYS="bench-api-$$" RINGCAST_LOADTEST_API_KEY="bench-api-$$"

ROWS=("publish|--connections $CONNS" "publish → node1|--connections $CONNS --api-url http://127.0.0.1:@NODE1@")
IFS=, read -ra PAIRS <<<"$BATCHES"
for p in "${PAIRS[@]}"; do ROWS+=("batch ${p%%:*}|--batch ${p%%:*} --connections ${p#*:}"); done

busy() { # CPU seconds the whole machine has been busy (user, nice, system, irq, softirq, steal)
    awk -v t="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / t}' /proc/stat
}
quiet() { # until neither node serves a client (the last run's members have gone), ≤ 10 s
    for _ in $(seq 1 100); do
        local n=0
        for p in "${NODE_PORTS[@]}"; do
            curl -s --max-time 1 "http://127.0.0.1:$p/stats" | grep -q '"local_connections":0[,}]' && n=$((n + 1))
        done
        [ "$n" = "${#NODE_PORTS[@]}" ] && return 0
        sleep 0.1
    done
}
run() { # run ROW MODE ROUND ARGS...: one loadtest run, one table row
    local row="$1" mode="$2" rnd="$3"; shift 3
    local prefix=hist; [ "$mode" = off ] && prefix=nohist
    local before after rc=0 TIMEFORMAT='%3U %3S'
    before="$(cpu)$(busy)"
    # `time` reports the load generator's own user and system CPU seconds.
    { time "$BIN/ringcast-loadtest" --no-progress --json --url "ws://127.0.0.1:$GW_PORT/ws" \
        --id-prefix "$prefix-r$rnd-$(tr -dc 'a-z0-9' <<<"$row")" api --rooms "$ROOMS" --members "$MEMBERS" \
        --duration-secs "$SECS" "$@" >"$WORK/out.json" 2>"$WORK/lt.log" || rc=$?; } 2>"$WORK/took"
    after="$(cpu)$(busy)"
    quiet
    python3 - "$row" "$mode" "$rnd" "$rc" "$WORK/out.json" "$WORK/lt.log" "$before" "$after" "$(cat "$WORK/took")" <<'PY'
import json, sys
row, mode, rnd, rc, path, log, before, after, took = sys.argv[1:]
used = [float(a) - float(b) for a, b in zip(after.split(), before.split())]
machine = used.pop()
used.append(sum(float(t) for t in took.split()))
# What else ran meanwhile: the machine's busy time that none of this run's processes used.
cpu = " / ".join(f"{u:.1f}" for u in used) + f" | {max(machine - sum(used), 0):.1f}"
try:
    r = json.load(open(path))
except Exception as e:
    print(f"| {row} | {mode} | {rnd} | failed (exit {rc}): {open(log).read().strip()[-200:]} | | | | | | | {cpu} |")
    sys.exit()
ms = lambda lat, k: f"{lat[k] / 1000:.1f}"
refused = ", ".join(f"{k} × {v['count']}" for k, v in r["refused"].items()) or "0"
print(f"| {row} | {mode} | {rnd} | {r['calls_per_sec']:,.0f} | **{r['accepted_per_sec']:,.0f}** "
      f"| {r['deliveries_per_sec']:,.0f} | {r['lost']} of {r['expected']:,} | {refused} "
      f"| {ms(r['latency'], 'p50_us')} / {ms(r['latency'], 'p99_us')} ms "
      f"| {ms(r['call_latency'], 'p50_us')} / {ms(r['call_latency'], 'p99_us')} ms | {cpu} |")
if r["problems"]:
    print(f"|  | problems: {'; '.join(r['problems'])[:300]} |")
PY
}

echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), load $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "Each run: $ROOMS rooms × $MEMBERS members through the gateway, $SECS s of calls."
echo
echo "| row | history | round | API calls/s | messages/s accepted | deliveries/s | loss | not 200 | delivery p50 / p99 | call p50 / p99 | CPU s: Redis / node1 / node2 / gateway / loadtest | CPU s: others |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
    modes="off on"; [ $((round % 2)) = 0 ] && modes="on off"
    up 'nohist*:history=0'
    for r in "${ROWS[@]}"; do
        for mode in $modes; do
            args=${r#*|}
            # shellcheck disable=SC2086
            run "${r%%|*}" "$mode" "$round" ${args//@NODE1@/${NODE_PORTS[0]}}
        done
    done
    down
done
echo
echo "Load after: $(cut -d' ' -f1-3 /proc/loadavg)"
