// The demo chat: rooms, who is here, messages and the connection state, on @ringcast/client.
// Served by the gateway at /demo/ when started with --demo. Query parameters: client_id (default
// a random guest name), room (default lobby), token (a JWT when authentication is on).

import { RingcastClient } from './ringcast/index.js';

const params = new URLSearchParams(location.search);
const clientId = params.get('client_id') || `guest-${Math.random().toString(36).slice(2, 8)}`;
const token = params.get('token') || undefined;
const $ = (id) => document.getElementById(id);

const chat = new RingcastClient({
  url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`,
  clientId: token ? undefined : clientId,
  token,
});
/** room → [{from, content, key}] in the order received; shown for the current room. */
const log = new Map();
let current = params.get('room') || 'lobby';

function show(el, text, cls) {
  el.textContent = text;
  if (cls !== undefined) el.className = cls;
}

function renderRooms() {
  const ul = $('rooms');
  ul.replaceChildren(
    ...chat.rooms.map((room) => {
      const li = document.createElement('li');
      li.textContent = `#${room}`;
      li.dataset.room = room;
      if (room === current) li.className = 'current';
      li.onclick = () => select(room);
      return li;
    }),
  );
}

function renderMembers() {
  $('members').replaceChildren(
    ...(chat.members(current) ?? []).map((m) => {
      const li = document.createElement('li');
      li.textContent = m;
      return li;
    }),
  );
}

function messageItem(m) {
  const li = document.createElement('li');
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = m.from;
  li.append(from, typeof m.content === 'string' ? m.content : JSON.stringify(m.content));
  li.dataset.from = m.from;
  li.dataset.text = typeof m.content === 'string' ? m.content : JSON.stringify(m.content);
  if (m.from === chat.clientId) li.classList.add('mine');
  return li;
}

function renderMessages() {
  $('messages').replaceChildren(...(log.get(current) ?? []).map(messageItem));
  $('messages').scrollTop = $('messages').scrollHeight;
}

function notice(text) {
  $('notice').hidden = !text;
  $('notice').textContent = text ?? '';
}

function select(room) {
  current = room;
  if (!log.has(room)) log.set(room, []);
  renderRooms();
  renderMembers();
  renderMessages();
}

function join(room) {
  if (!log.has(room)) log.set(room, []);
  chat.join(room).catch((e) => notice(`could not join ${room}: ${e.message}`));
  select(room);
}

chat.on('state', (s) => {
  const where = s.state === 'open' ? ` · ${s.node}` : '';
  const wait = s.state === 'reconnecting' ? ` in ${(s.delayMs / 1000).toFixed(1)} s (${s.code})` : '';
  show($('state'), `${s.state}${where}${wait}`, `state ${s.state}`);
});
chat.on('welcome', (w) => show($('me'), `you are ${w.clientId}`));
chat.on('message', (m) => {
  if (!log.has(m.room)) log.set(m.room, []);
  log.get(m.room).push(m);
  if (m.room === current) {
    $('messages').append(messageItem(m));
    $('messages').scrollTop = $('messages').scrollHeight;
  }
});
chat.on('presence', (p) => p.room === current && renderMembers());
chat.on('joined', () => renderRooms());
chat.on('recovery_failed', (j) => notice(`#${j.room}: some messages were missed while away and could not be recovered`));
chat.on('history_reset', (h) => notice(`#${h.room}: the server lost this room's history; messages may be missing`));
chat.on('room_revoked', (r) => {
  notice(`you were removed from #${r.room}`);
  renderRooms();
});
chat.on('error', (e) => {
  if (e.code === 'queue_full' || e.closeCode) notice(e.message);
});

$('join').onsubmit = (ev) => {
  ev.preventDefault();
  const room = $('room-name').value.trim();
  if (room) join(room);
  $('room-name').value = '';
};
$('composer').onsubmit = (ev) => {
  ev.preventDefault();
  const text = $('text').value;
  if (!text) return;
  try {
    chat.send(current, text);
    $('text').value = '';
    notice(null);
  } catch (e) {
    notice(e.message);
  }
};

// For people poking around in the console, and for the browser test.
window.chat = chat;
window.demo = { join, select, get current() { return current; }, log };

chat.connect();
join(current);
