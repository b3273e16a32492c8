//! Connection lifecycle against a real `ringcast-node` process: graceful shutdown on SIGTERM
//! (1012, /healthz 503, exit 0) and the idle timeout for clients that stop answering pings.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ringcast_testkit::{http_get, spawn_server, Client};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

struct NodeProcess {
    child: Child,
    addr: std::net::SocketAddr,
}

impl NodeProcess {
    fn spawn(extra: &[&str]) -> Self {
        let mut args = vec!["--node-id", "life"];
        args.extend_from_slice(extra);
        let (child, addr) = spawn_server(env!("CARGO_BIN_EXE_ringcast-node"), &args);
        NodeProcess { child, addr }
    }

    fn url(&self, id: &str) -> String {
        format!("ws://{}/ws?client_id={id}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_exits_zero() {
    // A drain delay long enough for the checks below on a slow machine.
    let mut node = NodeProcess::spawn(&["--drain-delay-secs", "3", "--shutdown-grace-secs", "5"]);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (mut c, _) = Client::connect_welcomed(&node.url(&format!("c{i}"))).await;
        c.send_json(json!({"type":"join_room","room":"r"})).await;
        c.recv_event("user_joined").await;
        clients.push(c);
    }
    assert_eq!(http_get(node.addr, "/healthz").await.0, 200);
    let signalled = Instant::now();
    node.signal("-TERM");
    // During the drain delay: unhealthy, no new sessions, existing ones still served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = http_get(node.addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let refused = Client::try_connect(&node.url("late")).await.err();
    assert!(
        refused.is_some_and(|e| e.to_string().contains("503")),
        "upgrade during drain must get 503"
    );
    clients[0]
        .send_json(json!({"type":"room_message","room":"r","content":"still here"}))
        .await;
    assert_eq!(clients[1].recv_event("chat").await["content"], "still here");
    for c in &mut clients {
        assert_eq!(c.expect_close(Duration::from_secs(8)).await, Some(1012));
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = node.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3 + 5 + 2),
        "exited within drain delay + grace"
    );
}

#[tokio::test]
async fn silent_clients_are_closed_after_the_idle_timeout() {
    let node = NodeProcess::spawn(&["--ping-interval-secs", "1", "--idle-timeout-secs", "2"]);
    // `silent` never reads, so its client library never answers the server's pings.
    let (mut silent, _) = Client::connect_welcomed(&node.url("silent")).await;
    let (mut lively, _) = Client::connect_welcomed(&node.url("lively")).await;
    // `lively` keeps reading (auto-answering pings) for 3.5 s, past the timeout, while `silent`
    // is not polled at all.
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match lively.next_json(left).await {
            Ok(_) => continue,
            Err(e) => assert!(e.contains("nothing"), "lively client was disconnected: {e}"),
        }
    }
    let code = silent.expect_close(Duration::from_secs(5)).await;
    assert!(
        code.is_none() || code == Some(1001),
        "silent client: expected close 1001 or a dropped connection, got {code:?}"
    );
    lively.send_json(json!({"type":"ping"})).await;
    assert_eq!(lively.recv().await["event"], "pong");
}

#[tokio::test]
async fn client_pings_are_answered_and_client_closes_are_echoed() {
    let node = NodeProcess::spawn(&[]);
    let (mut pinger, _) = Client::connect_welcomed(&node.url("pinger")).await;
    let (mut bystander, _) = Client::connect_welcomed(&node.url("bystander")).await;
    let limit = Duration::from_secs(5);

    assert_eq!(pinger.ping(b"are you there", limit).await, b"are you there");
    // The close handshake: the node answers with the client's own code.
    assert_eq!(pinger.close_with(4321, limit).await, Some(4321));

    // A close code nobody may send (1005 is "no status", RFC 6455 7.4.1) is answered with 1002.
    let (mut wrong, _) = Client::connect_welcomed(&node.url("wrong")).await;
    assert_eq!(wrong.close_with(1005, limit).await, Some(1002));

    bystander.send_json(json!({"type":"ping"})).await;
    bystander.recv_event("pong").await;
}

/// A client whose socket stopped taking bytes: a tiny receive buffer, in `room`, never read
/// from until the test says so. Returns it with the size of its receive buffer.
async fn stuck_reader(
    node: &NodeProcess,
    id: &str,
    room: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    usize,
) {
    use futures_util::{SinkExt, StreamExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    // What the kernel made of it (Linux doubles it; a fixed size also stops autotuning).
    let rcvbuf = socket.recv_buffer_size().expect("SO_RCVBUF") as usize;
    let stream = socket.connect(node.addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(node.url(id), stream)
        .await
        .expect("handshake");
    ws.send(Message::text(
        json!({"type":"join_room","room":room}).to_string(),
    ))
    .await
    .expect("join");
    // welcome, then the join ack
    for _ in 0..2 {
        ws.next().await.expect("frame").expect("frame ok");
    }
    (ws, rcvbuf)
}

/// The largest a TCP buffer may grow to on this host: the last field of
/// `/proc/sys/net/ipv4/<which>` (`tcp_wmem`, `tcp_rmem`).
fn tcp_buffer_max(which: &str) -> usize {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{which}"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or_else(|| panic!("cannot read /proc/sys/net/ipv4/{which}"))
}

/// Bytes of room messages that cannot all fit in the kernel's buffers between the node and a
/// stuck reader with a `rcvbuf`-byte receive buffer: the node's send buffer at its largest
/// (`tcp_wmem`), the reader's receive buffer, and 2 MiB more. Sent while the reader takes
/// nothing, they leave its writer in the middle of a write, whatever this host's buffer sizes.
fn stall_bytes(rcvbuf: usize) -> usize {
    (tcp_buffer_max("tcp_wmem") + rcvbuf + (2 << 20)).max(9 << 20)
}

/// Content bytes of one room message of [`fill`].
const PAD: usize = 60 * 1024;

/// Node flags that let a stuck reader's queue hold `bytes` of room messages.
fn roomy(bytes: usize) -> Vec<String> {
    let queue = 2 * bytes;
    [
        "--announce-connections=false",
        "--send-queue-bytes",
        &queue.to_string(),
        "--send-queue-frames",
        &(2 * bytes / PAD + 64).to_string(),
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
    ]
    .map(String::from)
    .to_vec()
}

/// Publishes at least `bytes` to `room` in messages of [`PAD`] bytes; returns how many.
async fn fill(node: &NodeProcess, room: &str, bytes: usize) -> usize {
    let (mut publisher, _) = Client::connect_welcomed(&node.url("publisher")).await;
    publisher
        .send_json(json!({"type":"join_room","room":room}))
        .await;
    publisher.recv_event("user_joined").await;
    let pad = "p".repeat(PAD);
    let rounds = bytes.div_ceil(10 * PAD);
    for _ in 0..rounds {
        for _ in 0..10 {
            publisher
                .send_json(json!({"type":"room_message","room":room,"content":pad}))
                .await;
        }
        for _ in 0..10 {
            publisher.recv_event("chat").await;
        }
    }
    rounds * 10
}

/// What a stuck reader got up to the node's close frame.
#[derive(Debug, PartialEq)]
struct Closed {
    code: u16,
    /// Whole chat frames before it.
    frames: usize,
    /// Their payload bytes.
    bytes: usize,
}

/// Reads everything the node sends until its close frame: every frame before it must be a
/// whole JSON text. Returns the close code and the chat frames before it, or what went wrong
/// instead.
async fn read_to_close(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Result<Closed, String> {
    use futures_util::StreamExt;
    let (mut frames, mut bytes) = (0usize, 0usize);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .map_err(|_| format!("nothing for 15 s after {frames} frames"))?;
        match next {
            Some(Ok(Message::Text(t))) => {
                let v = serde_json::from_str::<serde_json::Value>(&t)
                    .map_err(|e| format!("frame {frames} is not JSON: {e}"))?;
                if v["event"] == "chat" {
                    frames += 1;
                    bytes += t.len();
                }
            }
            Some(Ok(Message::Close(Some(close)))) => {
                return Ok(Closed {
                    code: close.code.into(),
                    frames,
                    bytes,
                })
            }
            Some(Ok(Message::Close(None))) => return Err("a close frame without a code".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("after {frames} whole frames: {e}")),
            None => {
                return Err(format!(
                    "the stream ended after {frames} frames, no close frame"
                ))
            }
        }
    }
}

/// Checks that a stuck reader that got `closed` after `sent` messages of `stall` bytes in all
/// had its writer mid-write when the close came: it got every message, more bytes than the
/// kernel could have held for it, so its writer still had some when the close came.
fn proves_a_stall(closed: &Closed, sent: usize, stall: usize) {
    assert_eq!(
        closed.frames, sent,
        "every queued message came before the close"
    );
    assert!(
        closed.bytes >= stall,
        "{} bytes fit in the kernel's buffers ({stall} needed to stall)",
        closed.bytes
    );
}

/// Item 9 of the hardening issue: a drain that finds a client's writer in the middle of a
/// write still ends with a close frame, after whole frames only.
#[tokio::test]
async fn a_drain_during_a_stalled_write_ends_with_1012_after_whole_frames() {
    let stall = stall_bytes(8192);
    let mut args = roomy(stall);
    args.extend(["--shutdown-grace-secs", "10"].map(String::from));
    let node = NodeProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (stuck, rcvbuf) = stuck_reader(&node, "stuck", "big").await;
    assert!(stall >= stall_bytes(rcvbuf), "receive buffer {rcvbuf}");
    let sent = fill(&node, "big", stall).await;
    node.signal("-TERM");
    let closed = read_to_close(stuck).await.expect("a close frame");
    assert_eq!(closed.code, 1012);
    proves_a_stall(&closed, sent, stall);
}

/// The same for a close the client itself causes while its writer is stuck: an oversized
/// message is answered with 1009 after whole frames.
#[tokio::test]
async fn an_oversized_message_during_a_stalled_write_is_answered_with_1009() {
    use futures_util::SinkExt;
    let stall = stall_bytes(8192);
    let args = roomy(stall);
    let node = NodeProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut stuck, rcvbuf) = stuck_reader(&node, "stuck", "big").await;
    assert!(stall >= stall_bytes(rcvbuf), "receive buffer {rcvbuf}");
    let sent = fill(&node, "big", stall).await;
    stuck
        .send(Message::text("x".repeat(100 * 1024)))
        .await
        .expect("send the oversized message");
    let closed = read_to_close(stuck).await.expect("a close frame");
    assert_eq!(closed.code, 1009);
    proves_a_stall(&closed, sent, stall);
    let (mut other, _) = Client::connect_welcomed(&node.url("other")).await;
    other.send_json(json!({"type":"ping"})).await;
    assert_eq!(other.recv().await["event"], "pong");
}

/// A client that reads nothing for longer than the drain's 2 s, then reads on, at shutdown:
/// the session gives up on its close reply and leaves the hub while the writer still owes the
/// close frame. The process must wait for that writer: the client gets whole frames, then
/// 1012, never a connection that just ends (1006).
#[tokio::test]
async fn a_slow_reader_at_shutdown_still_gets_its_1012_after_the_frames_written() {
    let stall = stall_bytes(8192);
    let mut args = roomy(stall);
    args.extend(["--shutdown-grace-secs", "10"].map(String::from));
    let mut node = NodeProcess::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (stuck, rcvbuf) = stuck_reader(&node, "slow", "big").await;
    assert!(stall >= stall_bytes(rcvbuf), "receive buffer {rcvbuf}");
    let sent = fill(&node, "big", stall).await;
    node.signal("-TERM");
    // No drain delay: clients are closed as soon as the node is draining.
    ringcast_testkit::wait_until(Duration::from_secs(10), "draining", || async {
        http_get(node.addr, "/healthz").await.0 == 503
    })
    .await;
    // Past the writer's drain limit and the session's wait for the close reply (2 s each).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let closed = read_to_close(stuck).await;
    let closed = closed.expect("whole frames, then a close frame");
    assert_eq!(closed.code, 1012);
    assert!(
        closed.frames < sent,
        "the drain ran out of time with messages still queued ({} of {sent})",
        closed.frames
    );
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = node.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    assert!(status.success(), "exit status {status}");
}
