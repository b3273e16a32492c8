// What the client cannot recover, it says: `history_reset` when the room's history is lost
// under a connected member, and `recovery_failed` when a rejoin's `since` points into history
// that is gone. Real processes: Redis, two nodes, a gateway; the room's keys are deleted in
// Redis (as a Redis restart without persistence would lose them) and a node is killed.

import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import WebSocket from 'ws';

import { RingcastClient } from '../src/index.js';
import { Cluster, redisCommand, waitFor } from './support/cluster.js';

let cluster;
const clients = [];
before(async () => {
  cluster = await new Cluster({ nodes: 2 }).start();
});
after(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

function client(clientId) {
  const c = new RingcastClient({
    url: cluster.url,
    clientId,
    WebSocket,
    reconnect: { initialMs: 200, maxMs: 2000 },
  });
  clients.push(c);
  return c;
}

const loseHistory = (room) =>
  redisCommand(cluster.redisPort, 'DEL', `{ringcast:room:${room}}:meta`, `{ringcast:room:${room}}:log`, `{ringcast:room:${room}}:ids`);

it('tells the app about a history reset and a failed recovery', { timeout: 60_000 }, async () => {
  const room = 'fragile';
  const x = client('xena');
  const w = client('wade');
  const got = [];
  const resets = [];
  const failed = [];
  x.on('message', (m) => got.push(m.content));
  x.on('history_reset', (e) => resets.push(e));
  x.on('recovery_failed', (e) => failed.push(e));
  for (const c of [x, w]) {
    await c.connect();
    await c.join(room);
  }
  await w.send(room, 'one');
  await waitFor('xena has one', () => got.length === 1);

  assert.equal(await loseHistory(room), ':3');
  await w.send(room, 'two');
  await waitFor('a history_reset', () => resets.length === 1);
  assert.equal(resets[0].room, room);
  await waitFor('xena has two', () => got.length === 2);

  // Gone again, and xena's node dies before she hears of it: her rejoin's `since` cannot be
  // served, and she is told so instead of silently missing messages.
  await loseHistory(room);
  const node = x.node;
  await cluster.kill(node);
  await waitFor('xena back on the other node', () => x.state === 'open' && x.node !== node, 20_000);
  await waitFor('a recovery_failed', () => failed.length === 1, 10_000);
  assert.equal(failed[0].room, room);
  assert.equal(failed[0].recovered, false);
  assert.deepEqual(got, ['one', 'two']);
});
