//! Room semantics on one node, and across nodes sharing an in-memory bus.

use std::time::Duration;

use ringcast_node::{Config, MemoryBroker};
use ringcast_testkit::{Client, TestNode};
use serde_json::json;

fn config(id: &str) -> Config {
    let mut c = Config::for_tests();
    c.node_id = Some(id.into());
    c
}

#[tokio::test]
async fn room_traffic_reaches_members_only_across_nodes() {
    let broker = MemoryBroker::new();
    let n1 = TestNode::start_on(config("n1"), broker.clone()).await;
    let n2 = TestNode::start_on(config("n2"), broker).await;
    let (mut a, _) = Client::connect_welcomed(&n1.ws_url("alice")).await;
    let (mut b, _) = Client::connect_welcomed(&n2.ws_url("bob")).await;
    let (mut c, _) = Client::connect_welcomed(&n2.ws_url("carol")).await;

    a.send_json(json!({"type":"join_room","room":"r"})).await;
    assert_eq!(a.recv_event("user_joined").await["user_id"], "alice");
    b.send_json(json!({"type":"join_room","room":"r"})).await;
    assert_eq!(b.recv_event("user_joined").await["user_id"], "bob");
    assert_eq!(a.recv_event("user_joined").await["user_id"], "bob");

    a.send_json(json!({"type":"room_message","room":"r","content":"hi"}))
        .await;
    let expected = json!({"event":"chat","from":"alice","room":"r","content":"hi"});
    let got = a.recv_event("chat").await;
    assert_eq!(ringcast_testkit::unnumbered(&got), expected);
    assert_eq!(got["offset"], 1);
    assert_eq!(b.recv_event("chat").await, got);

    c.send_json(json!({"type":"room_message","room":"r","content":"x"}))
        .await;
    assert_eq!(c.recv_error_code().await, "not_in_room");
    // carol is in no room: she must not see room traffic (announcements aside).
    loop {
        match c.next_json(Duration::from_millis(300)).await {
            Ok(v) if v["event"] == "user_connected" => continue,
            Ok(v) => panic!("carol received {v}"),
            Err(_) => break,
        }
    }
    assert_eq!(n2.stats().await["rooms"], 1);
}

#[tokio::test]
async fn pipelined_join_leave_storm_acks_every_join() {
    let broker = MemoryBroker::new();
    let mut cfg = config("n1");
    cfg.rate_limit_burst = 1000.0;
    let n1 = TestNode::start_on(cfg, broker.clone()).await;
    let (mut a, _) = Client::connect_welcomed(&n1.ws_url("a")).await;
    for i in 0..=200 {
        let kind = if i % 2 == 0 {
            "join_room"
        } else {
            "leave_room"
        };
        assert!(
            a.feed(tokio_tungstenite::tungstenite::Message::text(
                json!({"type":kind,"room":"r"}).to_string()
            ))
            .await
        );
    }
    assert!(a.flush().await);
    let (mut joins, mut lefts) = (0, 0);
    while joins < 101 || lefts < 100 {
        let v = a.recv().await;
        match v["event"].as_str() {
            Some("user_joined") => joins += 1,
            Some("user_left") => lefts += 1,
            _ => panic!("unexpected {v}"),
        }
    }
}
