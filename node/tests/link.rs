//! The node's end of a gateway link: only a gateway with the link secret (or, without one, on
//! loopback) gets a link, a bad link request gets a clear 400, a bad upgrade on one stream gets
//! its own 400 while the link keeps serving the others, and the link closes once the node has
//! drained.

use std::time::Duration;

use bytes::Bytes;
use ringcast_net::link::{Link, Role, MAX_STREAMS};
use ringcast_node::Config;
use ringcast_testkit::{http_raw, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a link to `node` the way the gateway does; returns it and its driver.
async fn link_to(node: &TestNode) -> (Link, tokio::task::JoinHandle<std::io::Result<()>>) {
    let mut sock = TcpStream::connect(node.addr).await.unwrap();
    sock.write_all(
        b"GET /link HTTP/1.1\r\nHost: n\r\nUpgrade: ringcast-link\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
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
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (link, driver) = Link::new(sock, Bytes::new(), Role::Opener, MAX_STREAMS, |_| {});
    (link, tokio::spawn(driver))
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
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    let mut good = link.open().unwrap();
    good.write_all(
        b"GET /ws?client_id=b HTTP/1.1\r\nHost: n\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut good, b"welcome").await;
    assert!(got.starts_with(b"HTTP/1.1 101 "));
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

/// The answer head to a `/link` request from `from` to `to`, with `extra` header lines.
async fn link_answer(to: std::net::SocketAddr, extra: &str) -> String {
    let mut sock = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "GET /link HTTP/1.1\r\nHost: n\r\nUpgrade: ringcast-link\r\nConnection: Upgrade\r\n{extra}\r\n"
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
        if !got.starts_with(b"HTTP/1.1 101") {
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
        assert!(answer.starts_with("HTTP/1.1 401 "), "{extra:?}: {answer}");
        assert!(answer.contains("link_unauthorized"), "{answer}");
    }
    let answer = link_answer(
        node.addr,
        "Authorization: Bearer node-tests-link-secret-0123\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
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
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains("link_forbidden"), "{answer}");
    let answer = link_answer(local, "").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
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
        assert!(answer.starts_with("HTTP/1.1 403 "), "{header}: {answer}");
        assert!(answer.contains("link_forbidden"), "{header}: {answer}");
    }
    // The gateway's own request, from the same host, still gets its link.
    let answer = link_answer(node.addr, "").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
}
