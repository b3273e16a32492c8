//! Links across a rolling upgrade and a drain: a gateway links to a node of the release before
//! link versioning and to one that does not know its version (falling back to the unversioned
//! token, clients served over the link throughout), and a node that drains sends `GOAWAY`, so
//! new clients go to another node at once while those on the link stay until their 1012.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use ringcast_node::Config as NodeConfig;
use ringcast_testkit::{Client, TestNode};
use serde_json::json;
use support::{connect_to_node, signal, NodeProcess, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Two clients through `gw` in one room: a message from one reaches the other.
async fn room_traffic_flows(gw: &TestGateway) {
    let (mut a, _) = Client::connect_welcomed(&gw.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&gw.ws_url("b")).await;
    for c in [&mut a, &mut b] {
        c.send_json(json!({"type":"join_room","room":"r"})).await;
        c.recv_event("user_joined").await;
    }
    a.send_json(json!({"type":"room_message","room":"r","content":"hi"}))
        .await;
    assert_eq!(b.recv_event("chat").await["content"], "hi");
}

/// The sum of `name`'s samples on the node at `addr`.
async fn node_metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = ringcast_testkit::http_get(addr, "/metrics").await;
    ringcast_testkit::metric_sum(&body, name)
}

#[tokio::test]
async fn a_gateway_links_to_a_node_of_the_release_before_with_the_unversioned_token() {
    // A current node answering link requests exactly as the release before did.
    let old = NodeProcess::start_with("old", &["--link-legacy-only"], None).await;
    let gw = TestGateway::start(&["--node", &old.spec(), "--unhealthy-threshold", "1"]).await;
    room_traffic_flows(&gw).await;
    assert_eq!(node_metric(old.addr, "ringcast_node_links").await, 1.0);
    assert_eq!(gw.metric("ringcast_gateway_node_links").await, 1.0);
    // Linked, not sent one connection per client after a refusal.
    assert_eq!(gw.metric("ringcast_gateway_link_refusals_total").await, 0.0);
    assert_eq!(gw.healthy_ids().await, vec!["old".to_owned()]);
}

/// A TCP forwarder to `node` that rewrites the `Upgrade: from` of each link request into
/// `Upgrade: to`: the node sees a gateway of another link version.
async fn rewriting_forwarder(node: SocketAddr, from: &'static str, to: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    match client.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).replace(
                    &format!("\r\nUpgrade: {from}\r\n"),
                    &format!("\r\nUpgrade: {to}\r\n"),
                );
                let Ok(mut upstream) = TcpStream::connect(node).await else {
                    return;
                };
                if upstream.write_all(head.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_node_that_does_not_know_the_gateways_link_version_is_linked_with_the_unversioned_token()
{
    let mut config = NodeConfig::for_tests();
    config.announce_connections = false;
    let node = TestNode::start(config).await;
    // To the node, the gateway asks for a version of the future.
    let front = rewriting_forwarder(node.addr, "ringcast-link/1", "ringcast-link/7").await;
    let spec = format!("n1={front}");
    let gw = TestGateway::start(&["--node", &spec, "--unhealthy-threshold", "1"]).await;
    room_traffic_flows(&gw).await;
    let unknown = r#"ringcast_node_link_refusals_total{reason="unknown_version"}"#;
    assert_eq!(node.metric(unknown).await, 1.0, "the node answered its 426");
    assert_eq!(node.metric("ringcast_node_links").await, 1.0);
    assert_eq!(gw.metric("ringcast_gateway_node_links").await, 1.0);
    assert_eq!(gw.metric("ringcast_gateway_link_refusals_total").await, 0.0);
    assert_eq!(gw.healthy_ids().await, vec!["n1".to_owned()]);
}

#[tokio::test]
async fn a_draining_node_sends_new_clients_elsewhere_at_once_and_keeps_its_own_until_1012() {
    const DELAY_SECS: u64 = 4;
    let delay = DELAY_SECS.to_string();
    let a = NodeProcess::start_with("a", &["--drain-delay-secs", &delay], None).await;
    let b = NodeProcess::start("b").await;
    // Health checks far apart and one failure enough to take a node out: neither the checks
    // nor a counted failure can explain where clients go.
    let gw = TestGateway::start(&[
        "--node",
        &a.spec(),
        "--node",
        &b.spec(),
        "--health-interval-ms",
        "600000",
        "--unhealthy-threshold",
        "1",
    ])
    .await;
    // One client of node a that stays, and ids of a few more that node a owns.
    let mut kept = None;
    let mut owned_by_a = Vec::new();
    for i in 0..100 {
        let id = format!("user-{i}");
        let (c, node) = connect_to_node(&gw, &id).await;
        if node != "a" {
            continue;
        }
        if kept.is_none() {
            kept = Some(c);
        } else {
            c.close().await;
            owned_by_a.push(id);
            if owned_by_a.len() == 3 {
                break;
            }
        }
    }
    let mut kept = kept.expect("an id owned by node a");
    assert_eq!(owned_by_a.len(), 3, "ids owned by node a");

    signal(a.pid(), "-TERM");
    ringcast_testkit::wait_until(Duration::from_secs(5), "the GOAWAY", || async {
        gw.metric("ringcast_gateway_link_goaways_total").await == 1.0
    })
    .await;
    // New clients of node a land on b, without even being offered to a.
    for id in &owned_by_a {
        let (_c, node) = connect_to_node(&gw, id).await;
        assert_eq!(node, "b", "{id}");
    }
    let draining = r#"ringcast_node_upgrades_refused_total{code="draining"}"#;
    assert_eq!(node_metric(a.addr, draining).await, 0.0);
    let links_refused = "ringcast_node_link_refusals_total";
    assert_eq!(node_metric(a.addr, links_refused).await, 0.0);
    assert_eq!(node_metric(a.addr, "ringcast_node_links").await, 1.0);
    // The client already on the link goes on exchanging messages...
    for _ in 0..3 {
        kept.send_json(json!({"type":"ping"})).await;
        kept.recv_event("pong").await;
    }
    // ...and nothing counted against the draining node.
    assert_eq!(gw.healthy_ids().await, vec!["a".to_owned(), "b".to_owned()]);
    // Until the node closes it, after its drain delay, with 1012.
    let limit = Duration::from_secs(DELAY_SECS + 10);
    assert_eq!(kept.expect_close(limit).await, Some(1012));
    assert_eq!(
        gw.metric("ringcast_gateway_link_attempts_broken_total")
            .await,
        0.0
    );
}
