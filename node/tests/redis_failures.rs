//! The Redis bus under failure: Redis killed and restarted, Redis dropping a slow subscriber, a
//! starved subscriber connection, Redis down at startup. Every case against a real redis-server.

mod support;

use std::time::Duration;

use ringcast_protocol::{Envelope, Target};
use ringcast_testkit::{wait_until, Client, FreezableProxy, RedisServer, TestNode};
use serde_json::{json, Value};
use support::{config, drain, inspector, join, start_with, wait_healthy};

async fn quiet_nodes(redis: &RedisServer, ids: &[&str]) -> Vec<TestNode> {
    start_with(ids, |id| {
        let mut c = config(id, &redis.url());
        c.announce_connections = false;
        c
    })
    .await
}

/// Reads until a frame whose `content` is `content` (skipping other traffic).
async fn recv_content(c: &mut Client, content: &str) -> Value {
    loop {
        let v = c.recv().await;
        if v["content"] == content {
            return v;
        }
    }
}

async fn metric(node: &TestNode, name: &str) -> f64 {
    node.metric(&format!("ringcast_node_{name}")).await
}

#[tokio::test]
async fn traffic_resumes_after_redis_is_killed_and_restarted_without_client_reconnects() {
    let mut redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, &["n1", "n2"]).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&nodes[1].ws_url("b")).await;
    join(&mut a, "a", "r").await;
    join(&mut b, "b", "r").await;
    a.send_json(json!({"type":"room_message","room":"r","content":"before"}))
        .await;
    recv_content(&mut b, "before").await;

    redis.kill();
    for n in &nodes {
        wait_until(
            Duration::from_secs(3),
            "/healthz 503 while Redis is down",
            || async { n.get("/healthz").await.0 == 503 },
        )
        .await;
    }
    // Nothing is silently lost: every publish attempt tells the sender.
    for msg in [
        json!({"type":"room_message","room":"r","content":"lost"}),
        json!({"type":"chat","content":"lost"}),
        json!({"type":"direct_message","target":"b","content":"lost"}),
    ] {
        a.send_json(msg).await;
        assert_eq!(a.recv_error_code().await, "bus_unavailable");
    }
    // Local service goes on.
    a.send_json(json!({"type":"ping"})).await;
    assert_eq!(a.recv_event("pong").await["event"], "pong");
    assert!(metric(&nodes[0], "bus_publish_failures_total").await >= 3.0);

    redis.restart();
    for n in &nodes {
        wait_healthy(n, Duration::from_secs(5)).await;
    }
    // Same WebSocket connections as before: room, broadcast and direct traffic flow again.
    a.send_json(json!({"type":"room_message","room":"r","content":"room back"}))
        .await;
    recv_content(&mut b, "room back").await;
    recv_content(&mut a, "room back").await;
    b.send_json(json!({"type":"chat","content":"chat back"}))
        .await;
    assert_eq!(recv_content(&mut a, "chat back").await["from"], "b");
    a.send_json(json!({"type":"direct_message","target":"b","content":"dm back"}))
        .await;
    assert_eq!(recv_content(&mut b, "dm back").await["from"], "a");
    b.send_json(json!({"type":"direct_message","target":"a","content":"dm back too"}))
        .await;
    recv_content(&mut a, "dm back too").await;
    for n in &nodes {
        assert!(
            metric(n, "bus_reconnects_total").await >= 2.0,
            "publisher and subscriber"
        );
    }
    assert!(drain(&mut b, Duration::from_millis(300))
        .await
        .iter()
        .all(|v| v["content"] != "lost"));
}

fn pubsub_client_ids(redis: &RedisServer) -> Vec<String> {
    let list = redis
        .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn node_recovers_when_redis_drops_it_as_a_slow_subscriber() {
    let redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, &["n1", "n2"]).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&nodes[1].ws_url("b")).await;
    join(&mut a, "a", "r").await;
    join(&mut b, "b", "r").await;
    let before = pubsub_client_ids(&redis);
    assert_eq!(before.len(), 2, "one subscriber connection per node");
    assert_eq!(
        redis.cli(&[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 64kb 32kb 1"
        ]),
        Some("OK\n".into())
    );

    // A flood of 100 KiB room messages, pipelined. Each one alone overshoots the 64 KiB hard
    // limit the moment Redis queues it for a subscriber, however fast the node reads, so Redis
    // drops every node's subscriber connection.
    let content = "x".repeat(100 * 1024);
    let frame = json!({"event":"chat","from":"flood","room":"r","content":content}).to_string();
    let payload = Envelope::new("flooder", 0, Target::Room("r".into()), frame.as_bytes())
        .encode()
        .expect("encode envelope");
    let mut con = inspector(&redis).await;
    let mut flood = redis::pipe();
    for _ in 0..200 {
        flood
            .cmd("PUBLISH")
            .arg("{ringcast:room:r}")
            .arg(&payload[..])
            .ignore();
    }
    let _: () = flood.query_async(&mut con).await.expect("flood");

    for n in &nodes {
        wait_until(Duration::from_secs(5), "subscriber reconnected", || async {
            metric(n, "bus_reconnects_total").await >= 1.0
        })
        .await;
        wait_healthy(n, Duration::from_secs(3)).await;
    }
    let after = pubsub_client_ids(&redis);
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "Redis dropped both old subscribers: before {before:?}, after {after:?}"
    );
    // Delivery continues, in both directions, on the rebuilt subscriptions.
    a.send_json(json!({"type":"room_message","room":"r","content":"still here"}))
        .await;
    recv_content(&mut b, "still here").await;
    b.send_json(json!({"type":"room_message","room":"r","content":"me too"}))
        .await;
    recv_content(&mut a, "me too").await;
}

#[tokio::test]
async fn probe_rebuilds_a_subscriber_that_is_open_but_starved() {
    let redis = RedisServer::start();
    let proxy = FreezableProxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let mut starved = config("starved", &proxy.redis_url());
    starved.announce_connections = false;
    starved.redis_probe_interval_ms = 200;
    // Long enough that a stalled CI machine does not fail a probe of a healthy connection.
    starved.redis_probe_timeout_ms = 2000;
    let n1 = TestNode::start(starved).await;
    wait_healthy(&n1, Duration::from_secs(5)).await;
    let n2 = quiet_nodes(&redis, &["n2"]).await.remove(0);
    let (mut a, _) = Client::connect_welcomed(&n1.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&n2.ws_url("b")).await;
    join(&mut a, "a", "r").await;
    join(&mut b, "b", "r").await;
    b.send_json(json!({"type":"room_message","room":"r","content":"one"}))
        .await;
    recv_content(&mut a, "one").await;
    assert_eq!(metric(&n1, "bus_probe_failures_total").await, 0.0);

    // The subscriber's TCP connection stays open, but nothing reaches the node any more.
    assert_eq!(proxy.freeze_subscribers(), 1);
    b.send_json(json!({"type":"room_message","room":"r","content":"into the void"}))
        .await;
    assert!(
        a.next_json(Duration::from_millis(300)).await.is_err(),
        "starved"
    );

    wait_until(
        Duration::from_secs(8),
        "probe noticed the starvation",
        || async { metric(&n1, "bus_probe_failures_total").await >= 1.0 },
    )
    .await;
    wait_healthy(&n1, Duration::from_secs(3)).await;
    b.send_json(json!({"type":"room_message","room":"r","content":"two"}))
        .await;
    recv_content(&mut a, "two").await;
    a.send_json(json!({"type":"room_message","room":"r","content":"three"}))
        .await;
    recv_content(&mut b, "three").await;
    assert_eq!(metric(&n2, "bus_probe_failures_total").await, 0.0);
}

#[tokio::test]
async fn node_started_while_redis_is_down_serves_once_redis_appears() {
    let mut redis = RedisServer::start();
    redis.kill();
    let mut c = config("late", &redis.url());
    c.bus_timeout_secs = 1;
    let node = TestNode::start(c).await;
    assert_eq!(node.get("/healthz").await.0, 503);
    // A client that connects meanwhile is told why it cannot be served.
    let mut early = Client::connect(&node.ws_url("early")).await;
    early.recv_event("welcome").await;
    assert_eq!(early.recv_error_code().await, "bus_unavailable");

    redis.restart();
    wait_healthy(&node, Duration::from_secs(3)).await;
    let (mut a, _) = Client::connect_welcomed(&node.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&node.ws_url("b")).await;
    // The broadcast channel, wanted since startup, is followed now.
    a.send_json(json!({"type":"chat","content":"hi"})).await;
    assert_eq!(recv_content(&mut b, "hi").await["from"], "a");
}

#[tokio::test]
async fn an_unusable_redis_url_is_a_configuration_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let mut c = config("bad-url", "http://127.0.0.1:1");
    c.bus_timeout_secs = 1;
    let result = tokio::time::timeout(Duration::from_secs(5), ringcast_node::run(listener, c, rx))
        .await
        .expect("run returns at once");
    let err = result.expect_err("http:// is not a Redis URL");
    assert!(
        matches!(err, ringcast_node::NodeError::Config(ref m) if m.contains("invalid Redis URL")),
        "{err}"
    );
}

/// Item 13 of the hardening issue: after a Redis restart, a room this node already followed is
/// not followed again until the new subscriber connection has resubscribed it. A join in that
/// window must not be acknowledged early: its ack promises that what is published from then on
/// arrives.
#[tokio::test]
async fn a_join_while_redis_resubscribes_is_acknowledged_only_once_the_room_is_followed_again() {
    let mut redis = RedisServer::start();
    // Node A reaches Redis through a proxy that can hold its SUBSCRIBEs back; node B directly.
    let proxy = FreezableProxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let mut held = config("held", &proxy.redis_url());
    held.announce_connections = false;
    held.bus_timeout_secs = 20;
    let node_a = TestNode::start(held).await;
    wait_healthy(&node_a, Duration::from_secs(5)).await;
    let node_b = quiet_nodes(&redis, &["direct"]).await.remove(0);
    let (mut x, _) = Client::connect_welcomed(&node_a.ws_url("x")).await;
    let (mut y, _) = Client::connect_welcomed(&node_a.ws_url("y")).await;
    let (mut b, _) = Client::connect_welcomed(&node_b.ws_url("b")).await;
    join(&mut x, "x", "r").await;
    join(&mut b, "b", "r").await;
    b.send_json(json!({"type":"room_message","room":"r","content":"before"}))
        .await;
    recv_content(&mut x, "before").await;

    proxy.hold_subscribes();
    redis.kill();
    wait_until(Duration::from_secs(3), "A unhealthy", || async {
        node_a.get("/healthz").await.0 == 503
    })
    .await;
    redis.restart();
    wait_healthy(&node_b, Duration::from_secs(5)).await;
    // A's publisher is back (it sends no SUBSCRIBE); its subscriber cannot resubscribe yet.
    wait_until(
        Duration::from_secs(5),
        "A's publisher reconnected",
        || async { metric(&node_a, "bus_reconnects_total").await >= 1.0 },
    )
    .await;
    assert_eq!(
        node_a.get("/healthz").await.0,
        503,
        "A is not healthy while its subscriptions are not restored"
    );

    // Room r is still marked followed on A, but nothing published to it reaches A now.
    y.send_json(json!({"type":"join_room","room":"r"})).await;
    let early = drain(&mut y, Duration::from_millis(700)).await;
    assert!(
        early.iter().all(|v| v["event"] != "user_joined"),
        "join acknowledged while A's subscriptions were not restored: {early:?}"
    );
    assert_eq!(node_a.get("/healthz").await.0, 503);

    proxy.release_subscribes();
    join_ack(&mut y, "y", "r").await;
    // Everything published after the ack arrives.
    b.send_json(json!({"type":"room_message","room":"r","content":"after ack"}))
        .await;
    recv_content(&mut y, "after ack").await;
    recv_content(&mut x, "after ack").await;
    wait_healthy(&node_a, Duration::from_secs(5)).await;
}

/// Waits for `me`'s own `user_joined` in `room` (the join ack), for a join already sent.
async fn join_ack(c: &mut Client, me: &str, room: &str) {
    loop {
        let v = c.recv_event("user_joined").await;
        if v["user_id"] == me && v["room"] == room {
            return;
        }
    }
}
