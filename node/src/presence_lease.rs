//! The node's presence lease, the sweep of nodes whose lease ran out, and the writer of what
//! rooms without announcements change. Three tasks, so a long sweep never delays the node's own
//! renewal, nor a burst of joins either:
//!
//! - **renew**, every third of the lease: renews it. Found gone, the node writes its table
//!   again; when Redis lost it (not the instance's first lease) it first removes what its
//!   instance still had there, holding changes back from the bus meanwhile (they would land
//!   under the removal) for the retry pass, and renewing the lease while that runs. The client
//!   ids that removal left gone (they left while the lease had lapsed, e.g. during a Redis
//!   outage longer than the lease) are announced by the sweep task once the lease has
//!   settled. Found swept (it froze past its lease), it closes every client with 1012 —
//!   survivors already told the rooms they left, so they reconnect and are counted anew —
//!   counts under a new instance, and removes what the old one still had (joins it served
//!   between waking and finding out), announcing those that leaves gone.
//! - **sweep**, every sixth of the lease, once the lease has held for a whole lease (so the
//!   other nodes are subscribed again after a Redis outage): writes again the entries whose
//!   last write failed, and
//!   polls the lease index (timed by Redis's clock) for instances whose lease ran out; one
//!   survivor wins each claim, removes the dead instance's connections from every room and
//!   tells each room `user_left` once per client id left with no connection anywhere. A node
//!   only sweeps others once its own lease has held for a whole lease: after Redis was away
//!   everyone's lease has lapsed, and the others must get the chance to renew first.
//! - **write behind**, whenever joins or leaves of rooms that do not announce were queued
//!   (`presence.rs`): writes the queued entries from the node's table, up to
//!   [`WRITE_BEHIND_BATCH`] per round trip, until none is left. A failed write leaves them to
//!   the sweep task's retry pass.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringcast_protocol::{ServerEvent, Target};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::bus::presence::{Change, Entry, Renewal};
use crate::bus::{Bus, Channel};
use crate::outbound::Closing;
use crate::state::Shared;

/// Dead instances looked at per poll.
const SWEEPS_PER_POLL: usize = 16;

/// Most queued entries one write-behind pass takes.
const WRITE_BEHIND_BATCH: usize = 1024;

/// A node that was swept while it was frozen closes its clients with this.
const SWEPT: Closing = Closing::Server {
    code: 1012,
    reason: "presence lease lost",
    drain: true,
};

/// Since when this node's lease has held without a break (shared by the two tasks).
type HeldSince = Arc<Mutex<Option<Instant>>>;

/// Runs both tasks until the node's drain has stopped everything.
pub async fn run(shared: Arc<Shared>, bus: Arc<dyn Bus>) {
    if !bus.presence().has_leases() {
        return;
    }
    let held: HeldSince = Arc::new(Mutex::new(None));
    // Its own task: however busy the writer gets, renewals and sweeps are polled.
    let writer = tokio::spawn(write_behind_loop(shared.clone(), bus.clone()));
    tokio::join!(
        renew_loop(shared.clone(), bus.clone(), held.clone()),
        sweep_loop(shared, bus, held),
        async {
            let _ = writer.await;
        },
    );
}

async fn write_behind_loop(shared: Arc<Shared>, bus: Arc<dyn Bus>) {
    // Woken by each change queued; the tick takes up what a failed pass left queued.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.drain.stopped() => return,
            _ = shared.presence.quiet_queued() => {}
            _ = tick.tick() => {}
        }
        write_behind(&shared, &bus).await;
    }
}

/// Writes what is queued behind until nothing is left (or a write fails: the retry pass of
/// the sweep task takes those entries on).
async fn write_behind(shared: &Shared, bus: &Arc<dyn Bus>) {
    let tracker = &shared.presence;
    loop {
        let (instance, entries, covers) = tracker.take_quiet(WRITE_BEHIND_BATCH);
        if entries.is_empty() {
            tracker.quiet_written(&instance, &entries, true, covers);
            return;
        }
        let written = bus.presence().write_quiet(&instance, &entries).await;
        tracker.quiet_written(&instance, &entries, written.is_ok(), covers);
        if written.is_ok() && *tracker.instance() != *instance {
            // Swept while this was on its way: what it wrote under the old instance, which no
            // one sweeps again, comes back out — these entries only (these rooms announce
            // nothing).
            let zeroed: Vec<Entry> = entries
                .iter()
                .map(|(room, client, _)| (room.clone(), client.clone(), 0))
                .collect();
            let _ = bus.presence().write_quiet(&instance, &zeroed).await;
        }
        if let Err(e) = written {
            warn!(error = %e, "presence not written behind; left to the retry pass");
            return;
        }
    }
}

fn set_held(held: &HeldSince, value: Option<Instant>, keep: bool) {
    let mut h = held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *h = if keep { h.or(value) } else { value };
}

async fn renew_loop(shared: Arc<Shared>, bus: Arc<dyn Bus>, held: HeldSince) {
    let lease = shared.config.presence_lease();
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memo = Memo::default();
    loop {
        tokio::select! {
            _ = shared.drain.stopped() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        match renew(&shared, &bus, lease, &held, &mut memo).await {
            Some(true) => set_held(&held, Some(now), true),
            Some(false) => set_held(&held, Some(now), false),
            None => set_held(&held, None, false),
        }
    }
}

/// What the renew task remembers from one renewal to the next.
#[derive(Default)]
struct Memo {
    /// The instance Redis has answered a renewal for: its lease taken anew after that was lost.
    leased: Option<Arc<str>>,
    /// The table is still to be written again (`Some(true)`: after removing what the instance
    /// had), because the last try did not finish.
    redo: Option<bool>,
}

/// Renews the lease: `Some(true)` held, `Some(false)` taken anew (and the table written again),
/// `None` failed.
async fn renew(
    shared: &Shared,
    bus: &Arc<dyn Bus>,
    lease: Duration,
    held: &HeldSince,
    memo: &mut Memo,
) -> Option<bool> {
    let instance = shared.presence.instance();
    let connections = shared.hub.connection_count();
    let answer = bus.presence().renew(&instance, lease, connections).await;
    let lost = matches!(answer, Ok(Renewal::Taken)) && memo.leased.as_ref() == Some(&instance);
    if matches!(answer, Ok(Renewal::Held | Renewal::Taken)) {
        memo.leased = Some(instance);
    }
    let purge = match (answer, memo.redo) {
        (Ok(Renewal::Held), None) => return Some(true),
        (Ok(Renewal::Held | Renewal::Taken), redo) => lost || redo == Some(true),
        (Ok(Renewal::Swept), _) => {
            memo.redo = None;
            return swept(shared, bus, lease).await;
        }
        (Err(e), _) => {
            warn!(error = %e, "presence lease not renewed");
            return None;
        }
    };
    // Nothing is announced (nor retried) until the lease has held for a whole lease again.
    set_held(held, None, false);
    match rewrite(shared, bus, lease, purge).await {
        Ok(()) => {
            memo.redo = None;
            Some(false)
        }
        Err(lost_again) => {
            memo.redo = Some(purge || lost_again);
            None
        }
    }
}

/// Writes the node's table again: Redis may have lost it with the lease (a restart, maybe
/// from an older snapshot). With `purge` (the lease was lost, not the instance's first), what
/// the instance still had there is removed first, changes meanwhile only changing the table
/// until the table is written (the retry pass writes and announces them; a new instance has
/// nothing older to remove, and its first joins are not held up). `Err(true)`: the lease was
/// lost again or swept meanwhile; `Err(false)`: a write failed.
async fn rewrite(
    shared: &Shared,
    bus: &Arc<dyn Bus>,
    lease: Duration,
    purge: bool,
) -> Result<(), bool> {
    let tracker = &shared.presence;
    let presence = bus.presence();
    let (instance, entries) = if purge {
        tracker.take_all_to_purge()
    } else {
        tracker.take_all()
    };
    let work = async {
        if purge {
            let gone = presence.purge(&instance, false).await?;
            // Who left while the lease had lapsed: told once the lease has settled.
            tracker.note_gone(gone);
        }
        presence.resync(&instance, &entries).await.map(|_| ())
    };
    // One round trip per room listed, and per 256 entries: on a big node that can outlast
    // the lease, which is renewed meanwhile (else a survivor sweeps this node).
    let done = renewing(shared, bus, lease, &instance, work).await;
    tracker.written(&instance, &entries, matches!(done, Ok(Ok(()))));
    if purge {
        tracker.purged();
    }
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, "presence not written again; retrying");
            Err(false)
        }
        Err(renewal) => {
            warn!(
                ?renewal,
                "presence lease lost again while writing it again; retrying"
            );
            Err(true)
        }
    }
}

/// This node was swept while it was frozen: its clients are closed, it counts under a new
/// instance, and what the old one still had is removed (joins served between waking and
/// finding out), announcing those that leaves gone.
async fn swept(shared: &Shared, bus: &Arc<dyn Bus>, lease: Duration) -> Option<bool> {
    let presence = bus.presence();
    let (old, new) = shared.presence.swept();
    shared.metrics.presence_swept_self.inc();
    warn!(
        old = %old,
        new = %new,
        "this node was swept while unresponsive; closing its clients so they reconnect"
    );
    shared.hub.close_all(SWEPT);
    let renewed = presence.renew(&new, lease, 0).await.is_ok();
    match presence.purge(&old, true).await {
        Ok(gone) => announce_all(shared, gone).await,
        Err(e) => warn!(error = %e, "the old instance's presence is left to a sweep"),
    }
    renewed.then_some(false)
}

/// Runs `work`, renewing `instance`'s lease every third of it until `work` is done; gives up on
/// `work` when a renewal finds the lease taken anew or swept (and returns that).
async fn renewing<T>(
    shared: &Shared,
    bus: &Arc<dyn Bus>,
    lease: Duration,
    instance: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Renewal> {
    let every = (lease / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = tick.tick() => {
                let connections = shared.hub.connection_count();
                match bus.presence().renew(instance, lease, connections).await {
                    Ok(Renewal::Held) => {}
                    Ok(other) => return Err(other),
                    Err(e) => warn!(error = %e, "presence lease not renewed"),
                }
            }
        }
    }
}

async fn sweep_loop(shared: Arc<Shared>, bus: Arc<dyn Bus>, held: HeldSince) {
    let lease = shared.config.presence_lease();
    let mut tick = tokio::time::interval((lease / 6).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = 0;
    loop {
        tokio::select! {
            _ = shared.drain.stopped() => return,
            _ = tick.tick() => {}
        }
        let since = *held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Settled: the lease has held for a whole lease since Redis was last away, so the
        // other nodes have had the time to take their subscriptions back too, and what is
        // announced now (a retried leave, a sweep) reaches them.
        if since.is_some_and(|since| since.elapsed() >= lease) {
            // First: it asks Redis whether those noted gone are absent before the rewrite
            // changes what Redis has (see `Tracker::take_gone`).
            announce_noted_gone(&shared, &bus).await;
            rewrite_dirty(&shared, &bus).await;
            sweep_dead(&shared, &bus).await;
        }
        cursor = compact(&shared, &bus, cursor).await;
    }
}

/// Announces the client ids a purge of this node's own instance left gone, but those that came
/// back meanwhile, here or on another node (which announced them joined: a `user_left` now
/// would be false).
async fn announce_noted_gone(shared: &Shared, bus: &Arc<dyn Bus>) {
    for (room, ids) in shared.presence.take_gone() {
        match bus.presence().absent(&room, &ids).await {
            Ok(absent) => {
                for client in absent {
                    announce(shared, &room, &client, Change::Gone).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "presence not read; leaves announced on the next pass");
                shared.presence.note_gone(vec![(room, ids)]);
            }
        }
    }
}

/// Takes one page of rooms this node no longer counts anything in off its instance's room list,
/// so the list (which a sweep of this node would read) stays as long as what it counts.
/// Returns the cursor for the next page.
async fn compact(shared: &Shared, bus: &Arc<dyn Bus>, cursor: u64) -> u64 {
    let presence = bus.presence();
    let instance = shared.presence.instance();
    let Ok((next, listed)) = presence.listed_rooms(&instance, cursor).await else {
        return 0;
    };
    let (counted_as, idle) = shared.presence.begin_compaction(listed);
    if *counted_as == *instance {
        if let Err(e) = presence.unlist_rooms(&instance, &idle).await {
            warn!(error = %e, "rooms not taken off the presence list; next pass");
        }
    }
    shared.presence.compacted(&idle);
    if next == 0 {
        presence.relist();
    }
    next
}

/// Writes again the entries whose last write failed (all of them after an overflow), and
/// announces the client ids that turn out gone or newly present.
async fn rewrite_dirty(shared: &Shared, bus: &Arc<dyn Bus>) {
    let tracker = &shared.presence;
    let (instance, entries): (Arc<str>, Vec<Entry>) = match tracker.take_dirty() {
        Some(dirty) => dirty,
        None => tracker.take_all(),
    };
    if entries.is_empty() {
        return;
    }
    let written = bus.presence().resync(&instance, &entries).await;
    tracker.written(&instance, &entries, written.is_ok());
    match written {
        Ok(changed) => {
            for (i, change) in changed {
                let (room, client, _) = &entries[i];
                announce(shared, room, client, change).await;
            }
        }
        Err(e) => warn!(error = %e, "presence retry failed"),
    }
}

/// Tells `room` that `client` left or joined it (when the room announces), through the bus.
async fn announce(shared: &Shared, room: &str, client: &str, change: Change) -> bool {
    if !shared.room_options.resolve(room).settings.announce {
        return false;
    }
    let frame = match change {
        Change::Gone => ServerEvent::UserLeft {
            user_id: client,
            room,
        }
        .encode(),
        Change::Appeared => ServerEvent::UserJoined {
            user_id: client,
            room,
            recovered: None,
            offset: None,
            epoch: None,
        }
        .encode(),
    };
    let channel = Channel::Room(room.to_owned());
    let target = Target::Room(room.to_owned());
    shared
        .publisher
        .publish(channel, target, &frame)
        .await
        .is_ok()
}

/// Announces every client id a sweep or purge left gone.
async fn announce_all(shared: &Shared, gone: Vec<(String, Vec<String>)>) {
    for (room, ids) in gone {
        for id in ids {
            if announce(shared, &room, &id, Change::Gone).await {
                shared.metrics.presence_sweep_announcements.inc();
            }
        }
    }
}

/// Sweeps instances whose lease ran out, announcing the client ids they took with them.
async fn sweep_dead(shared: &Shared, bus: &Arc<dyn Bus>) {
    let presence = bus.presence();
    let Ok(dead) = presence.expired(SWEEPS_PER_POLL).await else {
        return;
    };
    let me = shared.presence.instance();
    for instance in dead.into_iter().filter(|i| **i != *me) {
        let swept = match presence.sweep(&instance, &me).await {
            Ok(Some(swept)) => swept,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, instance, "sweep failed; retried once its claim is old");
                continue;
            }
        };
        shared.metrics.presence_sweeps.inc();
        let gone: usize = swept.iter().map(|(_, ids)| ids.len()).sum();
        info!(
            instance,
            rooms = swept.len(),
            gone,
            "swept a dead node's presence"
        );
        announce_all(shared, swept).await;
    }
}
