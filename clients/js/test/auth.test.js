// Tokens against real processes with authentication on (HS256, no leeway): the welcome says when
// the token expires, the client refreshes it in band before then and keeps its connection, and
// a client that let its token expire (4001) comes back with a fresh one from getToken().

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';

import { RingcastClient } from '../src/index.js';
import { Cluster, mintToken, sleep, waitFor } from './support/cluster.js';

const SECRET = 'js-client-test-secret-0123456789';
const authFlags = ['--jwt-secret', SECRET, '--jwt-leeway-secs', '0'];

let cluster;
before(async () => {
  cluster = await new Cluster({ nodes: 2, nodeArgs: authFlags, gatewayArgs: authFlags }).start();
});
const clients = [];
after(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

function tokens(sub, ttlSecs) {
  const issued = [];
  const getToken = async () => {
    const exp = Math.floor(Date.now() / 1000) + ttlSecs;
    issued.push(exp);
    return mintToken(SECRET, { sub, exp });
  };
  return { issued, getToken };
}

describe('tokens', { timeout: 60_000 }, () => {
  it('refreshes in band before expiry and keeps the connection', async () => {
    const { issued, getToken } = tokens('rita', 4);
    const c = new RingcastClient({ url: cluster.url, WebSocket, getToken, pingIntervalMs: 0 });
    clients.push(c);
    const disconnects = [];
    const refreshed = [];
    c.on('disconnected', (d) => disconnects.push(d.code));
    c.on('token_refreshed', (t) => refreshed.push(t.expiresAt));
    const welcome = await c.connect();
    assert.equal(welcome.clientId, 'rita');
    assert.equal(welcome.expiresAt, issued[0], 'the welcome carries the token expiry');
    await c.join('r');
    await sleep(9000);
    assert.deepEqual(disconnects, [], 'never closed (4001 would mean the refresh came late)');
    assert.ok(refreshed.length >= 2, `refreshed ${refreshed.length} times`);
    assert.equal(c.expiresAt, refreshed.at(-1));
    const ack = await c.send('r', 'still here');
    assert.equal(ack.room, 'r');
    c.close();
  });

  it('after 4001 fetches a new token and resumes its rooms', async () => {
    const { issued, getToken } = tokens('tess', 2);
    const c = new RingcastClient({
      url: cluster.url,
      WebSocket,
      getToken,
      refreshMarginMs: null,
      pingIntervalMs: 0,
    });
    const writer = new RingcastClient({
      url: cluster.url,
      WebSocket,
      getToken: tokens('walt', 3600).getToken,
    });
    clients.push(c, writer);
    const got = [];
    c.on('message', (m) => got.push(m.content));
    const disconnects = [];
    c.on('disconnected', (d) => disconnects.push(d.code));
    await c.connect();
    await c.join('t');
    await writer.connect();
    await writer.join('t');
    await writer.send('t', 'before');
    await waitFor(`a 4001 (saw ${disconnects})`, () => disconnects.includes(4001), 10_000);
    // Sent while the expired client is away: it must get it through `since` on its rejoin.
    await writer.send('t', 'while away');
    await waitFor('back with a new token', () => c.state === 'open' && issued.length >= 2, 10_000);
    await writer.send('t', 'after');
    await waitFor('all three messages', () => got.length >= 3);
    assert.deepEqual(got, ['before', 'while away', 'after']);
    c.close();
    writer.close();
  });

  it('reports a room a refreshed token no longer allows as room_revoked', async () => {
    let narrow = false;
    const getToken = async () => {
      const exp = Math.floor(Date.now() / 1000) + 4;
      const rooms = narrow ? ['keep'] : ['keep', 'lose'];
      return mintToken(SECRET, { sub: 'vera', exp, rooms });
    };
    const c = new RingcastClient({ url: cluster.url, WebSocket, getToken, pingIntervalMs: 0 });
    clients.push(c);
    const revoked = [];
    c.on('room_revoked', (r) => revoked.push(r));
    await c.connect();
    await c.join('keep');
    await c.join('lose');
    narrow = true; // the next refresh (about 2 s from now) takes `lose` away
    await waitFor('room_revoked', () => revoked.length === 1, 10_000);
    assert.deepEqual(revoked, [{ room: 'lose', reason: 'token' }]);
    assert.deepEqual(c.rooms, ['keep']);
    assert.equal((await c.send('keep', 'still allowed')).room, 'keep');
    c.close();
  });
});
