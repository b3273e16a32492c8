//! Helpers shared by the Redis bus integration tests: node configs, Redis queries, room joins.

#![allow(dead_code)]

use std::time::Duration;

use ringcast_node::Config;
use ringcast_testkit::{wait_until, Client, RedisServer, TestNode};
use serde_json::json;

/// A node config on `url` with fast probes and reconnects, and no rate limit in the way.
pub fn config(id: &str, url: &str) -> Config {
    let mut c = Config::for_tests();
    c.node_id = Some(id.into());
    c.redis_url = Some(url.into());
    c.redis_probe_interval_ms = 200;
    c.redis_probe_timeout_ms = 1500;
    c.redis_reconnect_max_ms = 250;
    c.rate_limit_per_sec = 1_000_000.0;
    c.rate_limit_burst = 1_000_000.0;
    c.send_queue_frames = 4096;
    c.send_queue_bytes = 8 << 20;
    c
}

/// Starts one node per id on `redis` and waits until each reports healthy.
pub async fn start_nodes(redis: &RedisServer, ids: &[&str]) -> Vec<TestNode> {
    start_with(ids, |id| config(id, &redis.url())).await
}

/// Starts one node per id with the given config and waits until each reports healthy.
pub async fn start_with(ids: &[&str], mut make: impl FnMut(&str) -> Config) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in ids {
        let node = TestNode::start(make(id)).await;
        wait_healthy(&node, Duration::from_secs(5)).await;
        nodes.push(node);
    }
    nodes
}

/// Waits until `/healthz` answers 200.
pub async fn wait_healthy(node: &TestNode, limit: Duration) {
    wait_until(limit, "node healthy", || async {
        node.get("/healthz").await.0 == 200
    })
    .await;
}

/// An async connection to the test's Redis, for inspection.
pub async fn inspector(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to test redis")
}

/// `PUBSUB NUMSUB channel`.
pub async fn numsub(con: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(con)
        .await
        .expect("PUBSUB NUMSUB");
    v.first().map(|(_, n)| *n).unwrap_or(0)
}

/// `PUBSUB CHANNELS pattern`.
pub async fn channels(con: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(con)
        .await
        .expect("PUBSUB CHANNELS")
}

/// Joins `room` and waits for this client's own `user_joined` (the "ready" ack).
pub async fn join(c: &mut Client, me: &str, room: &str) {
    c.send_json(json!({"type":"join_room","room":room})).await;
    loop {
        let v = c.recv_event("user_joined").await;
        if v["user_id"] == me && v["room"] == room {
            return;
        }
    }
}

/// Leaves `room` and waits for this client's own `user_left`.
pub async fn leave(c: &mut Client, me: &str, room: &str) {
    c.send_json(json!({"type":"leave_room","room":room})).await;
    loop {
        let v = c.recv_event("user_left").await;
        if v["user_id"] == me && v["room"] == room {
            return;
        }
    }
}

/// Reads frames until `limit` passes without one; returns them (announcements included).
pub async fn drain(c: &mut Client, limit: Duration) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while let Ok(v) = c.next_json(limit).await {
        out.push(v);
    }
    out
}

/// Reads until a frame with `event` arrives, skipping `user_connected`/`user_joined`/… noise;
/// panics on any other event.
pub async fn recv_only(c: &mut Client, event: &str) -> serde_json::Value {
    loop {
        let v = c.recv().await;
        if v["event"] == event {
            return v;
        }
        let noise = [
            "user_connected",
            "user_disconnected",
            "user_joined",
            "user_left",
        ];
        assert!(
            noise.iter().any(|n| v["event"] == *n),
            "expected {event}, got {v}"
        );
    }
}
