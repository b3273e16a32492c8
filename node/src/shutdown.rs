//! How a node drains once shutdown is asked, step by step over its [`Drain`]: `/healthz` 503
//! and no new clients at once, every client closed with 1012 after `--drain-delay-secs`, the
//! sessions waited for up to `--shutdown-grace-secs`, then everything else.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::outbound::SERVICE_RESTART;
use crate::state::Shared;
use crate::writer::CLOSE_TIMEOUT;
use ringcast_net::drain::Drain;

/// Waits for the drain to begin, then runs it to the end; returns once every task has ended or
/// the time limit is over.
pub async fn drain(shared: &Shared) {
    let drain: &Drain = &shared.drain;
    drain.draining().await;
    info!(
        connections = shared.hub.connection_count(),
        delay_secs = shared.config.drain_delay_secs,
        "draining"
    );
    tokio::time::sleep(Duration::from_secs(shared.config.drain_delay_secs)).await;
    shared.hub.close_all(SERVICE_RESTART);
    let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
    let grace_end = Instant::now().checked_add(grace);
    if !drain.sessions_ended(grace).await {
        warn!(
            remaining = shared.hub.connection_count(),
            "grace period over; dropping remaining connections"
        );
    }
    drain.stop();
    // A session ends once its client answered the close (or it stopped waiting for that,
    // CLOSE_TIMEOUT) and its writer is done; what it wrote last may still be on a link, and a
    // session past the grace period may still be running. Returning now would end the process
    // under them (the client sees 1006): wait for every task, for what is left of the grace
    // period and at least as long as a session waits for its writer.
    let left = grace_end.map_or(Duration::MAX, |end| {
        end.saturating_duration_since(Instant::now())
    });
    let limit = left.max(CLOSE_TIMEOUT * 2);
    if !drain.all_ended(limit).await {
        warn!(
            tasks = drain.tasks_left(),
            "connections still open at exit; dropping them"
        );
    }
    info!("drained");
}
