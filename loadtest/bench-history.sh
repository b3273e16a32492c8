#!/usr/bin/env bash
# What history costs on the standard fan-out bench: the same two scenarios through the gateway
# with every room keeping history (the default, `history` 500) and with none
# (RINGCAST_ROOM_OPTIONS='*:history=0'), alternating off, on, off, on… so both see the same
# machine. Each pass starts a fresh Redis, two nodes and a gateway. Prints a Markdown table.
#
#   loadtest/bench-history.sh [--bin-dir DIR] [--rounds N] [--duration-secs S]
# Needs redis-server, curl and python3; builds the release binaries unless --bin-dir is given.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="" ROUNDS=2 SECS=10
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration-secs) SECS="$2"; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
NAME=bench-history
# shellcheck source=loadtest/bench-lib.sh
. "$ROOT/loadtest/bench-lib.sh"
SCENARIOS=(
    "fan-out 100 members, 4 pub × 2 500/s|fanout --subscribers 100 --rooms 1 --publishers 4 --rate 2500"
    "1 000 rooms × 2 members, 1 000 pub × 60/s|fanout --subscribers 2000 --rooms 1000 --publishers 1000 --rate 60"
)
echo "| scenario | history | run | result | loss | p50 | p99 | p99.9 | CPU s: redis, node1, node2, gateway |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
    for mode in off on; do
        if [ "$mode" = off ]; then opts='*:history=0'; else opts='*:history=500'; fi
        up "$opts"
        for s in "${SCENARIOS[@]}"; do
            label="${s%%|*}" args="${s#*|}"
            before=$(cpu)
            # shellcheck disable=SC2086
            "$BIN/ringcast-loadtest" --no-progress --json --url "ws://127.0.0.1:$GW_PORT/ws" \
                $args --duration-secs "$SECS" >"$WORK/out.json" 2>"$WORK/lt.log" || true
            after=$(cpu)
            python3 - "$label" "$mode" "$round" "$WORK/out.json" "$before" "$after" <<'PY'
import json, sys
label, mode, rnd, path, before, after = sys.argv[1:]
used = " / ".join(f"{float(a) - float(b):.1f}" for a, b in zip(after.split(), before.split()))
try:
    r = json.load(open(path))
except Exception as e:
    print(f"| {label} | {mode} | {rnd} | failed: {e} | | | | | |"); sys.exit()
lat = r.get("latency") or {}
f = lambda k: "–" if lat.get(k) is None else f"{lat[k] / 1000:.1f} ms"
print(f"| {label} | {mode} | {rnd} | **{r['deliveries_per_sec']:,.0f} deliveries/s** "
      f"(offered {r['expected'] / r['duration_secs']:,.0f}/s) | {r['lost']} of {r['expected']} "
      f"| {f('p50_us')} | {f('p99_us')} | {f('p999_us')} | {used} |")
PY
        done
        down
    done
done
