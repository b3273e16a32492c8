"""A wss:// client for the gateway's TLS tests, independent of ringcast's code: python
`websockets` and the standard `ssl` module, trusting only the test's CA.

    python3 tls_client.py HOST:PORT CA.pem CLIENT_ID

Connects to wss://HOST:PORT/ws?client_id=CLIENT_ID (verifying the certificate against CA.pem
for HOST), reads the welcome, sends a ping and reads the pong, GETs
https://HOST:PORT/healthz over a second TLS connection, and prints one JSON line with what the
server presented: the certificate's serial and subject CN, the TLS version and ALPN protocol.
Exits non-zero (with the reason on stderr) on any failure.
"""
import asyncio
import json
import ssl
import sys
import urllib.request

import websockets

TIMEOUT = 10


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def main(addr, ca, client_id):
    ctx = context(ca)
    url = f"wss://{addr}/ws?client_id={client_id}"
    async with websockets.connect(url, ssl=ctx, open_timeout=TIMEOUT) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert welcome.get("event") == "welcome", welcome
        assert welcome.get("client_id") == client_id, welcome
        await ws.send(json.dumps({"type": "ping"}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if msg.get("event") == "pong":
                break
        tls = ws.transport.get_extra_info("ssl_object")
        cert = tls.getpeercert()
        subject = dict(x[0] for x in cert["subject"])
        seen = {
            "serial": cert["serialNumber"].lower().lstrip("0") or "0",
            "cn": subject.get("commonName"),
            "version": tls.version(),
            "alpn": tls.selected_alpn_protocol(),
            "node": welcome.get("node"),
        }
    req = urllib.request.Request(f"https://{addr}/healthz")
    with urllib.request.urlopen(req, context=ctx, timeout=TIMEOUT) as resp:
        seen["healthz"] = resp.status
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
