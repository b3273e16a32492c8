// The client against real processes: redis-server, three ringcast-node binaries registered
// through it and a ringcast-gateway. A node is drained (SIGTERM) and another killed (SIGKILL)
// under a stream of room messages from every client; each client must end with every
// acknowledged message exactly once, in offset order. Also presence and the queue bound.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';

import { RingcastClient } from '../src/index.js';
import { Cluster, sleep, waitFor } from './support/cluster.js';

let cluster;
before(async () => {
  cluster = await new Cluster({ nodes: 3 }).start();
});
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

function client(clientId, extra = {}) {
  const c = new RingcastClient({
    url: cluster.url,
    clientId,
    WebSocket,
    reconnect: { initialMs: 200, maxMs: 2000 },
    pingIntervalMs: 2000,
    ...extra,
  });
  clients.push(c);
  return c;
}

/** Records every room message a client is given. */
function recorder(c, room) {
  const got = [];
  c.on('message', (m) => {
    if (m.room === room) got.push(m);
  });
  return got;
}

describe('against a gateway and three nodes', { timeout: 120_000 }, () => {
  it('loses and repeats nothing across a node drain and a node kill', async () => {
    const room = 'failover';
    const ids = ['ann', 'ben', 'cat', 'dan', 'eve', 'fay'];
    const clients = ids.map((id) => client(id));
    const received = clients.map((c) => recorder(c, room));
    const states = clients.map(() => []);
    clients.forEach((c, i) => c.on('state', (s) => states[i].push(s)));
    const unrecovered = [];
    for (const c of clients) c.on('recovery_failed', (j) => unrecovered.push(j));
    await Promise.all(clients.map((c) => c.connect()));
    await Promise.all(clients.map((c) => c.join(room)));

    // Every client sends 10 messages a second until told to stop; each send resolves on its ack.
    const acks = [];
    const errors = [];
    let sending = true;
    const senders = clients.map(async (c, i) => {
      for (let n = 0; sending; n++) {
        acks.push(
          c.send(room, { from: ids[i], n }).catch((e) => {
            errors.push(e);
          }),
        );
        await sleep(100);
      }
    });

    await sleep(1500);
    const byNode = new Map();
    for (const c of clients) byNode.set(c.node, [...(byNode.get(c.node) ?? []), c.clientId]);
    assert.ok(byNode.size >= 2, `clients spread over nodes: ${JSON.stringify([...byNode])}`);
    const drained = clients[0].node;
    await cluster.drain(drained);
    await cluster.waitRing(2);
    await waitFor('every client back on a live node', () => clients.every((c) => c.state === 'open' && c.node !== drained));
    await sleep(1500);

    // Freeze the node first so that messages are surely in flight, written but never
    // acknowledged, when it dies: the client must send them again.
    const killed = clients.find((c) => c.node !== drained).node;
    cluster.nodes.get(killed).proc.signal('SIGSTOP');
    await sleep(500);
    await cluster.kill(killed);
    await waitFor(
      'every client back on the last node',
      () => clients.every((c) => c.state === 'open' && c.node !== drained && c.node !== killed),
      30_000,
    );
    await sleep(1500);
    sending = false;
    await Promise.all(senders);
    await Promise.race([Promise.all(acks), sleep(20_000).then(() => assert.fail('acks missing'))]);
    assert.deepEqual(errors, [], 'every message acknowledged');
    const stored = await Promise.all(acks);
    assert.ok(stored.length > 150, `sent ${stored.length}`);

    // Everyone ends with the same messages: all that were acknowledged, once, by offset.
    const expected = stored.length;
    await waitFor('every client has every message', () => received.every((r) => r.length >= expected), 20_000);
    await sleep(500);
    for (const [i, got] of received.entries()) {
      const keys = got.map((m) => `${m.content.from}/${m.content.n}`);
      assert.equal(new Set(keys).size, keys.length, `${ids[i]} got a message twice`);
      assert.equal(got.length, expected, `${ids[i]} got ${got.length} of ${expected}`);
      for (let k = 1; k < got.length; k++) {
        if (got[k].epoch === got[k - 1].epoch) assert.ok(got[k].offset > got[k - 1].offset, 'in offset order');
      }
    }
    // The drained node's clients were told 1012; the killed node's saw the connection drop.
    assert.deepEqual(unrecovered, [], 'every rejoin recovered');
    const codes = new Set(states.flat().filter((s) => s.state === 'reconnecting').map((s) => s.code));
    assert.ok(codes.has(1012), `a 1012 was seen: ${[...codes]}`);
    for (const c of clients) c.close();
  });

  it('tracks presence across nodes', async () => {
    const room = 'hall';
    const alice = client('alice');
    const bob = client('bob');
    const carol = client('carol');
    for (const c of [alice, bob, carol]) await c.connect();
    await alice.join(room);
    await bob.join(room);
    await waitFor('alice sees bob', () => alice.members(room)?.includes('bob'));
    assert.deepEqual(alice.members(room), ['alice', 'bob']);
    const joined = new Promise((resolve) => alice.once('member_joined', resolve));
    await carol.join(room);
    assert.deepEqual(await joined, { room, userId: 'carol' });
    const answer = await bob.presence(room);
    assert.deepEqual([...answer.members].sort(), ['alice', 'bob', 'carol']);
    assert.equal(answer.count, 3);

    const left = new Promise((resolve) => alice.once('member_left', resolve));
    carol.close();
    assert.deepEqual(await left, { room, userId: 'carol' });
    await waitFor('carol gone from the list', () => !alice.members(room).includes('carol'));
    alice.close();
    bob.close();
  });

  it('bounds the outgoing queue while disconnected, then sends what it holds', async () => {
    const room = 'queue';
    const q = client('queuer', { maxQueue: 5 });
    const reader = client('reader');
    await reader.connect();
    await reader.join(room);
    const got = recorder(reader, room);
    // Not connected yet: the messages wait, up to the bound.
    q.join(room);
    const sent = [];
    for (let n = 0; n < 5; n++) sent.push(q.send(room, `m${n}`));
    assert.equal(q.queued, 5);
    assert.throws(() => q.send(room, 'one too many'), { name: 'RingcastError', code: 'queue_full' });
    assert.throws(() => q.sendDirect('reader', 'hi'), { code: 'queue_full' });
    await q.connect();
    const acks = await Promise.all(sent);
    assert.equal(acks.length, 5);
    assert.equal(q.queued, 0);
    await waitFor('the reader has them', () => got.length === 5);
    assert.deepEqual(got.map((m) => m.content), ['m0', 'm1', 'm2', 'm3', 'm4']);
    await q.send(room, 'room again');
    q.close();
    reader.close();
  });
});
