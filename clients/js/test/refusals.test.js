// What the client does with requests the server refuses, against real processes (Redis, one
// node with room options, a gateway): a refused join rejects join() with the server's code and
// fails what waited on the room, a presence request the room cannot answer rejects, and a name
// the server would refuse never leaves the client. Everything else goes on being served.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';

import { RingcastClient, RingcastError } from '../src/index.js';
import { Cluster, waitFor } from './support/cluster.js';

let cluster;
before(async () => {
  // One node: max_members counts per node.
  cluster = await new Cluster({
    nodes: 1,
    nodeArgs: ['--room-options', 'one-*:max_members=1;quiet-*:presence=off'],
  }).start();
});
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

function client(clientId) {
  const c = new RingcastClient({ url: cluster.url, clientId, WebSocket, pingIntervalMs: 0 });
  clients.push(c);
  return c;
}

describe('refusals', { timeout: 60_000 }, () => {
  it('a refused join rejects with its code, fails what waited on the room, and forgets it', async () => {
    const first = client('first');
    const second = client('second');
    await first.connect();
    await second.connect();
    await first.join('one-1');
    const errors = [];
    second.on('error', (e) => errors.push(e));
    const joining = second.join('one-1');
    // Sent while the join is on its way: waits for the join, and fails with it.
    const waiting = second.send('one-1', 'never stored');
    const refused = await joining.then(
      () => assert.fail('the join of a full room resolved'),
      (e) => e,
    );
    assert.ok(refused instanceof RingcastError, String(refused));
    assert.equal(refused.code, 'room_full');
    assert.equal(refused.room, 'one-1');
    await assert.rejects(waiting, (e) => e.code === 'room_full' && e.room === 'one-1');
    assert.deepEqual(second.rooms, [], 'the refused room is forgotten');
    assert.deepEqual(
      errors.map((e) => [e.code, e.room]),
      [['room_full', 'one-1']],
      'the error event names the room',
    );
    // The same connection goes on being served, and the member is untouched.
    const got = [];
    first.on('message', (m) => got.push(m.content));
    await second.join('one-2');
    await first.send('one-1', 'still here');
    await waitFor('the member\'s own echo', () => got.length === 1, 5000);
    assert.deepEqual(got, ['still here']);
    assert.equal(second.state, 'open');
  });

  it('presence of a room that keeps none rejects with presence_disabled', async () => {
    const c = client('asker');
    await c.connect();
    await c.join('quiet-1');
    await assert.rejects(c.presence('quiet-1'), (e) => e.code === 'presence_disabled' && e.room === 'quiet-1');
    await assert.rejects(c.presence('not-joined'), (e) => e.code === 'not_in_room' && e.room === 'not-joined');
    await c.join('loud-1');
    const answer = await c.presence('loud-1');
    assert.deepEqual(answer.members, ['asker']);
  });

  it('a room name the server would refuse throws before anything is sent', async () => {
    const c = client('namer');
    await c.connect();
    for (const bad of ['two words', 'tab\there', 'x'.repeat(129), '']) {
      assert.throws(() => c.join(bad), TypeError, JSON.stringify(bad));
    }
    await c.join('é'.repeat(128));
    assert.deepEqual(c.rooms, ['é'.repeat(128)]);
  });
});
