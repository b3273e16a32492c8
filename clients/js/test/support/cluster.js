// Real processes for the client's tests: a private redis-server on a free port, ringcast-node
// binaries registering themselves in it (--redis-url + --advertise), and a ringcast-gateway
// reading that registry — as deploy/local/cluster.sh runs them. Every process is started here,
// stopped by PID at the end (SIGTERM, then SIGKILL), and killed if the test process exits early.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../../..');
const targetDir = process.env.CARGO_TARGET_DIR || path.join(repoRoot, 'target');
/** Where the binaries are: $RINGCAST_BIN_DIR, else the cargo target's debug build. */
export const binDir = process.env.RINGCAST_BIN_DIR || path.join(targetDir, 'debug');
/** Where screenshots and other artefacts go. */
export const artefactDir = targetDir;

const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 100 ms until it returns something truthy; fails after `ms`. */
export async function waitFor(what, check, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

/** A port nothing listens on now (the OS picks it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The environment without the caller's RINGCAST_* (only flags configure the binaries). */
function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('RINGCAST_')) env[k] = v;
  return { ...env, RUST_LOG: process.env.RUST_LOG ?? 'warn', ...extra };
}

/** One started process; `stop()` ends it (SIGTERM, SIGKILL after `graceMs`). */
class Proc {
  constructor(name, cmd, args, env) {
    if (!existsSync(cmd) && cmd.includes('/')) {
      throw new Error(`${cmd} not found: build it first (cargo build, or cargo test runs before this)`);
    }
    this.name = name;
    this.log = '';
    this.child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this.child);
    const keep = (chunk) => {
      this.log = (this.log + chunk.toString()).slice(-20_000);
    };
    this.child.stdout.on('data', keep);
    this.child.stderr.on('data', keep);
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        live.delete(this.child);
        resolve({ code, signal });
      });
    });
    this.running = true;
    this.exited.then(() => {
      this.running = false;
    });
  }

  get pid() {
    return this.child.pid;
  }

  signal(sig) {
    if (this.running) this.child.kill(sig);
  }

  async stop(graceMs = 10_000) {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

async function httpGet(port, pathName) {
  try {
    const resp = await fetch(`http://127.0.0.1:${port}${pathName}`, { signal: AbortSignal.timeout(2000) });
    return { status: resp.status, body: await resp.text(), type: resp.headers.get('content-type') };
  } catch {
    return { status: 0, body: '', type: null };
  }
}

function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let got = '';
    sock.setTimeout(1000, () => {
      sock.destroy();
      resolve(false);
    });
    sock.on('error', () => resolve(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      got += d;
      if (got.includes('\r\n')) {
        sock.end();
        resolve(got.startsWith('+PONG'));
      }
    });
  });
}

/**
 * Redis + `nodes` nodes + a gateway. Options: `nodeArgs` / `gatewayArgs` (extra flags for all
 * of them), `env` (extra environment for every binary).
 */
export class Cluster {
  constructor({ nodes = 3, nodeArgs = [], gatewayArgs = [], env = {} } = {}) {
    this.nodeCount = nodes;
    this.nodeArgs = nodeArgs;
    this.gatewayArgs = gatewayArgs;
    this.env = cleanEnv(env);
    this.procs = [];
    /** node id → {proc, port} */
    this.nodes = new Map();
  }

  async start() {
    this.dir = mkdtempSync(path.join(tmpdir(), 'ringcast-js-'));
    this.redisPort = await freePort();
    const redis = new Proc('redis', 'redis-server', [
      '--port', String(this.redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', this.dir,
    ], this.env);
    this.procs.push(redis);
    await waitFor('redis-server', () => redisPing(this.redisPort), 10_000);
    this.redisUrl = `redis://127.0.0.1:${this.redisPort}`;
    for (let i = 1; i <= this.nodeCount; i++) await this.startNode(`node-${i}`);
    this.gatewayPort = await freePort();
    const gw = new Proc('gateway', path.join(binDir, 'ringcast-gateway'), [
      '--listen', `127.0.0.1:${this.gatewayPort}`, '--redis-url', this.redisUrl,
      '--shutdown-grace-secs', '3', ...this.gatewayArgs,
    ], this.env);
    this.procs.push(gw);
    this.gateway = gw;
    await this.waitRing(this.nodeCount);
    this.url = `ws://127.0.0.1:${this.gatewayPort}/ws`;
    this.http = `http://127.0.0.1:${this.gatewayPort}`;
    return this;
  }

  async startNode(id) {
    const port = await freePort();
    const proc = new Proc(id, path.join(binDir, 'ringcast-node'), [
      '--listen', `127.0.0.1:${port}`, '--node-id', id, '--redis-url', this.redisUrl,
      '--advertise', `127.0.0.1:${port}`, '--drain-delay-secs', '1', '--shutdown-grace-secs', '3',
      ...this.nodeArgs,
    ], this.env);
    this.procs.push(proc);
    this.nodes.set(id, { proc, port });
    await waitFor(`${id} /healthz`, async () => {
      if (!proc.running) throw new Error(`${id} exited at startup:\n${proc.log}`);
      return (await httpGet(port, '/healthz')).status === 200;
    });
    return proc;
  }

  /** Waits until the gateway routes to exactly `n` nodes. */
  async waitRing(n) {
    await waitFor(`a gateway ring of ${n}`, async () => {
      if (!this.gateway.running) throw new Error(`the gateway exited:\n${this.gateway.log}`);
      const r = await httpGet(this.gatewayPort, '/healthz');
      return r.body.includes(`"ring_size":${n}`);
    }, 20_000);
  }

  /** GET on the gateway. */
  get(pathName) {
    return httpGet(this.gatewayPort, pathName);
  }

  /** SIGTERM the node (a drain); resolves when it has exited. */
  async drain(id) {
    const { proc } = this.nodes.get(id);
    proc.signal('SIGTERM');
    await proc.exited;
  }

  /** SIGKILL the node (a crash); resolves when it is gone. */
  async kill(id) {
    const { proc } = this.nodes.get(id);
    proc.signal('SIGKILL');
    await proc.exited;
  }

  async stop() {
    // Gateway first, then nodes, then Redis: each drains against what is still up.
    const order = [...this.procs].reverse();
    for (const p of order.filter((p) => p.name === 'gateway')) await p.stop();
    await Promise.all(order.filter((p) => p.name.startsWith('node-')).map((p) => p.stop()));
    for (const p of order.filter((p) => p.name === 'redis')) await p.stop();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** An HS256 JWT, as the servers verify it (README "Authentication"). */
export function mintToken(secret, claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = createHmac('sha256', secret).update(head).digest('base64url');
  return `${head}.${sig}`;
}

/** Sends one command to the test's redis-server and resolves with the first reply line. */
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let got = '';
    sock.setTimeout(2000, () => {
      sock.destroy();
      reject(new Error(`redis ${args[0]}: no answer`));
    });
    sock.on('error', reject);
    sock.on('connect', () => {
      let cmd = `*${args.length}\r\n`;
      for (const a of args) cmd += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
      sock.write(cmd);
    });
    sock.on('data', (d) => {
      got += d;
      if (got.includes('\r\n')) {
        sock.end();
        resolve(got.split('\r\n')[0]);
      }
    });
  });
}
