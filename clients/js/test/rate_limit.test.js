// What the client does when the server's rate limit drops its requests, against real processes
// (Redis, one node with a small burst, a gateway): joins, leaves and presence requests the server
// dropped are sent again (the server names their room), so joining many rooms at once — as a
// reconnect does — ends with every room joined and its member list known.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';

import { RingcastClient } from '../src/index.js';
import { Cluster, waitFor } from './support/cluster.js';

let cluster;
before(async () => {
  cluster = await new Cluster({
    nodes: 1,
    nodeArgs: ['--rate-limit-burst', '4', '--rate-limit-per-sec', '20'],
  }).start();
});
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

describe('rate limit', { timeout: 60_000 }, () => {
  it('joins, presence requests and leaves dropped by the rate limit are sent again', async () => {
    const c = new RingcastClient({
      url: cluster.url,
      clientId: 'eager',
      WebSocket,
      pingIntervalMs: 0,
      retryDelayMs: 200,
    });
    clients.push(c);
    const limited = [];
    c.on('error', (e) => {
      if (e.code === 'rate_limited') limited.push(e.room);
    });
    await c.connect();
    const rooms = Array.from({ length: 12 }, (_, i) => `r${i}`);
    const joins = rooms.map((room) => c.join(room));
    let timer;
    const stuck = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('joins dropped by the rate limit were never sent again')), 20_000);
    });
    await Promise.race([Promise.all(joins), stuck]).finally(() => clearTimeout(timer));
    assert.ok(limited.length > 0, 'nothing was rate limited: the test proves nothing');
    assert.ok(limited.every((room) => rooms.includes(room)), `errors name the rooms: ${limited}`);
    // Each room's own presence request (sent after its join) was answered too.
    await waitFor('every member list', () => rooms.every((room) => c.members(room)?.includes('eager')));
    // Leaves dropped by the limit are sent again: presence ends up empty for every room.
    limited.length = 0;
    for (const room of rooms) c.leave(room);
    const watcher = new RingcastClient({ url: cluster.url, clientId: 'watcher', WebSocket, pingIntervalMs: 0 });
    clients.push(watcher);
    await watcher.connect();
    await waitFor('every leave served', async () => {
      for (const room of rooms) {
        await watcher.join(room);
        const p = await watcher.presence(room);
        watcher.leave(room);
        if (p.members.includes('eager')) return false;
      }
      return true;
    });
    assert.ok(limited.length > 0, 'no leave was rate limited: the test proves nothing');
  });
});
