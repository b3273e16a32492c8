//! Routing through the gateway: the protocol scenario in front of three nodes, sticky owners,
//! generated ids, and the embedded default.

mod support;

use std::time::Duration;

use ringcast_node::{Config as NodeConfig, MemoryBroker};
use ringcast_testkit::{Client, TestNode};
use serde_json::json;
use support::TestGateway;

fn node_config(id: &str) -> NodeConfig {
    let mut c = NodeConfig::for_tests();
    c.node_id = Some(id.to_owned());
    c
}

async fn three_nodes() -> (Vec<TestNode>, Vec<String>) {
    let broker = MemoryBroker::new();
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let node = TestNode::start_on(node_config(id), broker.clone()).await;
        specs.push(format!("{id}={}", node.addr));
        nodes.push(node);
    }
    (nodes, specs)
}

fn node_args(specs: &[String]) -> Vec<&str> {
    specs.iter().flat_map(|s| ["--node", s.as_str()]).collect()
}

/// Connects `id` through the gateway; returns the client and the node it landed on.
async fn connect(gw: &TestGateway, id: &str) -> (Client, String) {
    let mut c = Client::connect(&gw.ws_url(id)).await;
    let w = c.recv_event("welcome").await;
    assert_eq!(w["client_id"], id);
    (c, w["node"].as_str().expect("welcome.node").to_owned())
}

#[tokio::test]
async fn protocol_scenario_through_the_gateway_spreads_clients_over_three_nodes() {
    let (nodes, specs) = three_nodes().await;
    let gw = TestGateway::start(&node_args(&specs)).await;

    // Connect clients until every node holds two (bounded: 60 ids), then check each node's
    // own /stats: the gateway spread them, by client_id, over all three.
    let mut clients = Vec::new();
    for i in 0..60 {
        let id = format!("user-{i}");
        let (c, node) = connect(&gw, &id).await;
        clients.push((id, c, node));
        let per_node = |n: &str| clients.iter().filter(|(_, _, x)| x == n).count();
        if ["n1", "n2", "n3"].iter().all(|n| per_node(n) >= 2) {
            break;
        }
    }
    eprintln!(
        "{} clients: {:?}",
        clients.len(),
        clients.iter().map(|c| c.2.as_str()).collect::<Vec<_>>()
    );
    for node in &nodes {
        let stats = node.stats().await;
        assert!(
            stats["local_connections"].as_u64().unwrap_or(0) > 0,
            "node {} got no clients: {stats}",
            node.addr
        );
    }
    let landed: std::collections::HashSet<&str> =
        clients.iter().map(|(_, _, n)| n.as_str()).collect();
    assert_eq!(landed.len(), 3, "clients landed on {landed:?}");

    // Pick two clients on different nodes and a third anywhere.
    let a = 0;
    let b = clients
        .iter()
        .position(|(_, _, n)| *n != clients[a].2)
        .expect("a client on another node");
    let (a_id, b_id) = (clients[a].0.clone(), clients[b].0.clone());

    // chat: everyone else receives it, the sender does not.
    clients[a]
        .1
        .send_json(json!({"type":"chat","content":"hello all"}))
        .await;
    for (i, (_, c, _)) in clients.iter_mut().enumerate() {
        if i == a {
            continue;
        }
        let e = c.recv_event("chat").await;
        assert_eq!(e["from"], a_id.as_str());
        assert_eq!(e["content"], "hello all");
    }
    // ping/pong through the tunnel
    clients[a].1.send_json(json!({"type":"ping"})).await;
    clients[a].1.recv_event("pong").await;

    // rooms across nodes: join, members-only delivery, leave
    for i in [a, b] {
        clients[i]
            .1
            .send_json(json!({"type":"join_room","room":"lobby"}))
            .await;
        clients[i].1.recv_event("user_joined").await;
    }
    clients[a].1.recv_event("user_joined").await; // b's join, seen by a
    clients[b]
        .1
        .send_json(json!({"type":"room_message","room":"lobby","content":"in the room"}))
        .await;
    for i in [a, b] {
        let e = clients[i].1.recv_event("chat").await;
        assert_eq!(e["room"], "lobby");
        assert_eq!(e["from"], b_id.as_str());
    }
    let outsider = (0..clients.len())
        .find(|i| *i != a && *i != b)
        .expect("outsider");
    clients[outsider]
        .1
        .expect_silence(Duration::from_millis(300))
        .await;
    clients[b]
        .1
        .send_json(json!({"type":"leave_room","room":"lobby"}))
        .await;
    let e = clients[a].1.recv_event("user_left").await;
    assert_eq!(e["user_id"], b_id.as_str());

    // direct across nodes, and target_offline
    clients[a]
        .1
        .send_json(json!({"type":"direct_message","target":b_id,"content":"psst"}))
        .await;
    let e = clients[b].1.recv_event("direct_message").await;
    assert_eq!(e["from"], a_id.as_str());
    assert_eq!(e["content"], "psst");
    clients[a]
        .1
        .send_json(json!({"type":"direct_message","target":"nobody-here","content":"x"}))
        .await;
    assert_eq!(clients[a].1.recv_error_code().await, "target_offline");

    // disconnect notices travel back through the tunnels
    let (gone_id, gone, _) = clients.remove(b);
    gone.close().await;
    let e = clients[a].1.recv_event("user_disconnected").await;
    assert_eq!(e["user_id"], gone_id.as_str());

    assert!(gw.metric("ringcast_gateway_connections_total").await >= 6.0);
    assert!(
        gw.metric("ringcast_gateway_bytes_node_to_client_total")
            .await
            > 0.0
    );
    assert_eq!(gw.metric("ringcast_gateway_ring_size").await, 3.0);
}

#[tokio::test]
async fn one_client_id_lands_on_the_same_node_over_ten_reconnects() {
    let (_nodes, specs) = three_nodes().await;
    let gw = TestGateway::start(&node_args(&specs)).await;
    let (c, first) = connect(&gw, "sticky-alice").await;
    c.close().await;
    for _ in 0..10 {
        let (c, node) = connect(&gw, "sticky-alice").await;
        assert_eq!(node, first);
        c.close().await;
    }
}

#[tokio::test]
async fn a_generated_client_id_is_shared_with_the_node_and_routes_to_its_owner() {
    let (_nodes, specs) = three_nodes().await;
    let gw = TestGateway::start(&node_args(&specs)).await;
    for _ in 0..5 {
        let mut c = Client::connect(&gw.ws_url("")).await;
        let w = c.recv_event("welcome").await;
        let id = w["client_id"].as_str().expect("generated id").to_owned();
        assert!(id.len() >= 16, "{id}");
        // The id the node generated-for-us is the id the gateway routed by: connecting with it
        // explicitly lands on the same node.
        let (again, node) = connect(&gw, &id).await;
        assert_eq!(node, w["node"].as_str().unwrap_or_default());
        again.close().await;
        c.close().await;
    }
}

#[tokio::test]
async fn with_no_nodes_and_no_redis_an_embedded_node_serves() {
    let gw = TestGateway::start(&[]).await;
    let (mut a, node) = connect(&gw, "solo-a").await;
    assert_eq!(node, "embedded");
    let (mut b, _) = connect(&gw, "solo-b").await;
    a.send_json(json!({"type":"chat","content":"hi"})).await;
    assert_eq!(b.recv_event("chat").await["content"], "hi");
    a.send_json(json!({"type":"ping"})).await;
    a.recv_event("pong").await;
    let (status, body) = gw.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let nodes = gw.nodes().await;
    assert_eq!(nodes["nodes"][0]["source"], "embedded");
    assert_eq!(nodes["nodes"][0]["open_connections"], 2);
    // Shutdown drains the embedded node too: its clients are told to reconnect (1012).
    gw.signal_stop();
    assert_eq!(a.expect_close(Duration::from_secs(10)).await, Some(1012));
    assert_eq!(b.expect_close(Duration::from_secs(10)).await, Some(1012));
    drop((a, b));
    // The gateway's drain ends once the embedded node's has.
    gw.stop().await;
}
