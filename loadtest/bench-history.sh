#!/usr/bin/env bash
# What history costs on the standard fan-out bench: the same two scenarios through the gateway
# with every room keeping history (the default, `history` 500) and with none
# (RINGCAST_ROOM_OPTIONS='*:history=0'), alternating off, on, off, on… so both see the same
# machine. A mode `+ids` also gives every message an id (`fanout --ids`: acks, dedupe), so
# `--modes off,on,on+ids` prices issue 19's history and issue 20's acks in one run. Each pass
# starts a fresh Redis, two nodes and a gateway. Prints a Markdown table.
#
#   loadtest/bench-history.sh [--bin-dir DIR] [--rounds N] [--duration-secs S] [--modes LIST]
# LIST: comma-separated, each off, on, off+ids or on+ids, run in this order every round
# (default off,on). Needs redis-server, curl and python3; builds the release binaries unless
# --bin-dir is given.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="" ROUNDS=2 SECS=10 MODES=off,on
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration-secs) SECS="$2"; shift ;;
        --modes) MODES="$2"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
NAME=bench-history
# shellcheck source=loadtest/bench-lib.sh
. "$ROOT/loadtest/bench-lib.sh"
IFS=, read -r -a MODE_LIST <<<"$MODES"
for mode in "${MODE_LIST[@]}"; do
    case "$mode" in off|on|off+ids|on+ids) ;; *) die "unknown mode $mode (see --help)" ;; esac
done
SCENARIOS=(
    "fan-out 100 members, 4 pub × 2 500/s|fanout --subscribers 100 --rooms 1 --publishers 4 --rate 2500"
    "1 000 rooms × 2 members, 1 000 pub × 60/s|fanout --subscribers 2000 --rooms 1000 --publishers 1000 --rate 60"
)
TICK=$(getconf CLK_TCK)
busy() { # CPU clock ticks all processes of the machine used (user, nice, system; not interrupts)
    awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat
}
waited() { # sets WAITED: CPU clock ticks used by this shell's finished children (mostly the load
    # generator); `times` must run in this shell, not in a pipe's or $( )'s subshell
    times >"$WORK/times"
    WAITED=$(awk -v t="$TICK" 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } printf "%d\n", s * t }' "$WORK/times")
}
echo "| scenario | mode | run | result | loss | p50 | p99 | p99.9 | CPU s: redis, node1, node2, gateway | CPU s: loadtest; others |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
    for mode in "${MODE_LIST[@]}"; do
        if [ "${mode%+ids}" = off ]; then opts='*:history=0'; else opts='*:history=500'; fi
        ids=""
        [ "$mode" = "${mode%+ids}" ] || ids=--ids
        up "$opts"
        for s in "${SCENARIOS[@]}"; do
            label="${s%%|*}" args="${s#*|} $ids"
            waited; before=$(cpu) busy0=$(busy) waited0=$WAITED
            # shellcheck disable=SC2086
            "$BIN/ringcast-loadtest" --no-progress --json --url "ws://127.0.0.1:$GW_PORT/ws" \
                $args --duration-secs "$SECS" >"$WORK/out.json" 2>"$WORK/lt.log" || true
            waited; after=$(cpu) busy1=$(busy) waited1=$WAITED
            python3 - "$label" "$mode" "$round" "$WORK/out.json" "$before" "$after" "$TICK" \
                "$((waited1 - waited0))" "$((busy1 - busy0))" <<'PY'
import json, sys
label, mode, rnd, path, before, after, tick, lt, machine = sys.argv[1:]
tick = int(tick)
servers = [float(a) - float(b) for a, b in zip(after.split(), before.split())]
used = " / ".join(f"{t:.1f}" for t in servers)
# Whatever else kept the cores busy meanwhile (another user's build or tests): a pass with
# more than a second of it did not have the machine to itself.
others = max(0.0, int(machine) / tick - sum(servers) - int(lt) / tick)
used += f" | {int(lt) / tick:.1f}; {others:.1f}"
try:
    r = json.load(open(path))
except Exception as e:
    print(f"| {label} | {mode} | {rnd} | failed: {e} | | | | | {used} |"); sys.exit()
lat = r.get("latency") or {}
f = lambda k: "–" if lat.get(k) is None else f"{lat[k] / 1000:.1f} ms"
acks = r.get("acks")
answers = "" if acks is None else (
    f"; acked {acks['acked']}, unacked {acks['unacked']}"
    + "".join(f", {code} {n}" for code, n in acks["errors"].items()))
# What else went wrong (a subscriber closed as slow, a publisher that failed…), in its words.
counted = ("deliveries lost", "got neither an ack")
answers += "".join(f"; {p}" for p in r.get("problems", []) if not any(c in p for c in counted))
print(f"| {label} | {mode} | {rnd} | **{r['deliveries_per_sec']:,.0f} deliveries/s** "
      f"({r['sent_per_sec']:,.0f} msg/s; offered {r['expected'] / r['duration_secs']:,.0f}/s) "
      f"| {r['lost']} of {r['expected']}{answers} "
      f"| {f('p50_us')} | {f('p99_us')} | {f('p999_us')} | {used} |")
PY
        done
        down
    done
done
