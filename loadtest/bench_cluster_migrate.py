#!/usr/bin/env python3
"""Moves one room's hash slot to another Redis Cluster primary while a stream runs in the room,
and counts what the room's members saw. Run by loadtest/bench-cluster.sh against the two nodes
it started on a Redis Cluster; needs python `websockets` (any version from 10).

One publisher (on the first node) sends numbered room messages with ids at --rate, sending again
after 50 ms whatever was refused; --subscribers members join the room alternately on each node.
After --before-secs of stream the room's slot moves the documented way (CLUSTER SETSLOT
IMPORTING on the new owner, MIGRATING on the old, CLUSTER GETKEYSINSLOT + MIGRATE until the slot
is empty, SETSLOT NODE on the new owner, the old owner, then every other primary), while
`PUBSUB SHARDNUMSUB {PREFIX:room:ROOM}` is polled on the new owner until every node subscribes
there. The stream runs --after-secs more; then the publisher stops and the members get up to
--drain-secs to receive the rest. Every step is bounded; the script stops by itself.

Prints one JSON object: the migration's timings, the publisher's counts (sent, acked, refused by
code, resent, repeat acks) and the members' (missing = acked but never received, duplicated,
out of order by offset, history_reset events, sequence inversions), and the nodes' gap-fill and
history-reset counters from /metrics.
"""
import argparse
import asyncio
import json
import re
import socket
import sys
import time
import urllib.request

import websockets


# --- a minimal RESP client (one connection, one command at a time) --------------------------
class Resp:
    def __init__(self, port, timeout=5.0):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"redis {self.port} closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"redis {self.port} closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ValueError(f"unexpected RESP reply {line!r}")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        reply = self._read()
        if isinstance(reply, RuntimeError):
            raise RuntimeError(f"redis {self.port} {args[0]} {args[1] if len(args) > 1 else ''}: {reply}")
        return reply


def primaries(port):
    """{node id: (port, [(first, last) slot ranges])} of the cluster's primaries."""
    out = {}
    for line in Resp(port).call("CLUSTER", "NODES").splitlines():
        f = line.split()
        if "master" not in f[2].split(",") or "fail" in f[2] or len(f) < 9:
            continue  # a replica, a failed primary, or a primary without slots
        addr = f[1].split("@")[0]
        ranges = []
        for r in f[8:]:
            if r.startswith("["):
                continue  # a slot being migrated or imported
            a, _, b = r.partition("-")
            ranges.append((int(a), int(b or a)))
        out[f[0]] = (int(addr.rsplit(":", 1)[1]), ranges)
    return out


def metrics(url):
    """ringcast_node_gap_filled_total and ringcast_node_history_resets_total of one node."""
    got = {}
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except Exception as e:  # noqa: BLE001 (reported, not fatal)
        return {"error": str(e)}
    for name in ("ringcast_node_gap_filled_total", "ringcast_node_history_resets_total"):
        got[name] = sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
    return got


# --- the migration, in a thread (blocking sockets) -------------------------------------------
def migrate(seed_port, slot, times, log):
    nodes = primaries(seed_port)
    src = next(i for i, (_, rs) in nodes.items() if any(a <= slot <= b for a, b in rs))
    others = sorted((i for i in nodes if i != src), key=lambda i: nodes[i][0])
    dst = others[0]
    sp, dp = nodes[src][0], nodes[dst][0]
    times["source_port"], times["target_port"] = sp, dp
    s, d = Resp(sp, timeout=10), Resp(dp, timeout=10)
    times["start"] = time.monotonic()
    d.call("CLUSTER", "SETSLOT", slot, "IMPORTING", src)
    s.call("CLUSTER", "SETSLOT", slot, "MIGRATING", dst)
    moved = 0
    while True:
        keys = s.call("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if not keys:
            break
        s.call("MIGRATE", "127.0.0.1", dp, "", 0, 10000, "KEYS", *keys)
        moved += len(keys)
    times["keys_moved"] = moved
    times["keys_done"] = time.monotonic()
    d.call("CLUSTER", "SETSLOT", slot, "NODE", dst)
    s.call("CLUSTER", "SETSLOT", slot, "NODE", dst)
    for i in others[1:]:
        Resp(nodes[i][0]).call("CLUSTER", "SETSLOT", slot, "NODE", dst)
    times["owner_set"] = time.monotonic()
    log(f"slot {slot}: {moved} keys moved {sp} -> {dp}")


def poll_subscribed(port, channel, want, deadline, times, key):
    r = Resp(port)
    seen = []
    while time.monotonic() < deadline:
        n = r.call("PUBSUB", "SHARDNUMSUB", channel)[1]
        if not seen or seen[-1][1] != n:
            seen.append((time.monotonic(), n))
        if n >= want and "owner_set" in times:
            times[key] = time.monotonic()
            break
        time.sleep(0.005)
    return seen


# --- clients ---------------------------------------------------------------------------------
class Member:
    def __init__(self):
        self.arrivals = []  # (seq, offset, epoch)
        self.resets = 0
        self.ack = None
        self.errors = {}


async def join(url, client_id, room):
    ws = await websockets.connect(f"{url}?client_id={client_id}", max_size=None, ping_interval=None,
                                  open_timeout=10, close_timeout=1)
    await ws.send(json.dumps({"type": "join_room", "room": room}))
    while True:
        e = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if e.get("event") == "user_joined" and e.get("user_id") == client_id:
            return ws, e


async def listen(ws, room, publisher, m, stop):
    try:
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.2)
            except asyncio.TimeoutError:
                continue
            e = json.loads(raw)
            ev = e.get("event")
            if ev == "chat" and e.get("room") == room and e.get("from") == publisher:
                c = e.get("content")
                if isinstance(c, dict) and "seq" in c:
                    m.arrivals.append((c["seq"], e.get("offset"), e.get("epoch")))
            elif ev == "history_reset" and e.get("room") == room:
                m.resets += 1
            elif ev == "error":
                m.errors[e.get("code")] = m.errors.get(e.get("code"), 0) + 1
    except websockets.ConnectionClosed as e:
        m.errors[f"closed {e.code}"] = m.errors.get(f"closed {e.code}", 0) + 1


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", required=True, help="ws://HOST:PORT/ws of each node, comma-separated")
    ap.add_argument("--metrics", default="", help="http://HOST:PORT/metrics of each node, comma-separated")
    ap.add_argument("--redis-port", type=int, required=True, help="any cluster member")
    ap.add_argument("--room", default="migrate-room")
    ap.add_argument("--prefix", default="ringcast")
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--before-secs", type=float, default=4.0)
    ap.add_argument("--after-secs", type=float, default=6.0)
    ap.add_argument("--drain-secs", type=float, default=5.0)
    ap.add_argument("--migrate-timeout-secs", type=float, default=20.0)
    a = ap.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    urls = a.nodes.split(",")
    channel = f"{{{a.prefix}:room:{a.room}}}"
    slot = Resp(a.redis_port).call("CLUSTER", "KEYSLOT", channel)
    murls = [u for u in a.metrics.split(",") if u]
    before_metrics = [metrics(u) for u in murls]

    stop = asyncio.Event()
    members, tasks = [], []
    for i in range(a.subscribers):
        m = Member()
        ws, ack = await join(urls[i % len(urls)], f"mig-s{i}", a.room)
        m.ack = ack
        members.append((ws, m))
        tasks.append(asyncio.create_task(listen(ws, a.room, "mig-p", m, stop)))
    pub, _ = await join(urls[0], "mig-p", a.room)

    acked, refused, repeat = {}, {}, 0
    pending = []  # (due, seq) to send again
    sent_at = {}
    resent = 0

    async def pub_reader():
        nonlocal repeat
        try:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(pub.recv(), 0.2)
                except asyncio.TimeoutError:
                    continue
                e = json.loads(raw)
                mid = e.get("id")
                if not mid or not mid.startswith("m"):
                    continue
                seq = int(mid[1:])
                if e.get("event") == "ack":
                    if seq in acked:
                        repeat += 1
                    acked[seq] = e.get("offset")
                elif e.get("event") == "error":
                    refused[e.get("code")] = refused.get(e.get("code"), 0) + 1
                    pending.append((time.monotonic() + 0.05, seq))
        except websockets.ConnectionClosed:
            pass

    reader = asyncio.create_task(pub_reader())
    sending = asyncio.Event()
    sending.set()

    async def publisher():
        nonlocal resent
        seq, t0 = 0, time.monotonic()
        while sending.is_set():
            now = time.monotonic()
            due = [p for p in pending if p[0] <= now]
            if due:
                pending.remove(due[0])
                s = due[0][1]
                resent += 1
            else:
                s = seq
                seq += 1
                sent_at[s] = now
            await pub.send(json.dumps({"type": "room_message", "room": a.room, "id": f"m{s}",
                                       "content": {"seq": s}}))
            t0 += 1.0 / a.rate
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        # what is still refused goes out once more, for at most a second
        end = time.monotonic() + 1.0
        while pending and time.monotonic() < end:
            _, s = pending.pop(0)
            resent += 1
            await pub.send(json.dumps({"type": "room_message", "room": a.room, "id": f"m{s}",
                                       "content": {"seq": s}}))
            await asyncio.sleep(0.05)

    ptask = asyncio.create_task(publisher())
    await asyncio.sleep(a.before_secs)
    times = {}
    deadline = time.monotonic() + a.migrate_timeout_secs
    seq_at_start = len(sent_at)
    migration = asyncio.to_thread(migrate, a.redis_port, slot, times, log)
    # The target is only known once migrate() has read the topology: poll from there.
    async def poll():
        while "target_port" not in times and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        if "target_port" not in times:
            return []
        return await asyncio.to_thread(poll_subscribed, times["target_port"], channel, len(urls),
                                       deadline, times, "subscribed_on_target")
    mig_error = None
    try:
        _, seen = await asyncio.wait_for(asyncio.gather(migration, poll()), a.migrate_timeout_secs + 5)
    except Exception as e:  # noqa: BLE001 (reported)
        mig_error, seen = str(e), []
    seq_at_end = len(sent_at)
    await asyncio.sleep(a.after_secs)
    sending.clear()
    await ptask
    # last acks
    end = time.monotonic() + a.drain_secs
    while len(acked) < len(sent_at) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    # last deliveries: until every member has every acked message, or --drain-secs
    end = time.monotonic() + a.drain_secs
    while time.monotonic() < end:
        if all(set(acked) <= {s for s, _, _ in m.arrivals} for _, m in members):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    reader.cancel()
    for ws, _ in members:
        await ws.close()
    await pub.close()

    tot = {"missing": 0, "duplicated": 0, "out_of_order": 0, "seq_inversions": 0, "history_reset": 0,
           "received": 0, "members_missing": 0, "epochs": 0}
    errors = {}
    for _, m in members:
        seqs = [s for s, _, _ in m.arrivals]
        missing = len(set(acked) - set(seqs))
        tot["missing"] += missing
        tot["members_missing"] += missing > 0
        tot["duplicated"] += len(seqs) - len(set(seqs))
        tot["received"] += len(seqs)
        tot["history_reset"] += m.resets
        tot["epochs"] = max(tot["epochs"], len({e for _, _, e in m.arrivals}))
        last_off, top_seq = None, -1
        for s, off, ep in m.arrivals:
            if off is not None and last_off is not None and off <= last_off:
                tot["out_of_order"] += 1
            last_off = off if off is not None else last_off
            if s < top_seq:
                tot["seq_inversions"] += 1
            top_seq = max(top_seq, s)
        for k, v in m.errors.items():
            errors[k] = errors.get(k, 0) + v
    rel = lambda k: None if k not in times else round((times[k] - times["start"]) * 1000, 1)  # noqa: E731
    out = {
        "room": a.room, "slot": slot, "channel": channel,
        "source_port": times.get("source_port"), "target_port": times.get("target_port"),
        "keys_moved": times.get("keys_moved"),
        "ms_keys_moved": rel("keys_done"), "ms_owner_set": rel("owner_set"),
        "ms_subscribed_on_target": rel("subscribed_on_target"),
        "ms_subscribed_after_owner_set": None if "subscribed_on_target" not in times or "owner_set" not in times
        else round((times["subscribed_on_target"] - times["owner_set"]) * 1000, 1),
        "shardnumsub_on_target": [[round((t - times.get("start", t)) * 1000, 1), n] for t, n in seen],
        "migration_error": mig_error,
        "rate": a.rate, "subscribers": a.subscribers,
        "sent": len(sent_at), "sent_during_migration": seq_at_end - seq_at_start,
        "acked": len(acked), "unacked": len(set(sent_at) - set(acked)),
        "refused": refused, "resent": resent, "repeat_acks": repeat,
        "members": tot, "member_errors": errors,
        "nodes_before": before_metrics, "nodes_after": [metrics(u) for u in murls],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
