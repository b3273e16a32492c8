//! Who is connected to this node and who is in which room, and fan-out of bus envelopes to them.
//!
//! The hub is plain synchronous state behind one `RwLock` that is never held across `.await`,
//! nor across any I/O: what is to be logged is collected under the lock and logged after it.
//! Besides membership it keeps, for every room and client channel, whether the bus subscription is
//! active. A join or connect that finds its channel inactive gets a one-shot "ready" receiver and
//! marks the channel dirty; the subscription manager (`subscriptions.rs`) reconciles dirty
//! channels with the bus one batch at a time, so racing joins and leaves always converge on
//! "subscribed exactly while there are local members".
//!
//! A channel marked active is trusted only while the bus says its subscriptions are live
//! ([`Hub::follow_bus`]): while the bus resubscribes after losing its connection, a join or
//! connect on an active channel waits too, and is woken once the bus has them all again
//! ([`Hub::resume`]), so an ack always means that what is published from then on arrives.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::IntCounter;
use ringcast_protocol::stored::{StoredMessage, STORED_TAG};
use ringcast_protocol::{Envelope, EnvelopeError, ServerEvent, Target};
use tokio::sync::{oneshot, watch, Notify};
use tracing::warn;

use crate::bus::Channel;
use crate::metrics::Metrics;
use crate::outbound::{ConnId, Outbound, Push, SLOW_CONSUMER};
use crate::wire;

mod fill;
pub mod stream;

use stream::{RoomMembers, Stream, Then, PAUSED};

/// Local members of one channel and the state of its bus subscription.
struct Topic<M> {
    members: M,
    active: bool,
    waiters: Vec<oneshot::Sender<()>>,
    /// How many waiters the last pruning pass left (see [`Topic::add_waiter`]).
    pruned_len: usize,
}

impl<M: Default> Default for Topic<M> {
    fn default() -> Self {
        Topic {
            members: M::default(),
            active: false,
            waiters: Vec::new(),
            pruned_len: 0,
        }
    }
}

/// A waiter list shorter than this is never pruned.
const PRUNE_FROM: usize = 16;

impl<M> Topic<M> {
    /// Adds a waiter. Waiters that gave up (timed out) are dropped from time to time, so an
    /// outage does not grow the list: only once it has doubled since the last pass, so that
    /// many joins waiting at once cost linear work under the lock, not quadratic.
    fn add_waiter(&mut self, checks: &impl Fn(usize)) -> oneshot::Receiver<()> {
        if self.waiters.len() >= (2 * self.pruned_len).max(PRUNE_FROM) {
            checks(self.waiters.len());
            self.waiters.retain(|w| !w.is_closed());
            self.pruned_len = self.waiters.len();
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
    }

    /// Takes every waiter (to wake them).
    fn take_waiters(&mut self) -> Vec<oneshot::Sender<()>> {
        self.pruned_len = 0;
        std::mem::take(&mut self.waiters)
    }
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Arc<Outbound>>,
    clients: HashMap<Arc<str>, Topic<Vec<Arc<Outbound>>>>,
    rooms: HashMap<String, Topic<RoomMembers>>,
    /// Channels whose waiters only [`Hub::resume`] wakes: marked active while the bus was not
    /// live. Filled only during an outage and emptied by the resume after it.
    resuming: HashSet<Channel>,
}

/// Membership counts for `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    /// Open connections.
    pub connections: usize,
    /// Distinct client ids with a connection.
    pub clients: usize,
    /// Rooms with at least one local member.
    pub rooms: usize,
}

/// A join refused: the room has its `max_members` here already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomFull;

/// A subscription to set up: `Some(rx)` resolves when the channel is active on the bus.
pub type Ready = Option<oneshot::Receiver<()>>;

/// Local membership and fan-out.
pub struct Hub {
    node_id: Arc<str>,
    state: RwLock<State>,
    dirty: Mutex<HashSet<Channel>>,
    dirty_notify: Notify,
    /// Rooms waiting for a gap fill (each at most once: see `fill.rs`).
    fills: Mutex<Vec<String>>,
    fill_notify: Notify,
    /// Whether the bus's subscriptions are live; unset: always.
    bus_live: OnceLock<watch::Receiver<bool>>,
    metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    rooms_occupied: AtomicUsize,
    out_broadcast: IntCounter,
    out_room: IntCounter,
    out_direct: IntCounter,
    /// Waiters looked at while pruning (the unit tests bound the work done under the lock).
    #[cfg(test)]
    waiter_checks: AtomicU64,
    /// Topics `resume` looked at.
    #[cfg(test)]
    resume_visits: AtomicU64,
}

fn recover<T>(e: std::sync::PoisonError<T>) -> T {
    // Every critical section leaves the maps consistent, so a panic elsewhere must not cascade.
    e.into_inner()
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Hub {
    /// An empty hub for the node `node_id`.
    pub fn new(node_id: &str, metrics: Arc<Metrics>) -> Self {
        let out = |route: &str| metrics.messages_out.with_label_values(&[route]);
        Hub {
            node_id: node_id.into(),
            state: RwLock::new(State::default()),
            dirty: Mutex::new(HashSet::new()),
            dirty_notify: Notify::new(),
            fills: Mutex::new(Vec::new()),
            fill_notify: Notify::new(),
            bus_live: OnceLock::new(),
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            rooms_occupied: AtomicUsize::new(0),
            out_broadcast: out("broadcast"),
            out_room: out("room"),
            out_direct: out("direct"),
            metrics,
            #[cfg(test)]
            waiter_checks: AtomicU64::new(0),
            #[cfg(test)]
            resume_visits: AtomicU64::new(0),
        }
    }

    /// Trusts active channels only while `live_rx` is true (the bus's
    /// [`crate::bus::Bus::subscriptions_live`]); set once, before serving.
    pub fn follow_bus(&self, live_rx: watch::Receiver<bool>) {
        let _ = self.bus_live.set(live_rx);
    }

    fn bus_live(&self) -> bool {
        self.bus_live.get().is_none_or(|rx| *rx.borrow())
    }

    /// The bus has every subscription again: wakes whoever waited on an active channel
    /// meanwhile. Does nothing if the bus has lost them again since.
    pub fn resume(&self) {
        let mut state = self.state.write().unwrap_or_else(recover);
        if !self.bus_live() {
            return;
        }
        let State {
            clients,
            rooms,
            resuming,
            ..
        } = &mut *state;
        // Only the channels that got waiters meanwhile, not every room and client.
        #[cfg(test)]
        self.resume_visits
            .fetch_add(resuming.len() as u64, Ordering::Relaxed);
        for channel in resuming.drain() {
            let topic_waiters = match &channel {
                Channel::Broadcast => None,
                Channel::Room(room) => rooms
                    .get_mut(room.as_str())
                    .filter(|t| t.active)
                    .map(Topic::take_waiters),
                Channel::Client(id) => clients
                    .get_mut(id.as_str())
                    .filter(|t| t.active)
                    .map(Topic::take_waiters),
            };
            // (An inactive one is being subscribed: `subscribed` wakes its waiters.)
            for w in topic_waiters.into_iter().flatten() {
                let _ = w.send(());
            }
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts for `/stats`.
    pub fn stats(&self) -> HubStats {
        let state = self.state.read().unwrap_or_else(recover);
        HubStats {
            connections: state.conns.len(),
            clients: state
                .clients
                .values()
                .filter(|t| !t.members.is_empty())
                .count(),
            rooms: state
                .rooms
                .values()
                .filter(|t| !t.members.is_empty())
                .count(),
        }
    }

    /// Adds a connection. Returns whether it is its client id's first one here, and when the
    /// client's direct channel is ready.
    pub fn register(&self, out: Arc<Outbound>) -> (bool, Ready) {
        let mut state = self.state.write().unwrap_or_else(recover);
        state.conns.insert(out.id, out.clone());
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.inc();
        let State {
            clients, resuming, ..
        } = &mut *state;
        let topic = clients.entry(out.client_id.clone()).or_default();
        let first = topic.members.is_empty();
        topic.members.push(out.clone());
        let channel = Channel::Client(out.client_id.to_string());
        let ready = self.ready_for(topic, resuming, channel);
        (first, ready)
    }

    /// Removes a connection (after its rooms were left). Returns whether it was its client id's
    /// last one here.
    pub fn unregister(&self, out: &Outbound) -> bool {
        let mut state = self.state.write().unwrap_or_else(recover);
        if state.conns.remove(&out.id).is_some() {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            self.metrics.connections.dec();
        }
        let Some(topic) = state.clients.get_mut(&out.client_id) else {
            return false;
        };
        topic.members.retain(|o| o.id != out.id);
        let last = topic.members.is_empty();
        if last {
            self.mark_dirty(Channel::Client(out.client_id.to_string()));
        }
        last
    }

    /// Adds a connection to a room that takes at most `max_members` here (checked under the
    /// same lock as the insert, so concurrent joins cannot overshoot). The returned receiver
    /// resolves once the room's channel is active on the bus (`None`: it already is).
    pub fn join(
        &self,
        room: &str,
        out: &Arc<Outbound>,
        max_members: Option<usize>,
    ) -> Result<Ready, RoomFull> {
        self.join_as(room, out, max_members, false)
    }

    /// [`Hub::join`] for a member to be brought up to date first: no live message of the room
    /// reaches it until [`Hub::caught_up`].
    pub fn join_paused(
        &self,
        room: &str,
        out: &Arc<Outbound>,
        max_members: Option<usize>,
    ) -> Result<Ready, RoomFull> {
        self.join_as(room, out, max_members, true)
    }

    fn join_as(
        &self,
        room: &str,
        out: &Arc<Outbound>,
        max_members: Option<usize>,
        paused: bool,
    ) -> Result<Ready, RoomFull> {
        let mut state = self.state.write().unwrap_or_else(recover);
        let State {
            rooms, resuming, ..
        } = &mut *state;
        if let Some(topic) = rooms.get(room) {
            if max_members.is_some_and(|max| topic.members.len() >= max)
                && !topic.members.contains_key(&out.id)
            {
                return Err(RoomFull);
            }
        }
        let topic = rooms.entry(room.to_owned()).or_default();
        if topic.members.is_empty() {
            self.rooms_occupied.fetch_add(1, Ordering::Relaxed);
            self.metrics.rooms.inc();
        }
        topic.members.insert(out.id, out.clone());
        if paused {
            topic.members.stream().recovering.insert(out.id, PAUSED);
        }
        Ok(self.ready_for(topic, resuming, Channel::Room(room.to_owned())))
    }

    /// The rooms with local members, the most members first: at most `limit` of them, and how
    /// many there are in all. (Names are copied only for the rooms returned.)
    pub fn rooms(&self, limit: usize) -> (Vec<(String, usize)>, usize) {
        let state = self.state.read().unwrap_or_else(recover);
        let mut occupied: Vec<(&String, usize)> = state
            .rooms
            .iter()
            .filter(|(_, t)| !t.members.is_empty())
            .map(|(name, t)| (name, t.members.len()))
            .collect();
        let total = occupied.len();
        let by_size = |a: &(&String, usize), b: &(&String, usize)| b.1.cmp(&a.1).then(a.0.cmp(b.0));
        if occupied.len() > limit && limit > 0 {
            occupied.select_nth_unstable_by(limit - 1, by_size);
        }
        occupied.truncate(limit);
        occupied.sort_unstable_by(by_size);
        let rooms = occupied
            .into_iter()
            .map(|(name, n)| (name.clone(), n))
            .collect();
        (rooms, total)
    }

    /// Removes a connection from a room.
    pub fn leave(&self, room: &str, id: ConnId) {
        let mut state = self.state.write().unwrap_or_else(recover);
        let Some(topic) = state.rooms.get_mut(room) else {
            return;
        };
        topic.members.stream().recovering.remove(&id);
        if topic.members.remove(&id).is_some() && topic.members.is_empty() {
            // Where the stream stood means nothing to whoever joins next (its ack says where
            // it starts), and a fill for nobody ends here.
            *topic.members.stream() = Stream::default();
            self.rooms_occupied.fetch_sub(1, Ordering::Relaxed);
            self.metrics.rooms.dec();
            self.mark_dirty(Channel::Room(room.to_owned()));
        }
    }

    fn ready_for<M>(
        &self,
        topic: &mut Topic<M>,
        resuming: &mut HashSet<Channel>,
        channel: Channel,
    ) -> Ready {
        if topic.active && self.bus_live() {
            return None;
        }
        let rx = topic.add_waiter(&|_checked| {
            #[cfg(test)]
            self.waiter_checks
                .fetch_add(_checked as u64, Ordering::Relaxed);
        });
        if topic.active {
            // Active but the bus is resubscribing: it restores this channel by itself, and
            // `resume` wakes the waiter.
            resuming.insert(channel);
        } else {
            self.mark_dirty(channel);
        }
        Some(rx)
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, closing: crate::outbound::Closing) {
        let state = self.state.read().unwrap_or_else(recover);
        for out in state.conns.values() {
            out.close(closing);
        }
    }

    /// Ends the replay of member `out` in `room`: queues `frames` (the last of them the ack)
    /// and lets live messages after offset `through` of `epoch` reach it. Refused, with the
    /// room's position, while this node has already delivered past `through` in that epoch:
    /// the caller replays those too and tries again.
    pub fn caught_up(
        &self,
        room: &str,
        out: &Outbound,
        through: u64,
        epoch: &str,
        frames: &[Bytes],
    ) -> Result<(), u64> {
        let state = self.state.read().unwrap_or_else(recover);
        let Some(topic) = state.rooms.get(room) else {
            return Ok(());
        };
        let mut stream = topic.members.stream();
        if let Some((last, e)) = &stream.last {
            if **e == *epoch && *last > through {
                return Err(*last);
            }
        }
        if stream.recovering.contains_key(&out.id) {
            for frame in frames {
                out.push(frame);
            }
            stream.recovering.insert(out.id, through);
        }
        Ok(())
    }

    /// Hands one bus payload to its local recipients. Never blocks: a recipient whose queue is
    /// full is closed as a slow consumer instead.
    pub fn deliver(&self, payload: Bytes) {
        self.metrics.bus_received.inc();
        if payload.first() == Some(&STORED_TAG) {
            return self.deliver_stored(&payload);
        }
        let envelope = match Envelope::decode(&payload) {
            Ok(e) => e,
            Err(e) => {
                let reason = match e {
                    EnvelopeError::UnsupportedVersion(_) => "version",
                    _ => "malformed",
                };
                warn!(error = %e, "rejected bus envelope");
                self.metrics.bus_rejected.with_label_values(&[reason]).inc();
                return;
            }
        };
        let age = now_micros().saturating_sub(envelope.sent_at_micros);
        self.metrics
            .delivery_latency
            .observe(age as f64 / 1_000_000.0);
        let Ok(text) = std::str::from_utf8(&envelope.frame) else {
            self.metrics.bus_rejected.with_label_values(&["utf8"]).inc();
            return;
        };
        // Encoded once; every member's queue shares these bytes.
        let frame = wire::text(text);
        let mut slow = SlowConsumers::default();
        let state = self.state.read().unwrap_or_else(recover);
        let (sent, counter) = match &envelope.target {
            Target::AllExcept(except) => {
                let except = except.as_deref();
                let targets = state
                    .conns
                    .values()
                    .filter(|o| Some(&*o.client_id) != except);
                (
                    self.fan_out(targets, &frame, &mut slow),
                    &self.out_broadcast,
                )
            }
            Target::Room(room) => match state.rooms.get(room) {
                Some(t) => (
                    self.fan_out(t.members.values(), &frame, &mut slow),
                    &self.out_room,
                ),
                None => (0, &self.out_room),
            },
            Target::RoomExcept { room, conn } => match state.rooms.get(room) {
                Some(t) => {
                    let skip = (*envelope.origin == *self.node_id).then_some(*conn);
                    let targets = t.members.values().filter(|o| Some(o.id) != skip);
                    (self.fan_out(targets, &frame, &mut slow), &self.out_room)
                }
                None => (0, &self.out_room),
            },
            Target::Client(id) => match state.clients.get(id.as_str()) {
                Some(t) => (
                    self.fan_out(t.members.iter(), &frame, &mut slow),
                    &self.out_direct,
                ),
                None => (0, &self.out_direct),
            },
            Target::Command { client, command } => {
                if let Some(t) = state.clients.get(client.as_str()) {
                    for out in t.members.iter() {
                        if !out.command(command.clone()) {
                            warn!(client_id = %client, "server API command dropped: too many waiting");
                        }
                    }
                }
                (0, &self.out_direct)
            }
        };
        drop(state);
        counter.inc_by(sent);
        // Logged only now: a log line can block (a full stdout pipe), and must not hold up
        // joins, leaves and connects waiting for the lock. One line however many there were:
        // this runs on the bus's reader, which must not stall on logging either.
        slow.log();
    }

    /// Delivers a numbered room message: in order, each once, and with a `history_reset` first
    /// when the room's stream on this node broke (new epoch, reissued or skipped offsets).
    fn deliver_stored(&self, payload: &[u8]) {
        let msg = match StoredMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "rejected stored room message");
                self.metrics
                    .bus_rejected
                    .with_label_values(&["malformed"])
                    .inc();
                return;
            }
        };
        if msg.offset == 0 {
            // Offsets start at 1: no script of ours sent this.
            self.metrics
                .bus_rejected
                .with_label_values(&["malformed"])
                .inc();
            return;
        }
        let age = now_micros().saturating_sub(msg.sent_at_micros);
        self.metrics
            .delivery_latency
            .observe(age as f64 / 1_000_000.0);
        let frame = wire::text(msg.frame);
        let mut slow = SlowConsumers::default();
        let state = self.state.read().unwrap_or_else(recover);
        let Some(topic) = state.rooms.get(msg.room) else {
            return;
        };
        let mut stream = topic.members.stream();
        let live = stream.live(msg.offset, msg.epoch, &frame);
        if live.reset {
            warn!(
                room = msg.room,
                offset = msg.offset,
                "room history was lost or reissued: members told history_reset"
            );
            stream.forget_replays();
            self.send_reset(msg.room, &topic.members, msg.epoch, &mut slow);
        }
        let sent = match live.then {
            Then::Deliver => {
                self.fan_out_stored(&topic.members, &mut stream, msg.offset, &frame, &mut slow)
            }
            Then::Drop => {
                self.metrics.history_duplicates.inc();
                0
            }
            Then::Hold { start_fill } => {
                if start_fill {
                    self.request_fill(msg.room);
                }
                0
            }
        };
        drop(stream);
        drop(state);
        self.out_room.inc_by(sent);
        slow.log();
    }

    /// Tells every member of `room` `history_reset` (the one frame shared by all).
    fn send_reset(&self, room: &str, members: &RoomMembers, epoch: &str, slow: &mut SlowConsumers) {
        self.metrics.history_resets.inc();
        let event = ServerEvent::HistoryReset { room, epoch }.encode();
        let frame = wire::event(&event);
        self.fan_out(members.values(), &frame, slow);
    }

    /// Queues numbered message `offset` for the members that want it (not those whose replay
    /// already gave it to them).
    fn fan_out_stored(
        &self,
        members: &RoomMembers,
        stream: &mut Stream,
        offset: u64,
        frame: &Bytes,
        slow: &mut SlowConsumers,
    ) -> u64 {
        if stream.recovering.is_empty() {
            return self.fan_out(members.values(), frame, slow);
        }
        let targets: Vec<&Arc<Outbound>> = members
            .values()
            .filter(|o| stream.wants(o.id, offset))
            .collect();
        self.fan_out(targets.into_iter(), frame, slow)
    }

    /// Queues `frame` for every target; the ones this call closed as slow consumers are added
    /// to `slow`, for logging once the lock is released.
    fn fan_out<'a>(
        &self,
        targets: impl Iterator<Item = &'a Arc<Outbound>>,
        frame: &Bytes,
        slow: &mut SlowConsumers,
    ) -> u64 {
        let mut sent = 0;
        for out in targets {
            match out.push(frame) {
                Push::Queued => sent += 1,
                Push::Full => {
                    if self.close_slow_consumer(out) {
                        slow.add(out);
                    }
                }
                Push::Closed => {}
            }
        }
        sent
    }

    /// Closes a connection whose queue is full, counts it and logs it. Not for use under the
    /// hub's lock (it logs).
    pub fn slow_consumer(&self, out: &Outbound) {
        if self.close_slow_consumer(out) {
            log_slow_consumer(out);
        }
    }

    /// Closes a connection whose queue is full and counts it; returns whether this call closed
    /// it (and it should be logged). No I/O: safe under the hub's lock.
    fn close_slow_consumer(&self, out: &Outbound) -> bool {
        self.metrics.send_queue_drops.inc();
        let closed = out.close(SLOW_CONSUMER);
        if closed {
            self.metrics.slow_consumer_disconnects.inc();
        }
        closed
    }

    // ---- subscription bookkeeping, driven by the subscription manager ----

    fn mark_dirty(&self, channel: Channel) {
        self.dirty.lock().unwrap_or_else(recover).insert(channel);
        self.dirty_notify.notify_one();
    }

    /// Waits until some channel may need (un)subscribing.
    pub async fn dirty_changed(&self) {
        self.dirty_notify.notified().await;
    }

    /// Marks channels for another reconciliation pass.
    pub fn requeue(&self, channels: impl IntoIterator<Item = Channel>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(recover);
        dirty.extend(channels);
        drop(dirty);
        self.dirty_notify.notify_one();
    }

    /// Takes the dirty channels and decides which to subscribe and which to unsubscribe. Channels
    /// chosen for unsubscribing are marked inactive right away, so a join racing the unsubscribe
    /// waits for the resubscription instead of trusting a subscription about to vanish.
    pub fn plan(&self) -> (Vec<Channel>, Vec<Channel>) {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(recover));
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        if dirty.is_empty() {
            return (subscribe, unsubscribe);
        }
        let mut state = self.state.write().unwrap_or_else(recover);
        for channel in dirty {
            let decision = match &channel {
                Channel::Broadcast => None,
                Channel::Room(room) => {
                    plan_topic(&mut state.rooms, room.as_str(), |m| !m.is_empty())
                }
                Channel::Client(id) => {
                    plan_topic(&mut state.clients, id.as_str(), |m| !m.is_empty())
                }
            };
            match decision {
                Some(true) => subscribe.push(channel),
                Some(false) => unsubscribe.push(channel),
                None => {}
            }
        }
        (subscribe, unsubscribe)
    }

    /// Records that the bus subscribed these channels and wakes whoever waited for them.
    pub fn subscribed(&self, channels: &[Channel]) {
        let mut state = self.state.write().unwrap_or_else(recover);
        // Lost again already: the waiters wait for `resume`.
        let live = self.bus_live();
        for channel in channels {
            let (active, wake) = match channel {
                Channel::Broadcast => continue,
                Channel::Room(room) => mark_active(&mut state.rooms, room.as_str(), live),
                Channel::Client(id) => mark_active(&mut state.clients, id.as_str(), live),
            };
            for w in wake {
                let _ = w.send(());
            }
            if !live {
                state.resuming.insert(channel.clone());
            }
            if !active {
                // Emptied while subscribing: the next pass unsubscribes.
                self.mark_dirty(channel.clone());
            }
        }
    }

    /// Records that the bus unsubscribed these channels; forgets empty ones.
    pub fn unsubscribed(&self, channels: &[Channel]) {
        let mut state = self.state.write().unwrap_or_else(recover);
        for channel in channels {
            let refilled = match channel {
                Channel::Broadcast => continue,
                Channel::Room(room) => forget_if_empty(&mut state.rooms, room.as_str()),
                Channel::Client(id) => forget_if_empty(&mut state.clients, id.as_str()),
            };
            if refilled {
                self.mark_dirty(channel.clone());
            }
        }
    }
}

fn log_slow_consumer(out: &Outbound) {
    warn!(client_id = %out.client_id, conn = out.id, "slow consumer disconnected");
}

/// Slow consumers one delivery closed, for one log line after the lock: how many, and the
/// first few by name (bounded, whatever the room's size).
#[derive(Default)]
struct SlowConsumers {
    count: usize,
    first: Vec<(Arc<str>, ConnId)>,
}

impl SlowConsumers {
    /// Most connections a log line names.
    const NAMED: usize = 5;

    fn add(&mut self, out: &Outbound) {
        self.count += 1;
        if self.first.len() < Self::NAMED {
            self.first.push((out.client_id.clone(), out.id));
        }
    }

    fn log(self) {
        match self.count {
            0 => {}
            1 => {
                let (client_id, conn) = &self.first[0];
                warn!(%client_id, conn, "slow consumer disconnected");
            }
            count => {
                let first: Vec<String> = self
                    .first
                    .iter()
                    .map(|(id, conn)| format!("{id}#{conn}"))
                    .collect();
                warn!(count, first = %first.join(","), "slow consumers disconnected");
            }
        }
    }
}

trait Members {
    fn is_empty(&self) -> bool;
}
impl Members for Vec<Arc<Outbound>> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}
impl Members for RoomMembers {
    fn is_empty(&self) -> bool {
        HashMap::is_empty(self)
    }
}

/// `Some(true)`: subscribe; `Some(false)`: unsubscribe; `None`: nothing to do.
fn plan_topic<K, M>(
    map: &mut HashMap<K, Topic<M>>,
    key: &str,
    wanted: impl Fn(&M) -> bool,
) -> Option<bool>
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
    M: Members,
{
    let topic = map.get_mut(key)?;
    match (wanted(&topic.members), topic.active) {
        (true, false) => Some(true),
        (false, true) => {
            topic.active = false;
            Some(false)
        }
        (false, false) => {
            map.remove(key);
            None
        }
        (true, true) => None,
    }
}

/// Marks a topic active; returns whether it still has members, and the waiters to wake (none
/// unless `wake`).
fn mark_active<K, M>(
    map: &mut HashMap<K, Topic<M>>,
    key: &str,
    wake: bool,
) -> (bool, Vec<oneshot::Sender<()>>)
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
    M: Members,
{
    match map.get_mut(key) {
        Some(topic) => {
            topic.active = true;
            let waiters = if wake {
                topic.take_waiters()
            } else {
                Vec::new()
            };
            (!topic.members.is_empty(), waiters)
        }
        // Forgotten meanwhile (cannot happen while the manager is the only one to remove topics,
        // but an unsubscribe pass will clean up either way).
        None => (false, Vec::new()),
    }
}

/// Drops an unsubscribed topic unless members came back; returns whether they did.
fn forget_if_empty<K, M>(map: &mut HashMap<K, Topic<M>>, key: &str) -> bool
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
    M: Members,
{
    match map.get(key) {
        Some(t) if !t.members.is_empty() => true,
        Some(_) => {
            map.remove(key);
            false
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new("n", Arc::new(Metrics::new()))
    }

    fn conn(hub: &Hub, client: &str) -> (Arc<Outbound>, crate::outbound::OutboundRx) {
        Outbound::new(hub.next_conn_id(), client.into(), 8, 1 << 20)
    }

    fn room(r: &str) -> Channel {
        Channel::Room(r.into())
    }

    #[test]
    fn a_full_room_refuses_newcomers_but_not_members_and_rooms_lists_the_largest_first() {
        let hub = hub();
        let conns: Vec<_> = (0..40).map(|i| conn(&hub, &format!("c{i}"))).collect();
        assert!(hub.join("full", &conns[0].0, Some(2)).is_ok());
        assert!(hub.join("full", &conns[1].0, Some(2)).is_ok());
        assert!(matches!(
            hub.join("full", &conns[2].0, Some(2)),
            Err(RoomFull)
        ));
        assert!(
            hub.join("full", &conns[1].0, Some(2)).is_ok(),
            "already a member"
        );
        hub.leave("full", conns[0].0.id);
        assert!(hub.join("full", &conns[2].0, Some(2)).is_ok());
        // Rooms r1..r30 with i members each, among the 40 connections.
        for i in 1..=30 {
            for (c, _) in &conns[..i] {
                let _ = hub.join(&format!("r{i}"), c, None).unwrap();
            }
        }
        let (top, total) = hub.rooms(3);
        assert_eq!(total, 31);
        assert_eq!(
            top,
            [
                ("r30".to_owned(), 30),
                ("r29".to_owned(), 29),
                ("r28".to_owned(), 28)
            ]
        );
        let (all, total) = hub.rooms(1000);
        assert_eq!((all.len(), total), (31, 31));
        assert_eq!(all.last(), Some(&("r1".to_owned(), 1)));
    }

    #[test]
    fn join_waits_for_subscription_and_leave_unsubscribes() {
        let hub = hub();
        let (a, _ra) = conn(&hub, "a");
        let mut ready = hub
            .join("r", &a, None)
            .unwrap()
            .expect("inactive room must wait");
        assert_eq!(hub.plan(), (vec![room("r")], vec![]));
        assert!(ready.try_recv().is_err());
        hub.subscribed(&[room("r")]);
        assert!(ready.try_recv().is_ok());
        let (b, _rb) = conn(&hub, "b");
        assert!(
            hub.join("r", &b, None).unwrap().is_none(),
            "active room is ready at once"
        );
        hub.leave("r", a.id);
        assert_eq!(hub.plan(), (vec![], vec![]));
        hub.leave("r", b.id);
        assert_eq!(hub.plan(), (vec![], vec![room("r")]));
        hub.unsubscribed(&[room("r")]);
        assert_eq!(hub.plan(), (vec![], vec![]));
        assert_eq!(hub.stats().rooms, 0);
    }

    #[test]
    fn join_racing_unsubscribe_resubscribes() {
        let hub = hub();
        let (a, _ra) = conn(&hub, "a");
        let _ = hub.join("r", &a, None).unwrap();
        hub.plan();
        hub.subscribed(&[room("r")]);
        hub.leave("r", a.id);
        assert_eq!(hub.plan(), (vec![], vec![room("r")]));
        // A join lands while the unsubscribe is in flight: it must wait, not trust the old one.
        let mut ready = hub
            .join("r", &a, None)
            .unwrap()
            .expect("must wait for resubscription");
        hub.unsubscribed(&[room("r")]);
        assert_eq!(hub.plan(), (vec![room("r")], vec![]));
        hub.subscribed(&[room("r")]);
        assert!(ready.try_recv().is_ok());
    }

    #[test]
    fn joins_wait_while_the_bus_resubscribes_and_resume_wakes_them() {
        let hub = hub();
        let (live_tx, live_rx) = watch::channel(true);
        hub.follow_bus(live_rx);
        let (a, _ra) = conn(&hub, "a");
        let _ = hub.join("r", &a, None).unwrap();
        hub.plan();
        hub.subscribed(&[room("r")]);
        live_tx.send_replace(false);
        let (b, _rb) = conn(&hub, "b");
        let mut ready = hub
            .join("r", &b, None)
            .unwrap()
            .expect("an active room waits while the bus is down");
        assert_eq!(
            hub.plan(),
            (vec![], vec![]),
            "the bus restores it by itself"
        );
        // A channel subscribed while the bus is down again does not wake its waiters either.
        let (c, _rc) = conn(&hub, "c");
        let mut other = hub.join("s", &c, None).unwrap().expect("new room");
        hub.plan();
        hub.subscribed(&[room("s")]);
        hub.resume();
        assert!(ready.try_recv().is_err() && other.try_recv().is_err());
        live_tx.send_replace(true);
        hub.resume();
        assert!(ready.try_recv().is_ok() && other.try_recv().is_ok());
        assert!(
            hub.join("r", &c, None).unwrap().is_none(),
            "live again: ready at once"
        );
    }

    #[test]
    fn rejoins_while_the_bus_resubscribes_cost_linear_work_and_resume_visits_only_waiters() {
        let hub = hub();
        let (live_tx, live_rx) = watch::channel(true);
        hub.follow_bus(live_rx);
        // Many rooms subscribed, one of them with members about to rejoin.
        let (a, _ra) = conn(&hub, "a");
        for i in 0..1000 {
            let _ = hub.join(&format!("r{i}"), &a, None).unwrap();
        }
        hub.plan();
        hub.subscribed(
            &(0..1000)
                .map(|i| room(&format!("r{i}")))
                .collect::<Vec<_>>(),
        );
        live_tx.send_replace(false);
        const JOINS: usize = 10_000;
        let mut waiting = Vec::new();
        let mut outs = Vec::new();
        for i in 0..JOINS {
            let (o, rx) = conn(&hub, &format!("c{i}"));
            waiting.push(
                hub.join("r0", &o, None)
                    .unwrap()
                    .expect("waits while the bus resubscribes"),
            );
            outs.push((o, rx));
        }
        let checks = hub.waiter_checks.load(Ordering::Relaxed);
        assert!(
            checks <= 4 * JOINS as u64,
            "{checks} waiter checks under the write lock for {JOINS} joins"
        );
        // Half of them give up (time out): the list is pruned, the others still wait.
        waiting.truncate(JOINS / 2);
        for (o, _) in &outs {
            let _ = hub.join("r1", o, None).unwrap();
        }
        live_tx.send_replace(true);
        hub.resume();
        assert!(
            waiting.iter_mut().all(|w| w.try_recv().is_ok()),
            "all woken"
        );
        assert_eq!(
            hub.resume_visits.load(Ordering::Relaxed),
            2,
            "resume visits the two rooms with waiters, not all 1000 nor the clients"
        );
    }

    #[test]
    fn leave_racing_subscribe_unsubscribes_afterwards() {
        let hub = hub();
        let (a, _ra) = conn(&hub, "a");
        let _ = hub.join("r", &a, None).unwrap();
        assert_eq!(hub.plan(), (vec![room("r")], vec![]));
        hub.leave("r", a.id);
        hub.subscribed(&[room("r")]);
        assert_eq!(hub.plan(), (vec![], vec![room("r")]));
    }

    /// Records, for every log event, whether the hub's lock was free when it was emitted.
    struct LockProbe {
        hub: Arc<Hub>,
        free: Arc<Mutex<Vec<bool>>>,
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LockProbe {
        fn on_event(
            &self,
            _event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let free = self.hub.state.try_write().is_ok();
            self.free.lock().unwrap().push(free);
        }
    }

    #[test]
    fn slow_consumers_are_logged_after_the_hub_lock_is_released_in_one_line_per_delivery() {
        use tracing_subscriber::layer::SubscriberExt;
        let hub = Arc::new(hub());
        let mut rxs = Vec::new();
        for i in 0..20 {
            let (out, rx) = Outbound::new(hub.next_conn_id(), format!("c{i}").into(), 1, 1 << 20);
            hub.register(out.clone());
            let _ = hub.join("r", &out, None).unwrap();
            rxs.push(rx);
        }
        let free = Arc::new(Mutex::new(Vec::new()));
        let probe = LockProbe {
            hub: hub.clone(),
            free: free.clone(),
        };
        let send = || {
            let envelope = Envelope::new("n", now_micros(), Target::Room("r".into()), b"{}");
            hub.deliver(envelope.encode().unwrap());
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(probe), || {
            send();
            send();
        });
        let free = free.lock().unwrap();
        assert_eq!(
            free.len(),
            1,
            "one warning for the 20 slow consumers of one delivery, none for the next"
        );
        assert!(
            free.iter().all(|f| *f),
            "a slow consumer was logged under the hub lock: {free:?}"
        );
    }

    #[test]
    fn deliver_routes_by_target_and_closes_slow_consumers() {
        let hub = hub();
        let (a, ra) = conn(&hub, "a");
        let (b, rb) = conn(&hub, "b");
        hub.register(a.clone());
        hub.register(b.clone());
        let _ = hub.join("r", &b, None).unwrap();
        let send = |target| {
            hub.deliver(
                Envelope::new("n", now_micros(), target, b"{}")
                    .encode()
                    .unwrap(),
            )
        };
        send(Target::AllExcept(Some("a".into())));
        send(Target::Room("r".into()));
        send(Target::Client("a".into()));
        send(Target::Client("nobody".into()));
        assert_eq!(ra.try_recv().unwrap(), wire::text("{}"), "one text frame");
        assert!(ra.try_recv().is_err());
        assert!(rb.try_recv().is_ok());
        assert!(rb.try_recv().is_ok());
        assert!(rb.try_recv().is_err());
        for _ in 0..9 {
            send(Target::Client("a".into()));
        }
        assert!(a.is_closing(), "9 frames into a queue of 8");
        assert!(!b.is_closing());
        hub.deliver(Bytes::from_static(b"\x07garbage"));
        hub.deliver(Bytes::from_static(b"\x01garbage"));
    }
}
