//! The subscription manager: keeps the bus subscribed to exactly the channels the hub needs.
//!
//! One task per node applies the hub's plan in batches (one SUBSCRIBE for many rooms), which both
//! serializes changes per channel, so racing joins and leaves cannot reorder a subscribe and an
//! unsubscribe, and keeps the number of bus round trips low under churn.
//!
//! On a bus with a round trip per command, commands are also spaced [`WINDOW`] apart: a node
//! taking thousands of connections a second would otherwise send one SUBSCRIBE per client (the
//! previous one is usually answered before the next client arrives), and each costs Redis and
//! the node a read, a write and a wake-up. A change after a quiet spell goes out at once; under
//! churn, what changes within a window goes out as one command, a millisecond later at most.
//!
//! It also follows whether the bus's subscriptions are live: once a bus that lost them has them
//! all again, it tells the hub, which wakes the joins that waited meanwhile and fills the rooms'
//! gaps from history (`gap_fill.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::bus::Bus;
use crate::hub::Hub;
use ringcast_net::drain::Drain;

/// Pause before retrying subscriptions after a bus error.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Least time between two commands on a bus with a round trip per command.
pub const WINDOW: Duration = Duration::from_millis(1);

/// Runs until the node has drained (see [`Drain::stopped`]).
pub async fn run(hub: Arc<Hub>, bus: Arc<dyn Bus>, drain: Drain) {
    let window = if bus.batches_publishes() {
        WINDOW
    } else {
        Duration::ZERO
    };
    let mut last_command: Option<Instant> = None;
    let mut live_rx = bus.subscriptions_live();
    // A bus that cannot lose its subscriptions drops the sender: nothing to follow then.
    let mut follow_live = true;
    loop {
        if live_rx.has_changed().unwrap_or(false) {
            follow(&hub, &mut live_rx, Ok(()));
        }
        if let Some(next) = last_command.map(|t| t + window) {
            if next > Instant::now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = drain.stopped() => return,
                }
            }
        }
        let (subscribe, unsubscribe) = hub.plan();
        if !(subscribe.is_empty() && unsubscribe.is_empty()) {
            last_command = Some(Instant::now());
        }
        if !unsubscribe.is_empty() {
            debug!(count = unsubscribe.len(), "unsubscribing");
            // The bus forgets a channel even when the unsubscribe itself fails (its connection is
            // gone and will not restore it), so the hub forgets it too.
            if let Err(e) = bus.unsubscribe(&unsubscribe).await {
                warn!(error = %e, "unsubscribe failed; channels dropped with the connection");
            }
            hub.unsubscribed(&unsubscribe);
        }
        if !subscribe.is_empty() {
            debug!(count = subscribe.len(), "subscribing");
            match bus.subscribe(&subscribe).await {
                Ok(()) => hub.subscribed(&subscribe),
                Err(e) => {
                    warn!(error = %e, count = subscribe.len(), "subscribe failed; will retry");
                    hub.requeue(subscribe);
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        changed = live_rx.changed(), if follow_live => {
                            follow_live = follow(&hub, &mut live_rx, changed);
                        }
                        _ = drain.stopped() => return,
                    }
                }
            }
            continue;
        }
        if unsubscribe.is_empty() {
            tokio::select! {
                _ = hub.dirty_changed() => {}
                changed = live_rx.changed(), if follow_live => {
                    follow_live = follow(&hub, &mut live_rx, changed);
                }
                _ = drain.stopped() => return,
            }
        }
        if drain.is_stopped() {
            return;
        }
    }
}

/// Tells the hub when the bus's subscriptions are live again; returns whether there is still a
/// bus to follow.
fn follow(
    hub: &Hub,
    live_rx: &mut watch::Receiver<bool>,
    changed: Result<(), watch::error::RecvError>,
) -> bool {
    if changed.is_err() {
        return false;
    }
    if *live_rx.borrow_and_update() {
        hub.resume();
        // What was published while the subscriptions were down is in history only.
        hub.refill_all();
    }
    true
}
