//! The node's side of presence: what this node counts (room, client id → connections here),
//! under which instance, and the one place sessions add and remove themselves.
//!
//! The local table is the truth the node can vouch for: after Redis lost its data the node
//! writes it again, after a write failed (or was cut short) it writes that entry again, and
//! after the node was swept (it froze and survivors removed its clients) it forgets everything
//! and counts under a new instance, so the old connections' removals change nothing.
//!
//! One writer per entry: while an entry is being written again from the table (`busy`), joins
//! and leaves of it only change the table and leave the entry for the next pass, so an
//! absolute write never lands on top of a newer relative one.
//!
//! Rooms that do not announce need no answer from the bus to serve a join or a leave (nobody
//! is told whether it was the client id's first or last connection), so with leases (Redis)
//! their changes are written behind ([`Tracker::add_quiet`], [`Tracker::remove_quiet`]): the
//! table changes at once, the entry is queued, and one writer task writes the queued entries
//! from the table, many per round trip (`presence_lease.rs`). A `presence` asked on this node
//! waits for what was queued before it ([`Tracker::list`]), so a client's own join is always in
//! the answer it gets after its ack.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use bytes::Bytes;
use ringcast_protocol::{ServerEvent, Target};

use crate::bus::presence::{new_instance, Entry};
use crate::bus::{Bus, BusError, PresenceChange};
use crate::metrics::Metrics;
use crate::publisher::Publisher;

/// Most entries waiting to be written again; past it the next pass writes every entry.
const MAX_DIRTY: usize = 65_536;

type Key = (String, Arc<str>);

struct State {
    instance: Arc<str>,
    local: HashMap<Key, u32>,
    /// Entries whose last write may not have reached the bus.
    dirty: HashSet<Key>,
    /// Entries being written again right now.
    busy: HashSet<Key>,
    /// Too many dirty entries were dropped: write everything again.
    all_dirty: bool,
    /// Entries in `local` per room, so a room this node no longer counts anything in is
    /// found without a scan.
    per_room: HashMap<String, usize>,
    /// Rooms being taken off the instance's room list: joins of them wait for the next pass
    /// (which lists the room again) instead of going to the bus now.
    compacting: HashSet<String>,
    /// Entries of rooms that do not announce, queued for the writer ([`Tracker::take_quiet`]),
    /// each with the sequence number of its oldest change not yet written.
    quiet: HashMap<Key, u64>,
    /// Changes queued behind so far (a sequence number; see [`Tracker::list`]).
    queued: u64,
    /// The first change that did not fit in `quiet` (left to the retry pass, which writes
    /// everything); the writer covers nothing from it on until that pass took the table.
    overflow_at: Option<u64>,
    /// Relative writes on their way to the bus, per entry: an absolute rewrite of the entry
    /// waits for them (it could land first, and they on top of it).
    in_flight: HashMap<Key, u32>,
    /// Client ids a purge of this node's own instance left with no connection anywhere (they
    /// left while the node's lease had lapsed), to announce once the lease has settled.
    gone: Vec<Key>,
    /// This node is purging its own instance (its lease was found gone) and writing its table
    /// again. The purge removes the instance's counts room by room, so a change sent now could
    /// land before its room's turn and be wiped: changes only change the table, and are
    /// written (and announced) by the retry pass after it ([`Tracker::purged`]).
    purging: bool,
}

/// What this node counts in presence.
pub struct Tracker {
    bus: Arc<dyn Bus>,
    node_id: Arc<str>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Wakes the writer of queued entries.
    wake: Notify,
    /// Up to which [`State::queued`] the writer has been through.
    written_tx: watch::Sender<u64>,
}

fn unpoison<T>(e: std::sync::PoisonError<T>) -> T {
    // Each update is a few map operations with nothing that can panic between them.
    e.into_inner()
}

/// Marks its entry dirty unless disarmed: a write whose future is dropped half-way (a timeout)
/// may or may not have reached the bus.
struct Unfinished<'a> {
    tracker: &'a Tracker,
    /// Marked dirty on drop unless disarmed.
    key: Option<Key>,
    /// Counted in `in_flight` until dropped.
    flight: Key,
    instance: Arc<str>,
}

impl Unfinished<'_> {
    fn done(mut self) {
        self.key = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let mut state = self.tracker.state.lock().unwrap_or_else(unpoison);
        if let Some(key) = self.key.take() {
            if *state.instance == *self.instance {
                mark(&mut state, key);
            }
        }
        if let Some(n) = state.in_flight.get_mut(&self.flight) {
            *n -= 1;
            if *n == 0 {
                state.in_flight.remove(&self.flight);
            }
        }
    }
}

impl Tracker {
    /// A tracker for `node_id` on `bus`, under a fresh instance.
    pub fn new(bus: Arc<dyn Bus>, node_id: Arc<str>, metrics: Arc<Metrics>) -> Self {
        Tracker {
            bus,
            metrics,
            state: Mutex::new(State {
                instance: new_instance(&node_id),
                local: HashMap::new(),
                dirty: HashSet::new(),
                busy: HashSet::new(),
                all_dirty: false,
                per_room: HashMap::new(),
                compacting: HashSet::new(),
                quiet: HashMap::new(),
                queued: 0,
                overflow_at: None,
                in_flight: HashMap::new(),
                gone: Vec::new(),
                purging: false,
            }),
            node_id,
            wake: Notify::new(),
            written_tx: watch::Sender::new(0),
        }
    }

    /// Whether a room with these announcements has its changes written behind (see the
    /// module's note): it does not announce, and the bus has leases (Redis; the in-memory
    /// bus answers at once anyway).
    pub fn writes_behind(&self, announce: bool) -> bool {
        !announce && self.has_leases()
    }

    /// One more connection of `client` in `room`, written behind.
    pub fn add_quiet(&self, room: &str, client: &Arc<str>) {
        let key = (room.to_owned(), client.clone());
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        increment(&mut state, &key);
        self.metrics.presence_entries.inc();
        queue_quiet(&mut state, key);
        drop(state);
        self.wake.notify_one();
    }

    /// One connection fewer of `client` in `room`, written behind (nothing when none was
    /// counted, e.g. under an instance that was swept).
    pub fn remove_quiet(&self, room: &str, client: &Arc<str>) {
        let key = (room.to_owned(), client.clone());
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        if !decrement(&mut state, &key) {
            return;
        }
        self.metrics.presence_entries.dec();
        queue_quiet(&mut state, key);
        drop(state);
        self.wake.notify_one();
    }

    /// Waits until something is queued behind.
    pub async fn quiet_queued(&self) {
        self.wake.notified().await
    }

    /// Up to `max` queued entries with what this node counts for each now, marked busy (give
    /// them back with [`Tracker::quiet_written`]), and the sequence number up to which every
    /// change is in them or written before. Entries being written already or of a room being
    /// taken off the list stay queued (the pass that holds them wakes the writer when done).
    pub fn take_quiet(&self, max: usize) -> (Arc<str>, Vec<Entry>, u64) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        let keys: Vec<Key> = state
            .quiet
            .keys()
            .filter(|k| {
                !state.purging
                    && !state.busy.contains(*k)
                    && !state.compacting.contains(&k.0)
                    && !state.in_flight.contains_key(*k)
            })
            .take(max)
            .cloned()
            .collect();
        for key in &keys {
            state.quiet.remove(key);
        }
        // Covered: every change before the oldest one still queued (held back, or past `max`).
        let mut covers = state
            .quiet
            .values()
            .min()
            .map_or(state.queued, |oldest| oldest - 1);
        if let Some(at) = state.overflow_at {
            covers = covers.min(at - 1);
        }
        let (instance, entries) = take(&mut state, keys);
        (instance, entries, covers)
    }

    /// Ends writing entries taken by [`Tracker::take_quiet`]: as [`Tracker::written`], and
    /// `presence` asked before `covers` was queued may answer now.
    pub fn quiet_written(&self, instance: &str, entries: &[Entry], ok: bool, covers: u64) {
        if !entries.is_empty() {
            self.written(instance, entries, ok);
        }
        self.written_tx.send_if_modified(|w| {
            let newer = covers > *w;
            *w = (*w).max(covers);
            newer
        });
    }

    /// Whether entries wait to be written behind.
    #[cfg(test)]
    fn quiet_pending(&self) -> bool {
        !self.state.lock().unwrap_or_else(unpoison).quiet.is_empty()
    }

    /// Whether the bus sweeps the presence of nodes that die (Redis: leases).
    pub fn has_leases(&self) -> bool {
        self.bus.presence().has_leases()
    }

    /// Up to `max` members of `room` on every node, with the totals; first waits (at most
    /// `wait`) for the writer to be through what this node queued behind before the call.
    pub async fn list(
        &self,
        room: &str,
        max: usize,
        wait: Duration,
    ) -> Result<crate::bus::presence::PresenceList, BusError> {
        let (queued, purging) = {
            let state = self.state.lock().unwrap_or_else(unpoison);
            (state.queued, state.purging)
        };
        let mut written = self.written_tx.subscribe();
        // While the node purges its instance nothing queued is written: no use waiting.
        if *written.borrow() < queued && !purging {
            self.wake.notify_one();
            let _ = tokio::time::timeout(wait, written.wait_for(|w| *w >= queued)).await;
        }
        self.bus.presence().list(room, max).await
    }

    /// The live node instances and their connections (with leases; else empty).
    pub async fn nodes(&self) -> Result<Vec<(String, u64)>, BusError> {
        self.bus.presence().nodes().await
    }

    /// Rooms with presence anywhere, with their client ids counted (up to `max`).
    pub async fn rooms(&self, max: usize) -> Result<(Vec<(String, u64)>, bool), BusError> {
        self.bus.presence().rooms(max).await
    }

    /// The instance this node counts under now.
    pub fn instance(&self) -> Arc<str> {
        self.state.lock().unwrap_or_else(unpoison).instance.clone()
    }

    fn mark_dirty(&self, instance: &str, key: Key) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        if *state.instance == *instance {
            mark(&mut state, key);
        }
    }

    /// Counts one connection more (`up`) or fewer for `key` here, and says under which instance
    /// to write that to the bus, with a guard that marks the entry for a retry should the
    /// write be cut short. `None`: nothing to write now (nothing counted to remove, or the
    /// entry is being written again, which takes this change into its next pass).
    fn local_change(&self, key: &Key, up: bool) -> Option<(Arc<str>, Unfinished<'_>)> {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        if up {
            increment(&mut state, key);
            self.metrics.presence_entries.inc();
        } else if decrement(&mut state, key) {
            self.metrics.presence_entries.dec();
        } else {
            return None;
        }
        if state.busy.contains(key) || state.compacting.contains(&key.0) || state.purging {
            mark(&mut state, key.clone());
            return None;
        }
        let instance = state.instance.clone();
        *state.in_flight.entry(key.clone()).or_default() += 1;
        drop(state);
        let guard = Unfinished {
            tracker: self,
            key: Some(key.clone()),
            flight: key.clone(),
            instance: instance.clone(),
        };
        Some((instance, guard))
    }

    /// Counts one connection more (`up`) or fewer of `client` in `room` here and sends that
    /// through `via` ([`Tracker::local_change`]): the entry, the instance it was sent under and
    /// the bus's answer; `None` when there was nothing to send.
    async fn send(
        &self,
        via: &Publisher,
        up: bool,
        room: &str,
        client: &Arc<str>,
        announce: Option<(Target, &Bytes)>,
    ) -> Option<(Key, Arc<str>, Result<bool, BusError>)> {
        let key = (room.to_owned(), client.clone());
        let (instance, guard) = self.local_change(&key, up)?;
        let sent = via
            .presence(change(up, room, client, &instance), announce)
            .await;
        guard.done();
        Some((key, instance, sent))
    }

    /// One more connection of `client` in `room`, written by `via` after what it queued before;
    /// true when it is the client's first there on any node, in which case `announce` (a
    /// frame for its target) went out with it.
    pub async fn add(
        &self,
        via: &Publisher,
        room: &str,
        client: &Arc<str>,
        announce: Option<(Target, &Bytes)>,
    ) -> Result<bool, BusError> {
        let announces = announce.is_some();
        let Some((key, instance, added)) = self.send(via, true, room, client, announce).await
        else {
            return Ok(false);
        };
        let rotated = *self.instance() != *instance;
        match added {
            Ok(first) if rotated => {
                // Swept while this was on its way: it was written under the old instance,
                // which no one will sweep again. Take it back out (and, when its join was
                // announced, say it is gone again).
                let left = ServerEvent::UserLeft {
                    user_id: client,
                    room,
                }
                .encode();
                let announce = (first && announces).then(|| (Target::Room(room.into()), &left));
                let _ = via
                    .presence(change(false, room, client, &instance), announce)
                    .await;
                Ok(false)
            }
            Ok(first) => Ok(first),
            Err(e) => {
                // The caller undoes the join; the bus may or may not have counted it.
                let mut state = self.state.lock().unwrap_or_else(unpoison);
                if state.instance == instance {
                    if decrement(&mut state, &key) {
                        self.metrics.presence_entries.dec();
                    }
                    mark(&mut state, key);
                }
                Err(e)
            }
        }
    }

    /// One connection fewer, written by `via` after what it queued before; true when it was the
    /// client's last one there on any node, in which case `announce` went out with it.
    /// Nothing for a connection counted under an instance that was swept.
    pub async fn remove(
        &self,
        via: &Publisher,
        room: &str,
        client: &Arc<str>,
        announce: Option<(Target, &Bytes)>,
    ) -> Result<bool, BusError> {
        let Some((key, instance, removed)) = self.send(via, false, room, client, announce).await
        else {
            return Ok(false);
        };
        if removed.is_err() {
            self.mark_dirty(&instance, key);
        }
        removed
    }

    /// Stops counting a connection here without telling the bus: a draining node's clients
    /// stay present until they reconnect elsewhere or the node's lease is swept.
    pub fn forget(&self, room: &str, client: &Arc<str>) {
        let key = (room.to_owned(), client.clone());
        if decrement(&mut self.state.lock().unwrap_or_else(unpoison), &key) {
            self.metrics.presence_entries.dec();
        }
    }

    /// Notes what a purge of this node's own instance left gone (per room, client ids), but
    /// those the node still counts there (its rewrite brings them back): they left while the
    /// node's lease had lapsed, and nobody has told their rooms yet. At most [`MAX_DIRTY`].
    pub fn note_gone(&self, gone: Vec<(String, Vec<String>)>) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        for (room, ids) in gone {
            for id in ids {
                let key: Key = (room.clone(), id.into());
                if !state.local.contains_key(&key) && state.gone.len() < MAX_DIRTY {
                    state.gone.push(key);
                }
            }
        }
    }

    /// What [`Tracker::note_gone`] noted, per room and once each, but those that came back to
    /// this node since. (One also waiting to be written again is taken too: announced here only
    /// when Redis has it absent, it is not announced by that write, which finds nothing to
    /// change; the sweep task asks Redis before it writes.)
    pub fn take_gone(&self) -> Vec<(String, Vec<String>)> {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        let gone = std::mem::take(&mut state.gone);
        let mut by_room: HashMap<String, HashSet<Arc<str>>> = HashMap::new();
        for key in gone {
            if !state.local.contains_key(&key) {
                by_room.entry(key.0).or_default().insert(key.1);
            }
        }
        by_room
            .into_iter()
            .map(|(room, ids)| (room, ids.iter().map(|id| id.to_string()).collect()))
            .collect()
    }

    /// Everything this node counts, under its instance, marked busy (to write it again);
    /// give it back with [`Tracker::written`].
    pub fn take_all(&self) -> (Arc<str>, Vec<Entry>) {
        take_everything(&mut self.state.lock().unwrap_or_else(unpoison))
    }

    /// As [`Tracker::take_all`], for a purge of this node's own instance: until
    /// [`Tracker::purged`], changes only change the table (see [`State::purging`]).
    pub fn take_all_to_purge(&self) -> (Arc<str>, Vec<Entry>) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        state.purging = true;
        take_everything(&mut state)
    }

    /// Ends a purge begun by [`Tracker::take_all_to_purge`]: the changes held meanwhile wait
    /// for the retry pass, the writer behind takes up its queue again.
    pub fn purged(&self) {
        self.state.lock().unwrap_or_else(unpoison).purging = false;
        self.wake.notify_one();
    }

    /// The entries waiting to be written again, with what this node counts for each now,
    /// marked busy; `None` when everything must be written ([`Tracker::take_all`]). Nothing
    /// while the node purges its instance (it would land under the purge).
    pub fn take_dirty(&self) -> Option<(Arc<str>, Vec<Entry>)> {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        if state.purging {
            return Some((state.instance.clone(), Vec::new()));
        }
        if state.all_dirty {
            return None;
        }
        let keys: Vec<Key> = std::mem::take(&mut state.dirty).into_iter().collect();
        let keys = settled(&mut state, keys);
        Some(take(&mut state, keys))
    }

    /// Ends a pass of writing `entries` again; when it failed they wait for the next.
    pub fn written(&self, instance: &str, entries: &[Entry], ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        // Some queued again while this pass held them: the writer takes them now.
        let mut held_back = false;
        for (room, client, _) in entries {
            let key = (room.clone(), client.clone());
            state.busy.remove(&key);
            held_back |= state.quiet.contains_key(&key);
            if !ok && *state.instance == *instance {
                mark(&mut state, key);
            }
        }
        drop(state);
        if held_back {
            self.wake.notify_one();
        }
    }

    /// This node was swept: forget everything and count under a new instance from now on.
    /// Returns the old instance and the new one.
    pub fn swept(&self) -> (Arc<str>, Arc<str>) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        state.local.clear();
        state.dirty.clear();
        state.busy.clear();
        state.all_dirty = false;
        state.per_room.clear();
        state.compacting.clear();
        state.quiet.clear();
        state.overflow_at = None;
        state.in_flight.clear();
        state.gone.clear();
        state.purging = false;
        self.metrics.presence_entries.set(0);
        let old = std::mem::replace(&mut state.instance, new_instance(&self.node_id));
        (old, state.instance.clone())
    }

    /// Of `listed` (rooms on the instance's room list), those this node counts nothing in and
    /// has no write pending or on its way for, marked as being taken off the list; give them back with
    /// [`Tracker::compacted`].
    pub fn begin_compaction(&self, listed: Vec<String>) -> (Arc<str>, Vec<String>) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        let pending: HashSet<&String> = state
            .dirty
            .iter()
            .chain(state.busy.iter())
            .chain(state.quiet.keys())
            .chain(state.in_flight.keys())
            .map(|(room, _)| room)
            .collect();
        let idle: Vec<String> = listed
            .into_iter()
            .filter(|room| !state.per_room.contains_key(room) && !pending.contains(room))
            .filter(|_| !state.all_dirty)
            .collect();
        drop(pending);
        state.compacting.extend(idle.iter().cloned());
        (state.instance.clone(), idle)
    }

    /// Ends taking `rooms` off the list (joins that came meanwhile are written by the next pass).
    pub fn compacted(&self, rooms: &[String]) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        for room in rooms {
            state.compacting.remove(room);
        }
        let held_back =
            !rooms.is_empty() && state.quiet.keys().any(|(room, _)| rooms.contains(room));
        drop(state);
        if held_back {
            self.wake.notify_one();
        }
    }

    /// Connections counted here.
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(unpoison);
        state.local.values().map(|n| *n as usize).sum()
    }

    /// Whether nothing is counted here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A change of `client`'s connections in `room` under `instance`, its announcement not yet
/// attached.
fn change(add: bool, room: &str, client: &Arc<str>, instance: &Arc<str>) -> PresenceChange {
    PresenceChange {
        add,
        room: room.to_owned(),
        client: client.clone(),
        instance: instance.clone(),
        announce: None,
    }
}

/// Of `keys`, those with no relative write on its way (an absolute rewrite must not land
/// before one) and no other pass writing them (its older count could land after this one's);
/// the others stay dirty for the next pass.
fn settled(state: &mut State, keys: Vec<Key>) -> Vec<Key> {
    let (ready, later): (Vec<Key>, Vec<Key>) = keys
        .into_iter()
        .partition(|k| !state.in_flight.contains_key(k) && !state.busy.contains(k));
    for key in later {
        mark(state, key);
    }
    ready
}

/// Every entry with no write on its way, marked busy; the others are left dirty.
fn take_everything(state: &mut State) -> (Arc<str>, Vec<Entry>) {
    state.dirty.clear();
    state.all_dirty = false;
    state.overflow_at = None;
    let keys: Vec<Key> = state.local.keys().cloned().collect();
    let keys = settled(state, keys);
    take(state, keys)
}

/// Marks `keys` busy and returns them with their counts.
fn take(state: &mut State, keys: Vec<Key>) -> (Arc<str>, Vec<Entry>) {
    let entries = keys
        .into_iter()
        .map(|key| {
            let n = state.local.get(&key).copied().unwrap_or(0);
            state.busy.insert(key.clone());
            (key.0, key.1, n)
        })
        .collect();
    (state.instance.clone(), entries)
}

/// One more for `key`.
fn increment(state: &mut State, key: &Key) {
    let n = state.local.entry(key.clone()).or_default();
    *n += 1;
    if *n == 1 {
        *state.per_room.entry(key.0.clone()).or_default() += 1;
    }
}

/// One fewer for `key`; false when there was none.
fn decrement(state: &mut State, key: &Key) -> bool {
    match state.local.get_mut(key) {
        None => false,
        Some(n) if *n <= 1 => {
            state.local.remove(key);
            if let Some(r) = state.per_room.get_mut(&key.0) {
                *r -= 1;
                if *r == 0 {
                    state.per_room.remove(&key.0);
                }
            }
            true
        }
        Some(n) => {
            *n -= 1;
            true
        }
    }
}

/// Queues `key` for the writer behind; past [`MAX_DIRTY`] queued, everything is written again
/// by the next retry pass instead.
fn queue_quiet(state: &mut State, key: Key) {
    state.queued += 1;
    let seq = state.queued;
    if state.quiet.len() < MAX_DIRTY || state.quiet.contains_key(&key) {
        // The oldest change not yet written is what a wait must cover.
        state.quiet.entry(key).or_insert(seq);
    } else {
        state.all_dirty = true;
        state.overflow_at.get_or_insert(seq);
    }
}

fn mark(state: &mut State, key: Key) {
    if state.dirty.len() < MAX_DIRTY {
        state.dirty.insert(key);
    } else {
        state.all_dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBroker;

    #[tokio::test]
    async fn a_list_waits_for_what_this_node_queued_behind_before_it() {
        let broker = MemoryBroker::new();
        let bus: Arc<dyn Bus> = Arc::new(broker.attach(Arc::new(|_| {})));
        let metrics = Arc::new(Metrics::new());
        let t = Arc::new(Tracker::new(bus.clone(), "n1".into(), metrics.clone()));
        let a: Arc<str> = "a".into();
        t.add_quiet("r", &a);
        assert_eq!(metrics.presence_entries.get(), 1);
        assert!(t.quiet_pending());
        // A slow writer: the entry reaches the bus 300 ms from now.
        let writer = {
            let (t, bus) = (t.clone(), bus.clone());
            tokio::spawn(async move {
                t.quiet_queued().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (instance, entries, covers) = t.take_quiet(10);
                assert_eq!(entries.len(), 1);
                for (room, client, _) in &entries {
                    bus.presence().add(room, client, &instance).await.unwrap();
                }
                t.quiet_written(&instance, &entries, true, covers);
            })
        };
        let listed = t.list("r", 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            listed.members,
            ["a"],
            "answered before the queued join was written"
        );
        writer.await.unwrap();
        assert!(!t.quiet_pending());
        // Nothing queued: no wait, even with no writer at all.
        let at = tokio::time::Instant::now();
        t.list("r", 10, Duration::from_secs(5)).await.unwrap();
        assert!(at.elapsed() < Duration::from_secs(1));
        // A removal of nothing counted queues nothing.
        t.remove_quiet("r", &"b".into());
        assert!(!t.quiet_pending());
    }

    fn tracker() -> (Arc<Tracker>, Arc<dyn Bus>) {
        let broker = MemoryBroker::new();
        let bus: Arc<dyn Bus> = Arc::new(broker.attach(Arc::new(|_| {})));
        let t = Arc::new(Tracker::new(
            bus.clone(),
            "n1".into(),
            Arc::new(Metrics::new()),
        ));
        (t, bus)
    }

    async fn woken(t: &Tracker) -> bool {
        tokio::time::timeout(Duration::from_millis(50), t.quiet_queued())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_queued_entry_held_by_another_pass_wakes_the_writer_once_that_pass_ends() {
        let (t, _) = tracker();
        let a: Arc<str> = "a".into();
        t.add_quiet("r", &a);
        assert!(woken(&t).await);
        // The retry pass holds every entry (Redis lost its data) and a change comes meanwhile.
        let (instance, all) = t.take_all();
        t.add_quiet("r", &a);
        assert!(woken(&t).await);
        let (_, entries, covers) = t.take_quiet(10);
        assert!(entries.is_empty(), "held by the other pass");
        assert!(covers < 2, "the held change is not covered: {covers}");
        t.quiet_written(&instance, &entries, true, covers);
        assert!(
            !woken(&t).await,
            "nothing to do until the other pass ends: no spinning"
        );
        t.written(&instance, &all, true);
        assert!(
            woken(&t).await,
            "the pass ended: the writer takes the entry now"
        );
        let (_, entries, covers) = t.take_quiet(10);
        assert_eq!(entries, [("r".to_owned(), a.clone(), 2)]);
        assert_eq!(covers, 2);
    }

    #[tokio::test]
    async fn the_writer_covers_only_what_it_took_or_wrote_before() {
        let (t, _) = tracker();
        for c in ["a", "b", "c"] {
            t.add_quiet("r", &c.into());
        }
        let (_, first, covers) = t.take_quiet(1);
        assert_eq!(first.len(), 1);
        assert!(covers < 3, "two changes still queued: {covers}");
        let (_, rest, covers) = t.take_quiet(10);
        assert_eq!(rest.len(), 2);
        assert_eq!(covers, 3);
    }

    #[tokio::test]
    async fn an_entry_with_a_relative_write_on_its_way_is_not_rewritten_before_it_lands() {
        let (t, _) = tracker();
        let key: Key = ("r".to_owned(), "a".into());
        let (_, guard) = t.local_change(&key, true).expect("a write to make");
        let (_, all) = t.take_all();
        assert!(
            all.is_empty(),
            "rewritten while its relative write is in flight: {all:?}"
        );
        guard.done();
        let (_, again) = t.take_dirty().expect("a few");
        assert_eq!(
            again,
            [("r".to_owned(), key.1.clone(), 1)],
            "left for the next pass"
        );
    }

    #[tokio::test]
    async fn a_swept_node_counts_anew_and_old_removals_change_nothing() {
        let broker = MemoryBroker::new();
        let bus: Arc<dyn Bus> = Arc::new(broker.attach(Arc::new(|_| {})));
        let metrics = Arc::new(Metrics::new());
        let t = Tracker::new(bus.clone(), "n1".into(), metrics.clone());
        let p = Publisher::start("n1".into(), bus, metrics.clone());
        let a: Arc<str> = "a".into();
        assert!(t.add(&p, "r", &a, None).await.unwrap());
        assert!(
            !t.add(&p, "r", &a, None).await.unwrap(),
            "a second connection"
        );
        assert_eq!(t.len(), 2);
        assert_eq!(metrics.presence_entries.get(), 2);
        let (old, new) = t.swept();
        assert_ne!(old, new);
        assert!(t.is_empty());
        assert_eq!(metrics.presence_entries.get(), 0);
        assert!(
            !t.remove(&p, "r", &a, None).await.unwrap(),
            "counted under the swept instance"
        );
        t.forget("r", &a);
        assert!(t.take_all().1.is_empty());
    }

    #[tokio::test]
    async fn an_entry_being_written_again_takes_joins_and_leaves_into_the_next_pass() {
        let broker = MemoryBroker::new();
        let bus: Arc<dyn Bus> = Arc::new(broker.attach(Arc::new(|_| {})));
        let t = Tracker::new(bus.clone(), "n1".into(), Arc::new(Metrics::new()));
        let p = Publisher::start("n1".into(), bus, Arc::new(Metrics::new()));
        let a: Arc<str> = "a".into();
        assert!(t.add(&p, "r", &a, None).await.unwrap());
        let (instance, entries) = t.take_all();
        assert_eq!(entries, [("r".to_owned(), a.clone(), 1)]);
        // Busy: neither goes to the bus now, and neither is announced now.
        assert!(!t.add(&p, "r", &a, None).await.unwrap());
        assert!(!t.remove(&p, "r", &a, None).await.unwrap());
        t.written(&instance, &entries, true);
        let (_, again) = t.take_dirty().expect("a few");
        assert_eq!(
            again,
            [("r".to_owned(), a.clone(), 1)],
            "the next pass writes 1"
        );
        t.written(&instance, &again, true);
    }

    #[tokio::test]
    async fn only_rooms_with_nothing_counted_or_pending_are_taken_off_the_list() {
        let broker = MemoryBroker::new();
        let bus: Arc<dyn Bus> = Arc::new(broker.attach(Arc::new(|_| {})));
        let t = Tracker::new(bus.clone(), "n1".into(), Arc::new(Metrics::new()));
        let p = Publisher::start("n1".into(), bus, Arc::new(Metrics::new()));
        let a: Arc<str> = "a".into();
        assert!(t.add(&p, "busy", &a, None).await.unwrap());
        assert!(t.add(&p, "gone", &a, None).await.unwrap());
        assert!(t.remove(&p, "gone", &a, None).await.unwrap());
        let listed = vec!["busy".to_owned(), "gone".to_owned(), "old".to_owned()];
        let (_, idle) = t.begin_compaction(listed);
        assert_eq!(idle, ["gone", "old"]);
        // A join of a room being taken off waits for the next pass, which lists it again.
        assert!(!t.add(&p, "gone", &a, None).await.unwrap());
        t.compacted(&idle);
        let (_, dirty) = t.take_dirty().expect("a few");
        assert_eq!(dirty, [("gone".to_owned(), a.clone(), 1)]);
    }

    #[tokio::test]
    async fn an_entry_another_pass_is_writing_is_left_for_the_next_pass() {
        let (t, _) = tracker();
        let a: Arc<str> = "a".into();
        t.add_quiet("r", &a);
        let (instance, held, covers) = t.take_quiet(10);
        assert_eq!(held.len(), 1);
        // Its older count could land after a rewrite's newer one: neither pass takes it.
        assert!(
            t.take_all().1.is_empty(),
            "taken while another pass holds it"
        );
        assert!(t.take_dirty().expect("a few").1.is_empty());
        t.quiet_written(&instance, &held, true, covers);
        let (_, again) = t.take_dirty().expect("a few");
        assert_eq!(again, [("r".to_owned(), a.clone(), 1)], "left dirty");
    }

    #[tokio::test]
    async fn while_purging_changes_wait_and_presence_does_not() {
        let (t, _) = tracker();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let (instance, all) = t.take_all_to_purge();
        assert!(all.is_empty());
        t.add_quiet("quiet", &a);
        let (_, entries, _) = t.take_quiet(10);
        assert!(entries.is_empty(), "written behind during the purge");
        assert!(
            t.local_change(&("loud".to_owned(), b.clone()), true)
                .is_none(),
            "sent to the bus during the purge"
        );
        assert!(
            t.take_dirty().expect("nothing").1.is_empty(),
            "rewritten during the purge"
        );
        // presence answers at once rather than waiting for the held queue.
        let at = tokio::time::Instant::now();
        t.list("quiet", 10, Duration::from_secs(5)).await.unwrap();
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "presence waited for the purge"
        );
        t.written(&instance, &all, true);
        t.purged();
        assert!(woken(&t).await, "the writer takes its queue up again");
        let (_, entries, _) = t.take_quiet(10);
        assert_eq!(entries, [("quiet".to_owned(), a.clone(), 1)]);
        let (_, dirty) = t.take_dirty().expect("a few");
        assert_eq!(dirty, [("loud".to_owned(), b.clone(), 1)]);
    }

    #[tokio::test]
    async fn a_client_id_noted_gone_twice_is_taken_once_and_not_when_back() {
        let (t, _) = tracker();
        let gone = || vec![("r".to_owned(), vec!["a".to_owned(), "b".to_owned()])];
        t.note_gone(gone());
        t.note_gone(gone());
        t.add_quiet("r", &"b".into());
        assert_eq!(t.take_gone(), [("r".to_owned(), vec!["a".to_owned()])]);
        assert!(t.take_gone().is_empty());
    }
}
