// The demo chat in a real headless Chromium (Debian's `chromium`, driven by playwright-core),
// served by a real gateway with --demo over three nodes and Redis. Two pages send 6-7 messages
// a second each while the node of one is drained (SIGTERM) and then the node of the other is
// killed (SIGKILL); both must end with the whole conversation, nothing missing, nothing twice,
// in the same order. A screenshot of the final page goes to target/demo-chat.png.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { chromium } from 'playwright-core';

import { Cluster, artefactDir, sleep, waitFor } from './support/cluster.js';

const CHROMIUM = process.env.RINGCAST_CHROMIUM || '/usr/bin/chromium';
const ROOM = 'demo';

let cluster;
let browser;
before(async () => {
  cluster = await new Cluster({ nodes: 3, gatewayArgs: ['--demo'] }).start();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
after(async () => {
  await browser?.close();
  await cluster?.stop();
});

async function openPage(clientId) {
  const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.goto(`${cluster.http}/demo/?client_id=${clientId}&room=${ROOM}`);
  await page.waitForFunction(() => window.chat?.state === 'open', null, { timeout: 15_000 });
  return { page, problems, clientId };
}

const nodeOf = (p) => p.page.evaluate(() => window.chat.node);
const stateOf = (p) => p.page.evaluate(() => ({ state: window.chat.state, node: window.chat.node }));

it('two pages keep the whole conversation across a drain and a kill', { timeout: 180_000 }, async () => {
  const a = await openPage('pia');
  const b = await openPage('quinn');
  for (const p of [a, b]) {
    await p.page.waitForFunction(
      (room) => (window.chat.members(room) ?? []).length === 2,
      ROOM,
      { timeout: 15_000 },
    );
  }

  // Each page sends every 150 ms (about 6.7 messages a second) through the demo's client.
  for (const p of [a, b]) {
    await p.page.evaluate((room) => {
      window.sent = [];
      window.sendErrors = [];
      let n = 0;
      window.sender = setInterval(() => {
        const text = `${window.chat.clientId}-${n++}`;
        try {
          window.chat.send(room, text).catch((e) => window.sendErrors.push(e.code));
          window.sent.push(text);
        } catch (e) {
          window.sendErrors.push(e.code);
        }
      }, 150);
    }, ROOM);
  }
  await sleep(2000);

  const drained = await nodeOf(a);
  await cluster.drain(drained);
  await waitFor('page A on another node', async () => {
    const s = await stateOf(a);
    return s.state === 'open' && s.node !== drained;
  }, 20_000);
  await sleep(2000);

  const killed = await nodeOf(b);
  await cluster.kill(killed);
  await waitFor('page B on another node', async () => {
    const s = await stateOf(b);
    return s.state === 'open' && s.node !== killed && s.node !== drained;
  }, 30_000);
  await sleep(2000);

  for (const p of [a, b]) await p.page.evaluate(() => clearInterval(window.sender));
  for (const p of [a, b]) {
    await p.page.waitForFunction(() => window.chat.queued === 0, null, { timeout: 30_000 });
  }
  const sent = [];
  for (const p of [a, b]) {
    const { texts, errors } = await p.page.evaluate(() => ({ texts: window.sent, errors: window.sendErrors }));
    assert.deepEqual(errors, [], `${p.clientId}: every message acknowledged`);
    sent.push(...texts);
  }
  assert.ok(sent.length >= 2 * 5 * 6, `both pages sent >= 5/s (${sent.length} in total)`);

  const shown = async (p) =>
    p.page.evaluate(() => [...document.querySelectorAll('#messages li')].map((li) => li.dataset.text));
  await waitFor('both pages show every message', async () => {
    const [x, y] = [await shown(a), await shown(b)];
    return x.length >= sent.length && y.length >= sent.length;
  }, 20_000);
  await sleep(500);
  const [seenA, seenB] = [await shown(a), await shown(b)];
  for (const [who, seen] of [['A', seenA], ['B', seenB]]) {
    assert.equal(new Set(seen).size, seen.length, `page ${who} shows a message twice`);
    const missing = sent.filter((t) => !seen.includes(t));
    assert.deepEqual(missing, [], `page ${who} misses messages`);
    assert.equal(seen.length, sent.length, `page ${who} shows only what was sent`);
  }
  assert.deepEqual(seenA, seenB, 'both pages show the same order');
  for (const p of [a, b]) assert.deepEqual(p.problems, [], `${p.clientId}: no page errors`);

  const file = path.join(artefactDir, 'demo-chat.png');
  await a.page.screenshot({ path: file });
  console.log(`screenshot: ${file}; ${sent.length} messages; drained ${drained}, killed ${killed}`);
});
