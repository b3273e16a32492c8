//! How the gateway drains once shutdown is asked, step by step over its [`Drain`]: at once no
//! new connections (the accept loop ends, `/healthz` answers 503, an upgrade still on its way in
//! gets 503 `draining`) and the embedded node, if any, begins its own drain; open tunnels and
//! connections stay up for the grace period (`--shutdown-grace-secs`); then what is left is
//! closed (tunnels, links, plain HTTP connections), background tasks return, and the end waits
//! for every task with a time limit.

use std::time::Duration;

use ringcast_net::drain::Drain;
use tokio::time::Instant;
use tracing::{info, warn};

/// Shortest wait for the tasks still running once the drain is over: long enough for a closed
/// tunnel or link to let go of its sockets, a health check or registry poll under way to end,
/// a refusal being written (1 s at most) to finish.
pub const STOP_LIMIT: Duration = Duration::from_secs(2);

/// Waits for the drain to begin, then runs it to the end; returns once every task has ended or
/// the time limit is over (what is left of `grace`, at least [`STOP_LIMIT`]).
pub async fn drain(drain: &Drain, grace: Duration) {
    drain.draining().await;
    info!(
        grace_secs = grace.as_secs(),
        "draining: no new connections; open tunnels stay up for the grace period"
    );
    let grace_end = Instant::now().checked_add(grace);
    if !drain.sessions_ended(grace).await {
        warn!("grace period over; closing the remaining tunnels");
    }
    drain.stop();
    // The embedded node may still be finishing its own drain: it gets what is left of the grace
    // period, as everything else does.
    let left = grace_end.map_or(Duration::MAX, |end| {
        end.saturating_duration_since(Instant::now())
    });
    if !drain.all_ended(left.max(STOP_LIMIT)).await {
        warn!(
            tasks = drain.tasks_left(),
            "tasks still running at exit; dropping them"
        );
    }
    info!("drained");
}
