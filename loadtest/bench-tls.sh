#!/usr/bin/env bash
# What TLS at the gateway costs (issue 25): the same Redis and two nodes behind two gateways on
# the same binary, one plain (ws://) and one with --tls-cert/--tls-key (wss://, an ECDSA P-256
# certificate from a CA made here with openssl), and nginx terminating TLS with the same
# certificate (loadtest/nginx.conf, `listen … ssl`), measured in the same run, passes
# alternating ws, wss, nginx-wss, ws, wss, nginx-wss…:
#   connect  N connections, 64 in flight, held 1 s: connects/s and connect latency (a full TLS
#            handshake each: the load generator never resumes a session), and the gateway's
#            memory per held connection (RSS growth; first round only: later rounds meet a heap
#            already grown)
#   fanout   1 000 members of one room, 4 publishers × R msg/s for 10 s: delivery latency
# Prints a Markdown table; with --out FILE also writes it between the bench-tls markers there.
#
#   loadtest/bench-tls.sh [--bin-dir DIR] [--rounds N] [--connections N] [--fanout-rate R]
#                         [--out FILE]
# Needs redis-server, nginx, curl, openssl and python3; builds the release binaries unless
# --bin-dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="" ROUNDS=2 CONNS=5000 RATE=250 OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --connections) CONNS="$2"; shift ;;
        --fanout-rate) RATE="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
command -v openssl >/dev/null || { echo "error: openssl not found (apt-get install -y openssl)" >&2; exit 1; }
NGINX="$(command -v nginx || true)"
[ -n "$NGINX" ] || { [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx; } || true
[ -n "$NGINX" ] || { echo "error: nginx not found (apt-get install -y nginx)" >&2; exit 1; }
NAME=bench-tls
# shellcheck source=loadtest/bench-lib.sh
. "$ROOT/loadtest/bench-lib.sh"
LT="$BIN/ringcast-loadtest"
log() { printf '==> %s\n' "$*" >&2; }

# A CA and a server certificate for 127.0.0.1, as an operator's would be (ECDSA P-256).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$WORK/tls.key" -out "$WORK/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/san.ext" -out "$WORK/tls.crt" 2>/dev/null

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# run MODE KIND URL LOADTEST-ARGS...: one bounded loadtest run; appends MODE KIND rc JSON-file.
run() {
    local mode="$1" kind="$2" url="$3" round="$4"; shift 4
    local out="$WORK/$kind-$mode-$round.json" rc=0
    log "$kind over $mode (round $round): ringcast-loadtest --url $url $*"
    timeout -s INT 90 "$LT" --no-progress --json --tls-ca "$WORK/ca.pem" --url "$url" \
        --id-prefix "$kind-$mode-$round" "$@" >"$out" 2>"$WORK/$kind-$mode-$round.err" || rc=$?
    [ "$rc" -eq 0 ] || log "exit $rc: $(tail -3 "$WORK/$kind-$mode-$round.err" | tr '\n' ' ')"
    printf '%s\t%s\t%s\t%s\n' "$mode" "$kind" "$rc" "$out" >>"$RESULTS"
}

# The built-in defaults, spelled out (bench-lib passes them as RINGCAST_ROOM_OPTIONS).
up "*:post=members,announce=on"
TLS_PORT=$(free_port)
nodes=()
for i in 1 2; do nodes+=(--node "node$i=127.0.0.1:${NODE_PORTS[$((i - 1))]}"); done
"$BIN/ringcast-gateway" --listen "127.0.0.1:$TLS_PORT" --tls-cert "$WORK/tls.crt" \
    --tls-key "$WORK/tls.key" "${nodes[@]}" >"$WORK/gateway-tls.log" 2>&1 &
PIDS+=("$!")
# bench-lib's up started Redis, node1, node2 and the plain gateway, in that order.
WS_PID=${PIDS[3]} WSS_PID=${PIDS[4]}
for _ in $(seq 1 200); do
    curl -s -o /dev/null --max-time 1 --cacert "$WORK/ca.pem" "https://127.0.0.1:$TLS_PORT/healthz" && break
    sleep 0.05
done
# nginx with the same certificate in front of the same nodes.
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
sed -e "s|@PREFIX@|$WORK/nginx|g" \
    -e "s|@LISTEN@ backlog=4096;|127.0.0.1:$NGINX_PORT ssl backlog=4096; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key; ssl_protocols TLSv1.2 TLSv1.3;|" \
    -e "s|@SERVERS@|server 127.0.0.1:${NODE_PORTS[0]}; server 127.0.0.1:${NODE_PORTS[1]};|" \
    loadtest/nginx.conf >"$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
PIDS+=("$!")
for _ in $(seq 1 200); do
    curl -s -o /dev/null --max-time 1 --cacert "$WORK/ca.pem" "https://127.0.0.1:$NGINX_PORT/healthz" && break
    sleep 0.05
done
WS="ws://127.0.0.1:$GW_PORT/ws"
WSS="wss://127.0.0.1:$TLS_PORT/ws"
NGINX_WSS="wss://127.0.0.1:$NGINX_PORT/ws"
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
for round in $(seq 1 "$ROUNDS"); do
    for mode in ws wss nginx-wss; do
        case "$mode" in
            ws) url=$WS pid=(--server-pid "$WS_PID") ;;
            wss) url=$WSS pid=(--server-pid "$WSS_PID") ;;
            nginx-wss) url=$NGINX_WSS pid=() ;; # its workers are other processes
        esac
        idle
        run "$mode" connect "$url" "$round" --connect-concurrency 64 \
            connections --connections "$CONNS" --connect-rate 0 --hold-secs 1 "${pid[@]}"
        idle
        run "$mode" fanout "$url" "$round" \
            fanout --subscribers 1000 --rooms 1 --publishers 4 --rate "$RATE" --duration-secs 10
    done
done

export RESULTS STARTED CONNS RATE OUT
export MACHINE="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
export COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - <<'PY'
import json, os

rows, failed = [], []
for line in open(os.environ["RESULTS"]):
    mode, kind, rc, path = line.rstrip("\n").split("\t")
    try:
        v = json.load(open(path))
    except Exception:
        v = {}
    if rc != "0" or not v:
        failed.append(f"{kind} over {mode} (exit {rc})")
        continue
    rows.append((mode, kind, v))

def ms(lat, key):
    return f"{lat[key] / 1000:.1f} ms" if lat and lat.get("count") else "–"

def num(x):
    return f"{x:,.0f}".replace(",", " ")

out = [
    f"Run {os.environ['STARTED']} on {os.environ['MACHINE']}, commit {os.environ['COMMIT']}: "
    "Redis, two nodes, a plain gateway, a TLS gateway (same binary, ECDSA P-256) and nginx "
    "terminating TLS with the same certificate, passes alternating; command "
    "`loadtest/bench-tls.sh`.",
    "",
    "| scenario | over | result | lost / failed | p50 | p99 | p99.9 | max |",
    "|---|---|---|---|---|---|---|---|",
]
for mode, kind, v in rows:
    if kind == "connect":
        lat = v.get("connect_latency")
        result = f"**{num(v['connects_per_sec'])} connects/s**, {num(v['opened'])} opened"
        per = v.get("server_bytes_per_connection")
        if per is not None:
            result += f"; gateway {num(per)} B/conn"
        loss = f"{v['failed']} failed, {v['dropped_while_held']} dropped"
        what = f"{num(int(os.environ['CONNS']))} connects, 64 in flight"
    else:
        lat = v.get("latency")
        result = f"{num(v['deliveries_per_sec'])} deliveries/s"
        loss = f"{num(v['lost'])} of {num(v['expected'])}"
        what = f"fan-out 1 000 members, 4 pub × {os.environ['RATE']}/s"
    over = "nginx, wss://" if mode == "nginx-wss" else f"gateway, {mode}://"
    out.append(f"| {what} | {over} | {result} | {loss} | {ms(lat, 'p50_us')} | "
               f"{ms(lat, 'p99_us')} | {ms(lat, 'p999_us')} | {ms(lat, 'max_us')} |")
if failed:
    out += ["", "Failed runs: " + "; ".join(failed)]
table = "\n".join(out)
print(table)
dest = os.environ.get("OUT")
if dest:
    text = open(dest).read()
    start, end = "<!-- bench-tls:start -->", "<!-- bench-tls:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + start + "\n" + table + "\n" + end + "\n"
    open(dest, "w").write(text)
raise SystemExit(1 if failed else 0)
PY
