//! The accept loop: a bounded number of client connections, and graceful shutdown — stop
//! accepting, keep tunnels up for the grace period, then close what is left.
//!
//! At the connection limit a new connection is still accepted (up to [`OVERFLOW`] at a time)
//! but only to tell the client "503 gateway_full" and close, so clients learn to back off
//! instead of hanging in the kernel's backlog.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::http::Http;

/// Connections accepted past the limit at once, each only to be refused with a 503.
pub const OVERFLOW: usize = 256;

fn full_response() -> String {
    let body = r#"{"error":"gateway_full","message":"too many connections; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers 503 and closes; drains what the client sent first (bounded: 1 s, 16 KiB) so the
/// close does not turn into a reset that loses the answer.
async fn refuse(stream: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(full_response().as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 1024];
        let mut total = 0;
        while total < 16 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

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
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    let force_close = http.proxy.force_close.clone();
    info!(addr = ?listener.local_addr().ok(), "gateway listening");
    while !*shutdown.borrow() {
        // Wait while refusals are in flight, so the overflow stays bounded too.
        let spare = tokio::select! {
            p = overflow.clone().acquire_owned() => p,
            _ = shutdown.changed() => break,
        };
        let Ok(spare) = spare else { break };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((mut stream, peer)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    http.proxy
                        .metrics
                        .rejected
                        .with_label_values(&["503"])
                        .inc();
                    tokio::spawn(async move {
                        refuse(&mut stream).await;
                        drop(spare);
                    });
                    continue;
                };
                drop(spare);
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
