//! Publish acknowledgements and dedupe as a sender sees them: a room message with an `id` gets
//! an `ack` with its offset, a retry of it is stored once (on any node, across a Redis restart
//! that kept its data), and every error a message with an id causes names that id.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ringcast_node::bus::redis::RedisBus;
use ringcast_node::bus::redis_config::RedisBusConfig;
use ringcast_node::bus::{dedupe_key, Bus, Channel, Keep, Publish, Published, StoredPublish};
use ringcast_node::metrics::Metrics;
use ringcast_node::room_options::parse_entry;
use ringcast_node::Config;
use ringcast_testkit::{metric_sum, Client, RedisServer, TestNode};
use serde_json::{json, Value};
use support::join;

fn config(id: &str, entries: &[&str]) -> Config {
    let mut c = Config::for_tests();
    c.node_id = Some(id.into());
    c.announce_connections = false;
    c.rate_limit_per_sec = 1_000_000.0;
    c.rate_limit_burst = 1_000_000.0;
    c.room_options = entries.iter().map(|e| parse_entry(e).unwrap()).collect();
    c
}

async fn post_id(c: &mut Client, room: &str, content: Value, id: &str) {
    c.send_json(json!({"type":"room_message","room":room,"content":content,"id":id}))
        .await;
}

/// Reads until an `ack` or an `error` arrives (chats and announcements pass by).
async fn answer(c: &mut Client) -> Value {
    loop {
        let v = c.recv().await;
        if v["event"] == "ack" || v["event"] == "error" {
            return v;
        }
    }
}

/// Every chat a member reads until `quiet` passes without a frame: (offset, content).
async fn chats(c: &mut Client, quiet: Duration) -> Vec<(u64, Value)> {
    let got = chat_events(c, quiet).await;
    got.iter()
        .map(|v| (v["offset"].as_u64().unwrap(), v["content"].clone()))
        .collect()
}

/// Every chat event a member reads until `quiet` passes without a frame.
async fn chat_events(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Ok(v) = c.next_json(quiet).await {
        if v["event"] == "chat" {
            got.push(v);
        }
    }
    got
}

#[tokio::test]
async fn an_id_gets_an_ack_with_its_offset_and_a_retry_is_stored_and_delivered_once() {
    let node = TestNode::start(config("n1", &[])).await;
    let (mut a, _) = Client::connect_welcomed(&node.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&node.ws_url("b")).await;
    let (mut m, _) = Client::connect_welcomed(&node.ws_url("m")).await;
    for (c, me) in [(&mut a, "a"), (&mut b, "b"), (&mut m, "m")] {
        join(c, me, "r").await;
    }

    post_id(&mut a, "r", json!("first"), "x-1").await;
    let ack = answer(&mut a).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        ack,
        json!({"event":"ack","id":"x-1","room":"r","offset":1,"epoch":epoch})
    );

    // The retry (even with other content: the id is what counts) is answered with the first
    // one's ack and not stored or delivered again.
    post_id(&mut a, "r", json!("first, again"), "x-1").await;
    assert_eq!(answer(&mut a).await, ack);
    // The same id from another sender is another message.
    post_id(&mut b, "r", json!("b's"), "x-1").await;
    let b_ack = answer(&mut b).await;
    assert_eq!(
        (b_ack["offset"].as_u64(), &b_ack["id"]),
        (Some(2), &json!("x-1"))
    );
    // Without an id there is no ack; the next id'd message is acked with the offset after it.
    a.send_json(json!({"type":"room_message","room":"r","content":"plain"}))
        .await;
    post_id(&mut a, "r", json!("last"), "x-2").await;
    let last = answer(&mut a).await;
    assert_eq!(
        (last["id"].as_str(), last["offset"].as_u64()),
        (Some("x-2"), Some(4))
    );

    let got = chat_events(&mut m, Duration::from_millis(500)).await;
    let seen: Vec<_> = got
        .iter()
        .map(|v| (v["offset"].as_u64(), &v["content"], &v["from"], &v["id"]))
        .collect();
    assert_eq!(
        seen,
        [
            (Some(1), &json!("first"), &json!("a"), &json!("x-1")),
            (Some(2), &json!("b's"), &json!("b"), &json!("x-1")),
            (Some(3), &json!("plain"), &json!("a"), &Value::Null),
            (Some(4), &json!("last"), &json!("a"), &json!("x-2"))
        ],
        "each message once, the retry not at all; each carries its sender's id, if it had one"
    );
    let metrics = node.get("/metrics").await.1;
    assert_eq!(
        metric_sum(&metrics, "ringcast_node_publish_acks_total"),
        4.0
    );
    assert_eq!(
        metric_sum(&metrics, "ringcast_node_publish_deduped_total"),
        1.0
    );
}

#[tokio::test]
async fn errors_caused_by_a_message_with_an_id_name_it() {
    let mut c = config("n1", &["open*:post=anyone", "quiet*:history=0"]);
    c.rate_limit_per_sec = 0.001;
    c.rate_limit_burst = 6.0;
    c.flood_strikes = 100.0;
    let node = TestNode::start(c).await;
    let (mut a, _) = Client::connect_welcomed(&node.ws_url("a")).await;

    // Posting to a members-only room without joining it.
    post_id(&mut a, "r", json!(1), "e-1").await;
    let e = answer(&mut a).await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("not_in_room"), &json!("e-1")),
        "{e}"
    );
    // A frame refused by the parser still names its (valid) id.
    post_id(&mut a, "bad room", json!(1), "e-2").await;
    let e = answer(&mut a).await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("invalid_room"), &json!("e-2")),
        "{e}"
    );
    // An invalid id is refused as such, with no id to name.
    post_id(&mut a, "open", json!(1), "not ok").await;
    let e = answer(&mut a).await;
    assert_eq!(e["code"], "invalid_id", "{e}");
    assert_eq!(e.get("id"), None, "{e}");
    // A room anyone may post to, and one without history: acked, the latter without an offset.
    post_id(&mut a, "open", json!(1), "e-3").await;
    let ack = answer(&mut a).await;
    assert_eq!(
        (&ack["event"], ack["offset"].as_u64()),
        (&json!("ack"), Some(1)),
        "{ack}"
    );
    join(&mut a, "a", "quiet").await;
    post_id(&mut a, "quiet", json!(1), "e-4").await;
    assert_eq!(
        answer(&mut a).await,
        json!({"event":"ack","id":"e-4","room":"quiet"}),
        "no history: published, no offset"
    );

    // The burst (6) is spent: each message past it is refused with rate_limited and its id —
    // every one, not just the first of a run, so the sender knows what to send again.
    for i in 0..3 {
        post_id(&mut a, "open", json!(i), &format!("late-{i}")).await;
    }
    for i in 0..3 {
        let e = answer(&mut a).await;
        assert_eq!(
            (&e["code"], e["id"].as_str()),
            (&json!("rate_limited"), Some(format!("late-{i}").as_str())),
            "{e}"
        );
    }
}

#[tokio::test]
async fn on_redis_a_retry_through_another_node_is_stored_once() {
    let redis = RedisServer::start();
    let nodes = support::start_nodes(&redis, &["n1", "n2"]).await;
    let (mut m, _) = Client::connect_welcomed(&nodes[1].ws_url("m")).await;
    join(&mut m, "m", "r").await;
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("p")).await;
    join(&mut p, "p", "r").await;
    post_id(&mut p, "r", json!("once"), "k-1").await;
    let ack = answer(&mut p).await;
    assert_eq!(ack["offset"], 1, "{ack}");
    p.close().await;

    // The publisher's node is gone as far as it knows: it reconnects elsewhere and resends.
    let (mut p, _) = Client::connect_welcomed(&nodes[1].ws_url("p")).await;
    join(&mut p, "p", "r").await;
    post_id(&mut p, "r", json!("once"), "k-1").await;
    assert_eq!(
        answer(&mut p).await,
        ack,
        "the original ack, from the other node"
    );
    post_id(&mut p, "r", json!("next"), "k-2").await;
    assert_eq!(answer(&mut p).await["offset"], 2);
    assert_eq!(
        chats(&mut m, Duration::from_millis(500)).await,
        [(1, json!("once")), (2, json!("next"))]
    );
}

#[tokio::test]
async fn on_redis_dedupe_is_bounded_by_the_room_history() {
    let redis = RedisServer::start();
    let nodes = support::start_with(&["n1"], |id| {
        let mut c = support::config(id, &redis.url());
        c.room_options = vec![parse_entry("small*:history=3").unwrap()];
        c
    })
    .await;
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("p")).await;
    join(&mut p, "p", "small").await;
    for i in 1..=3 {
        post_id(&mut p, "small", json!(i), &format!("d-{i}")).await;
        assert_eq!(answer(&mut p).await["offset"], i);
    }
    // d-1 is still in the 3-message history: deduped.
    post_id(&mut p, "small", json!(1), "d-1").await;
    assert_eq!(answer(&mut p).await["offset"], 1);
    // A message without an id pushes d-1 out of history, and with it its dedupe record: a
    // repeat now is a new message.
    p.send_json(json!({"type":"room_message","room":"small","content":4}))
        .await;
    post_id(&mut p, "small", json!(1), "d-1").await;
    assert_eq!(answer(&mut p).await["offset"], 5);
    post_id(&mut p, "small", json!(6), "d-6").await;
    assert_eq!(answer(&mut p).await["offset"], 6);
    let mut con = support::inspector(&redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*small*:ids")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let kept: i64 = redis::cmd("ZCARD")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(kept <= 3 + 32, "{kept}");
    // Many more: the set is trimmed every 32 offsets, so it never holds more than the
    // history (3) plus 32 records, whatever the traffic.
    for i in 7..=100 {
        post_id(&mut p, "small", json!(i), &format!("d-{i}")).await;
        assert_eq!(answer(&mut p).await["offset"], i);
    }
    let kept: i64 = redis::cmd("ZCARD")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        (3..=3 + 32).contains(&kept),
        "the dedupe set is bounded: {kept}"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(ttl > 0, "the dedupe set expires ({ttl})");
}

#[tokio::test]
async fn redis_down_the_error_names_the_id_and_the_retry_after_is_stored_once() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let nodes = support::start_nodes(&redis, &["n1"]).await;
    let (mut m, _) = Client::connect_welcomed(&nodes[0].ws_url("m")).await;
    join(&mut m, "m", "r").await;
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("p")).await;
    join(&mut p, "p", "r").await;
    post_id(&mut p, "r", json!("before"), "r-1").await;
    let before = answer(&mut p).await;
    assert_eq!(before["offset"], 1);

    redis.kill();
    post_id(&mut p, "r", json!("during"), "r-2").await;
    let e = answer(&mut p).await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("bus_unavailable"), &json!("r-2")),
        "{e}"
    );

    redis.restart();
    support::wait_healthy(&nodes[0], Duration::from_secs(10)).await;
    // The sender does not know whether r-1 was kept through the restart: it resends both.
    // Redis kept r-1 (appendfsync always), so r-1 is answered with its first ack; r-2 is new.
    post_id(&mut p, "r", json!("before"), "r-1").await;
    assert_eq!(answer(&mut p).await, before);
    post_id(&mut p, "r", json!("during"), "r-2").await;
    let after = answer(&mut p).await;
    assert_eq!(
        (&after["event"], after["offset"].as_u64(), &after["epoch"]),
        (&json!("ack"), Some(2), &before["epoch"]),
        "{after}"
    );
    post_id(&mut p, "r", json!("during"), "r-2").await;
    assert_eq!(answer(&mut p).await, after);
    assert_eq!(
        chats(&mut m, Duration::from_millis(800)).await,
        [(1, json!("before")), (2, json!("during"))],
        "a member that stayed sees each message once"
    );
}

/// A stored publish of `n` to `room`, with `id` from sender `s`.
fn stored(room: &str, n: u64, id: Option<&str>) -> Publish {
    Publish::Stored(StoredPublish {
        room: room.into(),
        head: bytes::Bytes::from(format!(
            r#"{{"event":"chat","from":"s","room":"{room}","content":{n},"offset":"#
        )),
        sent_at_micros: 1,
        keep: Keep {
            size: 500,
            ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(600),
        },
        dedupe: id.map(|id| dedupe_key("s", id)),
    })
}

#[tokio::test]
async fn one_batch_of_many_rooms_is_stored_in_order_and_one_bad_key_fails_only_its_message() {
    let redis = RedisServer::start();
    let config = support::config("n1", &redis.url());
    let settings = RedisBusConfig::from_config(&config).unwrap();
    let bus = RedisBus::start(settings, Arc::new(|_| {}), Arc::new(Metrics::new())).unwrap();
    assert!(bus.wait_healthy(Duration::from_secs(5)).await);
    // A key of the wrong type makes the script fail for room `bad` only.
    redis
        .cli(&["SET", "{ringcast:room:bad}:meta", "x"])
        .unwrap();
    // 150 messages over three rooms (more than one script run), plain publishes between them,
    // a repeat of an id inside the same run, and the bad room in the middle.
    let mut batch = Vec::new();
    for n in 0..150u64 {
        let room = ["a", "b", "c"][(n % 3) as usize];
        batch.push(stored(room, n, Some(&format!("m{n}"))));
        if n % 50 == 7 {
            batch.push(Publish::Plain(
                Channel::Broadcast,
                bytes::Bytes::from_static(b"x"),
            ));
        }
        if n == 20 {
            batch.push(stored("a", 999, Some("m18")));
            batch.push(stored("bad", 0, Some("z")));
        }
    }
    let results = bus.publish_all(&batch).await;
    assert_eq!(results.len(), batch.len());
    let mut next = std::collections::HashMap::new();
    let mut failed = 0;
    for (item, result) in batch.iter().zip(&results) {
        match (item, result) {
            (Publish::Plain(..), r) => assert!(r.is_ok(), "{r:?}"),
            (Publish::Stored(m), Err(e)) => {
                assert_eq!(m.room, "bad", "{e}");
                assert!(e.to_string().contains("WRONGTYPE"), "{e}");
                failed += 1;
            }
            (Publish::Stored(m), Ok(Published::Stored(s))) if s.duplicate => {
                assert_eq!((m.room.as_str(), s.offset), ("a", 7), "m18 was a's 7th");
            }
            (Publish::Stored(m), Ok(Published::Stored(s))) => {
                let offset = next.entry(m.room.clone()).or_insert(1u64);
                assert_eq!(s.offset, *offset, "{}: offsets in batch order", m.room);
                *offset += 1;
            }
            (_, r) => panic!("{r:?}"),
        }
    }
    assert_eq!(failed, 1, "the bad room's message, and only it");
    assert_eq!(next["a"], 51, "a stored 50, the repeat not");
    let log = redis.cli(&["XLEN", "{ringcast:room:a}:log"]).unwrap();
    assert_eq!(log.trim(), "50");
}
