#!/usr/bin/env python3
"""The whole client protocol table, driven by an independent client (python `websockets`).

Usage: protocol_scenario.py ws://HOST:PORT/ws [--nodes-stats URL,...]
Exits 0 when every step saw exactly what the protocol promises, 1 with the failing step otherwise.
Written against the seed tutorial's protocol: a tutorial client must work unchanged.
"""
import asyncio
import json
import sys
import uuid

import websockets

TIMEOUT = 5.0


class Failure(Exception):
    pass


async def recv(ws, timeout=TIMEOUT):
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise Failure("no frame within %.1fs" % timeout)
    return json.loads(raw)


async def expect(ws, want, who, extra=()):
    """The next frame is `want`, plus exactly the keys named in `extra` (history's `offset` and
    `epoch`, which a tutorial client ignores); returns it."""
    got = await recv(ws)
    rest = {k: v for k, v in got.items() if k not in extra}
    if rest != want or any(k not in got for k in extra):
        raise Failure("%s: expected %s (and %s), got %s" % (who, want, list(extra), got))
    return got


NUMBERED = ("offset", "epoch")


async def silence(ws, who, timeout=0.4):
    try:
        got = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise Failure("%s: expected nothing, got %s" % (who, got))


async def connect(base, cid):
    ws = await websockets.connect("%s?client_id=%s" % (base, cid), max_size=2**20)
    welcome = await recv(ws)
    if welcome.get("event") != "welcome" or welcome.get("client_id") != cid or "node" not in welcome:
        raise Failure("%s: bad welcome %s" % (cid, welcome))
    return ws


async def main(base):
    tag = uuid.uuid4().hex[:6]
    alice_id, bob_id, carol_id = "alice-" + tag, "bob-" + tag, "carol-" + tag
    room = "room-" + tag

    alice = await connect(base, alice_id)
    bob = await connect(base, bob_id)
    await expect(alice, {"event": "user_connected", "user_id": bob_id}, "alice sees bob connect")
    carol = await connect(base, carol_id)
    await expect(alice, {"event": "user_connected", "user_id": carol_id}, "alice sees carol connect")
    await expect(bob, {"event": "user_connected", "user_id": carol_id}, "bob sees carol connect")

    # Anonymous connection: the server generates an id of 16+ characters.
    anon = await websockets.connect(base)
    w = await recv(anon)
    if w.get("event") != "welcome" or len(w.get("client_id", "")) < 16:
        raise Failure("anonymous welcome: %s" % w)
    anon_id = w["client_id"]
    for ws, who in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        await expect(ws, {"event": "user_connected", "user_id": anon_id}, who + " sees anon")
    await anon.close()
    for ws, who in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        await expect(ws, {"event": "user_disconnected", "user_id": anon_id}, who + " sees anon leave")

    # Chat: every other client, no echo.
    await alice.send(json.dumps({"type": "chat", "content": "hello all"}))
    want = {"event": "chat", "from": alice_id, "content": "hello all"}
    await expect(bob, want, "bob gets chat")
    await expect(carol, want, "carol gets chat")
    await silence(alice, "chat is not echoed")

    # Join: every member including the joiner.
    await alice.send(json.dumps({"type": "join_room", "room": room}))
    ack = await expect(alice, {"event": "user_joined", "user_id": alice_id, "room": room},
                       "alice join ack", NUMBERED)
    if ack["offset"] != 0:
        raise Failure("a new room's join ack: offset %s, not 0" % ack["offset"])
    await bob.send(json.dumps({"type": "join_room", "room": room}))
    joined = {"event": "user_joined", "user_id": bob_id, "room": room}
    await expect(bob, joined, "bob join ack", NUMBERED)
    await expect(alice, joined, "alice sees bob join")

    # Room message: members only, sender included.
    await bob.send(json.dumps({"type": "room_message", "room": room, "content": {"n": 1}}))
    want = {"event": "chat", "from": bob_id, "room": room, "content": {"n": 1}}
    got = await expect(bob, want, "bob gets own room message", NUMBERED)
    if got["offset"] != 1 or got["epoch"] != ack["epoch"]:
        raise Failure("first room message: offset %s epoch %s" % (got["offset"], got["epoch"]))
    await expect(alice, got, "alice gets room message")
    await silence(carol, "carol (not a member) gets nothing")

    # Non-member posting: not_in_room, nobody receives.
    await carol.send(json.dumps({"type": "room_message", "room": room, "content": "x"}))
    got = await recv(carol)
    if got.get("event") != "error" or got.get("code") != "not_in_room":
        raise Failure("carol non-member post: %s" % got)
    await silence(alice, "non-member post not delivered")

    # Direct: `target` and the tutorial's `target_user` alias.
    await alice.send(json.dumps({"type": "direct_message", "target": carol_id, "content": "psst"}))
    await expect(carol, {"event": "direct_message", "from": alice_id, "content": "psst"}, "carol direct")
    await carol.send(json.dumps({"type": "direct_message", "target_user": alice_id, "content": "hi"}))
    await expect(alice, {"event": "direct_message", "from": carol_id, "content": "hi"}, "alice direct")
    await silence(bob, "bob sees no direct messages")

    await alice.send(json.dumps({"type": "direct_message", "target": "nobody-" + tag, "content": "?"}))
    got = await recv(alice)
    if got.get("code") != "target_offline":
        raise Failure("target_offline: %s" % got)

    # Ping / pong.
    await bob.send(json.dumps({"type": "ping"}))
    await expect(bob, {"event": "pong"}, "pong")
    await bob.send(json.dumps({"type": "pong"}))
    await silence(bob, "pong is accepted silently")

    # Leave: remaining members and the leaver.
    await bob.send(json.dumps({"type": "leave_room", "room": room}))
    left = {"event": "user_left", "user_id": bob_id, "room": room}
    await expect(bob, left, "bob leave ack")
    await expect(alice, left, "alice sees bob leave")
    await bob.send(json.dumps({"type": "room_message", "room": room, "content": "x"}))
    got = await recv(bob)
    if got.get("code") != "not_in_room":
        raise Failure("post after leave: %s" % got)

    # Disconnect notices: only when the last connection of an id closes.
    tab2 = await connect(base, carol_id)
    await silence(alice, "second tab of carol is not announced")
    await alice.send(json.dumps({"type": "direct_message", "target": carol_id, "content": "both"}))
    await expect(carol, {"event": "direct_message", "from": alice_id, "content": "both"}, "tab 1")
    await expect(tab2, {"event": "direct_message", "from": alice_id, "content": "both"}, "tab 2")
    await tab2.close()
    await silence(alice, "closing one of two tabs is not announced")
    await carol.close()
    gone = {"event": "user_disconnected", "user_id": carol_id}
    await expect(alice, gone, "alice sees carol disconnect")
    await expect(bob, gone, "bob sees carol disconnect")

    await bob.close()
    await expect(alice, {"event": "user_disconnected", "user_id": bob_id}, "alice sees bob disconnect")
    await alice.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    try:
        asyncio.run(main(sys.argv[1]))
    except Failure as e:
        print("FAIL:", e)
        sys.exit(1)
    print("protocol scenario: all steps passed")
