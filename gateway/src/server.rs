//! The accept loop: a bounded number of client connections, and graceful shutdown — stop
//! accepting, keep tunnels up for the grace period, then close what is left.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::http::Http;

/// Accepts until `shutdown` turns true, then drains for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    http: Arc<Http>,
    max_connections: usize,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let force_close = http.proxy.force_close.clone();
    info!(addr = ?listener.local_addr().ok(), "gateway listening");
    while !*shutdown.borrow() {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p,
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let http = http.clone();
                let force_close = force_close.clone();
                // An upgrade moves the permit into its tunnel, so tunnels count against the limit.
                let slot = Arc::new(Mutex::new(Some(permit)));
                connections.spawn(crate::http::serve_connection(
                    http,
                    stream,
                    peer,
                    slot,
                    force_close,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    http.draining.store(true, Ordering::Release);
    let tunnels = http.proxy.tunnels.clone();
    info!(
        grace_secs = grace.as_secs(),
        "draining: no new connections; open tunnels stay up for the grace period"
    );
    connections.close();
    tunnels.close();
    let all_done = async {
        connections.wait().await;
        tunnels.wait().await;
    };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        warn!("grace period over; closing the remaining tunnels");
    }
    force_close.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        connections.wait().await;
        tunnels.wait().await;
    })
    .await;
}
