//! Active health checks: GET every member's `/healthz` on an interval and feed the results to
//! membership, which counts them and moves nodes out of and back into the ring past the
//! configured thresholds.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::membership::Membership;

/// Checks every member every `interval` until `shutdown` turns true. Each check carries the
/// gateway's `via` entry, so a "node" that is really a gateway answers 508 and is taken out of
/// the ring like any node that fails its checks.
pub async fn run(
    membership: Arc<Membership>,
    interval: Duration,
    timeout: Duration,
    via: HeaderValue,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut checks = JoinSet::new();
        for (id, addr) in membership.targets() {
            let via = via.clone();
            checks.spawn(async move {
                let ok = check(&addr, timeout, &via).await;
                (id, addr, ok)
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((id, addr, ok)) = done else { continue };
            if !ok {
                debug!(node = %id, %addr, "health check failed");
            }
            membership.report_check(&id, &addr, ok);
        }
    }
}

/// One `GET /healthz` from the gateway whose `Via` entry is `via`: healthy when the node
/// answers 200 within `timeout`.
pub async fn check(addr: &str, timeout: Duration, via: &HeaderValue) -> bool {
    tokio::time::timeout(timeout, get_status(addr, via))
        .await
        .ok()
        .flatten()
        == Some(200)
}

async fn get_status(addr: &str, via: &HeaderValue) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let via = via.to_str().ok()?;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: ringcast-gateway\r\nVia: {via}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    // The status line is all we need; read at most 512 bytes of it.
    let mut buf = [0u8; 512];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    let line = std::str::from_utf8(&buf[..len]).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}
