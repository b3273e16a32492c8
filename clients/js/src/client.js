// The ringcast client: one logical connection that survives node drains, node crashes and token
// expiry. It reconnects by close code (see backoff.js), rejoins its rooms with `since` so the
// server replays what was missed, resends room messages the server has not acknowledged (the
// server dedupes them by id), and drops what it already delivered, so the app sees each room
// message once and in order — or is told plainly (`recovery_failed`, `history_reset`) that it
// cannot.

import { closePolicy, reconnectDelay, CloseCode } from './backoff.js';
import { Emitter } from './emitter.js';

/** An error the client raises or rejects with; `code` is stable. */
export class RingcastError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{id?: string, room?: string, closeCode?: number}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'RingcastError';
    this.code = code;
    Object.assign(this, details);
  }
}

// Errors after which an unacknowledged message is sent again (after `retryDelayMs`): the server
// refused it for now, not for good.
const RETRYABLE = new Set(['bus_unavailable', 'rate_limited']);
// Codes with which the server refuses a join for good (`bus_unavailable` is tried again).
const JOIN_REFUSED = new Set(['forbidden', 'too_many_rooms', 'room_full']);
// Codes with which the server answers a `presence` it cannot serve.
const PRESENCE_REFUSED = new Set(['forbidden', 'not_in_room', 'presence_disabled', 'bus_unavailable']);
// The server's room names: 1–128 characters, none of them whitespace or a control character.
const MAX_ROOM_CHARS = 128;
const ROOM_BAD_CHAR = /[\p{White_Space}\p{Cc}]/u;
// How many `from` + `id` pairs per room are remembered to drop a message redelivered after a
// history reset (see the server README, "Publish acknowledgements").
const SEEN_IDS_PER_ROOM = 4096;
/** Most joins and leaves of a room kept while a presence answer is on its way. */
const MAX_HEARD = 4096;

const DEFAULTS = {
  reconnect: { initialMs: 500, maxMs: 30_000 },
  maxQueue: 1000,
  refreshMarginMs: 30_000,
  pingIntervalMs: 20_000,
  connectTimeoutMs: 10_000,
  retryDelayMs: 1000,
  stableAfterMs: 5000,
};

function randomPrefix(random) {
  let s = '';
  for (let i = 0; i < 10; i++) s += Math.floor(random() * 36).toString(36);
  return s;
}

/** A self-recovering connection to a ringcast gateway or node. */
export class RingcastClient extends Emitter {
  /** @param {import('../index').ClientOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.url !== 'string') {
      throw new TypeError('RingcastClient: options.url (ws://… or wss://…) is required');
    }
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new TypeError(
        'RingcastClient: no WebSocket: pass options.WebSocket (e.g. from the `ws` package on Node 20)',
      );
    }
    this._WS = WS;
    this._url = options.url;
    this._wantedId = options.clientId ?? null;
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    this._reconnect = { ...DEFAULTS.reconnect, ...(options.reconnect ?? {}) };
    this._maxQueue = options.maxQueue ?? DEFAULTS.maxQueue;
    // `null` turns refreshing off, so only `undefined` takes the default.
    this._refreshMarginMs =
      options.refreshMarginMs === undefined ? DEFAULTS.refreshMarginMs : options.refreshMarginMs;
    this._pingIntervalMs = options.pingIntervalMs ?? DEFAULTS.pingIntervalMs;
    this._connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
    this._retryDelayMs = options.retryDelayMs ?? DEFAULTS.retryDelayMs;
    this._stableAfterMs = options.stableAfterMs ?? DEFAULTS.stableAfterMs;
    this._random = options.random ?? Math.random;
    this._idPrefix = randomPrefix(this._random);
    this._seq = 0;

    this._state = 'idle';
    this._ws = null;
    this._attempt = 0;
    this._stopped = false;
    this._timers = { reconnect: null, connect: null, ping: null, refresh: null, stable: null };
    this._lastFrameAt = 0;

    this.clientId = this._wantedId;
    this.node = null;
    this.expiresAt = null;

    /** room → {joined, offset, epoch, waiters, members, seen, asked, heard} */
    this._rooms = new Map();
    /** message id → {room, content, written, resolve, reject, retry} (insertion = send order) */
    this._pending = new Map();
    /** frames other than room messages, waiting for a connection */
    this._queue = [];
    /** room → the presence requests sent on this connection and not answered yet, in order:
     * the app's `presence()` waiter each answers, or null for one the client asked itself */
    this._presenceWaiters = new Map();
    /** room → `presence()` waiters asked for before the connection was open */
    this._presenceHeld = new Map();
    // `leave_room`s sent and not yet answered, per room: a `not_in_room` for the room is
    // theirs, not a `presence` call's.
    this._leaving = new Map();
    this._welcomeWaiters = [];
  }

  /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this._state;
  }

  /** The rooms this client is in (or joining). */
  get rooms() {
    return [...this._rooms.keys()];
  }

  /** Messages waiting: room messages not yet acknowledged plus frames not yet sent. */
  get queued() {
    return this._pending.size + this._queue.length;
  }

  /**
   * Opens the connection (and keeps it open). Resolves with the first `welcome`; rejects if the
   * client is closed for good before one arrives.
   */
  connect() {
    const p = new Promise((resolve, reject) => this._welcomeWaiters.push({ resolve, reject }));
    p.catch(() => {});
    if (this._state === 'idle') this._open();
    else if (this._state === 'open') this._settleWelcome(null);
    return p;
  }

  /** Closes the connection for good; everything not yet acknowledged is rejected. */
  close() {
    if (this._state === 'closed') return;
    this._stopped = true;
    const ws = this._ws;
    this._detach();
    if (ws) {
      try {
        ws.close(CloseCode.NORMAL);
      } catch {
        // already closing
      }
    }
    this._finish(new RingcastError('closed', 'the client was closed'), {
      code: CloseCode.NORMAL,
      reason: 'closed by the client',
    });
  }

  /**
   * Joins `room` (and rejoins it after every reconnect, with `since`). Resolves with the first
   * acknowledgement; rejects with the server's code when it refuses the join (`forbidden`,
   * `too_many_rooms`, `room_full`: the room is then forgotten), and tries again while the
   * server answers `bus_unavailable`.
   * @throws {TypeError} for a name the server would refuse as `invalid_room`
   */
  join(room) {
    this._checkRoom(room, 'join');
    let r = this._rooms.get(room);
    if (!r) {
      r = {
        joined: false,
        offset: null,
        epoch: null,
        waiters: [],
        members: null,
        seen: new Set(),
        // Presence requests not answered yet, and the joins and leaves heard since the oldest
        // of them: an answer may predate them, so they are applied on top of it.
        asked: 0,
        heard: null,
      };
      this._rooms.set(room, r);
    }
    const p = new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
    p.catch(() => {});
    if (r.joined) {
      this._settleJoin(room, r, { room, recovered: true, offset: r.offset, epoch: r.epoch });
    } else if (this._state === 'open') {
      this._sendJoin(room, r);
    }
    return p;
  }

  /** Leaves `room`; its unacknowledged messages are rejected. */
  leave(room) {
    const r = this._rooms.get(room);
    if (!r) return;
    this._rooms.delete(room);
    clearTimeout(r.retry);
    const err = new RingcastError('left_room', `left ${room}`, { room });
    for (const w of r.waiters) w.reject(err);
    this._rejectPending((m) => m.room === room, err);
    if (this._state === 'open') {
      this._leaving.set(room, (this._leaving.get(room) ?? 0) + 1);
      this._write({ type: 'leave_room', room });
    }
  }

  /** One `leave_room` of `room` answered; whether there was one waiting. */
  _leaveAnswered(room) {
    const n = this._leaving.get(room);
    if (!n) return false;
    if (n === 1) this._leaving.delete(room);
    else this._leaving.set(room, n - 1);
    return true;
  }

  /**
   * Sends a room message with an id and resolves with its `ack` once the server stored it;
   * after a reconnect it is sent again with the same id until acknowledged.
   * @throws {RingcastError} `queue_full` when `maxQueue` messages are already waiting
   */
  send(room, content, options = {}) {
    this._checkRoom(room, 'send');
    this._ensureRoom();
    const id = options.id ?? `${this._idPrefix}-${++this._seq}`;
    if (this._pending.has(id)) {
      throw new RingcastError('duplicate_id', `message id ${id} is already waiting for its ack`, { id });
    }
    let entry;
    const p = new Promise((resolve, reject) => {
      entry = { room, content, written: false, resolve, reject, retry: null };
    });
    p.catch(() => {});
    this._pending.set(id, entry);
    if (this._canPost(room)) this._writeMessage(id, entry);
    return p;
  }

  /** Sends a direct message (at-most-once, as the server delivers them). */
  sendDirect(target, content) {
    this._frame({ type: 'direct_message', target, content });
  }

  /** Sends a global chat message to every other client (at-most-once). */
  sendChat(content) {
    this._frame({ type: 'chat', content });
  }

  /** Asks who is in `room` on every node; also refreshes {@link members}. */
  presence(room) {
    this._checkRoom(room, 'presence');
    let waiter;
    const p = new Promise((resolve, reject) => {
      waiter = { resolve, reject };
    });
    p.catch(() => {});
    if (this._state === 'open') {
      this._askPresence(room, waiter);
    } else {
      // Asked once connected (see _onWelcome).
      const held = this._presenceHeld.get(room) ?? [];
      held.push(waiter);
      this._presenceHeld.set(room, held);
    }
    return p;
  }

  /** The members of a joined room as last heard (presence answer plus joins and leaves). */
  members(room) {
    const m = this._rooms.get(room)?.members;
    return m ? [...m].sort() : null;
  }

  // --- connection --------------------------------------------------------------------------

  async _open() {
    if (this._stopped) return;
    this._setState('connecting', { attempt: this._attempt });
    let token = this._token;
    if (this._getToken) {
      try {
        token = await this._getToken();
      } catch (err) {
        this.emit('error', {
          code: 'token_unavailable',
          message: `getToken() failed: ${err?.message ?? err}`,
        });
        this._scheduleReconnect(closePolicy(CloseCode.ABNORMAL), CloseCode.ABNORMAL, 'no token');
        return;
      }
      if (this._stopped) return;
    }
    const url = new URL(this._url);
    if (this._wantedId && !url.searchParams.has('client_id')) {
      url.searchParams.set('client_id', this._wantedId);
    }
    let ws;
    try {
      ws = token
        ? new this._WS(url.toString(), ['ringcast.v1', `bearer.${token}`])
        : new this._WS(url.toString());
    } catch (err) {
      this.emit('error', { code: 'connect_failed', message: String(err?.message ?? err) });
      this._scheduleReconnect(closePolicy(CloseCode.ABNORMAL), CloseCode.ABNORMAL, 'connect failed');
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    ws.onmessage = (ev) => {
      if (ws === this._ws) this._onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws === this._ws) this._onClose(ev.code, ev.reason ?? '');
    };
    ws.onerror = () => {
      // A close event follows with the code; nothing to do here.
    };
    this._timers.connect = setTimeout(() => {
      if (ws === this._ws && !this._welcomed) this._drop(ws, 'no welcome in time');
    }, this._connectTimeoutMs);
  }

  /** Gives up on a socket that is dead or stuck without waiting for its close handshake. */
  _drop(ws, reason) {
    this._detach();
    try {
      ws.close();
    } catch {
      // nothing more to do with it
    }
    this._onClose(CloseCode.ABNORMAL, reason, true);
  }

  _detach() {
    const ws = this._ws;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = () => {};
    }
    this._ws = null;
    for (const name of ['connect', 'ping', 'refresh', 'stable']) {
      clearTimeout(this._timers[name]);
      clearInterval(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _onClose(code, reason, detached = false) {
    if (!detached) this._detach();
    this._leaving.clear();
    for (const r of this._rooms.values()) {
      r.joined = false;
      // The reconnect rejoins every room; no retry of an earlier refusal on top of it.
      clearTimeout(r.retry);
      r.retry = null;
    }
    for (const m of this._pending.values()) {
      m.written = false;
      clearTimeout(m.retry);
      m.retry = null;
    }
    this._rejectPresence(new RingcastError('disconnected', 'the connection closed before the answer'));
    if (this._stopped) return;
    const policy = closePolicy(code);
    this.emit('disconnected', { code, reason, willReconnect: policy.reconnect });
    if (policy.surface) {
      this.emit('error', {
        code: surfacedCode(code),
        message: `the server closed the connection with ${code}${reason ? ` (${reason})` : ''}`,
        closeCode: code,
      });
    }
    if (!policy.reconnect) {
      this._stopped = true;
      this._finish(
        new RingcastError('closed', `the server closed the connection with ${code}`, { closeCode: code }),
        { code, reason },
      );
      return;
    }
    if (policy.newToken && !this._getToken) {
      this._stopped = true;
      this._finish(
        new RingcastError('token_expired', 'the token expired and there is no getToken() to get another', {
          closeCode: code,
        }),
        { code, reason },
      );
      return;
    }
    this._scheduleReconnect(policy, code, reason);
  }

  _scheduleReconnect(policy, code, reason) {
    const delayMs = reconnectDelay(policy.kind, this._attempt, this._reconnect, this._random);
    this._attempt += 1;
    this._setState('reconnecting', { code, reason, delayMs, attempt: this._attempt });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._open();
    }, delayMs);
  }

  /** The client is done: rejects everything waiting and says so. */
  _finish(err, details) {
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    for (const r of this._rooms.values()) {
      for (const w of r.waiters) w.reject(err);
      r.waiters = [];
      clearTimeout(r.retry);
      r.retry = null;
    }
    this._rejectPending(() => true, err);
    this._queue = [];
    this._rejectPresence(err);
    for (const w of this._welcomeWaiters) w.reject(err);
    this._welcomeWaiters = [];
    this._setState('closed', details);
  }

  _setState(state, details = {}) {
    this._state = state;
    this.emit('state', { state, ...details });
  }

  // --- frames in -----------------------------------------------------------------------------

  _onFrame(data) {
    this._lastFrameAt = Date.now();
    let ev;
    try {
      ev = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      return;
    }
    if (!ev || typeof ev !== 'object') return;
    switch (ev.event) {
      case 'welcome':
        return this._onWelcome(ev);
      case 'chat':
        return ev.room === undefined
          ? this.emit('chat', { from: ev.from, content: ev.content })
          : this._onRoomMessage(ev);
      case 'user_joined':
        return this._onUserJoined(ev);
      case 'user_left':
        return this._onUserLeft(ev);
      case 'ack':
        return this._onAck(ev);
      case 'error':
        return this._onError(ev);
      case 'presence':
        return this._onPresence(ev);
      case 'presence_stats':
        return this.emit('presence_stats', { room: ev.room, clients: ev.clients, connections: ev.connections });
      case 'direct_message':
        return this.emit('direct', { from: ev.from, content: ev.content });
      case 'history_reset':
        return this.emit('history_reset', { room: ev.room, epoch: ev.epoch });
      case 'room_revoked':
        return this._onRoomRevoked(ev);
      case 'token_refreshed':
        this.expiresAt = ev.expires_at;
        this._scheduleRefresh();
        return this.emit('token_refreshed', { expiresAt: ev.expires_at });
      case 'user_connected':
        return this.emit('user_connected', { userId: ev.user_id });
      case 'user_disconnected':
        return this.emit('user_disconnected', { userId: ev.user_id });
      case 'pong':
        return undefined;
      default:
        return this.emit('event', ev);
    }
  }

  _onWelcome(ev) {
    this._welcomed = true;
    // Presence asked on a lost connection is never answered.
    for (const r of this._rooms.values()) {
      r.asked = 0;
      r.heard = null;
    }
    clearTimeout(this._timers.connect);
    this._timers.connect = null;
    // The backoff starts over once a connection has held for a while: a server that welcomes
    // and closes at once must not get a retry loop without waits.
    this._timers.stable = setTimeout(() => {
      this._timers.stable = null;
      this._attempt = 0;
    }, this._stableAfterMs);
    this.clientId = ev.client_id;
    this.node = ev.node;
    this.expiresAt = ev.expires_at ?? null;
    this._setState('open', { node: ev.node });
    const welcome = { clientId: ev.client_id, node: ev.node, expiresAt: this.expiresAt };
    this.emit('welcome', welcome);
    this._settleWelcome(welcome);
    this._scheduleRefresh();
    this._startHeartbeat();
    for (const [room, r] of this._rooms) this._sendJoin(room, r);
    const queue = this._queue;
    this._queue = [];
    for (const frame of queue) this._write(frame);
    // Messages to rooms this client is not in (`post=anyone`) go at once; the others once
    // their room's join is acknowledged, so the server never sees them before the join.
    for (const [id, m] of this._pending) if (this._canPost(m.room)) this._writeMessage(id, m);
    const held = this._presenceHeld;
    this._presenceHeld = new Map();
    for (const [room, waiters] of held) for (const w of waiters) this._askPresence(room, w);
  }

  _settleWelcome(welcome) {
    const w = welcome ?? { clientId: this.clientId, node: this.node, expiresAt: this.expiresAt };
    for (const waiter of this._welcomeWaiters) waiter.resolve(w);
    this._welcomeWaiters = [];
  }

  _onRoomMessage(ev) {
    const r = this._rooms.get(ev.room);
    if (r) {
      if (typeof ev.offset === 'number') {
        // Already delivered (a replay overlapping what arrived live before a reconnect).
        if (r.epoch === ev.epoch && r.offset !== null && ev.offset <= r.offset) return;
        r.offset = ev.offset;
        r.epoch = ev.epoch;
      }
      if (typeof ev.id === 'string') {
        // The same sender's message stored again in a new epoch after Redis lost the room.
        const key = `${ev.from}\n${ev.id}`;
        if (r.seen.has(key)) return;
        r.seen.add(key);
        if (r.seen.size > SEEN_IDS_PER_ROOM) r.seen.delete(r.seen.values().next().value);
      }
    }
    this.emit('message', {
      room: ev.room,
      from: ev.from,
      content: ev.content,
      id: ev.id,
      offset: ev.offset,
      epoch: ev.epoch,
    });
  }

  _onUserJoined(ev) {
    const r = this._rooms.get(ev.room);
    if (r && ev.user_id === this.clientId && !r.joined) {
      // Our own join's acknowledgement.
      r.joined = true;
      const recovered = ev.recovered !== false;
      if (typeof ev.offset === 'number') {
        r.offset = ev.offset;
        r.epoch = ev.epoch;
      }
      const joined = { room: ev.room, recovered, offset: ev.offset, epoch: ev.epoch };
      if (!recovered) this.emit('recovery_failed', joined);
      this._settleJoin(ev.room, r, joined);
      for (const [id, m] of this._pending) if (m.room === ev.room) this._writeMessage(id, m);
      this._askPresence(ev.room);
      return;
    }
    if (r && ev.user_id !== this.clientId) this._heard(r, true, ev.user_id);
    if (r && r.members && ev.user_id !== this.clientId) {
      r.members.add(ev.user_id);
      this._emitMembers(ev.room, r);
    }
    this.emit('member_joined', { room: ev.room, userId: ev.user_id });
  }

  _settleJoin(room, r, joined) {
    this.emit('joined', joined);
    for (const w of r.waiters) w.resolve(joined);
    r.waiters = [];
  }

  _onUserLeft(ev) {
    const r = this._rooms.get(ev.room);
    if (ev.user_id === this.clientId && (!r || !r.joined)) {
      this._leaveAnswered(ev.room); // our own leave's ack
      return;
    }
    if (r) this._heard(r, false, ev.user_id);
    if (r && r.members) {
      r.members.delete(ev.user_id);
      this._emitMembers(ev.room, r);
    }
    this.emit('member_left', { room: ev.room, userId: ev.user_id });
  }

  _onPresence(ev) {
    const r = this._rooms.get(ev.room);
    const answer = { room: ev.room, members: ev.members, count: ev.count, truncated: ev.truncated };
    if (r) {
      // The answer, then what was heard while it was on its way (it may predate that).
      r.members = new Set(ev.members);
      for (const [joined, id] of r.heard ?? []) {
        if (joined) r.members.add(id);
        else r.members.delete(id);
      }
      this._emitMembers(ev.room, r);
    }
    this._presenceAnswered(ev.room)?.resolve(answer);
  }

  /** Asks for `room`'s presence, for `waiter` (or for the member list only), noting that an
   * answer is on its way. */
  _askPresence(room, waiter = null) {
    const r = this._rooms.get(room);
    if (r) {
      r.asked += 1;
      r.heard ??= [];
    }
    const list = this._presenceWaiters.get(room) ?? [];
    list.push(waiter);
    this._presenceWaiters.set(room, list);
    this._write({ type: 'presence', room });
  }

  /** The oldest presence request on `room` got its answer (or error): its waiter, if the app
   * asked it. */
  _presenceAnswered(room) {
    const r = this._rooms.get(room);
    if (r) {
      r.asked = Math.max(0, r.asked - 1);
      r.heard = r.asked > 0 ? [] : null;
    }
    const list = this._presenceWaiters.get(room);
    const waiter = list?.shift();
    if (list && !list.length) this._presenceWaiters.delete(room);
    return waiter ?? null;
  }

  /** Notes a join (`joined`) or leave of `id` heard while a presence answer is on its way. */
  _heard(r, joined, id) {
    if (r.heard && r.heard.length < MAX_HEARD) r.heard.push([joined, id]);
  }

  _emitMembers(room, r) {
    this.emit('presence', { room, members: [...r.members].sort() });
  }

  _onAck(ev) {
    const m = this._pending.get(ev.id);
    if (!m) return;
    this._pending.delete(ev.id);
    clearTimeout(m.retry);
    const ack = { id: ev.id, room: ev.room, offset: ev.offset, epoch: ev.epoch };
    m.resolve(ack);
    this.emit('ack', ack);
  }

  _onError(ev) {
    const err = { code: ev.code, message: ev.message, id: ev.id, room: ev.room };
    if (typeof ev.room === 'string' && ev.id === undefined) this._onRoomError(ev);
    const m = ev.id === undefined ? undefined : this._pending.get(ev.id);
    if (m) {
      if (RETRYABLE.has(ev.code)) {
        m.written = false;
        clearTimeout(m.retry);
        m.retry = setTimeout(() => {
          m.retry = null;
          if (this._pending.get(ev.id) === m && this._canPost(m.room)) this._writeMessage(ev.id, m);
        }, this._retryDelayMs);
      } else {
        this._pending.delete(ev.id);
        m.reject(new RingcastError(ev.code, ev.message ?? ev.code, { id: ev.id, room: m.room }));
      }
    }
    this.emit('error', err);
  }

  /** An error answering a request about a room (the server names the room). */
  _onRoomError(ev) {
    const room = ev.room;
    const r = this._rooms.get(room);
    const err = new RingcastError(ev.code, ev.message ?? ev.code, { room });
    const joining = r !== undefined && !r.joined;
    if (joining && JOIN_REFUSED.has(ev.code)) {
      // Refused for good: forget the room (no rejoin after a reconnect) and fail what waits on it.
      this._rooms.delete(room);
      clearTimeout(r.retry);
      for (const w of r.waiters) w.reject(err);
      r.waiters = [];
      this._rejectPending((m) => m.room === room, err);
      this._rejectPresenceOf(room, err);
      return;
    }
    if (joining && ev.code === 'bus_unavailable') {
      // The join did not happen; ask again while the room is still wanted.
      clearTimeout(r.retry);
      r.retry = setTimeout(() => {
        r.retry = null;
        if (this._rooms.get(room) === r && !r.joined && this._state === 'open') this._sendJoin(room, r);
      }, this._retryDelayMs);
      return;
    }
    if (ev.code === 'not_in_room' && this._leaveAnswered(room)) return; // a leave's answer
    if (ev.code === 'rate_limited') {
      this._resendDropped(room);
      return;
    }
    if (PRESENCE_REFUSED.has(ev.code) && this._presenceWaiters.get(room)?.length) {
      this._presenceAnswered(room)?.reject(err);
    }
  }

  /**
   * A request about `room` was dropped by the server's rate limit (the error names the room,
   * not the request): after `retryDelayMs`, sends again what this client still waits for there —
   * its join, else its leave, else a presence answer. Not after a reconnect, which sends joins
   * and presence requests again itself.
   */
  _resendDropped(room) {
    const ws = this._ws;
    setTimeout(() => {
      if (this._ws !== ws || this._state !== 'open') return;
      const r = this._rooms.get(room);
      if (r && !r.joined) {
        if (!r.retry) this._sendJoin(room, r);
      } else if (!r && this._leaving.get(room)) {
        this._write({ type: 'leave_room', room });
      } else if (this._presenceWaiters.get(room)?.length) {
        this._write({ type: 'presence', room });
      }
    }, this._retryDelayMs);
  }

  _rejectPresenceOf(room, err) {
    // The requests stay in line (their answers still come), their waiters fail now.
    const list = this._presenceWaiters.get(room) ?? [];
    for (const [i, w] of list.entries()) {
      w?.reject(err);
      list[i] = null;
    }
    for (const w of this._presenceHeld.get(room) ?? []) w.reject(err);
    this._presenceHeld.delete(room);
  }

  _onRoomRevoked(ev) {
    const r = this._rooms.get(ev.room);
    this._rooms.delete(ev.room);
    const err = new RingcastError('room_revoked', `removed from ${ev.room} (${ev.reason})`, { room: ev.room });
    if (r) for (const w of r.waiters) w.reject(err);
    this._rejectPending((m) => m.room === ev.room, err);
    this.emit('room_revoked', { room: ev.room, reason: ev.reason });
  }

  // --- frames out ----------------------------------------------------------------------------

  _checkRoom(room, what) {
    if (typeof room !== 'string' || room === '') {
      throw new TypeError(`${what}: room must be a non-empty string`);
    }
    if ([...room].length > MAX_ROOM_CHARS || ROOM_BAD_CHAR.test(room)) {
      throw new TypeError(
        `${what}: room must be at most ${MAX_ROOM_CHARS} characters, none of them whitespace or control characters`,
      );
    }
  }

  /** Throws `queue_full` when nothing more may wait. */
  _ensureRoom() {
    if (this._state === 'closed') throw new RingcastError('closed', 'the client is closed');
    if (this.queued >= this._maxQueue) {
      throw new RingcastError(
        'queue_full',
        `outgoing queue full: ${this._maxQueue} messages are waiting to be sent or acknowledged ` +
          `(connection state: ${this._state})`,
      );
    }
  }

  _frame(frame) {
    if (this._state === 'open') {
      this._write(frame);
      return;
    }
    this._ensureRoom();
    this._queue.push(frame);
  }

  /** Whether a room message to `room` may be written now. */
  _canPost(room) {
    if (this._state !== 'open') return false;
    const r = this._rooms.get(room);
    return !r || r.joined;
  }

  _writeMessage(id, m) {
    if (m.written) return;
    m.written = true;
    this._write({ type: 'room_message', room: m.room, content: m.content, id });
  }

  _sendJoin(room, r) {
    const frame = { type: 'join_room', room };
    if (r.offset !== null && r.epoch !== null && r.epoch !== undefined) {
      frame.since = { offset: r.offset, epoch: r.epoch };
    }
    this._write(frame);
  }

  _write(frame) {
    try {
      this._ws?.send(JSON.stringify(frame));
    } catch {
      // The socket is closing: its close event brings the reconnect and the resend.
    }
  }

  _rejectPending(which, err) {
    for (const [id, m] of this._pending) {
      if (!which(m)) continue;
      this._pending.delete(id);
      clearTimeout(m.retry);
      m.reject(err);
    }
  }

  _rejectPresence(err) {
    for (const list of this._presenceWaiters.values()) for (const w of list) w?.reject(err);
    this._presenceWaiters.clear();
    for (const list of this._presenceHeld.values()) for (const w of list) w.reject(err);
    this._presenceHeld.clear();
  }

  // --- timers --------------------------------------------------------------------------------

  _startHeartbeat() {
    if (!this._pingIntervalMs) return;
    this._lastFrameAt = Date.now();
    const ws = this._ws;
    this._timers.ping = setInterval(() => {
      if (ws !== this._ws) return;
      if (Date.now() - this._lastFrameAt > 2 * this._pingIntervalMs) {
        this._drop(ws, 'no answer to pings');
        return;
      }
      this._write({ type: 'ping' });
    }, this._pingIntervalMs);
  }

  /** Refreshes the token in band before it expires (when there is a `getToken`). */
  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    this._timers.refresh = null;
    if (!this._getToken || !this.expiresAt || this._refreshMarginMs === null) return;
    const left = this.expiresAt * 1000 - Date.now();
    const delay = Math.max(1000, left > 2 * this._refreshMarginMs ? left - this._refreshMarginMs : left / 2);
    const ws = this._ws;
    this._timers.refresh = setTimeout(async () => {
      this._timers.refresh = null;
      let token;
      try {
        token = await this._getToken();
      } catch (err) {
        this.emit('error', { code: 'token_unavailable', message: `getToken() failed: ${err?.message ?? err}` });
        if (ws === this._ws) this._timers.refresh = setTimeout(() => this._scheduleRefresh(), 1000);
        return;
      }
      if (ws === this._ws && this._state === 'open') this._write({ type: 'refresh', token });
    }, delay);
  }
}

function surfacedCode(code) {
  if (code === CloseCode.POLICY) return 'flooding';
  if (code === CloseCode.TOO_BIG) return 'message_too_big';
  return 'disconnected_by_server';
}
