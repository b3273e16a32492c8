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

/// A port on 127.0.0.1 that refuses connections and that nothing else can take while this
/// lives: a socket bound without listening, and without `SO_REUSEADDR`, so neither another
/// test's `bind` nor the kernel's choice of a source port can land on it.
///
/// A port from [`free_port`] is only free until something binds it, and tests run in parallel:
/// a "dead node" there can turn out to be another test's server, or the gateway under test
/// itself, which then proxies to itself until it runs out of file descriptors.
pub struct DeadPort {
    socket: tokio::net::TcpSocket,
    port: u16,
}

impl DeadPort {
    /// Reserves a port.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a TCP socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("cannot bind an ephemeral port on 127.0.0.1");
        let port = socket.local_addr().expect("bound socket's address").port();
        DeadPort { socket, port }
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Gives the port up, to be bound by a listener next (the one moment it is unguarded).
    pub fn release(self) -> u16 {
        drop(self.socket);
        self.port
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
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

#[cfg(test)]
mod tests {
    use super::DeadPort;

    #[tokio::test]
    async fn a_dead_port_refuses_connections_and_cannot_be_bound_until_released() {
        let dead = DeadPort::new();
        let err = tokio::net::TcpStream::connect(dead.addr())
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // tokio's listeners set SO_REUSEADDR; the reservation holds against them too.
        let err = tokio::net::TcpListener::bind(dead.addr())
            .await
            .expect_err("the port is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let port = dead.release();
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("free once released");
    }
}
