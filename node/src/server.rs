//! The node's accept loop: takes connections, within a bound, until the node has drained.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::http::serve_connection;
use crate::state::Shared;

/// Slack above `max_connections` for plain HTTP (health checks, scrapes) while sessions are full.
const HTTP_HEADROOM: usize = 256;

/// Accepts connections, each served on a task of the node's drain, until the node has drained
/// (HTTP keeps being answered while it drains: `/healthz` says 503); then the listener closes.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(
        shared.config.max_connections + HTTP_HEADROOM,
    ));
    info!(addr = ?listener.local_addr().ok(), node = %shared.node_id, "node listening");
    if shared.config.link_secret.is_none() {
        info!("no --link-secret set: links (/link) are taken from loopback peers only");
    }
    tokio::select! {
        _ = accept_loop(&listener, &shared, &permits) => {}
        _ = shared.drain.stopped() => {}
    }
}

async fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, permits: &Arc<Semaphore>) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let serve = serve_connection(shared.clone(), stream, peer);
                shared.drain.spawn(async move {
                    serve.await;
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
