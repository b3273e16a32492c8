//! The node's accept loop, from bind to graceful shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::outbound::SERVICE_RESTART;
use crate::state::Shared;
use crate::writer::CLOSE_TIMEOUT;

/// Slack above `max_connections` for plain HTTP (health checks, scrapes) while sessions are full.
const HTTP_HEADROOM: usize = 256;

/// Accepts connections until `shutdown` turns true, then drains: `/healthz` turns 503 and upgrades
/// are refused, clients are closed with 1012 after the drain delay, and the node waits for them up
/// to the grace period. HTTP keeps being answered during the drain.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tracker = shared.tracker.clone();
    let permits = Arc::new(Semaphore::new(
        shared.config.max_connections + HTTP_HEADROOM,
    ));
    info!(addr = ?listener.local_addr().ok(), node = %shared.node_id, "node listening");
    if shared.config.link_secret.is_none() {
        info!("no --link-secret set: links (/link) are taken from loopback peers only");
    }
    let accept = accept_loop(&listener, &shared, &permits, &tracker);
    tokio::select! {
        _ = accept => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    shared.draining.store(true, Ordering::Release);
    info!(
        connections = shared.hub.connection_count(),
        delay_secs = shared.config.drain_delay_secs,
        "draining"
    );
    let drain = async {
        tokio::time::sleep(Duration::from_secs(shared.config.drain_delay_secs)).await;
        shared.hub.close_all(SERVICE_RESTART);
        let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
        let grace_end = Instant::now().checked_add(grace);
        let sessions_closed = async {
            while shared.hub.connection_count() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, sessions_closed).await.is_err() {
            warn!(
                remaining = shared.hub.connection_count(),
                "grace period over; dropping remaining connections"
            );
        }
        grace_end
    };
    // Keep answering HTTP (503 on /healthz and /ws) while draining.
    let grace_end = tokio::select! {
        grace_end = drain => grace_end,
        _ = accept_loop(&listener, &shared, &permits, &tracker) => Some(Instant::now()),
    };
    drop(listener);
    shared.stopped.cancel();
    tracker.close();
    // A session leaves the hub once its client answered the close or it stopped waiting for
    // that (CLOSE_TIMEOUT); its writer may still be sending the close frame to a client that
    // reads slowly, and a link still carrying it. Returning now would end the process under
    // them (the client sees 1006): wait for every connection task, for what is left of the
    // grace period and at least as long as a session waits for its writer.
    let left = grace_end.map_or(Duration::MAX, |end| {
        end.saturating_duration_since(Instant::now())
    });
    let limit = left.max(CLOSE_TIMEOUT * 2);
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        warn!(
            tasks = tracker.len(),
            "connections still open at exit; dropping them"
        );
    }
    info!("drained");
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let conn_tracker = tracker.clone();
                tracker.spawn(async move {
                    crate::http::serve_connection(shared, stream, peer, conn_tracker).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
