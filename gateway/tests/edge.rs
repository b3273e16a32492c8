//! What clients see at the edges: a pipelined first frame, malformed upgrades, dead backends,
//! a slowloris client, oversized headers — while a normal client keeps working throughout.

mod support;

use std::time::Duration;

use ringcast_node::Config as NodeConfig;
use ringcast_testkit::{answer_status, http_raw, Client, DeadPort, TestNode};
use serde_json::json;
use support::{masked_text_frame, upgrade_request, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn one_node() -> (TestNode, TestGateway) {
    let (node, spec) = named_node("n1").await;
    let gw = TestGateway::start(&["--node", &spec, "--handshake-timeout-secs", "1"]).await;
    (node, gw)
}

/// An in-process node with id `id`, and its `ID=ADDR` spec for `--node`.
async fn named_node(id: &str) -> (TestNode, String) {
    let mut c = NodeConfig::for_tests();
    c.node_id = Some(id.into());
    let node = TestNode::start(c).await;
    let spec = format!("{id}={}", node.addr);
    (node, spec)
}

/// Reads from `s` until `needle` shows up in what was received (or 5 s pass); returns it all.
async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test]
async fn a_frame_pipelined_behind_the_upgrade_reaches_the_node_intact() {
    let (_node, gw) = one_node().await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut bytes = upgrade_request(gw.addr, "/ws?client_id=pipeliner").into_bytes();
    bytes.extend(masked_text_frame(br#"{"type":"ping"}"#));
    // One write: the frame sits right behind the request head, before any 101 is read.
    s.write_all(&bytes).await.expect("write");
    let got = read_until(&mut s, br#"{"event":"pong"}"#).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(answer_status(&got), Some(101), "{text}");
    assert!(text.contains(r#""event":"welcome""#), "{text}");
    assert!(
        text.contains(r#"{"event":"pong"}"#),
        "the pipelined ping was lost: {text}"
    );
}

#[tokio::test]
async fn malformed_upgrades_get_the_handshake_answer_and_a_normal_client_keeps_working() {
    let (_node, gw) = one_node().await;
    let (mut normal, _) = Client::connect_welcomed(&gw.ws_url("steady")).await;
    let addr = gw.addr;
    let good = upgrade_request(addr, "/ws?client_id=x");
    // The codes of README's table of upgrade answers (ringcast_net::ws_handshake).
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "missing key",
            good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
            "bad_websocket_key",
        ),
        (
            "bad key",
            good.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            400,
            "bad_websocket_key",
        ),
        (
            "wrong version",
            good.replace("Version: 13", "Version: 8"),
            400,
            "bad_websocket_version",
        ),
        (
            "no upgrade header",
            good.replace("Upgrade: websocket\r\n", ""),
            426,
            "upgrade_required",
        ),
        (
            "h2c upgrade",
            good.replace("Upgrade: websocket", "Upgrade: h2c"),
            426,
            "upgrade_required",
        ),
        (
            "no connection upgrade",
            good.replace("Connection: Upgrade", "Connection: keep-alive"),
            426,
            "upgrade_required",
        ),
        (
            "HTTP/1.0",
            good.replace("HTTP/1.1", "HTTP/1.0"),
            400,
            "bad_http_version",
        ),
        (
            "POST",
            good.replace("GET ", "POST "),
            405,
            "method_not_allowed",
        ),
        (
            "HTTP/2 request line",
            good.replace("HTTP/1.1", "HTTP/2"),
            400,
            "bad_request",
        ),
        (
            "invalid client_id",
            upgrade_request(addr, "/ws?client_id=has%20space"),
            400,
            "invalid_client_id",
        ),
        (
            "too long client_id",
            upgrade_request(addr, &format!("/ws?client_id={}", "a".repeat(65))),
            400,
            "invalid_client_id",
        ),
        (
            "bad escape",
            upgrade_request(addr, "/ws?client_id=%zz"),
            400,
            "invalid_client_id",
        ),
        (
            "empty client_id",
            upgrade_request(addr, "/ws?client_id="),
            400,
            "invalid_client_id",
        ),
        // The HTTP/2 connection preface is not HTTP/1.1 at all: refused, never forwarded.
        (
            "HTTP/2 preface",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
            400,
            "bad_http_version",
        ),
    ];
    let count = cases.len() as f64;
    for (what, req, status, code) in cases {
        let (got, body) = http_raw(addr, &req).await;
        assert_eq!(got, status, "{what}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(body["error"], code, "{what}");
        normal.send_json(json!({"type":"ping"})).await;
        normal.recv_event("pong").await;
    }
    assert!(gw.metric("ringcast_gateway_rejected_upgrades_total").await >= count);
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let (_node, gw) = one_node().await;
    let big = format!("X-Filler: {}\r\n", "a".repeat(20 * 1024));
    let req = upgrade_request(gw.addr, "/ws?client_id=big")
        .replace("\r\n\r\n", &format!("\r\n{big}\r\n"));
    let (status, _) = http_raw(gw.addr, &req).await;
    assert_eq!(status, 431);
}

#[tokio::test]
async fn dead_backends_get_502_then_503_and_come_back() {
    let dead = DeadPort::new();
    let spec = format!("dead={}", dead.addr());
    // Checks every second: the first (at start) alone stays below the down threshold of 2, so
    // the first upgrade below is what discovers the dead node.
    let gw = TestGateway::start(&["--node", &spec, "--health-interval-ms", "1000"]).await;
    // The node is believed up until a connect fails: every candidate failed → 502.
    let (status, body) = http_raw(gw.addr, &upgrade_request(gw.addr, "/ws?client_id=a")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("nodes_failed"), "{body}");
    // Now marked down: no healthy node → 503 with a JSON body.
    let (status, body) = http_raw(gw.addr, &upgrade_request(gw.addr, "/ws?client_id=a")).await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["error"], "no_healthy_node");
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 503);

    // A node appears on that port: health checks put it back, and upgrades succeed.
    let port = dead.release();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind the dead port");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut cfg = NodeConfig::for_tests();
    cfg.node_id = Some("dead".into());
    let node = tokio::spawn(ringcast_node::run(listener, cfg, rx));
    ringcast_testkit::wait_until(Duration::from_secs(5), "node back in the ring", || async {
        gw.healthy_ids().await == ["dead"]
    })
    .await;
    let (mut c, _) = Client::connect_welcomed(&gw.ws_url("a")).await;
    c.send_json(json!({"type":"ping"})).await;
    c.recv_event("pong").await;
    let _ = tx.send(true);
    let _ = node.await;
}

#[tokio::test]
async fn a_connect_failure_fails_over_to_the_next_replica_and_is_counted() {
    let (_live, live_spec) = named_node("live").await;
    let dead_port = DeadPort::new();
    let dead = format!("dead={}", dead_port.addr());
    let gw = TestGateway::start(&[
        "--node",
        &dead,
        "--node",
        &live_spec,
        "--health-interval-ms",
        "60000",
    ])
    .await;
    // Until some id owned by `dead` comes along, every client lands on `live` directly; that
    // one fails over. Every client gets in.
    for i in 0..50 {
        let (mut c, _) = Client::connect_welcomed(&gw.ws_url(&format!("f-{i}"))).await;
        c.send_json(json!({"type":"ping"})).await;
        c.recv_event("pong").await;
        if gw.metric("ringcast_gateway_failovers_total").await >= 1.0 {
            break;
        }
    }
    assert_eq!(gw.metric("ringcast_gateway_failovers_total").await, 1.0);
    assert_eq!(gw.healthy_ids().await, ["live"], "passively marked down");
}

/// A gateway on `listener` whose node list is `nodes` (`ID=ADDR`, `self` for its own address).
fn gateway_listing(
    listener: tokio::net::TcpListener,
    nodes: &[&str],
    extra: &[&str],
) -> TestGateway {
    let own = listener.local_addr().expect("addr");
    let mut args = Vec::new();
    for node in nodes {
        args.push("--node".to_owned());
        args.push(match *node {
            "self" => format!("self={own}"),
            other => other.to_owned(),
        });
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestGateway::start_on(listener, TestGateway::config(&args))
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

#[tokio::test]
async fn a_node_address_leading_to_a_gateway_is_a_loop_refused_at_once() {
    let (_real, real_spec) = named_node("real").await;
    let no_checks = ["--health-interval-ms", "60000"];

    // A gateway whose only "node" is itself: each upgrade routed there used to be forwarded to
    // itself again and again until it ran out of file descriptors. Now the client gets a 502.
    let alone = gateway_listing(bind().await, &["self"], &no_checks);
    let (status, body) =
        http_raw(alone.addr, &upgrade_request(alone.addr, "/ws?client_id=a")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("nodes_failed"), "{body}");
    let rejected = "ringcast_gateway_rejected_upgrades_total";
    assert_eq!(
        alone.metric(rejected).await,
        2.0,
        "the loop's 508 and the 502"
    );

    // A misconfigured fleet: besides a real node, a gateway lists itself and the gateway above.
    // Every upgrade sent to a gateway comes back 508 at once and fails over; everyone gets in.
    let other = format!("other={}", alone.addr);
    let gw = gateway_listing(bind().await, &["self", &other, &real_spec], &no_checks);
    let mut clients = Vec::new();
    for i in 0..40 {
        let (mut c, _) = Client::connect_welcomed(&gw.ws_url(&format!("l-{i}"))).await;
        c.send_json(json!({"type":"ping"})).await;
        c.recv_event("pong").await;
        clients.push(c);
    }
    let refused_here = gw.metric(rejected).await;
    let refused_there = alone.metric(rejected).await - 2.0;
    assert!(
        refused_here >= 1.0,
        "no upgrade was routed to the gateway itself"
    );
    assert!(
        refused_there >= 1.0,
        "no upgrade was routed to the other gateway"
    );
    assert_eq!(
        gw.metric("ringcast_gateway_failovers_total").await,
        refused_here + refused_there,
        "each 508 is followed by one failover"
    );
    for c in clients.iter_mut() {
        c.send_json(json!({"type":"ping"})).await;
        c.recv_event("pong").await;
    }

    // With health checks on, both gateways fail theirs (508) and leave the ring.
    let checked = gateway_listing(bind().await, &["self", &other, &real_spec], &[]);
    ringcast_testkit::wait_until(
        Duration::from_secs(10),
        "gateways out of the ring",
        || async { checked.healthy_ids().await == ["real"] },
    )
    .await;
    for i in 0..10 {
        let (mut c, _) = Client::connect_welcomed(&checked.ws_url(&format!("h-{i}"))).await;
        c.send_json(json!({"type":"ping"})).await;
        c.recv_event("pong").await;
    }
    assert_eq!(
        checked.metric("ringcast_gateway_failovers_total").await,
        0.0
    );
}

#[tokio::test]
async fn a_slowloris_client_is_closed_by_the_handshake_timeout() {
    let (_node, gw) = one_node().await;
    let mut slow = TcpStream::connect(gw.addr).await.expect("connect");
    slow.write_all(b"GET /ws?client_id=slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Meanwhile a normal client connects and works.
    let (mut normal, _) = Client::connect_welcomed(&gw.ws_url("normal")).await;
    // Trickle a header byte now and then; the handshake timeout (1 s) still ends it.
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            let _ = slow.write_all(b"X").await;
            match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {} // a 408 before the close is fine
                Err(_) => {}
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(8), closed)
            .await
            .unwrap_or(false),
        "slowloris connection still open"
    );
    normal.send_json(json!({"type":"ping"})).await;
    normal.recv_event("pong").await;
}

#[tokio::test]
async fn graceful_shutdown_keeps_tunnels_for_the_grace_period_then_closes_them() {
    let (_node, spec) = named_node("n1").await;
    let gw = TestGateway::start(&["--node", &spec, "--shutdown-grace-secs", "2"]).await;
    let (mut client, _) = Client::connect_welcomed(&gw.ws_url("lingering")).await;
    let addr = gw.addr;
    gw.signal_stop();
    // No new connections once draining...
    ringcast_testkit::wait_until(Duration::from_secs(5), "listener closed", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // ...but the open tunnel still carries traffic during the grace period...
    client.send_json(json!({"type":"ping"})).await;
    client.recv_event("pong").await;
    // ...and is closed when it ends.
    let _ = client.expect_close(Duration::from_secs(10)).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_drain_ends_once_its_tunnels_end_each_to_a_clean_close() {
    // A grace period far past the 30 s `stop` allows: the gateway must stop because its last
    // tunnel ended, not because the grace period ran out.
    let (_node, spec) = named_node("n1").await;
    let gw = TestGateway::start(&["--node", &spec, "--shutdown-grace-secs", "300"]).await;
    let (mut a, _) = Client::connect_welcomed(&gw.ws_url("drain-a")).await;
    let (mut b, _) = Client::connect_welcomed(&gw.ws_url("drain-b")).await;
    let addr = gw.addr;
    gw.signal_stop();
    ringcast_testkit::wait_until(Duration::from_secs(5), "listener closed", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // The tunnels opened before the drain still carry traffic both ways...
    a.send_json(json!({"type":"chat","content":"still here"}))
        .await;
    assert_eq!(b.recv_event("chat").await["content"], "still here");
    // ...and each ends with the node's answer to its close, never a dropped connection (1006).
    assert_eq!(a.close_with(1000, Duration::from_secs(5)).await, Some(1000));
    drop(a);
    b.send_json(json!({"type":"ping"})).await;
    b.recv_event("pong").await;
    assert_eq!(b.close_with(1000, Duration::from_secs(5)).await, Some(1000));
    drop(b);
    gw.stop().await;
}

#[tokio::test]
async fn past_the_connection_limit_clients_get_503_until_a_slot_frees() {
    let (_node, spec) = named_node("n1").await;
    let gw = TestGateway::start(&["--node", &spec, "--max-connections", "2"]).await;
    let (first, _) = Client::connect_welcomed(&gw.ws_url("limit-1")).await;
    let (mut second, _) = Client::connect_welcomed(&gw.ws_url("limit-2")).await;
    match Client::try_connect(&gw.ws_url("limit-3")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503)
        }
        Err(e) => panic!("expected a 503, got {e}"),
        Ok(_) => panic!("a third connection got past a limit of 2"),
    }
    // The open tunnels are unaffected, and a freed slot lets the next client in.
    second.send_json(json!({"type":"ping"})).await;
    second.recv_event("pong").await;
    first.close().await;
    wait_until_connects(&gw.ws_url("limit-3")).await;
}

async fn wait_until_connects(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut c) = Client::try_connect(url).await {
            c.recv_event("welcome").await;
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot freed within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tunnel_ends_when_the_node_closes_even_if_the_client_went_silent() {
    // The node closes clients that stay silent for 1 s; the raw client below never answers,
    // never closes, never sends a FIN.
    let mut c = NodeConfig::for_tests();
    c.node_id = Some("n1".into());
    c.idle_timeout_secs = 1;
    c.ping_interval_secs = 1;
    let node = TestNode::start(c).await;
    let spec = format!("n1={}", node.addr);
    let gw = TestGateway::start(&["--node", &spec, "--tunnel-linger-secs", "1"]).await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(upgrade_request(gw.addr, "/ws?client_id=silent").as_bytes())
        .await
        .expect("write");
    let got = read_until(&mut s, b"welcome").await;
    assert_eq!(answer_status(&got), Some(101));
    assert_eq!(gw.metric("ringcast_gateway_open_connections").await, 1.0);
    // Keep the socket open but unread; the gateway must still let the tunnel go.
    ringcast_testkit::wait_until(Duration::from_secs(8), "tunnel released", || async {
        gw.metric("ringcast_gateway_open_connections").await == 0.0
    })
    .await;
    drop(s);
}

#[tokio::test]
async fn a_node_refusal_reaches_the_client_with_its_body() {
    // A node that requires a token behind a gateway that checks none: the node's 401 and its
    // JSON reason come back through the gateway, and the connection ends.
    let node = TestNode::start(support::auth::node_config("n1")).await;
    let spec = format!("n1={}", node.addr);
    let gw = TestGateway::start(&["--node", &spec]).await;
    let (status, body) = support::auth::refused(&gw.ws_url("tokenless"), &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "missing_token", "{body}");
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(upgrade_request(gw.addr, "/ws?client_id=raw").as_bytes())
        .await
        .expect("write");
    let got = read_until(&mut s, b"}").await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert_eq!(answer_status(&got), Some(401), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("content-type: application/json"), "{text}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the refused connection stayed open"
    );
}

#[tokio::test]
async fn an_upgrade_sent_in_pieces_still_opens() {
    // A first segment too short to tell `GET /ws` from anything else: detection waits for the
    // rest, and the upgrade opens on the one upgrade path, welcome and pipelined frame included.
    let (_node, gw) = one_node().await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let mut bytes = upgrade_request(gw.addr, "/ws?client_id=trickle").into_bytes();
    bytes.extend(masked_text_frame(br#"{"type":"ping"}"#));
    s.write_all(&bytes[..3]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&bytes[3..]).await.expect("write");
    let got = read_until(&mut s, br#"{"event":"pong"}"#).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(answer_status(&got), Some(101), "{text}");
    assert!(text.contains(r#""event":"welcome""#), "{text}");
    assert!(text.contains(r#"{"event":"pong"}"#), "{text}");
}
