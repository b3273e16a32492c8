// Compiled (not run) by `npm run check-types`: the declarations describe what the README shows.
import { RingcastClient, RingcastError, closePolicy, type RoomMessage } from '@ringcast/client';

const client = new RingcastClient({ url: 'ws://127.0.0.1:8080/ws', clientId: 'alice', getToken: async () => 'jwt' });
client.on('message', (m: RoomMessage) => console.log(m.room, m.from, m.content, m.offset));
client.on('state', (s) => console.log(s.state, s.code, s.delayMs));
client.on('recovery_failed', (j) => console.log(j.room, j.recovered));
client.on('presence', (p) => console.log(p.members.join(',')));
const off = client.on('error', (e) => console.log(e.code));
off();
void client.connect().then((w) => console.log(w.node, w.expiresAt));
void client.join('lobby');
client.send('lobby', { text: 'hi' }).then((ack) => console.log(ack.offset), (e: RingcastError) => console.log(e.code));
client.sendDirect('bob', 'psst');
const p: boolean = closePolicy(1012).reconnect;
console.log(p, client.members('lobby'));
