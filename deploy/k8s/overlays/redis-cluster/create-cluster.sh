#!/bin/sh
# Makes one Redis Cluster (3 primaries, 1 replica each) of the seeds in RINGCAST_REDIS_CLUSTER
# (redis://host:port,... — the list nodes and gateways get), once: run again, it finds the
# cluster made and changes nothing. Run by the redis-cluster overlay's Job and by the
# redis-cluster-create service of deploy/compose/docker-compose.redis-cluster.yml.
# Needs redis-cli and a POSIX sh (busybox is enough); no password on the Redis nodes. Waits up
# to RINGCAST_CLUSTER_WAIT_SECS (300) for every seed to answer PING and for cluster_state:ok.
set -eu

wait_secs="${RINGCAST_CLUSTER_WAIT_SECS:-300}"
deadline=$(($(date +%s) + wait_secs))

addrs=""
for url in $(printf '%s' "${RINGCAST_REDIS_CLUSTER:?set RINGCAST_REDIS_CLUSTER}" | tr ',' ' '); do
    hostport="${url#*://}"
    hostport="${hostport%%/*}"
    addrs="$addrs $hostport"
done
# shellcheck disable=SC2086 # one word per seed on purpose
set -- $addrs
if [ "$#" -ne 6 ]; then
    echo "expected 6 seeds (3 primaries + 3 replicas), got $#:$addrs" >&2
    exit 1
fi

cli() {
    hp="$1"
    shift
    redis-cli -h "${hp%:*}" -p "${hp##*:}" "$@"
}

# One field of CLUSTER INFO at a node ("" when it does not answer).
info() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }

in_time() {
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "gave up after ${wait_secs}s: $1" >&2
        exit 1
    fi
}

for a in "$@"; do
    until [ "$(cli "$a" ping 2>/dev/null)" = PONG ]; do
        in_time "$a does not answer PING"
        echo "waiting for $a"
        sleep 2
    done
done

if [ "$(info "$1" cluster_state)" = ok ]; then
    echo "cluster_state:ok at $1: the cluster exists, nothing to do"
    exit 0
fi

made=""
for a in "$@"; do
    known="$(info "$a" cluster_known_nodes)"
    if [ "${known:-1}" != 1 ]; then
        made="$a knows $known nodes"
    fi
done
if [ -n "$made" ]; then
    # Created before and not (yet) ok, e.g. right after restarts: wait for it, create nothing.
    echo "the cluster was made before ($made); waiting for cluster_state:ok"
else
    redis-cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
fi

for a in "$@"; do
    until [ "$(info "$a" cluster_state)" = ok ]; do
        in_time "cluster_state at $a is not ok (redis-cli --cluster check $a)"
        sleep 1
    done
done
echo "cluster_state:ok at every seed"
