"""WebSocket helpers shared by the gateway's python test scripts (scenario.py, deploy_drain.py).

Independent of ringcast's own code: plain python `websockets`.
"""
import asyncio
import json

import websockets

TIMEOUT = 5


async def connect(url, client_id):
    """Connects as `client_id` and reads its welcome; returns (ws, node)."""
    ws = await websockets.connect(f"{url}?client_id={client_id}")
    welcome = await expect(ws, "welcome")
    assert welcome["client_id"] == client_id, welcome
    return ws, welcome["node"]


async def expect(ws, event, **fields):
    """Reads until `event` arrives (skipping others); checks `fields`."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if msg.get("event") == event:
            for k, v in fields.items():
                assert msg.get(k) == v, (event, k, msg)
            return msg
