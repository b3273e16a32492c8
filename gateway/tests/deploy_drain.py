"""Drains one node of a `deploy/local/cluster.sh` cluster under an independent client (python
`websockets`) connected through the cluster's gateway.

Usage: python3 deploy_drain.py ws://HOST:PORT/ws CLUSTER_SH   (RINGCAST_LOCAL_STATE names the
cluster). Exit 0 and "drain ok" when: clients spread over every node talk across nodes; after
`cluster.sh drain NODE` (SIGTERM) exactly that node's clients get close code 1012, everyone else
stays connected; each drained client reconnects through the gateway with the same client_id to
another node and chats across nodes again.
"""
import asyncio
import json
import sys

import websockets

import wsclient

URL, CLUSTER = sys.argv[1], sys.argv[2]
TIMEOUT = wsclient.TIMEOUT
expect = wsclient.expect


async def connect(client_id):
    return await wsclient.connect(URL, client_id)


async def close_code(ws, seconds):
    """Reads (discarding frames) until the server closes; returns its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), seconds)
    except websockets.exceptions.ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None


async def chat(sender, sender_id, receiver, text):
    """`sender` chats `text`; `receiver` gets it (earlier chats are skipped, not matched)."""
    await sender.send(json.dumps({"type": "chat", "content": text}))
    while True:
        msg = await expect(receiver, "chat")
        if msg.get("content") == text:
            assert msg.get("from") == sender_id, msg
            return


async def main():
    # At least two clients on each of three nodes (bounded search over ids); all stay connected.
    by_node = {}
    for i in range(80):
        cid = f"drain-{i}"
        ws, node = await connect(cid)
        by_node.setdefault(node, []).append((cid, ws))
        if len(by_node) == 3 and all(len(v) >= 2 for v in by_node.values()):
            break
    assert len(by_node) == 3 and all(len(v) >= 2 for v in by_node.values()), by_node.keys()
    victim = sorted(by_node)[1]
    drained = by_node[victim]
    others = [c for n, cs in by_node.items() if n != victim for c in cs]
    (o_id, o_ws) = others[0]

    # Across nodes before the drain.
    await chat(drained[0][1], drained[0][0], o_ws, "before drain")

    drain = await asyncio.create_subprocess_exec(CLUSTER, "drain", victim)
    codes = await asyncio.gather(*(close_code(ws, 15) for _, ws in drained))
    assert codes == [1012] * len(drained), ("drained clients saw", codes)
    # Nobody else was closed.
    for cid, ws in others:
        pong = await ws.ping()
        await asyncio.wait_for(pong, TIMEOUT)

    # Reconnect through the gateway with the same ids: another node takes them.
    for idx, (cid, _) in enumerate(drained):
        for attempt in range(50):
            try:
                ws, node = await connect(cid)
                break
            except (OSError, websockets.exceptions.InvalidStatus) as e:
                last = e
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"{cid} could not reconnect: {last!r}")
        assert node != victim, (cid, "reconnected to the drained node", node)
        assert node in by_node, (cid, node)
        drained[idx] = (cid, ws)
        print(f"{cid}: {victim} -> {node}")

    # Across nodes again, both ways.
    await chat(drained[0][1], drained[0][0], o_ws, "after drain")
    await chat(o_ws, o_id, drained[-1][1], "welcome back")

    assert await asyncio.wait_for(drain.wait(), 30) == 0, "cluster.sh drain failed"
    await asyncio.gather(*(ws.close() for _, ws in drained + others))
    print("drain ok")


asyncio.run(main())
