//! Attacks on a node's `/link` port by a peer that holds the link secret: a flood of `PING`s
//! whose `PONG`s it never reads, and `OPEN`s past the node's connection limit, spread over two
//! links. The node stops reading the first and refuses the second with a 503 per stream, and an
//! ordinary client is served throughout (or as soon as the flood's streams are gone).

use std::time::Duration;

use ringcast_testkit::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::NodeProcess;

/// The secret the node runs with and the attacker presents.
const SECRET: &str = "abuse-suite-link-secret-0123";

const PING: u8 = 6;
const OPEN: u8 = 1;
const DATA: u8 = 2;
const CLOSE: u8 = 4;

fn frame(kind: u8, stream: u32) -> [u8; 9] {
    let mut f = [0u8; 9];
    f[0] = kind;
    f[1..5].copy_from_slice(&stream.to_be_bytes());
    f
}

/// A link opened by hand on `node`, presenting the secret; `rcvbuf` shrinks its receive buffer.
async fn raw_link(node: &NodeProcess, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut sock = socket.connect(node.addr).await.unwrap();
    let head = format!(
        "GET /link HTTP/1.1\r\nHost: n\r\nUpgrade: ringcast-link\r\nConnection: Upgrade\r\n\
         Authorization: Bearer {SECRET}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            sock.read(&mut byte).await.unwrap(),
            1,
            "link answer cut short"
        );
        got.push(byte[0]);
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 101 "), "{got}");
    sock
}

/// The next frame on a raw link: kind, stream, payload.
async fn next_frame(sock: &mut TcpStream) -> (u8, u32, Vec<u8>) {
    let mut h = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut h))
        .await
        .expect("a frame in time")
        .expect("a frame");
    let stream = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
    let mut payload = vec![0u8; if matches!(h[0], OPEN | DATA) { len } else { 0 }];
    sock.read_exact(&mut payload).await.expect("its payload");
    (h[0], stream, payload)
}

/// The node's resident memory in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_ping_flood_whose_pongs_are_never_read_stops_being_read_and_is_closed() {
    const FLOOD: usize = 64 * 1024 * 1024;
    let log = std::env::temp_dir().join(format!("ringcast-ping-flood-{}.log", std::process::id()));
    let node = NodeProcess::start_with("n", &["--link-secret", SECRET], Some(&log)).await;
    let before = rss_kb(node.pid());
    let mut sock = raw_link(&node, Some(4096)).await;
    let chunk: Vec<u8> = std::iter::repeat_n(frame(PING, 0), 64 * 1024 / 9)
        .flatten()
        .collect();
    let mut sent = 0;
    while sent < FLOOD {
        match tokio::time::timeout(Duration::from_secs(2), sock.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("the node cut the link before it stopped reading: {e}"),
            Err(_) => break, // the node no longer reads
        }
    }
    let grown_mb = rss_kb(node.pid()).saturating_sub(before) / 1024;
    assert!(
        sent < 24 * 1024 * 1024,
        "the node read {} MB of PINGs it could not answer (grew {grown_mb} MB)",
        sent / (1024 * 1024)
    );
    assert!(grown_mb < 24, "the node grew {grown_mb} MB");
    // Everyone else is still served.
    let url = ringcast_testkit::ws_url(node.addr, "ordinary");
    let (_c, _) = Client::connect_welcomed(&url).await;
    // And the link that stopped reading is closed, after three keepalive periods (reading it
    // now would let it go on, so the node's own gauge tells).
    let links = || async {
        let (_, text) = ringcast_testkit::http_get(node.addr, "/metrics").await;
        ringcast_testkit::metric_sum(&text, "ringcast_node_links")
    };
    assert_eq!(links().await, 1.0);
    ringcast_testkit::wait_until(Duration::from_secs(30), "the stuck link closed", || async {
        links().await == 0.0
    })
    .await;
    // ...for that reason, not another.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        logged.contains("the peer stopped reading the link"),
        "the node's log does not say why the link closed:\n{}",
        logged.lines().filter(|l| l.contains("link")).collect::<Vec<_>>().join("\n")
    );
    drop(sock);
}

#[tokio::test]
async fn opens_past_the_connection_limit_are_refused_with_a_503_across_links() {
    const LIMIT: u32 = 20;
    let node = NodeProcess::start_with(
        "n",
        &[
            "--link-secret",
            SECRET,
            "--max-connections",
            &LIMIT.to_string(),
        ],
        None,
    )
    .await;
    // One link opens the node's whole limit and never sends a request on any stream.
    let mut first = raw_link(&node, None).await;
    let opens: Vec<u8> = (1..=LIMIT).flat_map(|id| frame(OPEN, id)).collect();
    first.write_all(&opens).await.unwrap();
    // The pending streams count as connections: an ordinary client is refused...
    let url = ringcast_testkit::ws_url(node.addr, "ordinary");
    ringcast_testkit::wait_until(Duration::from_secs(5), "the node full", || {
        let url = url.clone();
        async move {
            Client::try_connect(&url)
                .await
                .err()
                .is_some_and(|e| e.to_string().contains("503"))
        }
    })
    .await;
    // A second link's OPENs each get a 503 and a CLOSE, at once.
    let mut second = raw_link(&node, None).await;
    let more: Vec<u8> = (1..=200).flat_map(|id| frame(OPEN, id)).collect();
    second.write_all(&more).await.unwrap();
    let mut refused = 0;
    let mut answered = std::collections::HashSet::new();
    while refused < 200 {
        let (kind, stream, payload) = next_frame(&mut second).await;
        match kind {
            DATA => {
                let text = String::from_utf8_lossy(&payload);
                assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
                assert!(text.contains("too_many_connections"), "{text}");
                answered.insert(stream);
            }
            CLOSE => {
                assert!(
                    answered.contains(&stream),
                    "stream {stream} closed without a reason"
                );
                refused += 1;
            }
            other => panic!("unexpected frame kind {other}"),
        }
    }
    // ...until the flood's link is gone.
    drop(first);
    ringcast_testkit::wait_until(
        Duration::from_secs(10),
        "the ordinary client served",
        || {
            let url = url.clone();
            async move { Client::try_connect(&url).await.is_ok() }
        },
    )
    .await;
}
