//! Per-room Redis subscriptions: a node follows a room's channel exactly while it has local
//! members, checked with `PUBSUB NUMSUB` against a real redis-server.

mod support;

use std::time::Duration;

use ringcast_testkit::{wait_until, Client, RedisServer, TestNode};
use support::{channels, config, inspector, join, leave, numsub, start_with};

const ROOM_CHANNEL: &str = "{ringcast:room:r}";

async fn quiet_nodes(redis: &RedisServer, n: usize) -> Vec<TestNode> {
    let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    start_with(&ids, |id| {
        let mut c = config(id, &redis.url());
        c.announce_connections = false;
        c
    })
    .await
}

async fn settle_numsub(con: &mut redis::aio::MultiplexedConnection, channel: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let got = numsub(con, channel).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "NUMSUB {channel} stayed {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn numsub_equals_nodes_with_members_at_every_step() {
    let redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, 3).await;
    let mut con = inspector(&redis).await;
    let url = |n: usize, id: &str| nodes[n].ws_url(id);
    let (mut a, _) = Client::connect_welcomed(&url(0, "a")).await;
    let (mut b, _) = Client::connect_welcomed(&url(0, "b")).await;
    let (mut c, _) = Client::connect_welcomed(&url(1, "c")).await;
    let (mut d, _) = Client::connect_welcomed(&url(2, "d")).await;
    assert_eq!(numsub(&mut con, ROOM_CHANNEL).await, 0);

    // After a join's ack the node's subscription must already be counted: no waiting.
    join(&mut a, "a", "r").await;
    assert_eq!(numsub(&mut con, ROOM_CHANNEL).await, 1, "a@n1 joined");
    join(&mut b, "b", "r").await;
    assert_eq!(numsub(&mut con, ROOM_CHANNEL).await, 1, "b@n1 joined");
    join(&mut c, "c", "r").await;
    assert_eq!(numsub(&mut con, ROOM_CHANNEL).await, 2, "c@n2 joined");
    leave(&mut a, "a", "r").await;
    settle_numsub(&mut con, ROOM_CHANNEL, 2).await;
    leave(&mut b, "b", "r").await;
    settle_numsub(&mut con, ROOM_CHANNEL, 1).await;
    join(&mut d, "d", "r").await;
    assert_eq!(numsub(&mut con, ROOM_CHANNEL).await, 2, "d@n3 joined");
    c.close().await; // a disconnect leaves the room too
    settle_numsub(&mut con, ROOM_CHANNEL, 1).await;
    join(&mut a, "a", "r").await;
    assert_eq!(numsub(&mut con, ROOM_CHANNEL).await, 2, "a@n1 rejoined");
    leave(&mut a, "a", "r").await;
    leave(&mut d, "d", "r").await;
    settle_numsub(&mut con, ROOM_CHANNEL, 0).await;
    assert!(
        channels(&mut con, "{ringcast:room:*").await.is_empty(),
        "no room channel survives an empty room"
    );
    for n in &nodes {
        assert_eq!(n.stats().await["rooms"], 0);
    }
}

#[tokio::test]
async fn fifty_concurrent_joiners_and_leavers_leave_numsub_equal_to_nodes_with_members() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 4;
    let redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, 3).await;
    let mut con = inspector(&redis).await;
    // Clients 0, 3, 6, … are on n1, 1, 4, … on n2, 2, 5, … on n3. At the end only clients 0 and
    // 6 (both on n1) and 2 (on n3) stay in the room.
    let stays = |i: usize| [0, 6, 2].contains(&i);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let url = nodes[i % 3].ws_url(&format!("c{i}"));
        tasks.push(tokio::spawn(async move {
            let me = format!("c{i}");
            let (mut cl, _) = Client::connect_welcomed(&url).await;
            for round in 0..ROUNDS {
                join(&mut cl, &me, "r").await;
                // The ack means "ready": the joiner's own message comes back through Redis.
                cl.send_json(serde_json::json!({"type":"room_message","room":"r","content":format!("{me}/{round}")}))
                    .await;
                loop {
                    let v = cl.recv_event("chat").await;
                    if v["from"] == me.as_str() {
                        break;
                    }
                }
                if round + 1 < ROUNDS || !stays(i) {
                    leave(&mut cl, &me, "r").await;
                }
                tokio::time::sleep(Duration::from_millis((i % 5) as u64)).await;
            }
            cl
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    settle_numsub(&mut con, ROOM_CHANNEL, 2).await;
    assert_eq!(nodes[0].stats().await["rooms"], 1);
    assert_eq!(nodes[1].stats().await["rooms"], 0);
    assert_eq!(nodes[2].stats().await["rooms"], 1);
    // n2 has no member: it must not be among the subscribers. Its member count is zero and the
    // two subscribers are n1 and n3, so a message published to the room reaches exactly two nodes.
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(ROOM_CHANNEL)
        .arg("not an envelope")
        .query_async(&mut con)
        .await
        .expect("PUBLISH");
    assert_eq!(receivers, 2);
    wait_until(
        Duration::from_secs(2),
        "n1 and n3 got the publish",
        || async {
            nodes[0].metric("ringcast_node_bus_rejected_total").await == 1.0
                && nodes[2].metric("ringcast_node_bus_rejected_total").await == 1.0
        },
    )
    .await;
    assert_eq!(
        nodes[1].metric("ringcast_node_bus_rejected_total").await,
        0.0
    );
    drop(clients);
    settle_numsub(&mut con, ROOM_CHANNEL, 0).await;
    assert!(channels(&mut con, "{ringcast:room:*").await.is_empty());
}

#[tokio::test]
async fn a_storm_of_pipelined_joins_and_leaves_converges_on_the_right_subscription() {
    let redis = RedisServer::start();
    let nodes = quiet_nodes(&redis, 2).await;
    let mut con = inspector(&redis).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&nodes[1].ws_url("b")).await;
    join(&mut b, "b", "r").await;
    // 201 frames without waiting for any answer: join, leave, join, …, join.
    for i in 0..=200 {
        let kind = if i % 2 == 0 {
            "join_room"
        } else {
            "leave_room"
        };
        let frame = serde_json::json!({"type":kind,"room":"r"}).to_string();
        assert!(
            a.feed(tokio_tungstenite::tungstenite::Message::text(frame))
                .await
        );
    }
    assert!(a.flush().await);
    // Wait for a's last ack (its 101st user_joined): only then is the storm over. NUMSUB alone
    // could read 2 in the middle of the storm, and a message published while a had just left
    // must not reach it.
    let mut acks = 0;
    while acks < 101 {
        let v = a.recv().await;
        assert_ne!(v["event"], "error", "{v}");
        if v["event"] == "user_joined" && v["user_id"] == "a" {
            acks += 1;
        }
    }
    // a ends as a member: its node must follow the room, and b's messages must reach it.
    settle_numsub(&mut con, ROOM_CHANNEL, 2).await;
    b.send_json(serde_json::json!({"type":"room_message","room":"r","content":"after the storm"}))
        .await;
    loop {
        let v = a.recv().await;
        assert_ne!(v["event"], "error", "{v}");
        if v["content"] == "after the storm" {
            break;
        }
    }
    leave(&mut a, "a", "r").await;
    settle_numsub(&mut con, ROOM_CHANNEL, 1).await;
    leave(&mut b, "b", "r").await;
    settle_numsub(&mut con, ROOM_CHANNEL, 0).await;
}
