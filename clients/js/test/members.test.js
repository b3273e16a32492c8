// The member list a client keeps (`members(room)`): a presence answer, then the joins and leaves
// heard after it. An answer can predate a join or leave the client heard while the answer was
// on its way (with announcements published by the server's presence script, a `user_joined`
// can overtake the answer to a `presence` asked just before); the list must not lose it. The
// peer is a real WebSocket server on 127.0.0.1 (the `ws` package) scripted to send that order
// every time: against the real servers it is a race, seen there only now and then.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';

import { RingcastClient } from '../src/index.js';

/** Greets as `alice`, acks her join, and answers `presence` with `snapshot` only after it
 * sent the `heard` events: the answer predates them. */
async function peer(snapshot, heard) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ event: 'welcome', client_id: 'alice', node: 'scripted' }));
    ws.on('message', (data) => {
      const m = JSON.parse(String(data));
      if (m.type === 'join_room') {
        ws.send(JSON.stringify({ event: 'user_joined', user_id: 'alice', room: m.room }));
      } else if (m.type === 'presence') {
        for (const ev of heard) ws.send(JSON.stringify({ ...ev, room: m.room }));
        const answer = { event: 'presence', room: m.room, members: snapshot };
        ws.send(JSON.stringify({ ...answer, count: snapshot.length, truncated: false }));
      }
    });
  });
  return { wss, url: `ws://127.0.0.1:${wss.address().port}/ws` };
}

async function membersAfterJoin(snapshot, heard) {
  const p = await peer(snapshot, heard);
  const client = new RingcastClient({ url: p.url, WebSocket, pingIntervalMs: 0 });
  try {
    await client.connect();
    const listed = new Promise((resolve) => client.once('presence', resolve));
    await client.join('hall');
    await listed;
    return client.members('hall');
  } finally {
    client.close();
    for (const c of p.wss.clients) c.terminate();
    await new Promise((resolve) => p.wss.close(resolve));
  }
}

describe('members of a room', () => {
  it('keeps a join heard before an answer that predates it', async () => {
    const got = await membersAfterJoin(['alice'], [{ event: 'user_joined', user_id: 'bob' }]);
    assert.deepEqual(got, ['alice', 'bob']);
  });

  it('keeps a leave heard before an answer that predates it', async () => {
    const heard = [{ event: 'user_left', user_id: 'carol' }];
    assert.deepEqual(await membersAfterJoin(['alice', 'carol'], heard), ['alice']);
  });

  it('applies what it heard in order: the last word on a member stands', async () => {
    const heard = [
      { event: 'user_joined', user_id: 'bob' },
      { event: 'user_left', user_id: 'bob' },
      { event: 'user_left', user_id: 'dan' },
      { event: 'user_joined', user_id: 'dan' },
    ];
    assert.deepEqual(await membersAfterJoin(['alice', 'dan'], heard), ['alice', 'dan']);
  });
});

/** Greets as `alice`, acks joins, and answers the `presence` requests in the order they came,
 * each with a member naming it (`asked-1`, `asked-2`, …) — only once `hold` of them came. */
async function numberingPeer(hold) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ event: 'welcome', client_id: 'alice', node: 'scripted' }));
    const asked = [];
    let answered = 0;
    ws.on('message', (data) => {
      const m = JSON.parse(String(data));
      if (m.type === 'join_room') {
        ws.send(JSON.stringify({ event: 'user_joined', user_id: 'alice', room: m.room }));
      } else if (m.type === 'presence') {
        asked.push(m.room);
        if (answered + asked.length < hold) return;
        for (const room of asked) {
          answered += 1;
          const members = ['alice', `asked-${answered}`];
          ws.send(JSON.stringify({ event: 'presence', room, members, count: 2, truncated: false }));
        }
        asked.length = 0;
      }
    });
  });
  return { wss, url: `ws://127.0.0.1:${wss.address().port}/ws` };
}

async function withPeer(hold, body) {
  const p = await numberingPeer(hold);
  const client = new RingcastClient({ url: p.url, WebSocket, pingIntervalMs: 0 });
  try {
    return await body(client);
  } finally {
    client.close();
    for (const c of p.wss.clients) c.terminate();
    await new Promise((resolve) => p.wss.close(resolve));
  }
}

function within(ms, promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

describe('presence requests', () => {
  it('a presence() call gets the answer to its own request, not to the one its join asked', async () => {
    const got = await withPeer(2, async (client) => {
      await client.connect();
      await client.join('hall'); // the client asks presence itself (request 1)
      return within(5000, client.presence('hall'), 'presence'); // request 2
    });
    assert.deepEqual(got.members, ['alice', 'asked-2']);
  });

  it('each presence() asked before the connection opened is asked, and answered, once', async () => {
    const got = await withPeer(0, async (client) => {
      const first = client.presence('lobby');
      const second = client.presence('lobby');
      await client.connect();
      return within(5000, Promise.all([first, second]), 'both presence calls');
    });
    assert.deepEqual(
      got.map((a) => a.members[1]),
      ['asked-1', 'asked-2'],
    );
  });
});
