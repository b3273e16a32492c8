//! Cross-node routing over a real redis-server: broadcast, room and direct traffic reach exactly
//! the right clients, once, in the order each sender sent it.

mod support;

use std::time::Duration;

use ringcast_testkit::{Client, RedisServer, TestNode};
use serde_json::{json, Value};
use support::{config, drain, join, start_with};
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(400);

async fn quiet_nodes(redis: &RedisServer, ids: &[&str]) -> Vec<TestNode> {
    start_with(ids, |id| {
        let mut c = config(id, &redis.url());
        c.announce_connections = false;
        c
    })
    .await
}

async fn connect(node: &TestNode, id: &str) -> Client {
    Client::connect_welcomed(&node.ws_url(id)).await.0
}

#[tokio::test]
async fn three_nodes_deliver_broadcast_room_and_direct_to_exactly_the_right_clients() {
    let redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, &["n1", "n2", "n3"]).await;
    let mut a = connect(&nodes[0], "alice").await;
    let mut b = connect(&nodes[0], "bob").await;
    let mut c = connect(&nodes[1], "carol").await;
    let mut d = connect(&nodes[1], "dave").await;
    let mut e = connect(&nodes[2], "erin").await;
    // A second connection of dave on another node receives everything addressed to dave.
    let mut d2 = connect(&nodes[2], "dave").await;

    join(&mut a, "alice", "r").await;
    join(&mut c, "carol", "r").await;
    join(&mut e, "erin", "r").await;
    assert_eq!(c.recv_event("user_joined").await["user_id"], "erin");
    for (who, cl) in [("alice", &mut a)] {
        // alice saw carol and then erin join, in that order.
        assert_eq!(
            cl.recv_event("user_joined").await["user_id"],
            "carol",
            "{who}"
        );
        assert_eq!(
            cl.recv_event("user_joined").await["user_id"],
            "erin",
            "{who}"
        );
    }

    a.send_json(json!({"type":"chat","content":"hello"})).await;
    let chat = json!({"event":"chat","from":"alice","content":"hello"});
    for cl in [&mut b, &mut c, &mut d, &mut e, &mut d2] {
        assert_eq!(cl.recv().await, chat);
    }

    c.send_json(json!({"type":"room_message","room":"r","content":"in r"}))
        .await;
    let room_chat = json!({"event":"chat","from":"carol","room":"r","content":"in r"});
    let mut numbered = None;
    for cl in [&mut a, &mut c, &mut e] {
        let got = cl.recv().await;
        assert_eq!(ringcast_testkit::unnumbered(&got), room_chat);
        assert_eq!(got["offset"], 1, "{got}");
        // One message, the same bytes for every member, wherever they are.
        assert_eq!(*numbered.get_or_insert(got.clone()), got);
    }

    a.send_json(json!({"type":"direct_message","target":"dave","content":"psst"}))
        .await;
    let dm = json!({"event":"direct_message","from":"alice","content":"psst"});
    assert_eq!(d.recv().await, dm);
    assert_eq!(d2.recv().await, dm);

    a.send_json(json!({"type":"direct_message","target":"nobody","content":"x"}))
        .await;
    assert_eq!(a.recv_error_code().await, "target_offline");

    // Nothing else arrives anywhere: no echo of alice's chat, no room traffic outside r, no
    // duplicates.
    for (name, cl) in [
        ("alice", &mut a),
        ("bob", &mut b),
        ("carol", &mut c),
        ("dave", &mut d),
        ("erin", &mut e),
        ("dave#2", &mut d2),
    ] {
        let extra = drain(cl, QUIET).await;
        assert!(extra.is_empty(), "{name} got extra frames: {extra:?}");
    }
    for n in &nodes {
        assert_eq!(
            n.metric("ringcast_node_bus_probe_failures_total").await,
            0.0
        );
        assert_eq!(n.metric("ringcast_node_bus_reconnects_total").await, 0.0);
    }
}

/// Reads `count` frames and returns their `content` fields.
async fn contents(c: &mut Client, count: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let v: Value = c.recv().await;
        if v["event"] == "chat" || v["event"] == "direct_message" {
            out.push(v["content"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

#[tokio::test]
async fn each_sender_s_1000_messages_arrive_once_and_in_order_on_every_node() {
    const N: usize = 1000;
    let redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, &["n1", "n2", "n3"]).await;
    let mut s = connect(&nodes[0], "sender").await;
    let mut r2 = connect(&nodes[1], "r2").await;
    let mut r3 = connect(&nodes[2], "r3").await;
    join(&mut s, "sender", "o").await;
    join(&mut r2, "r2", "o").await;
    join(&mut r3, "r3", "o").await;
    drain(&mut s, Duration::from_millis(200)).await;
    drain(&mut r2, Duration::from_millis(200)).await;

    // sender → room o (members on all three nodes), r3 → r2 directly, both at once.
    let room_frames: Vec<Message> = (0..N)
        .map(|i| {
            Message::text(
                json!({"type":"room_message","room":"o","content":i.to_string()}).to_string(),
            )
        })
        .collect();
    let direct_frames: Vec<Message> = (0..N)
        .map(|i| {
            Message::text(
                json!({"type":"direct_message","target":"r2","content":format!("d{i}")})
                    .to_string(),
            )
        })
        .collect();
    for (m1, m2) in room_frames.into_iter().zip(direct_frames) {
        assert!(s.feed(m1).await);
        assert!(r3.feed(m2).await);
    }
    assert!(s.flush().await && r3.flush().await);

    let expected_room: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let expected_direct: Vec<String> = (0..N).map(|i| format!("d{i}")).collect();
    assert_eq!(
        contents(&mut s, N).await,
        expected_room,
        "sender's own copy"
    );
    assert_eq!(contents(&mut r3, N).await, expected_room, "r3");
    let got = contents(&mut r2, 2 * N).await;
    let (direct, room): (Vec<String>, Vec<String>) =
        got.into_iter().partition(|c| c.starts_with('d'));
    assert_eq!(room, expected_room, "r2 room messages");
    assert_eq!(direct, expected_direct, "r2 direct messages");
    for cl in [&mut s, &mut r2, &mut r3] {
        let extra = drain(cl, QUIET).await;
        assert!(extra.is_empty(), "duplicates or strays: {extra:?}");
    }
    let _ = s.inner().close(None).await;
}

#[tokio::test]
async fn a_direct_message_reaches_only_the_target_s_node() {
    let redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, &["n1", "n2", "n3"]).await;
    let mut a = connect(&nodes[0], "a").await;
    let _b = connect(&nodes[1], "b").await;
    let mut c = connect(&nodes[2], "c").await;
    let received = |i: usize| {
        let node = &nodes[i];
        async move { node.metric("ringcast_node_bus_received_total").await }
    };
    let before = [received(0).await, received(1).await, received(2).await];
    for i in 0..20 {
        a.send_json(json!({"type":"direct_message","target":"c","content":i.to_string()}))
            .await;
    }
    assert_eq!(contents(&mut c, 20).await.len(), 20);
    let after = [received(0).await, received(1).await, received(2).await];
    assert_eq!(
        after[2] - before[2],
        20.0,
        "target's node got each message once"
    );
    assert_eq!(after[0] - before[0], 0.0, "sender's node got none");
    assert_eq!(after[1] - before[1], 0.0, "bystander node got none");
}
