"""The protocol scenario, driven by an independent client (python `websockets`) through a
ringcast gateway. Usage: python3 scenario.py ws://HOST:PORT/ws [http://NODE/stats ...].
Exit 0 = every check held. With node /stats URLs, checks each node holds one of the clients.

Clients are chosen so that they land on different nodes (each `welcome` says which), so every
delivery below crosses nodes through the bus as well as the gateway.
"""
import asyncio
import json
import sys
import urllib.request

import wsclient

URL = sys.argv[1]
STATS = sys.argv[2:]
TIMEOUT = wsclient.TIMEOUT
expect = wsclient.expect


async def connect(client_id):
    return await wsclient.connect(URL, client_id)


async def silence(ws, event, seconds=0.5):
    """Asserts no `event` arrives within `seconds`."""
    try:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), seconds))
            assert msg.get("event") != event, ("unexpected", msg)
    except asyncio.TimeoutError:
        pass


async def main():
    # Three clients on three different nodes (bounded search over ids).
    picked, nodes = [], set()
    for i in range(60):
        ws, node = await connect(f"py-{i}")
        if node in nodes:
            await ws.close()
            continue
        picked.append((f"py-{i}", ws))
        nodes.add(node)
        if len(picked) == 3:
            break
    assert len(picked) == 3, f"clients landed on only {nodes}"
    (a_id, a), (b_id, b), (c_id, c) = picked
    for stats_url in STATS:
        with urllib.request.urlopen(stats_url, timeout=TIMEOUT) as resp:
            stats = json.load(resp)
        assert stats["local_connections"] >= 1, ("a node holds no client", stats_url, stats)

    # chat: everyone else, never echoed
    await a.send(json.dumps({"type": "chat", "content": "hi all"}))
    await expect(b, "chat", **{"from": a_id, "content": "hi all"})
    await expect(c, "chat", **{"from": a_id, "content": "hi all"})
    await silence(a, "chat")

    # rooms: join (joiner included), members-only delivery, not_in_room, leave
    await a.send(json.dumps({"type": "join_room", "room": "r1"}))
    await expect(a, "user_joined", user_id=a_id, room="r1")
    await b.send(json.dumps({"type": "join_room", "room": "r1"}))
    await expect(b, "user_joined", user_id=b_id, room="r1")
    await expect(a, "user_joined", user_id=b_id, room="r1")
    await b.send(json.dumps({"type": "room_message", "room": "r1", "content": "room hi"}))
    await expect(a, "chat", **{"from": b_id, "room": "r1", "content": "room hi"})
    await expect(b, "chat", **{"from": b_id, "room": "r1", "content": "room hi"})
    await silence(c, "chat")
    await c.send(json.dumps({"type": "room_message", "room": "r1", "content": "x"}))
    await expect(c, "error", code="not_in_room")
    await b.send(json.dumps({"type": "leave_room", "room": "r1"}))
    await expect(a, "user_left", user_id=b_id, room="r1")
    await expect(b, "user_left", user_id=b_id, room="r1")

    # direct (and the seed's target_user alias), target_offline
    await a.send(json.dumps({"type": "direct_message", "target": c_id, "content": "psst"}))
    await expect(c, "direct_message", **{"from": a_id, "content": "psst"})
    await c.send(json.dumps({"type": "direct_message", "target_user": a_id, "content": "re"}))
    await expect(a, "direct_message", **{"from": c_id, "content": "re"})
    await a.send(json.dumps({"type": "direct_message", "target": "nobody", "content": "x"}))
    await expect(a, "error", code="target_offline")

    # ping, and a malformed message that does not close the connection
    await a.send(json.dumps({"type": "ping"}))
    await expect(a, "pong")
    await a.send("{not json")
    await expect(a, "error", code="bad_json")
    await a.send(json.dumps({"type": "ping"}))
    await expect(a, "pong")

    # connect / disconnect notices
    d, _ = await connect("py-late")
    await expect(a, "user_connected", user_id="py-late")
    await d.close()
    await expect(a, "user_disconnected", user_id="py-late")

    for ws in (a, b, c):
        await ws.close()
    print("scenario ok")


asyncio.run(main())
