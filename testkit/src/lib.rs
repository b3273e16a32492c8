//! Fixtures for ringcast's integration tests.
//!
//! Real parts only: [`RedisServer`] runs a real `redis-server` on a free port and kills it by PID;
//! [`Client`] is a real WebSocket client; [`TestNode`] runs `ringcast_node::run` on port 0;
//! [`FreezableProxy`] stands between a node and Redis to starve a connection without closing it;
//! [`RedisCluster`] runs a real 3 + 3 Redis Cluster.
//! Helpers panic with a clear message on failure: they are for tests.

mod client;
mod node;
mod proxy;
mod redis;
mod redis_cluster;

pub use client::Client;
pub use node::TestNode;
pub use proxy::FreezableProxy;
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;

use std::time::Duration;

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

/// Starts the child that `command(port)` builds, on a port that was free a moment ago, and
/// waits until that child itself listens there: the listening socket is looked up in `/proc`,
/// so a process that took the port in between is not mistaken for it. A child that exits first
/// (its bind lost that race) is started again on a fresh port, up to five times. Returns the
/// child and its port; panics with `what` when the child never listens within `limit`.
pub fn spawn_listening(
    what: &str,
    limit: Duration,
    mut command: impl FnMut(u16) -> std::process::Command,
) -> (std::process::Child, u16) {
    let mut exits = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let mut child = command(port)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} (is it installed? the README's test command installs what the tests need): {e}"));
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "{what} on port {port} exited before listening ({status}); trying another port"
                );
                exits.push(format!("port {port}: {status}"));
                break;
            }
            if listens_on(child.id(), port) {
                return (child, port);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not listen on port {port} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!(
        "{what} exited before listening five times in a row, so not for a lost port race: {}",
        exits.join("; ")
    );
}

/// Starts the server binary `bin` with `--listen 127.0.0.1:PORT` and `args` through
/// [`spawn_listening`]; its stdout is discarded, its stderr (clap errors, panics) goes to the
/// test's. Returns the child and its address.
pub fn spawn_server(bin: &str, args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    let (child, port) = spawn_listening(bin, Duration::from_secs(10), |port| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(std::process::Stdio::null());
        cmd
    });
    (child, ([127, 0, 0, 1], port).into())
}

/// Whether process `pid`, or one it started (a wrapper that does not `exec`), holds a TCP
/// socket listening on `port` (any local address), per `/proc/net/tcp{,6}` and `/proc/PID/fd`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let mut pids = vec![pid];
    while let Some(pid) = pids.pop() {
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            let holds = fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
                    .unwrap_or(false)
            });
            if holds {
                return true;
            }
        }
        pids.extend(children(pid));
    }
    false
}

/// The processes `pid` started, per `/proc/PID/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
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

    /// Reserves `port`, which a server just gave up: `None` if something else holds it.
    /// Connections closed by that server may linger in TIME_WAIT on the port, which only a
    /// socket with `SO_REUSEADDR` may share; such a reservation still keeps the port from being
    /// picked for `bind` to port 0 and for outgoing connections, which is how other tests
    /// come by ports.
    pub fn hold(port: u16) -> Option<Self> {
        let addr = ([127, 0, 0, 1], port).into();
        for reuse in [false, true] {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            if reuse {
                socket.set_reuseaddr(true).ok()?;
            }
            if socket.bind(addr).is_ok() {
                return Some(DeadPort { socket, port });
            }
        }
        None
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

/// A room event without what history adds to it (`offset`, `epoch`; in a join ack also
/// `recovered`): what the tutorial's protocol promised, for comparing with a literal.
pub fn unnumbered(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        for key in ["offset", "epoch", "recovered"] {
            map.remove(key);
        }
    }
    v
}

/// `ws://ADDR/ws?client_id=ID` (no query when `id` is empty).
pub fn ws_url(addr: std::net::SocketAddr, id: &str) -> String {
    if id.is_empty() {
        format!("ws://{addr}/ws")
    } else {
        format!("ws://{addr}/ws?client_id={id}")
    }
}

/// GETs `http://{addr}{path}` with hyper's client; returns (status, body). Panics when no
/// whole answer comes within 5 s.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let what = format!("GET {path} from {addr}");
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        let answer = async move {
            let response = sender
                .send_request(request)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            // No second request: the connection ends once this answer has been read.
            drop(sender);
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{what}: body: {e}"))
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        tokio::join!(answer, connection).0
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {addr}: no answer within 5 s"))
}

/// The status of the answer head at the start of `got` (bytes a raw client read), parsed by
/// `ringcast_net`'s response head parser; `None` unless a whole, well-formed head is there.
pub fn answer_status(got: &[u8]) -> Option<u16> {
    let (head, _) = ringcast_net::http1::client::parse_response_head(got).ok()??;
    Some(head.status)
}

/// Sends `request` exactly as given (deliberately odd ones too) and reads the answer: its head
/// with `ringcast_net`'s reader, its body up to its `Content-Length`, or else to the close (at
/// most 5 s in all); returns (status, body). Panics on an answer that is no HTTP/1 head, or a
/// chunked one (use [`http_get`]).
pub async fn http_raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use ringcast_net::http1_io;
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut buf = Vec::new();
    let exchange = http1_io::exchange(&mut s, request.as_bytes(), &mut buf, |head| {
        let length = head
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        (
            head.status,
            length,
            head.header("transfer-encoding").is_some(),
        )
    });
    let ((status, length, encoded), len) = tokio::time::timeout_at(deadline, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer head to {request:?} within 5 s"))
        .unwrap_or_else(|e| panic!("no HTTP answer to {request:?}: {e}"));
    assert!(!encoded, "http_raw reads no chunked answers: use http_get");
    let mut body = buf.split_off(len);
    // What arrives by the deadline: the announced length, or all until the close.
    let _ = tokio::time::timeout_at(deadline, async {
        match length {
            Some(length) => {
                while body.len() < length {
                    match s.read_buf(&mut body).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                body.truncate(length);
            }
            None => {
                let _ = s.read_to_end(&mut body).await;
            }
        }
    })
    .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::DeadPort;

    /// A server that reads one request head, answers `answer`, then keeps the connection open
    /// for 10 s; returns its address and the bytes it received.
    async fn answering(
        answer: &'static [u8],
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Receiver<Vec<u8>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, got_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                assert!(s.read_buf(&mut got).await.unwrap() > 0, "request cut short");
            }
            s.write_all(answer).await.unwrap();
            let _ = got_tx.send(got);
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        });
        (addr, got_rx)
    }

    #[tokio::test]
    async fn http_raw_sends_the_bytes_given_and_reads_the_announced_body() {
        let (addr, server) =
            answering(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nhello and more").await;
        let odd = "GET /ws?client_id=a HTTP/9.9\r\nno colon\r\n\r\n";
        let started = std::time::Instant::now();
        assert_eq!(super::http_raw(addr, odd).await, (400, "hello".to_owned()));
        // Read to its length, not until the server gave up.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(server.await.unwrap(), odd.as_bytes());
    }

    #[tokio::test]
    async fn http_get_reads_a_chunked_body() {
        let (addr, server) = answering(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            super::http_get(addr, "/stats").await,
            (200, "{\"a\":1}".to_owned())
        );
        let sent = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(sent.starts_with("GET /stats HTTP/1.1\r\n"), "{sent}");
    }

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
        // Released, the port can be bound. Another process on the machine may take a freed
        // ephemeral port in the instant before the bind, so one of a few tries must succeed.
        let mut port = dead.release();
        let mut tries = 0;
        while let Err(e) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            tries += 1;
            assert!(tries < 5, "never free once released: {e}");
            port = DeadPort::new().release();
        }
    }

    #[test]
    fn a_child_that_exits_before_listening_is_started_again_on_another_port() {
        let mut ports = Vec::new();
        let (mut child, port) =
            super::spawn_listening("test server", std::time::Duration::from_secs(10), |port| {
                ports.push(port);
                let mut cmd = std::process::Command::new(if ports.len() == 1 {
                    "false" // as a server whose port was taken would
                } else {
                    "redis-server"
                });
                cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(std::process::Stdio::null());
                cmd
            });
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert_eq!(port, ports[1]);
    }

    #[test]
    fn a_listener_is_found_in_its_own_process_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(super::listens_on(std::process::id(), port));
        // A bound socket that does not listen, and another process, do not count.
        let dead = DeadPort::new();
        assert!(!super::listens_on(std::process::id(), dead.port()));
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("run sleep");
        assert!(!super::listens_on(other.id(), port));
        let _ = other.kill();
        let _ = other.wait();
        drop(listener);
        assert!(!super::listens_on(std::process::id(), port));
    }

    #[test]
    fn a_listener_in_a_wrapped_process_is_found_through_the_wrapper() {
        // `sh -c` forks redis-server instead of exec-ing it when a command follows.
        let (mut wrapper, port) = super::spawn_listening(
            "wrapped server",
            std::time::Duration::from_secs(10),
            |port| {
                let mut cmd = std::process::Command::new("sh");
                cmd.arg("-c")
                    .arg(format!(
                        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no; true"
                    ))
                    .stdout(std::process::Stdio::null());
                cmd
            },
        );
        let found = super::children(wrapper.id());
        assert_eq!(found.len(), 1, "{found:?}");
        let _ = std::process::Command::new("kill")
            .arg(found[0].to_string())
            .status();
        let _ = wrapper.wait();
        assert!(!super::listens_on(wrapper.id(), port));
    }
}
