//! The node's presence lease, and the sweep of nodes whose lease ran out.
//!
//! Every `lease / 6` the task renews this node's lease (at most every `lease / 3`), retries the
//! presence writes that failed, and polls the lease index for instances whose lease ran out:
//! one survivor wins each sweep's claim, removes the dead instance's connections from every
//! room's presence and tells each room `user_left` once per client id left with no connection
//! anywhere. A node only sweeps others once its own lease has held for a whole lease: after
//! Redis was away, everyone's lease has lapsed, and the others must get the chance to renew
//! theirs before anybody is taken for dead.
//!
//! A renewal that finds this node swept (it froze past its lease) closes every client with
//! 1012: survivors already told the rooms they left, so they reconnect and are counted anew.

use std::sync::Arc;
use std::time::Duration;

use ringcast_protocol::{ServerEvent, Target};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::bus::presence::Renewal;
use crate::bus::{Bus, Channel};
use crate::outbound::Closing;
use crate::state::Shared;

/// Dead instances looked at per poll.
const SWEEPS_PER_POLL: usize = 16;

/// A node that was swept while it was frozen closes its clients with this.
const SWEPT: Closing = Closing::Server {
    code: 1012,
    reason: "presence lease lost",
    drain: true,
};

/// Runs until the node's drain has stopped everything.
pub async fn run(shared: Arc<Shared>, bus: Arc<dyn Bus>) {
    if !bus.presence().has_leases() {
        return;
    }
    let lease = shared.config.presence_lease();
    let mut tick = tokio::time::interval((lease / 6).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed: Option<Instant> = None;
    let mut held_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shared.drain.stopped() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if renewed.is_none_or(|at| now.duration_since(at) >= lease / 3) {
            match renew(&shared, &bus, lease).await {
                Some(true) => {
                    renewed = Some(now);
                    held_since.get_or_insert(now);
                }
                Some(false) => {
                    renewed = Some(now);
                    held_since = Some(now);
                }
                None => {
                    renewed = None;
                    held_since = None;
                }
            }
        }
        retry_dirty(&shared, &bus).await;
        if held_since.is_some_and(|since| now.duration_since(since) >= lease) {
            sweep_dead(&shared, &bus).await;
        }
    }
}

/// Renews the lease: `Some(true)` held, `Some(false)` taken anew (or after a sweep), `None`
/// failed.
async fn renew(shared: &Shared, bus: &Arc<dyn Bus>, lease: Duration) -> Option<bool> {
    let presence = bus.presence();
    let tracker = &shared.presence;
    match presence.renew(&tracker.instance(), lease).await {
        Ok(Renewal::Held) => Some(true),
        Ok(Renewal::Taken) => {
            // Redis lost the lease (a restart) or this is the first one: write what we count.
            let (instance, entries) = tracker.entries();
            if let Err(e) = presence.resync(&instance, &entries).await {
                warn!(error = %e, "presence not written again; retrying");
                return None;
            }
            Some(false)
        }
        Ok(Renewal::Swept) => {
            let old = tracker.instance();
            let new = tracker.swept();
            shared.metrics.presence_swept_self.inc();
            warn!(
                old = %old,
                new = %new,
                "this node was swept while unresponsive; closing its clients so they reconnect"
            );
            shared.hub.close_all(SWEPT);
            match presence.renew(&new, lease).await {
                Ok(_) => Some(false),
                Err(_) => None,
            }
        }
        Err(e) => {
            warn!(error = %e, "presence lease not renewed");
            None
        }
    }
}

/// Writes again the entries whose last write failed, telling rooms about clients that turn
/// out to be gone.
async fn retry_dirty(shared: &Shared, bus: &Arc<dyn Bus>) {
    let (instance, entries) = shared.presence.take_dirty();
    if entries.is_empty() {
        return;
    }
    match bus.presence().resync(&instance, &entries).await {
        Ok(gone) => {
            for i in gone {
                let (room, client, _) = &entries[i];
                announce_left(shared, room, client).await;
            }
        }
        Err(e) => {
            warn!(error = %e, "presence retry failed");
            shared.presence.redirty(&instance, entries);
        }
    }
}

/// Tells `room` that `client` left it (when the room announces), through the bus.
async fn announce_left(shared: &Shared, room: &str, client: &str) -> bool {
    if !shared.room_options.resolve(room).settings.announce {
        return false;
    }
    let left = ServerEvent::UserLeft {
        user_id: client,
        room,
    }
    .encode();
    let channel = Channel::Room(room.to_owned());
    let target = Target::Room(room.to_owned());
    shared
        .publisher
        .publish(channel, target, &left)
        .await
        .is_ok()
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
                warn!(error = %e, instance, "sweep failed; another poll retries");
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
        for (room, ids) in swept {
            for id in ids {
                if announce_left(shared, &room, &id).await {
                    shared.metrics.presence_sweep_announcements.inc();
                }
            }
        }
    }
}
