//! The accept loop: a bounded number of client connections, each a session of the gateway's
//! drain, until the drain begins (then the listener closes; `shutdown` runs the rest).
//!
//! At the connection limit a new connection is still accepted (up to [`OVERFLOW`] at a time)
//! but only to tell the client "503 gateway_full" and close, so clients learn to back off
//! instead of hanging in the kernel's backlog. A client address at its own limit
//! (`--max-connections-per-ip`) is told "429 too_many_connections_from_ip" the same way.
//!
//! On a TLS listener both limits are checked here too, before any TLS work (a flood of
//! handshakes is what they guard against), and a refused connection is simply closed: an
//! answer would have to be sent in plain HTTP, which a TLS client cannot read.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;
use ringcast_net::drain::Drain;
use ringcast_net::http1::response::push_response_head;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::connection::Edge;
use crate::http::Http;
use crate::limits::{ConnectionPermit, IpLimiter};

/// Connections accepted past the limit at once, each only to be refused with a 503.
pub const OVERFLOW: usize = 256;

/// Why a connection is refused right after accept.
#[derive(Debug, Clone, Copy)]
enum Full {
    /// The gateway holds `--max-connections`.
    Gateway,
    /// This client address holds `--max-connections-per-ip`.
    Address,
}

/// The whole answer to a connection refused for `full`, written once per process (by net's
/// response writer) and sent as is to every such connection.
fn full_response(full: Full) -> &'static [u8] {
    static GATEWAY: LazyLock<Vec<u8>> = LazyLock::new(|| {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"gateway_full","message":"too many connections; retry later"}"#,
        )
    });
    static ADDRESS: LazyLock<Vec<u8>> = LazyLock::new(|| {
        refusal(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":"too_many_connections_from_ip","message":"too many connections from your address; close one or retry later"}"#,
        )
    });
    match full {
        Full::Gateway => &GATEWAY,
        Full::Address => &ADDRESS,
    }
}

/// A JSON refusal that closes the connection: head and body.
fn refusal(status: StatusCode, body: &'static str) -> Vec<u8> {
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut out = Vec::with_capacity(128 + body.len());
    push_response_head(&mut out, status, &headers);
    out.extend_from_slice(body.as_bytes());
    out
}

/// Answers 503 or 429 and closes; drains what the client sent first (bounded: 1 s, 16 KiB) so
/// the close does not turn into a reset that loses the answer.
async fn refuse(stream: &mut tokio::net::TcpStream, full: Full) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(full_response(full)).await?;
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

/// How many client connections the gateway holds, in total and per client address (`0`: no
/// per-address limit).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most client connections from one address at once (`0`: unlimited).
    pub max_connections_per_ip: usize,
}

/// Accepts until `drain` begins, each connection a session of it (an upgrade's tunnel too), each
/// refusal a task of it; then closes the listener and returns.
pub async fn serve(
    listener: TcpListener,
    http: Arc<Http>,
    edge: Edge,
    limits: Limits,
    drain: Drain,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = IpLimiter::new(limits.max_connections_per_ip);
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    info!(
        addr = ?listener.local_addr().ok(),
        tls = edge.tls.is_some(),
        upgrades = edge.upgrades,
        "gateway listening"
    );
    loop {
        // Wait while refusals are in flight, so the overflow stays bounded too.
        let spare = tokio::select! {
            biased;
            _ = drain.draining() => break,
            p = overflow.clone().acquire_owned() => p,
        };
        let Ok(spare) = spare else { break };
        let accepted = tokio::select! {
            biased;
            _ = drain.draining() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((mut stream, peer)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    http.proxy
                        .metrics
                        .rejected
                        .with_label_values(&["503"])
                        .inc();
                    if edge.tls.is_none() {
                        drain.spawn(async move {
                            refuse(&mut stream, Full::Gateway).await;
                            drop(spare);
                        });
                    }
                    continue;
                };
                let Ok(ip_slot) = per_ip.acquire(peer.ip()) else {
                    drop(permit);
                    let metrics = &http.proxy.metrics;
                    metrics.rejected.with_label_values(&["429"]).inc();
                    metrics
                        .edge_refusals
                        .with_label_values(&["too_many_connections_from_ip"])
                        .inc();
                    debug!(peer = %peer.ip(), "connection refused: per-address limit");
                    if edge.tls.is_none() {
                        drain.spawn(async move {
                            refuse(&mut stream, Full::Address).await;
                            drop(spare);
                        });
                    }
                    continue;
                };
                let permit = ConnectionPermit::new(permit, ip_slot);
                drop(spare);
                let _ = stream.set_nodelay(true);
                // An upgrade moves the permit into its tunnel, so tunnels count against the limit.
                drain.spawn_session(crate::connection::serve(
                    http.clone(),
                    edge.clone(),
                    stream,
                    peer,
                    permit,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = drain.draining() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    drop(listener);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_a_whole_json_answer_that_closes() {
        let body = r#"{"error":"gateway_full","message":"too many connections; retry later"}"#;
        assert_eq!(
            String::from_utf8_lossy(full_response(Full::Gateway)),
            format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        );
        let address = String::from_utf8_lossy(full_response(Full::Address)).into_owned();
        assert!(
            address.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{address}"
        );
        assert!(address.ends_with("retry later\"}"), "{address}");
    }
}
