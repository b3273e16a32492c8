//! Clients reach their node over the gateway's link to it (one TCP connection per node), a
//! stalled client on a link holds up nobody else, `--node-transport tcp` gives every client a
//! connection of its own, and a node without links is still reached.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ringcast_node::Config as NodeConfig;
use ringcast_testkit::{Client, TestNode};
use serde_json::json;
use support::{connect_to_node, signal, TestGateway};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::Message;

fn node_config() -> NodeConfig {
    let mut c = NodeConfig::for_tests();
    c.announce_connections = false;
    c
}

/// Joins `room` and waits for the acknowledgement.
async fn join(c: &mut Client, room: &str) {
    c.send_json(json!({"type":"join_room","room":room})).await;
    c.recv_event("user_joined").await;
}

#[tokio::test]
async fn clients_share_one_link_per_node_and_room_traffic_flows() {
    let node = TestNode::start(node_config()).await;
    let spec = format!("n1={}", node.addr);
    let gw = TestGateway::start(&["--node", &spec]).await;

    let mut clients = Vec::new();
    for i in 0..20 {
        let (mut c, _) = Client::connect_welcomed(&gw.ws_url(&format!("user-{i}"))).await;
        join(&mut c, "lobby").await;
        clients.push(c);
    }
    assert_eq!(node.metric("ringcast_node_links").await, 1.0);
    assert_eq!(node.metric("ringcast_node_connections").await, 20.0);
    assert_eq!(gw.metric("ringcast_gateway_node_links").await, 1.0);

    clients[0]
        .send_json(json!({"type":"room_message","room":"lobby","content":"hi all"}))
        .await;
    for c in &mut clients {
        assert_eq!(c.recv_event("chat").await["content"], "hi all");
    }

    // Clients that leave are gone from the node; the link stays for the next ones.
    for c in clients.drain(10..) {
        c.close().await;
    }
    ringcast_testkit::wait_until(Duration::from_secs(5), "10 connections left", || async {
        node.metric("ringcast_node_connections").await == 10.0
    })
    .await;
    let (mut late, _) = Client::connect_welcomed(&gw.ws_url("late")).await;
    join(&mut late, "lobby").await;
    assert_eq!(node.metric("ringcast_node_links").await, 1.0);
}

#[tokio::test]
async fn with_tcp_transport_every_client_has_its_own_connection() {
    let node = TestNode::start(node_config()).await;
    let spec = format!("n1={}", node.addr);
    let gw = TestGateway::start(&["--node", &spec, "--node-transport", "tcp"]).await;
    let (mut a, _) = Client::connect_welcomed(&gw.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&gw.ws_url("b")).await;
    join(&mut a, "r").await;
    join(&mut b, "r").await;
    a.send_json(json!({"type":"room_message","room":"r","content":"x"}))
        .await;
    assert_eq!(b.recv_event("chat").await["content"], "x");
    assert_eq!(node.metric("ringcast_node_links").await, 0.0);
    assert_eq!(gw.metric("ringcast_gateway_node_links").await, 0.0);
}

#[tokio::test]
async fn a_stalled_client_on_a_link_is_cut_off_and_its_link_mates_keep_receiving() {
    const MESSAGES: usize = 600;
    const BATCH: usize = 10;
    let mut config = node_config();
    config.send_queue_bytes = 1024 * 1024;
    config.send_queue_frames = 1024;
    config.rate_limit_per_sec = 100_000.0;
    config.rate_limit_burst = 100_000.0;
    let node = TestNode::start(config).await;
    let spec = format!("n1={}", node.addr);
    let gw = TestGateway::start(&["--node", &spec]).await;

    // The stalled client: a tiny receive buffer; it joins, then never reads again.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(gw.ws_url("stalled"), stream)
        .await
        .expect("stalled handshake");
    stalled
        .send(Message::text(
            json!({"type":"join_room","room":"busy"}).to_string(),
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        stalled.next().await.expect("frame").expect("frame ok");
    }

    let (mut publisher, _) = Client::connect_welcomed(&gw.ws_url("publisher")).await;
    let (mut member, _) = Client::connect_welcomed(&gw.ws_url("member")).await;
    join(&mut publisher, "busy").await;
    join(&mut member, "busy").await;

    let reader = tokio::spawn(async move {
        let mut next = 0usize;
        while next < MESSAGES {
            let v = member.recv().await;
            if v["event"] != "chat" {
                continue;
            }
            assert_eq!(
                v["content"]["n"], next,
                "member lost or reordered a message"
            );
            next += 1;
        }
        member
    });
    let pad = "p".repeat(32 * 1024);
    for chunk in 0..MESSAGES / BATCH {
        for i in 0..BATCH {
            let n = chunk * BATCH + i;
            publisher
                .send_json(json!({"type":"room_message","room":"busy","content":{"n":n,"pad":pad}}))
                .await;
        }
        for _ in 0..BATCH {
            publisher.recv_event("chat").await;
        }
    }
    let mut member = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the member received everything in time")
        .expect("member task");
    ringcast_testkit::wait_until(
        Duration::from_secs(10),
        "the stalled client cut off",
        || async {
            node.metric("ringcast_node_slow_consumer_disconnects_total")
                .await
                >= 1.0
        },
    )
    .await;
    assert_eq!(node.metric("ringcast_node_links").await, 1.0);
    publisher
        .send_json(json!({"type":"room_message","room":"busy","content":"after"}))
        .await;
    assert_eq!(member.recv_event("chat").await["content"], "after");
    drop(stalled);
}

/// A node stand-in from before links: `GET /link` gets a 404, a `/ws` upgrade a WebSocket that
/// sends `hello`. Counts both.
async fn node_without_links() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    websocket_server(Some(
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ))
    .await
}

/// A WebSocket server that is no ringcast node: `GET /link` gets `link_answer` (or, with
/// `None`, the connection is closed unanswered), a `/ws` upgrade a WebSocket that sends
/// `hello`. Counts both.
async fn websocket_server(
    link_answer: Option<&'static [u8]>,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (links, upgrades) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (l, u) = (links.clone(), upgrades.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (l, u) = (l.clone(), u.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 9];
                if stream.peek(&mut first).await.is_err() {
                    return;
                }
                if &first == b"GET /link" {
                    l.fetch_add(1, Ordering::SeqCst);
                    let mut head = [0u8; 1024];
                    let _ = stream.read(&mut head).await;
                    if let Some(answer) = link_answer {
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer).await;
                    }
                    return;
                }
                if first.starts_with(b"GET /ws") {
                    u.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
                        let _ = ws.send(Message::text("hello")).await;
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }
            });
        }
    });
    (addr, links, upgrades)
}

#[tokio::test]
async fn a_node_without_links_is_reached_with_a_connection_per_client() {
    let (addr, links, upgrades) = node_without_links().await;
    let spec = format!("old={addr}");
    // The stand-in has no /healthz: keep it on the ring regardless.
    let gw = TestGateway::start(&["--node", &spec, "--unhealthy-threshold", "1000000"]).await;
    for id in ["a", "b", "c"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(id))
            .await
            .expect("upgrade through the gateway");
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("a good frame");
        assert_eq!(first, Message::text("hello"));
    }
    assert_eq!(upgrades.load(Ordering::SeqCst), 3);
    assert_eq!(
        links.load(Ordering::SeqCst),
        1,
        "the node's refusal is remembered"
    );
    assert_eq!(gw.metric("ringcast_gateway_node_links").await, 0.0);
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}

#[tokio::test]
async fn a_frozen_node_behind_a_live_link_fails_over_in_time() {
    let a = support::NodeProcess::start("a").await;
    let b = support::NodeProcess::start("b").await;
    let (spec_a, spec_b) = (a.spec(), b.spec());
    // Health checks slow enough that the failover, not the ring, moves the client.
    let gw = TestGateway::start(&[
        "--node",
        &spec_a,
        "--node",
        &spec_b,
        "--connect-timeout-ms",
        "1000",
        "--health-interval-ms",
        "60000",
    ])
    .await;
    // A client id owned by node a, connected once so the link to a exists.
    let mut owned_by_a = None;
    for i in 0..50 {
        let id = format!("user-{i}");
        let (c, node) = connect_to_node(&gw, &id).await;
        if node == "a" {
            owned_by_a = Some((id, c));
            break;
        }
    }
    let (id, mut first) = owned_by_a.expect("some id lands on a");

    // Frozen: its sockets stay open, so the link looks alive, but nothing answers.
    signal(a.pid(), "-STOP");
    // A stop is taken by one thread, which then stops the others when it next runs: on a busy
    // machine another thread can serve an upgrade first. Wait until every thread is stopped.
    ringcast_testkit::wait_until(Duration::from_secs(5), "node a stopped", || {
        let stopped = all_threads_stopped(a.pid());
        async move { stopped }
    })
    .await;
    let started = std::time::Instant::now();
    let (_again, node) = connect_to_node(&gw, &id).await;
    let took = started.elapsed();
    signal(a.pid(), "-CONT");
    assert_eq!(node, "b", "the upgrade failed over to the replica");
    assert!(
        took < Duration::from_secs(8),
        "failover waited for the whole handshake budget: {took:?}"
    );
    assert!(gw.metric("ringcast_gateway_failovers_total").await >= 1.0);
    // The thawed node's link still serves the first client.
    first
        .send_json(json!({"type":"join_room","room":"r"}))
        .await;
    first.recv_event("user_joined").await;
}

#[tokio::test]
async fn pings_and_the_close_handshake_cross_the_link() {
    let node = TestNode::start(node_config()).await;
    let spec = format!("n1={}", node.addr);
    let gw = TestGateway::start(&["--node", &spec]).await;
    let limit = Duration::from_secs(5);
    let (mut a, _) = Client::connect_welcomed(&gw.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&gw.ws_url("b")).await;
    assert_eq!(node.metric("ringcast_node_links").await, 1.0);

    assert_eq!(a.ping(b"over the link", limit).await, b"over the link");
    assert_eq!(a.close_with(1000, limit).await, Some(1000));

    // Its link mate is unaffected.
    b.send_json(json!({"type":"ping"})).await;
    b.recv_event("pong").await;
}

#[tokio::test]
async fn a_websocket_server_that_closes_link_requests_is_reached_with_a_connection_per_client() {
    let (addr, links, upgrades) = websocket_server(None).await;
    let spec = format!("ws={addr}");
    let gw = TestGateway::start(&["--node", &spec, "--unhealthy-threshold", "1000000"]).await;
    for id in ["a", "b", "c"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(id))
            .await
            .expect("upgrade through the gateway");
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("a good frame");
        assert_eq!(first, Message::text("hello"));
    }
    assert_eq!(upgrades.load(Ordering::SeqCst), 3);
    // A close says nothing about links (a node may have crashed just then): the server is
    // asked again, after a second and then less and less often, never more than once an upgrade.
    let asked = links.load(Ordering::SeqCst);
    assert!((1..=3).contains(&asked), "asked {asked} times");
    assert!(
        gw.metric("ringcast_gateway_link_attempts_broken_total")
            .await
            >= 1.0
    );
}

/// A TCP forwarder to `node` whose first `/link` connection is closed unanswered, as by a node
/// that crashed between accept and 101 or a TCP load balancer with no ready backend.
async fn closes_the_first_link_request(node: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 9];
                if stream.peek(&mut first).await.is_err() {
                    return;
                }
                if &first == b"GET /link" && closed.fetch_add(1, Ordering::SeqCst) == 0 {
                    return;
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(node).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_link_attempt_that_is_closed_unanswered_goes_direct_and_links_again_soon() {
    let node = TestNode::start(node_config()).await;
    let front = closes_the_first_link_request(node.addr).await;
    let spec = format!("n1={front}");
    let gw = TestGateway::start(&["--node", &spec, "--unhealthy-threshold", "1"]).await;
    // The first client is served over a connection of its own, and the node stays healthy.
    let (_first, _) = Client::connect_welcomed(&gw.ws_url("first")).await;
    assert_eq!(
        gw.metric("ringcast_gateway_link_attempts_broken_total")
            .await,
        1.0
    );
    assert_eq!(gw.healthy_ids().await, vec!["n1".to_owned()]);
    // A link is made again soon, not after a minute of one connection per client.
    let node = &node;
    let mut tries = 0;
    ringcast_testkit::wait_until(Duration::from_secs(10), "a link made", || {
        tries += 1;
        let url = gw.ws_url(&format!("later-{tries}"));
        async move {
            let (c, _) = Client::connect_welcomed(&url).await;
            drop(c);
            node.metric("ringcast_node_links").await == 1.0
        }
    })
    .await;
    assert_eq!(gw.metric("ringcast_gateway_node_links").await, 1.0);
}

/// The HTTP status and body of a refused upgrade through `gw` for `id`.
async fn refused(gw: &TestGateway, id: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(gw.ws_url(id)).await {
        Ok(_) => panic!("{id} was served"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy);
            (
                resp.status().as_u16(),
                body.unwrap_or_default().into_owned(),
            )
        }
        Err(e) => panic!("{id}: {e}"),
    }
}

#[tokio::test]
async fn a_full_node_answers_node_full_and_stays_in_the_ring_on_either_transport() {
    for transport in ["link", "tcp"] {
        let mut config = node_config();
        config.max_connections = 1;
        let node = TestNode::start(config).await;
        let spec = format!("n1={}", node.addr);
        // One failed check would take the node out: a refusal must not count as one.
        let gw = TestGateway::start(&[
            "--node",
            &spec,
            "--node-transport",
            transport,
            "--unhealthy-threshold",
            "1",
            "--health-interval-ms",
            "60000",
        ])
        .await;
        let (first, _) = Client::connect_welcomed(&gw.ws_url("first")).await;
        let (status, body) = refused(&gw, "second").await;
        assert_eq!(status, 503, "{transport}: {body}");
        assert!(body.contains("node_full"), "{transport}: {body}");
        assert_eq!(gw.healthy_ids().await, vec!["n1".to_owned()], "{transport}");
        first.close().await;
        ringcast_testkit::wait_until(Duration::from_secs(5), "a slot free again", || async {
            node.metric("ringcast_node_connections").await == 0.0
        })
        .await;
        let (_third, _) = Client::connect_welcomed(&gw.ws_url("third")).await;
    }
}

#[tokio::test]
async fn a_new_link_to_a_frozen_node_fails_over_within_the_connect_timeout() {
    // A "node" that takes connections and never answers: a frozen process.
    let frozen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frozen_addr = frozen.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = frozen.accept().await {
            held.push(s);
        }
    });
    let mut config = node_config();
    config.node_id = Some("b".into());
    let live = TestNode::start(config).await;
    let (spec_a, spec_b) = (format!("a={frozen_addr}"), format!("b={}", live.addr));
    let gw = TestGateway::start(&[
        "--node",
        &spec_a,
        "--node",
        &spec_b,
        "--connect-timeout-ms",
        "500",
        "--handshake-timeout-secs",
        "3",
        "--health-interval-ms",
        "60000",
    ])
    .await;
    // Every client is served by the live node, those owned by the frozen one included.
    for i in 0..8 {
        let id = format!("user-{i}");
        let mut c = Client::try_connect(&gw.ws_url(&id))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(c.recv_event("welcome").await["node"], "b");
    }
    assert!(gw.metric("ringcast_gateway_failovers_total").await >= 1.0);
}

#[tokio::test]
async fn a_link_needs_the_nodes_secret_and_without_it_clients_still_get_through() {
    const SECRET: &str = "gateway-tests-link-secret-42";
    let mut config = node_config();
    config.link_secret = Some(SECRET.parse().unwrap());
    let node = TestNode::start(config).await;
    let spec = format!("n1={}", node.addr);
    for (secret, links) in [
        (None, 0.0),
        (Some("another-secret-of-length"), 0.0),
        (Some(SECRET), 1.0),
    ] {
        let mut args = vec!["--node", &spec];
        if let Some(s) = secret {
            args.extend(["--link-secret", s]);
        }
        let gw = TestGateway::start(&args).await;
        let (mut c, _) = Client::connect_welcomed(&gw.ws_url("a")).await;
        join(&mut c, "r").await;
        assert_eq!(
            node.metric("ringcast_node_links").await,
            links,
            "{secret:?}"
        );
        assert_eq!(
            gw.metric("ringcast_gateway_node_links").await,
            links,
            "{secret:?}"
        );
        // Every refusal is counted by its code, so a mismatch is visible, not only logged.
        let unauthorized = gw
            .metric("ringcast_gateway_link_refusals_total{code=\"link_unauthorized\"}")
            .await;
        assert_eq!(unauthorized, 1.0 - links, "{secret:?}");
        c.close().await;
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_full_node_sends_its_clients_to_the_next_replica_and_stays_healthy() {
    let mut full = node_config();
    full.node_id = Some("full".into());
    full.max_connections = 1;
    let full = TestNode::start(full).await;
    let mut spare = node_config();
    spare.node_id = Some("spare".into());
    let spare = TestNode::start(spare).await;
    let (spec_a, spec_b) = (
        format!("full={}", full.addr),
        format!("spare={}", spare.addr),
    );
    let gw = TestGateway::start(&[
        "--node",
        &spec_a,
        "--node",
        &spec_b,
        "--unhealthy-threshold",
        "1",
        "--health-interval-ms",
        "60000",
    ])
    .await;
    // The first client the full node owns takes its one slot; every later one it owns goes to
    // the spare, and neither node leaves the ring.
    let mut on_full = 0;
    let mut clients = Vec::new();
    for i in 0..16 {
        let (c, node) = connect_to_node(&gw, &format!("user-{i}")).await;
        on_full += usize::from(node == "full");
        clients.push(c);
    }
    assert_eq!(on_full, 1, "the full node took exactly its limit");
    assert!(gw.metric("ringcast_gateway_failovers_total").await >= 1.0);
    assert_eq!(gw.healthy_ids().await, vec!["full", "spare"]);
}

#[tokio::test]
async fn a_node_without_a_link_secret_says_at_start_that_it_takes_local_links_only() {
    let dir = std::env::temp_dir().join(format!("ringcast-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (open, secured) = (dir.join("open.log"), dir.join("secured.log"));
    let _a = support::NodeProcess::start_with("a", &[], Some(&open)).await;
    let _b = support::NodeProcess::start_with(
        "b",
        &["--link-secret", "gateway-tests-link-secret-42"],
        Some(&secured),
    )
    .await;
    let says = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .contains("links (/link) are taken from loopback peers only")
    };
    ringcast_testkit::wait_until(Duration::from_secs(5), "the start log line", || {
        let logged = says(&open);
        async move { logged }
    })
    .await;
    assert!(
        !says(&secured),
        "a node with a secret takes links from anywhere"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Node shutdown with a client that reads slowly, over a link: the node's session gives up on
/// the close reply after 2 s and leaves the hub while its writer still owes the close frame on
/// the link stream. The node must wait for it (and the link carry it) before exiting: the
/// client gets whole frames, then 1012, never a connection that just ends.
#[tokio::test]
async fn a_slow_reader_behind_a_link_gets_its_1012_when_the_node_shuts_down() {
    // More than the kernel can hold between node, gateway and client (the gateway's send
    // buffer at its largest, the client's small receive buffer), so the node's writer is in
    // the middle of a write when the close comes.
    let wmem: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .expect("tcp_wmem");
    let stall = wmem + (2 << 20);
    const PAD: usize = 60 * 1024;
    let queue = (2 * stall).to_string();
    let frames = (2 * stall / PAD + 64).to_string();
    let node = support::NodeProcess::start_with(
        "n1",
        &[
            "--announce-connections=false",
            "--send-queue-bytes",
            &queue,
            "--send-queue-frames",
            &frames,
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
        None,
    )
    .await;
    let gw = TestGateway::start(&["--node", &node.spec()]).await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(gw.ws_url("slow"), stream)
        .await
        .expect("slow handshake");
    slow.send(Message::text(
        json!({"type":"join_room","room":"big"}).to_string(),
    ))
    .await
    .unwrap();
    for _ in 0..2 {
        slow.next().await.expect("frame").expect("frame ok");
    }
    let (_, metrics) = ringcast_testkit::http_get(node.addr, "/metrics").await;
    assert_eq!(
        ringcast_testkit::metric_sum(&metrics, "ringcast_node_links"),
        1.0,
        "the client came over a link"
    );
    let (mut publisher, _) = Client::connect_welcomed(&gw.ws_url("publisher")).await;
    join(&mut publisher, "big").await;
    let pad = "p".repeat(PAD);
    let rounds = stall.div_ceil(10 * PAD);
    for _ in 0..rounds {
        for _ in 0..10 {
            publisher
                .send_json(json!({"type":"room_message","room":"big","content":pad}))
                .await;
        }
        for _ in 0..10 {
            publisher.recv_event("chat").await;
        }
    }
    signal(node.pid(), "-TERM");
    ringcast_testkit::wait_until(Duration::from_secs(10), "the node draining", || async {
        ringcast_testkit::http_get(node.addr, "/healthz").await.0 == 503
    })
    .await;
    // Past the writer's drain limit and the session's wait for the close reply (2 s each).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut chats, mut bytes) = (0usize, 0usize);
    let code = loop {
        let next = tokio::time::timeout(Duration::from_secs(15), slow.next())
            .await
            .unwrap_or_else(|_| panic!("nothing for 15 s after {chats} frames"));
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("frame {chats} is not JSON: {e}"));
                if v["event"] == "chat" {
                    chats += 1;
                    bytes += t.len();
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("after {chats} whole frames ({bytes} bytes): {e}"),
            None => panic!("the stream ended after {chats} frames, no close frame"),
        }
    };
    assert_eq!(code, Some(1012));
    assert!(
        chats < rounds * 10,
        "the drain ran out of time with messages still queued ({chats} of {})",
        rounds * 10
    );
}
