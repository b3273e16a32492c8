//! The node's end of a gateway link: only a gateway with the link secret (or, without one, on
//! loopback) gets a link, a bad link request gets a clear 400, an unknown link version a 426
//! naming the ones the node speaks, the unversioned token of the release before still gets a
//! link, a bad upgrade on one stream gets its own 400 while the link keeps serving the others,
//! a draining node sends `GOAWAY` on versioned links, and the link closes once the node has
//! drained.

use std::time::Duration;

use bytes::Bytes;
use ringcast_net::link::frame::GoAwayReason;
use ringcast_net::link::upgrade::{LEGACY_PROTOCOL, PROTOCOL};
use ringcast_net::link::{Link, Role, MAX_STREAMS};
use ringcast_node::Config;
use ringcast_testkit::{answer_status, http_raw, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a link to `node` the way the gateway does; returns it and its driver.
async fn link_to(node: &TestNode) -> (Link, tokio::task::JoinHandle<std::io::Result<()>>) {
    let (link, driver, _) = link_with(node, PROTOCOL).await;
    (link, driver)
}

/// Opens a link to `node` asking for `token`; returns it, its driver and the 101's head.
async fn link_with(
    node: &TestNode,
    token: &str,
) -> (Link, tokio::task::JoinHandle<std::io::Result<()>>, String) {
    let mut sock = TcpStream::connect(node.addr).await.unwrap();
    let request =
        format!("GET /link HTTP/1.1\r\nHost: n\r\nUpgrade: {token}\r\nConnection: Upgrade\r\n\r\n");
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            sock.read(&mut byte).await.unwrap(),
            1,
            "link answer cut short"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert_eq!(answer_status(head.as_bytes()), Some(101), "{head}");
    let (link, driver) = Link::new(sock, Bytes::new(), Role::Opener, MAX_STREAMS, |_| {});
    (link, tokio::spawn(driver), head)
}

/// A WebSocket upgrade for `id`, as a gateway forwards it on a stream.
fn ws_upgrade(id: &str) -> String {
    format!(
        "GET /ws?client_id={id} HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Reads from `s` until `pattern` has arrived (within 5 s); returns everything read.
async fn read_until(s: &mut (impl AsyncReadExt + Unpin), pattern: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(pattern.len()).any(|w| w == pattern) {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "ended before {:?}: {:?}",
                pattern,
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("in time");
    got
}

#[tokio::test]
async fn a_link_request_without_the_upgrade_gets_a_400() {
    let node = TestNode::start(Config::for_tests()).await;
    let (status, body) = http_raw(node.addr, "GET /link HTTP/1.1\r\nHost: n\r\n\r\n").await;
    assert_eq!(status, 400);
    assert!(body.contains("ringcast-link"), "{body}");
    // The node still serves.
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_bad_upgrade_on_one_stream_leaves_the_link_serving_the_others() {
    let node = TestNode::start(Config::for_tests()).await;
    let (link, _driver) = link_to(&node).await;

    let mut bad = link.open().unwrap();
    bad.write_all(b"GET /ws?client_id=a HTTP/1.1\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut answer))
        .await
        .expect("in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer_status(answer.as_bytes()), Some(400), "{answer}");

    let mut good = link.open().unwrap();
    good.write_all(
        b"GET /ws?client_id=b HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut good, b"welcome").await;
    assert_eq!(answer_status(&got), Some(101));
    assert!(link.is_usable());
}

#[tokio::test]
async fn the_link_closes_once_the_node_has_drained() {
    let mut config = Config::for_tests();
    config.drain_delay_secs = 0;
    config.shutdown_grace_secs = 1;
    let node = TestNode::start(config).await;
    let (link, driver) = link_to(&node).await;
    node.stop().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the link ended in time")
        .unwrap()
        .ok();
    assert!(!link.is_usable());
}

/// The answer to a `/link` request to `to`, with `extra` header lines.
async fn link_answer(to: std::net::SocketAddr, extra: &str) -> String {
    link_answer_to(to, PROTOCOL, extra).await
}

/// The answer to a `/link` request for `token` to `to`, with `extra` header lines.
async fn link_answer_to(to: std::net::SocketAddr, token: &str, extra: &str) -> String {
    let mut sock = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "GET /link HTTP/1.1\r\nHost: n\r\nUpgrade: {token}\r\nConnection: Upgrade\r\n{extra}\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        // A refusal's body follows its head.
        if answer_status(&got) != Some(101) {
            let _ = sock.read_to_end(&mut got).await;
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_link_needs_the_secret_when_one_is_set() {
    let mut config = Config::for_tests();
    config.link_secret = Some("node-tests-link-secret-0123".parse().unwrap());
    let node = TestNode::start(config).await;
    for extra in [
        "",
        "Authorization: Bearer wrong-secret-of-some-length\r\n",
        "Authorization: Bearer node-tests-link-secret-012\r\n",
    ] {
        let answer = link_answer(node.addr, extra).await;
        assert_eq!(
            answer_status(answer.as_bytes()),
            Some(401),
            "{extra:?}: {answer}"
        );
        assert!(answer.contains("link_unauthorized"), "{answer}");
    }
    let answer = link_answer(
        node.addr,
        "Authorization: Bearer node-tests-link-secret-0123\r\n",
    )
    .await;
    assert_eq!(answer_status(answer.as_bytes()), Some(101), "{answer}");
    // Each refusal is counted, so a gateway with another secret shows up in /metrics.
    let refused = node
        .metric("ringcast_node_link_refusals_total{reason=\"unauthorized\"}")
        .await;
    assert_eq!(refused, 3.0);
    // Ordinary clients need no secret.
    let (_c, _) = ringcast_testkit::Client::connect_welcomed(&node.ws_url("a")).await;
}

/// An address of this host that is not loopback, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn without_a_secret_only_loopback_peers_get_a_link() {
    let Some(ip) = non_loopback_ip() else {
        panic!(
            "this host has no address but loopback (no route to 10.255.255.255), so this test \
             cannot reach the node from a non-loopback peer; run it on a host with a network \
             interface (the refusal itself is also unit-tested in link::secret)"
        );
    };
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(ringcast_node::run(listener, Config::for_tests(), stop_rx));
    let remote = std::net::SocketAddr::new(ip, port);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    ringcast_testkit::wait_until(Duration::from_secs(5), "the node up", || async move {
        ringcast_testkit::http_get(local, "/healthz").await.0 == 200
    })
    .await;
    let answer = link_answer(remote, "").await;
    assert_eq!(answer_status(answer.as_bytes()), Some(403), "{answer}");
    assert!(answer.contains("link_forbidden"), "{answer}");
    let answer = link_answer(local, "").await;
    assert_eq!(answer_status(answer.as_bytes()), Some(101), "{answer}");
    // A client from the same remote address is served as ever.
    let url = ringcast_testkit::ws_url(remote, "remote");
    let (_c, _) = ringcast_testkit::Client::connect_welcomed(&url).await;
}

#[tokio::test]
async fn without_a_secret_a_link_through_a_local_proxy_is_refused() {
    // An Istio sidecar or an nginx `proxy_pass` on the node's host connects from loopback on
    // behalf of anyone: the headers it adds give it away.
    let node = TestNode::start(Config::for_tests()).await;
    for header in [
        "Forwarded: for=203.0.113.7",
        "X-Forwarded-For: 203.0.113.7",
        "X-Real-IP: 203.0.113.7",
        "Via: 1.1 nginx",
        "X-Envoy-External-Address: 203.0.113.7",
        "l5d-dst-override: node:9001",
    ] {
        let answer = link_answer(node.addr, &format!("{header}\r\n")).await;
        assert_eq!(
            answer_status(answer.as_bytes()),
            Some(403),
            "{header}: {answer}"
        );
        assert!(answer.contains("link_forbidden"), "{header}: {answer}");
    }
    // The gateway's own request, from the same host, still gets its link.
    let answer = link_answer(node.addr, "").await;
    assert_eq!(answer_status(answer.as_bytes()), Some(101), "{answer}");
}

#[tokio::test]
async fn the_versioned_and_the_legacy_token_each_get_a_working_link() {
    let node = TestNode::start(Config::for_tests()).await;
    for token in [PROTOCOL, LEGACY_PROTOCOL] {
        let (link, _driver, head) = link_with(&node, token).await;
        // The 101 confirms the token asked for: a gateway of the release before reads its own.
        let confirmed = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("upgrade: ")
                .map(str::to_owned)
        });
        assert_eq!(confirmed.as_deref(), Some(token), "{head}");
        let mut stream = link.open().unwrap();
        let id = token.replace('/', "-");
        stream.write_all(ws_upgrade(&id).as_bytes()).await.unwrap();
        let got = read_until(&mut stream, b"welcome").await;
        assert_eq!(answer_status(&got), Some(101), "{token}");
    }
    assert_eq!(node.metric("ringcast_node_links").await, 2.0);
}

#[tokio::test]
async fn an_unknown_link_version_gets_a_426_naming_the_versions_the_node_speaks() {
    let node = TestNode::start(Config::for_tests()).await;
    let answer = link_answer_to(node.addr, "ringcast-link/7", "").await;
    assert_eq!(answer_status(answer.as_bytes()), Some(426), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nupgrade: ringcast-link/1, ringcast-link\r\n"),
        "{answer}"
    );
    assert!(
        lower.contains("\r\nconnection: upgrade, close\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\"error\":\"link_version_unsupported\""),
        "{answer}"
    );
    let refused = node
        .metric("ringcast_node_link_refusals_total{reason=\"unknown_version\"}")
        .await;
    assert_eq!(refused, 1.0);
    // Offered beside a version it speaks, the unknown one is passed over.
    let answer = link_answer_to(node.addr, "ringcast-link/7, ringcast-link/1", "").await;
    assert_eq!(answer_status(answer.as_bytes()), Some(101), "{answer}");
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_legacy_only_node_answers_link_requests_as_the_release_before_did() {
    let mut config = Config::for_tests();
    config.link_legacy_only = true;
    let node = TestNode::start(config).await;
    // What a node of the release before answers the versioned token: its 400, word for word.
    for token in [PROTOCOL, "ringcast-link/7"] {
        let answer = link_answer_to(node.addr, token, "").await;
        assert_eq!(answer_status(answer.as_bytes()), Some(400), "{answer}");
        assert!(
            answer.contains(
                r#"{"error":"bad_request","message":"a link is GET /link HTTP/1.1 with Upgrade: ringcast-link"}"#
            ),
            "{answer}"
        );
    }
    let (_link, _driver, head) = link_with(&node, LEGACY_PROTOCOL).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nupgrade: ringcast-link\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn a_draining_node_sends_goaway_on_a_versioned_link_and_its_streams_run_on() {
    let mut config = Config::for_tests();
    config.drain_delay_secs = 2;
    config.shutdown_grace_secs = 1;
    let node = TestNode::start(config).await;
    let (link, driver) = link_to(&node).await;
    let (legacy, legacy_driver, _) = link_with(&node, LEGACY_PROTOCOL).await;
    let mut open = link.open().unwrap();
    open.write_all(ws_upgrade("early").as_bytes())
        .await
        .unwrap();
    read_until(&mut open, b"welcome").await;

    node.signal_stop();
    let reason = tokio::time::timeout(Duration::from_secs(5), link.goaway())
        .await
        .expect("a GOAWAY in time");
    assert_eq!(reason, Some(GoAwayReason::Draining));
    assert!(!link.is_usable());
    assert!(link.open().is_err(), "no new stream after GOAWAY");
    // The stream already open runs on until the node closes its session (1012 after the delay).
    let got = read_until(&mut open, b"node shutting down").await;
    let close = got.iter().position(|&b| b == 0x88).expect("a close frame");
    assert_eq!(got[close + 2..close + 4], [0x03, 0xf4], "closed with 1012");
    // A link of the release before gets no GOAWAY (its driver would fail on the unknown kind):
    // it just ends, cleanly, once the node has drained.
    assert_eq!(legacy.going_away(), None);
    let ended = tokio::time::timeout(Duration::from_secs(10), legacy_driver)
        .await
        .expect("the legacy link ended in time")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
}
