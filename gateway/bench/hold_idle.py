"""Hold N idle WebSocket connections through a ringcast gateway, for measuring the gateway's
memory per idle proxied connection (run it as a separate process from the gateway).

    python3 gateway/bench/hold_idle.py HOST PORT N [ID_PREFIX]

Raw TCP, no library: sends N upgrade requests (200 in flight at a time), checks each 101,
prints "holding N" and then keeps every connection open and idle for an hour.
"""
import asyncio
import sys

HOST, PORT, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PREFIX = sys.argv[4] if len(sys.argv) > 4 else "idle"
REQ = ("GET /ws?client_id={p}-{i} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
       "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


async def one(i, held, sem):
    async with sem:
        r, w = await asyncio.open_connection(HOST, PORT)
        w.write(REQ.format(i=i, p=PREFIX).encode())
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        held.append((r, w))


async def main():
    held, sem = [], asyncio.Semaphore(200)
    await asyncio.gather(*(one(i, held, sem) for i in range(N)))
    print(f"holding {len(held)}", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
