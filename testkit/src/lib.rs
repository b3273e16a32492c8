//! Fixtures for ringcast's integration tests.
//!
//! Real parts only: [`RedisServer`] runs a real `redis-server` on a free port and kills it by PID;
//! [`Client`] is a real WebSocket client; [`TestNode`] runs `ringcast_node::run` on port 0;
//! [`FreezableProxy`] stands between a node and Redis to starve a connection without closing it.
//! Helpers panic with a clear message on failure: they are for tests.

mod client;
mod node;
mod proxy;
mod redis;

pub use client::Client;
pub use node::TestNode;
pub use proxy::FreezableProxy;
pub use redis::RedisServer;

use std::time::Duration;

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of a metric's samples (all label sets) in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `ws://ADDR/ws?client_id=ID` (no query when `id` is empty).
pub fn ws_url(addr: std::net::SocketAddr, id: &str) -> String {
    if id.is_empty() {
        format!("ws://{addr}/ws")
    } else {
        format!("ws://{addr}/ws?client_id={id}")
    }
}

/// GETs `http://{addr}{path}`; returns (status, body). A minimal HTTP/1.1 client over a raw
/// socket, so tests see exactly what the server sent.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends raw request bytes and reads the whole response; returns (status, body).
pub async fn http_raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
