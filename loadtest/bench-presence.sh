#!/usr/bin/env bash
# What presence costs (issue 21), through the gateway to two nodes on Redis. Passes alternate
# presence off (`--presence=false` on the nodes) and on (the default): off, on, off, on…, each
# on a fresh Redis, two nodes and a gateway, so both modes see the same machine. Per pass:
#   join     M members connect and join one room (256 in flight), then leave: joins/s; J times
#            per pass (a run lasts ~1 s, so one alone cannot resolve a few per cent)
#   churn    W workers × C cycles of connect → join → leave+close or drop, over 10 rooms: cycles/s
#   presence (on only) M members join, then one client asks `presence` back to back for S s:
#            answer latency, count, truncated
# The bench rooms have `announce=off` in both modes (RINGCAST_ROOM_OPTIONS='bench*:announce=off'),
# or M joins would send each other M²/2 `user_joined`; churn's rooms announce. Prints a Markdown
# table (CPU s: what each server process used from the start of a run until the nodes hold no
# connection, Redis no presence hash and the servers are idle), then on ÷ off per round and
# server CPU per cycle/join.
#
#   loadtest/bench-presence.sh [--bin-dir DIR] [--rounds N] [--members M] [--duration-secs S]
#                              [--workers W] [--cycles C] [--join-repeats J] [--on-first]
#                              (--on-first: on, off, on, off…; J defaults to 5)
# Needs redis-server, curl and python3; builds the release binaries unless --bin-dir is given.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="" ROUNDS=2 MEMBERS=10000 SECS=10 WORKERS=100 CYCLES=300 MODES="off on" REPEATS=5
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --members) MEMBERS="$2"; shift ;;
        --duration-secs) SECS="$2"; shift ;;
        --workers) WORKERS="$2"; shift ;;
        --cycles) CYCLES="$2"; shift ;;
        --join-repeats) REPEATS="$2"; shift ;;
        --on-first) MODES="on off" ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
NAME=bench-presence
# shellcheck source=loadtest/bench-lib.sh
. "$ROOT/loadtest/bench-lib.sh"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

presence_keys() { # Redis presence hashes: per room, per room and node instance
    local r n
    r=$(redis-cli -p "$REDIS_PORT" --scan --pattern '*:pr' | wc -l)
    n=$(redis-cli -p "$REDIS_PORT" --scan --pattern '*:pn:*' | wc -l)
    echo "$r / $n"
}
settle() { # until the last run is gone: no connection on either node, no presence hash (the
    # nodes remove a closed connection from presence just after they stop counting it), ≤ 30 s
    for _ in $(seq 1 300); do
        local busy=0
        for p in "${NODE_PORTS[@]}"; do
            curl -s --max-time 1 "http://127.0.0.1:$p/stats" | grep -q '"local_connections":0[,}]' || busy=1
        done
        [ "$busy" = 0 ] && [ "$(presence_keys)" = "0 / 0" ] && return 0
        sleep 0.1
    done
    echo "warning: 30 s after a run the nodes still hold connections or Redis presence hashes" >&2
}
run() { # run KIND MODE ROUND LOADTEST-ARGS...: one loadtest run through the gateway, one table row
    # (ROUND may carry the repeat: 2.3 is round 2's third run of its kind)
    local kind="$1" mode="$2" rnd="$3"; shift 3
    local before after rc=0
    before=$(cpu)
    "$BIN/ringcast-loadtest" --no-progress --json --url "ws://127.0.0.1:$GW_PORT/ws" "$@" \
        >"$WORK/out.json" 2>"$WORK/lt.log" || rc=$?
    settle
    idle
    after=$(cpu)
    python3 - "$kind" "$mode" "$rnd" "$rc" "$WORK/out.json" "$WORK/lt.log" "$before" "$after" \
        "$(presence_keys)" "$RESULTS" <<'PY'
import json, sys
kind, mode, rnd, rc, path, log, before, after, keys, results = sys.argv[1:]
used = " / ".join(f"{float(a) - float(b):.1f}" for a, b in zip(after.split(), before.split()))
try:
    r = json.load(open(path))
except Exception as e:
    r = {"problems": [f"no result ({e}): {open(log).read().strip()[-300:]}"]}
ms = lambda lat, k: "–" if not lat or lat.get(k) is None else f"{lat[k] / 1000:.1f} ms"
lat, label, figure, result, units = {}, kind, None, "failed", 0
if kind == "churn" and "cycles_per_sec" in r:
    label = f"churn, {r['workers']} workers × {r['cycles_per_worker']} cycles"
    figure, lat, units = r["cycles_per_sec"], r["cycle_latency"], r["completed"]
    result = f"**{figure:,.0f} cycles/s** ({r['completed']} done, {r['failed']} failed)"
elif kind == "join" and "joins_per_sec" in r:
    label = f"{r['members']:,} members join one room"
    figure, units = r["joins_per_sec"], r["members"]
    result = f"**{figure:,.0f} joins/s** ({r['join_secs']:.2f} s)"
elif kind == "presence" and r.get("answers"):
    label = f"`presence` of {r['members']:,} members, {r['askers']} asker back to back"
    figure, lat = r["latency"]["p99_us"] / 1000, r["latency"]
    result = (f"**p99 {figure:.1f} ms**, {r['answers_per_sec']:,.0f} answers/s, count {r['count']}, "
              f"{r['listed']} listed, truncated {str(r['truncated']).lower()}")
problems = "; ".join(r.get("problems") or []) or ("" if rc == "0" else f"exit {rc}")
if problems:
    result += f" — {problems[:200]}"
print(f"| {label} | {mode} | {rnd} | {result} | {ms(lat, 'p50_us')} | {ms(lat, 'p99_us')} "
      f"| {ms(lat, 'max_us')} | {used} | {keys} |", flush=True)
with open(results, "a") as f:
    cpu = sum(float(a) - float(b) for a, b in zip(after.split(), before.split()))
    f.write(json.dumps({"kind": kind, "mode": mode, "round": rnd, "figure": figure,
                        "cpu": cpu, "units": units}) + "\n")
PY
}

echo "| run | presence | pass | result | p50 | p99 | max | CPU s: redis / node1 / node2 / gateway | presence hashes left: room / node |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        flags=(); if [ "$mode" = off ]; then flags=(--presence=false); fi
        up 'bench*:announce=off' "${flags[@]}"
        stats=$(printf 'http://127.0.0.1:%s/stats,' "${NODE_PORTS[@]}")
        for rep in $(seq 1 "$REPEATS"); do
            run join "$mode" "$round.$rep" presence --members "$MEMBERS" --askers 0
        done
        run churn "$mode" "$round" churn --workers "$WORKERS" --cycles "$CYCLES" --rooms 10 \
            --stats-url "${stats%,}"
        if [ "$mode" = on ]; then
            run presence "$mode" "$round" presence --members "$MEMBERS" --duration-secs "$SECS"
        fi
        down
    done
done
python3 - "$RESULTS" <<'PY'
import json, sys
import statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
for kind, what, unit in (("churn", "churn cycles/s", "cycle"), ("join", "joins/s", "join")):
    # Per pass (a round's runs of one mode): everything done over the time it took.
    pairs = []
    for rnd in sorted({r["round"].split(".")[0] for r in rows}, key=int):
        got = {}
        for mode in ("off", "on"):
            runs = [r for r in rows if r["kind"] == kind and r["mode"] == mode
                    and r["round"].split(".")[0] == rnd and r["figure"]]
            if runs:
                got[mode] = sum(r["units"] for r in runs) / sum(r["units"] / r["figure"] for r in runs)
        if got.get("off") and got.get("on"):
            pairs.append(got["on"] / got["off"])
    if pairs:
        med = statistics.median(pairs)
        print(f"- {what}, on ÷ off per round: " + "; ".join(f"{p:.2f}" for p in pairs)
              + f"; median {med:.2f} (target ≥ 0.95: {'met' if med >= 0.95 else 'not met'})")
    # Server CPU (Redis + nodes + gateway) per cycle or join, summed over the passes of a mode.
    per = {}
    for mode in ("off", "on"):
        done = [r for r in rows if r["kind"] == kind and r["mode"] == mode and r["units"]]
        if done:
            per[mode] = sum(r["cpu"] for r in done) / sum(r["units"] for r in done) * 1e6
    if len(per) == 2:
        print(f"- server CPU per {unit}: off {per['off']:.0f} µs, on {per['on']:.0f} µs "
              f"({per['on'] / per['off'] - 1:+.0%})")
p99 = [r["figure"] for r in rows if r["kind"] == "presence" and r["figure"] is not None]
if p99:
    print(f"- `presence` p99: " + "; ".join(f"{p:.1f} ms" for p in p99)
          + f" (target ≤ 50 ms: {'met' if max(p99) <= 50 else 'not met'} in the worst pass)")
PY
