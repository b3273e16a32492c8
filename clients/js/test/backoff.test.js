// Reconnect policy by close code and its timing, with node:test's fake timers. The peer here is
// a real WebSocket server on 127.0.0.1 (from the `ws` package) that sends a welcome and then
// closes with the code under test: ringcast itself cannot be made to close with 1011 or 1013 on
// demand. The codes the real servers give in the field (1012 drain, 1006 crash, 4001 expiry) are
// covered against real processes in cluster.test.js and auth.test.js.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it, mock, afterEach } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';

import { RingcastClient, closePolicy, reconnectDelay, POLICY_MIN_DELAY_MS } from '../src/index.js';

describe('closePolicy', () => {
  it('follows the table of the issue', () => {
    const table = {
      1000: [false, 'none'],
      1001: [true, 'backoff'],
      1006: [true, 'backoff'],
      1011: [true, 'backoff'],
      1013: [true, 'backoff'],
      1008: [true, 'policy'],
      1009: [true, 'backoff'],
      1012: [true, 'restart'],
      4001: [true, 'token'],
      4000: [false, 'none'],
      4003: [false, 'none'],
      4999: [false, 'none'],
    };
    for (const [code, [reconnect, kind]] of Object.entries(table)) {
      const p = closePolicy(Number(code));
      assert.equal(p.reconnect, reconnect, `reconnect after ${code}`);
      assert.equal(p.kind, kind, `kind after ${code}`);
    }
    assert.equal(closePolicy(1009).surface, true);
    assert.equal(closePolicy(4003).surface, true);
    assert.equal(closePolicy(1006).surface, false);
    assert.equal(closePolicy(4001).newToken, true);
  });

  it('waits with full jitter, capped, and at least 10 s after 1008', () => {
    const opts = { initialMs: 500, maxMs: 30_000 };
    const max = () => 0.999999;
    assert.equal(reconnectDelay('backoff', 0, opts, () => 0), 0);
    assert.equal(reconnectDelay('backoff', 0, opts, max), 499);
    assert.equal(reconnectDelay('backoff', 3, opts, max), 3999);
    assert.equal(reconnectDelay('backoff', 20, opts, max), 29_999);
    assert.ok(reconnectDelay('policy', 0, opts, () => 0) >= POLICY_MIN_DELAY_MS);
    assert.ok(reconnectDelay('restart', 0, opts, max) < 500);
    assert.equal(reconnectDelay('token', 0, opts, max), 0);
  });
});

/** A WebSocket server that greets each connection and then does what `script` says. */
async function scriptedPeer(script) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  const peer = { wss, connections: 0, urls: [], protocols: [] };
  wss.on('connection', (ws, req) => {
    peer.connections += 1;
    peer.urls.push(req.url);
    peer.protocols.push(req.headers['sec-websocket-protocol'] ?? null);
    ws.send(JSON.stringify({ event: 'welcome', client_id: 'c1', node: 'scripted' }));
    script(ws, peer.connections);
  });
  peer.url = `ws://127.0.0.1:${wss.address().port}/ws`;
  peer.close = () =>
    new Promise((resolve) => {
      for (const c of wss.clients) c.terminate();
      wss.close(resolve);
    });
  return peer;
}

/** Lets real I/O run while fake timers stand still. */
const settle = () => new Promise((resolve) => setImmediate(() => setImmediate(resolve)));

async function waitConnections(peer, n) {
  for (let i = 0; i < 500 && peer.connections < n; i++) await new Promise((r) => setImmediate(r));
  // Real I/O (the TCP handshake) needs real time: poll without timers.
  const start = performance.now();
  while (peer.connections < n) {
    if (performance.now() - start > 5000) throw new Error(`expected connection #${n}`);
    await new Promise((r) => setImmediate(r));
  }
}

function nextState(client, state) {
  return new Promise((resolve) => {
    const off = client.on('state', (s) => {
      if (s.state === state) {
        off();
        resolve(s);
      }
    });
  });
}

describe('reconnect timing (fake timers)', () => {
  let peer;
  let client;
  afterEach(async () => {
    // Let every socket finish closing while the fake timers are still on: a timer the `ws`
    // package set under them and clears after a reset would unhook another test's timer.
    client?.close();
    await peer?.close();
    const start = performance.now();
    while (performance.now() - start < 100) await new Promise((r) => setImmediate(r));
    mock.timers.reset();
  });

  const options = (extra = {}) => ({
    url: peer.url,
    WebSocket,
    random: () => 0.5,
    reconnect: { initialMs: 1000, maxMs: 8000 },
    pingIntervalMs: 0,
    ...extra,
  });

  /** Closes each connection with `code` after the welcome; checks the waits before each retry. */
  async function expectDelays(code, delays, extra) {
    peer = await scriptedPeer((ws) => (code === 1006 ? ws.terminate() : ws.close(code)));
    mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'] });
    client = new RingcastClient(options(extra));
    let reconnecting = nextState(client, 'reconnecting');
    client.connect();
    for (let i = 0; i < delays.length; i++) {
      const s = await reconnecting;
      assert.equal(s.code, code);
      assert.equal(s.delayMs, delays[i], `wait before retry ${i + 1} after ${code}`);
      reconnecting = nextState(client, 'reconnecting');
      if (delays[i] > 0) {
        mock.timers.tick(delays[i] - 1);
        await settle();
        assert.equal(peer.connections, i + 1, `no retry before ${delays[i]} ms`);
        mock.timers.tick(1);
      } else {
        mock.timers.tick(0);
      }
      await waitConnections(peer, i + 2);
    }
  }

  it('backs off exponentially with full jitter, capped, after 1006', async () => {
    await expectDelays(1006, [500, 1000, 2000, 4000, 4000]);
  });
  for (const code of [1001, 1011, 1013]) {
    it(`backs off after ${code}`, async () => {
      await expectDelays(code, [500, 1000]);
    });
  }

  it('waits at least 10 s after 1008 and surfaces it', async () => {
    const errors = [];
    peer = await scriptedPeer((ws) => ws.close(1008));
    mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'] });
    client = new RingcastClient(options());
    client.on('error', (e) => errors.push(e.code));
    const reconnecting = nextState(client, 'reconnecting');
    client.connect();
    assert.equal((await reconnecting).delayMs, POLICY_MIN_DELAY_MS + 500);
    assert.deepEqual(errors, ['flooding']);
    mock.timers.tick(POLICY_MIN_DELAY_MS + 499);
    await settle();
    assert.equal(peer.connections, 1);
    mock.timers.tick(1);
    await waitConnections(peer, 2);
  });

  it('surfaces 1009, then backs off', async () => {
    const errors = [];
    peer = await scriptedPeer((ws) => ws.close(1009));
    mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'] });
    client = new RingcastClient(options());
    client.on('error', (e) => errors.push(e.code));
    const reconnecting = nextState(client, 'reconnecting');
    client.connect();
    assert.equal((await reconnecting).delayMs, 500);
    assert.deepEqual(errors, ['message_too_big']);
  });

  it('comes back within 500 ms after 1012', async () => {
    await expectDelays(1012, [250]);
  });

  it('fetches a new token first after 4001, without waiting', async () => {
    let tokens = 0;
    await expectDelays(4001, [0, 1000], { getToken: () => `t${++tokens}` });
    assert.ok(tokens >= 3, `getToken called for each connect (${tokens})`);
    const offered = peer.protocols.slice(0, 2).map((p) => p.split(',').map((s) => s.trim()));
    assert.deepEqual(offered, [['ringcast.v1', 'bearer.t1'], ['ringcast.v1', 'bearer.t2']]);
  });

  it('stops after 1000 and after the server API disconnect (4000-4999), surfacing the latter', async () => {
    for (const code of [1000, 4003]) {
      const errors = [];
      peer = await scriptedPeer((ws) => ws.close(code));
      client = new RingcastClient(options());
      client.on('error', (e) => errors.push(e));
      const closed = nextState(client, 'closed');
      client.connect();
      assert.equal((await closed).code, code);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(peer.connections, 1, `no reconnect after ${code}`);
      assert.equal(errors.length, code === 1000 ? 0 : 1);
      if (code !== 1000) assert.equal(errors[0].closeCode, code);
      await peer.close();
    }
    peer = null;
  });
});
