//! Attacks on a node's `/link` port by a peer that holds the link secret: a flood of `PING`s
//! whose `PONG`s it never reads, and `OPEN`s past the node's connection limit, spread over two
//! links. The node stops reading the first and refuses the second with a 503 per stream, and an
//! ordinary client is served throughout (or as soon as the flood's streams are gone).

use std::time::Duration;

use ringcast_testkit::{answer_status, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use ringcast_net::link::frame::{self, CLOSE, DATA, OPEN, PING};

use crate::support::NodeProcess;

/// The secret the node runs with and the attacker presents.
const SECRET: &str = "abuse-suite-link-secret-0123";

/// A frame without payload, as the link's own encoder writes it.
fn frame(kind: u8, stream: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame::HEADER_LEN);
    frame::encode(&mut f, kind, stream, 0, &[]);
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
    assert_eq!(
        answer_status(&got),
        Some(101),
        "{}",
        String::from_utf8_lossy(&got)
    );
    sock
}

/// The frames arriving on a raw link, read with the link's own decoder.
struct Frames {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Frames {
    /// The next frame: kind, stream, payload.
    async fn next(&mut self) -> (u8, u32, Vec<u8>) {
        loop {
            if let Some((f, n)) = frame::decode(&self.buf).expect("a well-formed frame") {
                let got = (f.kind, f.stream, f.payload.to_vec());
                self.buf.drain(..n);
                return got;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.sock.read(&mut chunk))
                .await
                .expect("a frame in time")
                .expect("a frame");
            assert!(n > 0, "the link closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
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
        logged
            .lines()
            .filter(|l| l.contains("link"))
            .collect::<Vec<_>>()
            .join("\n")
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
            // Longer than the waits below: the flood's streams, which never send a request,
            // are not let go by their handshake timeout while the test looks.
            "--handshake-timeout-secs",
            "120",
        ],
        None,
    )
    .await;
    // One link opens the node's whole limit and never sends a request on any stream.
    let mut first = raw_link(&node, None).await;
    let mut opens: Vec<u8> = (1..=LIMIT).flat_map(|id| frame(OPEN, id)).collect();
    // The node reads a link's frames in order: once the PING behind them is answered, every
    // OPEN has taken its slot (and no client below can take one first).
    opens.extend(frame(PING, 0));
    first.write_all(&opens).await.unwrap();
    let mut first = Frames {
        sock: first,
        buf: Vec::new(),
    };
    let (kind, _, _) = first.next().await;
    assert_eq!(kind, frame::PONG, "the flood's streams were not all taken");
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
    let mut second = Frames {
        sock: second,
        buf: Vec::new(),
    };
    let mut refused = 0;
    let mut answered = std::collections::HashSet::new();
    while refused < 200 {
        let (kind, stream, payload) = second.next().await;
        match kind {
            DATA => {
                let text = String::from_utf8_lossy(&payload);
                assert_eq!(answer_status(&payload), Some(503), "{text}");
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
    // ...while the flood's link stays...
    let still = Client::try_connect(&url).await.err().map(|e| e.to_string());
    assert!(
        still.as_deref().is_some_and(|e| e.contains("503")),
        "{still:?}"
    );
    // ...until it is gone.
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
