//! Presence as clients see it: who is in a room on every node, how many, the errors for rooms a
//! client may not ask about, and announcements per client id (a second tab joins and leaves in
//! silence). Node deaths and freezes are in `gateway/tests/presence.rs`, with real processes.

mod support;

use std::time::Duration;

use ringcast_node::room_options::parse_entry;
use ringcast_node::{Config, MemoryBroker};
use ringcast_protocol::auth::{mint_hs256, now_secs, Claims};
use ringcast_testkit::{Client, RedisServer, TestNode};
use serde_json::{json, Value};
use support::join;

fn config(id: &str) -> Config {
    let mut c = Config::for_tests();
    c.node_id = Some(id.into());
    c.announce_connections = false;
    c.room_options = vec![parse_entry("quiet*:presence=off").unwrap()];
    c
}

/// Sends `msg` and returns the first frame with `event` (or an error).
async fn ask(c: &mut Client, msg: Value, event: &str) -> Value {
    c.send_json(msg).await;
    loop {
        let v = c.recv().await;
        if v["event"] == event || v["event"] == "error" {
            return v;
        }
    }
}

fn sorted(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// `presence_stats` of `room`: (clients, connections).
async fn stats(c: &mut Client, room: &str) -> (Value, Value) {
    let msg = json!({"type":"presence_stats","room":room});
    let s = ask(c, msg, "presence_stats").await;
    (s["clients"].clone(), s["connections"].clone())
}

/// Every frame until `quiet` passes without one.
async fn frames(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Ok(v) = c.next_json(quiet).await {
        got.push(v);
    }
    got
}

#[tokio::test]
async fn presence_lists_every_client_id_once_with_counts_and_a_limit() {
    let broker = MemoryBroker::new();
    let mut c1 = config("n1");
    c1.presence_max_members = 2;
    let n1 = TestNode::start_on(c1, broker.clone()).await;
    let n2 = TestNode::start_on(config("n2"), broker).await;
    let (mut a1, _) = Client::connect_welcomed(&n1.ws_url("a")).await;
    let (mut a2, _) = Client::connect_welcomed(&n2.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&n2.ws_url("b")).await;
    for (c, me) in [(&mut a1, "a"), (&mut a2, "a"), (&mut b, "b")] {
        join(c, me, "r").await;
    }
    let p = ask(&mut b, json!({"type":"presence","room":"r"}), "presence").await;
    assert_eq!(sorted(&p), ["a", "b"], "{p}");
    assert_eq!(
        (&p["count"], &p["truncated"]),
        (&json!(2), &json!(false)),
        "{p}"
    );
    let s = ask(
        &mut b,
        json!({"type":"presence_stats","room":"r"}),
        "presence_stats",
    )
    .await;
    assert_eq!(
        s,
        json!({"event":"presence_stats","room":"r","clients":2,"connections":3})
    );
    // n1 lists at most 2 ids: a third client id makes its answer truncated, the count exact.
    let (mut c, _) = Client::connect_welcomed(&n2.ws_url("c")).await;
    join(&mut c, "c", "r").await;
    let p = ask(&mut a1, json!({"type":"presence","room":"r"}), "presence").await;
    assert_eq!(p["members"].as_array().unwrap().len(), 2, "{p}");
    assert_eq!(
        (&p["count"], &p["truncated"]),
        (&json!(3), &json!(true)),
        "{p}"
    );
    // Leaving takes a connection out; the client id stays while another tab is in.
    a1.send_json(json!({"type":"leave_room","room":"r"})).await;
    a1.recv_event("user_left").await;
    assert_eq!(stats(&mut b, "r").await, (json!(3), json!(3)));
    a2.close().await;
    let p = ask(&mut b, json!({"type":"presence","room":"r"}), "presence").await;
    assert_eq!(sorted(&p), ["b", "c"], "{p}");
}

#[tokio::test]
async fn asking_about_a_room_you_are_not_in_or_without_presence_is_an_error() {
    let node = TestNode::start(config("n1")).await;
    let (mut a, _) = Client::connect_welcomed(&node.ws_url("a")).await;
    for kind in ["presence", "presence_stats"] {
        let e = ask(&mut a, json!({"type":kind,"room":"r"}), kind).await;
        assert_eq!(e["code"], "not_in_room", "{e}");
        assert_eq!(e["room"], "r", "the error names the room asked about: {e}");
    }
    join(&mut a, "a", "quiet-1").await;
    for kind in ["presence", "presence_stats"] {
        let e = ask(&mut a, json!({"type":kind,"room":"quiet-1"}), kind).await;
        assert_eq!(e["code"], "presence_disabled", "{e}");
        assert_eq!(e["room"], "quiet-1", "{e}");
    }
    let e = ask(&mut a, json!({"type":"presence"}), "presence").await;
    assert_eq!(e["code"], "missing_field", "{e}");
    // Still served.
    join(&mut a, "a", "r").await;
    let p = ask(&mut a, json!({"type":"presence","room":"r"}), "presence").await;
    assert_eq!(sorted(&p), ["a"]);
}

#[tokio::test]
async fn a_room_the_token_does_not_allow_is_forbidden() {
    const SECRET: &str = "test-secret-0123456789abcdef";
    let mut c = config("n1");
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.jwt_audience = Some("ringcast".into());
    let node = TestNode::start(c).await;
    let claims = Claims {
        sub: "a".into(),
        exp: now_secs() + 3600,
        nbf: None,
        aud: Some("ringcast".into()),
        iss: None,
        rooms: Some(vec!["mine".into()]),
        chat: None,
    };
    let token = mint_hs256(SECRET, &claims).unwrap();
    let url = format!("ws://{}/ws?token={token}", node.addr);
    let (mut a, _) = Client::connect_welcomed(&url).await;
    let e = ask(
        &mut a,
        json!({"type":"presence","room":"other"}),
        "presence",
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    join(&mut a, "a", "mine").await;
    let p = ask(&mut a, json!({"type":"presence","room":"mine"}), "presence").await;
    assert_eq!(sorted(&p), ["a"]);
}

#[tokio::test]
async fn on_redis_a_second_tab_on_another_node_joins_and_leaves_in_silence() {
    let redis = RedisServer::start();
    let nodes = support::start_with(&["n1", "n2"], |id| {
        let mut c = support::config(id, &redis.url());
        c.announce_connections = false;
        c
    })
    .await;
    let (mut m, _) = Client::connect_welcomed(&nodes[0].ws_url("m")).await;
    join(&mut m, "m", "r").await;
    let (mut tab1, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    join(&mut tab1, "a", "r").await;
    let (mut tab2, _) = Client::connect_welcomed(&nodes[1].ws_url("a")).await;
    join(&mut tab2, "a", "r").await;
    tab1.send_json(json!({"type":"leave_room","room":"r"}))
        .await;
    assert_eq!(
        tab1.recv_event("user_left").await["user_id"],
        "a",
        "the leaver's own copy"
    );
    let seen = frames(&mut m, Duration::from_millis(500)).await;
    let about_a: Vec<&Value> = seen.iter().filter(|v| v["user_id"] == "a").collect();
    assert_eq!(
        about_a,
        [&json!({"event":"user_joined","user_id":"a","room":"r"})],
        "one user_joined for the client id, nothing for its second tab coming and going"
    );
    let p = ask(&mut m, json!({"type":"presence","room":"r"}), "presence").await;
    assert_eq!(sorted(&p), ["a", "m"], "tab2 is still in: {p}");
    tab2.close().await;
    let left = m.recv_event("user_left").await;
    assert_eq!(left["user_id"], "a", "its last connection anywhere: {left}");
    let p = ask(&mut m, json!({"type":"presence","room":"r"}), "presence").await;
    assert_eq!(sorted(&p), ["m"]);
    assert_eq!(stats(&mut m, "r").await, (json!(1), json!(1)));
}

/// A node config on `redis` with a short presence lease (the tests wait on it).
fn leased(id: &str, redis: &RedisServer) -> Config {
    leased_for(id, redis, 600)
}

/// A node config on `redis` with a presence lease of `ms`.
fn leased_for(id: &str, redis: &RedisServer, ms: u64) -> Config {
    let mut c = support::config(id, &redis.url());
    c.announce_connections = false;
    c.presence_lease_ms = ms;
    c
}

/// Asks `presence` until it lists exactly `expect` (or `limit` passes); returns the last answer.
async fn presence_until(
    c: &mut Client,
    room: &str,
    expect: &[&str],
    limit: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let p = ask(c, json!({"type":"presence","room":room}), "presence").await;
        let got = if p["event"] == "presence" {
            sorted(&p)
        } else {
            Vec::new()
        };
        if got == expect || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn after_redis_lost_its_data_every_node_writes_its_presence_again() {
    let mut redis = RedisServer::start();
    let nodes = support::start_with(&["n1", "n2"], |id| leased(id, &redis)).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&nodes[1].ws_url("b")).await;
    join(&mut a, "a", "r").await;
    join(&mut b, "b", "r").await;
    redis.restart(); // no persistence: every key is gone
    for n in &nodes {
        support::wait_healthy(n, Duration::from_secs(10)).await;
    }
    let got = presence_until(&mut a, "r", &["a", "b"], Duration::from_secs(10)).await;
    assert_eq!(got, ["a", "b"], "both nodes wrote their clients again");
}

#[tokio::test]
async fn a_leave_while_redis_is_down_is_written_and_announced_once_it_is_back() {
    leave_during_outage(Duration::from_millis(300), &[]).await;
}

/// As above, with Redis away for longer than the lease (twice its 600 ms): the node finds its
/// lease gone, removes what its instance had and writes its table again — and the client id
/// that left meanwhile is still announced gone, once; one that stayed stays.
#[tokio::test]
async fn a_leave_during_an_outage_longer_than_the_lease_is_announced_once_redis_is_back() {
    leave_during_outage(Duration::from_millis(1200), &["b"]).await;
}

/// m on n1, `a` and `stays` on n2, all in room r; Redis goes away for `down`, `a` leaves
/// meanwhile: once Redis is back, m hears one `user_left` of `a` and nothing more, and
/// presence lists m and `stays`.
async fn leave_during_outage(down: Duration, stays: &[&str]) {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let nodes = support::start_with(&["n1", "n2"], |id| leased(id, &redis)).await;
    let (mut m, _) = Client::connect_welcomed(&nodes[0].ws_url("m")).await;
    join(&mut m, "m", "r").await;
    let mut others = Vec::new();
    for id in std::iter::once(&"a").chain(stays) {
        let (mut c, _) = Client::connect_welcomed(&nodes[1].ws_url(id)).await;
        join(&mut c, id, "r").await;
        m.recv_event("user_joined").await;
        others.push(c);
    }
    redis.kill();
    others.remove(0).close().await;
    tokio::time::sleep(down).await;
    redis.restart();
    // The restart replays an fsync-always AOF, slow on a busy disk: a generous limit.
    let left = m
        .recv_event_within("user_left", Duration::from_secs(20))
        .await;
    assert_eq!(left["user_id"], "a", "{left}");
    let mut expect: Vec<&str> = stays.iter().copied().chain(["m"]).collect();
    expect.sort_unstable();
    let got = presence_until(&mut m, "r", &expect, Duration::from_secs(10)).await;
    assert_eq!(got, expect);
    let seen = frames(&mut m, Duration::from_millis(1500)).await;
    assert!(
        !seen
            .iter()
            .any(|v| v["user_id"] == "a" || v["event"] == "user_left"),
        "one user_left, nothing more: {seen:?}"
    );
}

/// As above, but `a` comes back (on the other node) before the node it left from has announced
/// it gone: m must not be told it left, nor end up thinking so.
#[tokio::test]
async fn a_client_back_before_its_outage_leave_is_announced_is_not_announced_gone() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    // A lease long enough that the rejoin below comes before n2 announces what it noted.
    let nodes = support::start_with(&["n1", "n2"], |id| leased_for(id, &redis, 3000)).await;
    let (mut m, _) = Client::connect_welcomed(&nodes[0].ws_url("m")).await;
    join(&mut m, "m", "r").await;
    let (mut a, _) = Client::connect_welcomed(&nodes[1].ws_url("a")).await;
    join(&mut a, "a", "r").await;
    m.recv_event("user_joined").await;
    redis.kill();
    a.close().await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    redis.restart();
    // n2 found its lease gone and removed what its instance had: a is noted gone.
    let pattern = "{ringcast:room:r}:pn:n2.*";
    ringcast_testkit::wait_until(Duration::from_secs(20), "n2 purged", || {
        let redis = &redis;
        async move {
            redis
                .cli(&["--scan", "--pattern", pattern])
                .is_some_and(|keys| keys.trim().is_empty())
        }
    })
    .await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    join(&mut a, "a", "r").await;
    // Past n2's settling (a lease after it took its lease anew), with room to spare.
    let mut heard = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        if let Ok(v) = m.next_json(Duration::from_millis(200)).await {
            if v["user_id"] == "a" {
                heard.push(v["event"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    assert_eq!(
        heard.last().map(String::as_str),
        Some("user_joined"),
        "m was last told a left, while a is back: {heard:?}"
    );
    let got = presence_until(&mut m, "r", &["a", "m"], Duration::from_secs(5)).await;
    assert_eq!(got, ["a", "m"]);
}

#[tokio::test]
async fn a_node_that_finds_itself_swept_closes_its_clients_and_leaves_no_ghost() {
    let redis = RedisServer::start();
    let nodes = support::start_with(&["n1", "n2"], |id| leased_for(id, &redis, 3000)).await;
    let (mut m, _) = Client::connect_welcomed(&nodes[1].ws_url("m")).await;
    join(&mut m, "m", "r").await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    join(&mut a, "a", "r").await;
    // What a survivor's sweep leaves behind while n1 is frozen: its instance marked swept.
    // n1 serves one more join before its next renewal finds out, as a node waking up does.
    let leases = redis
        .cli(&["--scan", "--pattern", "{ringcast:node:n1.*}:lease"])
        .unwrap();
    let lease = leases.lines().next().expect("n1 holds a lease").to_owned();
    let swept = lease.replace(":lease", ":swept");
    redis.cli(&["SET", &swept, "done"]).unwrap();
    a.send_json(json!({"type":"join_room","room":"late"})).await;
    assert_eq!(a.expect_close(Duration::from_secs(5)).await, Some(1012));
    let left = m.recv_event("user_left").await;
    assert_eq!(left["user_id"], "a", "told once the old instance is purged");
    let got = presence_until(&mut m, "r", &["m"], Duration::from_secs(5)).await;
    assert_eq!(got, ["m"], "a is gone from r");
    join(&mut m, "m", "late").await;
    let got = presence_until(&mut m, "late", &["m"], Duration::from_secs(5)).await;
    assert_eq!(got, ["m"], "the join served after being swept did not stay");
}

#[tokio::test]
async fn a_node_lists_only_the_rooms_it_still_counts_someone_in() {
    let redis = RedisServer::start();
    let nodes = support::start_with(&["n1"], |id| leased(id, &redis)).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    for room in ["r1", "r2", "r3"] {
        join(&mut a, "a", room).await;
    }
    for room in ["r1", "r2"] {
        a.send_json(json!({"type":"leave_room","room":room})).await;
        a.recv_event("user_left").await;
    }
    let listed = || {
        let keys = redis
            .cli(&["--scan", "--pattern", "{ringcast:node:n1.*}:rooms"])
            .unwrap();
        let key = keys
            .lines()
            .next()
            .expect("the instance's room list")
            .to_owned();
        let mut rooms: Vec<String> = redis
            .cli(&["SMEMBERS", &key])
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        rooms.sort();
        rooms
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listed() != ["r3"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listed: {:?}",
            listed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a room taken off the list is listed again when someone joins it.
    join(&mut a, "a", "r1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listed() != ["r1", "r3"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listed: {:?}",
            listed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts in Redis for `room`: client ids in the totals hash, and the connections (one per
/// client id plus the extra-connections counter).
fn redis_counts(redis: &RedisServer, room: &str) -> (usize, i64) {
    let hlen: usize = redis
        .cli(&["HLEN", &format!("{{ringcast:room:{room}}}:pr")])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let px = redis
        .cli(&["GET", &format!("{{ringcast:room:{room}}}:px")])
        .unwrap();
    (hlen, hlen as i64 + px.trim().parse::<i64>().unwrap_or(0))
}

#[tokio::test]
async fn on_redis_rooms_without_announcements_are_written_behind_and_read_back_at_once() {
    let redis = RedisServer::start();
    let nodes = support::start_with(&["n1", "n2"], |id| {
        let mut c = leased(id, &redis);
        c.room_options = vec![parse_entry("big*:announce=off,history=0").unwrap()];
        c
    })
    .await;
    // Each member's first question after its ack already lists it: the node waits for what it
    // queued behind before answering.
    let mut members = Vec::new();
    for i in 0..30 {
        let id = format!("m{i:02}");
        let (mut c, _) = Client::connect_welcomed(&nodes[i % 2].ws_url(&id)).await;
        // Sent back to back: the question is read right after the join is served.
        c.send_json(json!({"type":"join_room","room":"big-1"}))
            .await;
        let p = ask(
            &mut c,
            json!({"type":"presence","room":"big-1"}),
            "presence",
        )
        .await;
        assert!(sorted(&p).contains(&id), "{id} not in its own answer: {p}");
        members.push((id, c));
    }
    // A second tab of m00 on the other node, which leaves again: one client id, counted once.
    let (mut tab, _) = Client::connect_welcomed(&nodes[1].ws_url("m00")).await;
    join(&mut tab, "m00", "big-1").await;
    let all: Vec<String> = members.iter().map(|(id, _)| id.clone()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let asker = &mut members[1].1;
    assert_eq!(
        presence_until(asker, "big-1", &all, Duration::from_secs(5)).await,
        all
    );
    assert_eq!(stats(asker, "big-1").await, (json!(30), json!(31)));
    tab.send_json(json!({"type":"leave_room","room":"big-1"}))
        .await;
    tab.recv_event("user_left").await;
    // Half of them go (closed, or leaving): the rest is what presence and Redis say.
    let mut kept = Vec::new();
    for (i, (id, mut c)) in members.into_iter().enumerate() {
        match i % 4 {
            0 => c.close().await,
            2 => {
                c.send_json(json!({"type":"leave_room","room":"big-1"}))
                    .await;
                c.recv_event("user_left").await;
            }
            _ => kept.push((id, c)),
        }
    }
    let rest: Vec<String> = kept.iter().map(|(id, _)| id.clone()).collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let asker = &mut kept[0].1;
    assert_eq!(
        presence_until(asker, "big-1", &rest, Duration::from_secs(5)).await,
        rest
    );
    assert_eq!(stats(asker, "big-1").await, (json!(15), json!(15)));
    assert_eq!(redis_counts(&redis, "big-1"), (15, 15));
    // And nobody was told anything: the room does not announce.
    let heard = frames(asker, Duration::from_millis(300)).await;
    assert!(
        heard
            .iter()
            .all(|v| v["event"] != "user_joined" && v["event"] != "user_left"),
        "{heard:?}"
    );
    // Everyone gone: nothing left in Redis.
    for (_, c) in kept {
        c.close().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while redis_counts(&redis, "big-1") != (0, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left in Redis: {:?}",
            redis_counts(&redis, "big-1")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Many concurrent presence changes over several rooms and instances, on one Redis, queued
/// through one publisher as the sessions do: each caller gets its own answer (first connection
/// anywhere, last one gone), whatever batch it shared; Redis ends with exactly the counts; and
/// exactly the first adds and the last removals published their announcements, once each.
#[tokio::test]
async fn concurrent_presence_changes_are_batched_and_each_gets_its_own_answer() {
    use bytes::Bytes;
    use ringcast_node::bus::{Bus, Channel, PresenceChange};
    use ringcast_node::metrics::Metrics;
    use ringcast_node::publisher::Publisher;
    use ringcast_protocol::{Envelope, Target};
    use std::sync::{Arc, Mutex};

    let redis = RedisServer::start();
    // Every announcement this node hears: its frame.
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let inbox = {
        let heard = heard.clone();
        Arc::new(move |payload: Bytes| {
            let envelope = Envelope::decode(&payload).expect("an envelope");
            let frame = String::from_utf8(envelope.frame).unwrap();
            heard.lock().unwrap().push(frame);
        })
    };
    let bus: Arc<dyn Bus> = Arc::new(redis_bus(&redis, inbox).await);
    let rooms: Vec<Channel> = (0..5).map(|r| Channel::Room(format!("b{r}"))).collect();
    bus.subscribe(&rooms).await.unwrap();
    let publisher = Arc::new(Publisher::start(
        "n1".into(),
        bus.clone(),
        Arc::new(Metrics::new()),
    ));
    let change = |add: bool, room: &str, client: &str, instance: &str| PresenceChange {
        add,
        room: room.to_owned(),
        client: client.into(),
        instance: instance.into(),
        announce: None,
    };
    let spawn = |add: bool, room: String, client: String, instance: &'static str| {
        let (publisher, change) = (publisher.clone(), change(add, &room, &client, instance));
        tokio::spawn(async move {
            let frame = Bytes::from(format!("{}:{room}:{client}", if add { "+" } else { "-" }));
            let target = Target::Room(room.clone());
            let changed = publisher
                .presence(change, Some((target, &frame)))
                .await
                .unwrap();
            ((room, client), changed)
        })
    };
    // 5 rooms × 40 clients, each client added under two instances: exactly one of the two
    // adds of a client is its first anywhere.
    let mut adds = Vec::new();
    for room in 0..5 {
        for client in 0..40 {
            for instance in ["i1", "i2"] {
                adds.push(spawn(
                    true,
                    format!("b{room}"),
                    format!("c{client}"),
                    instance,
                ));
            }
        }
    }
    let mut firsts = std::collections::HashMap::new();
    for a in adds {
        let (key, first) = a.await.unwrap();
        *firsts.entry(key).or_insert(0) += usize::from(first);
    }
    assert_eq!(firsts.len(), 200);
    assert!(
        firsts.values().all(|n| *n == 1),
        "one first add each: {firsts:?}"
    );
    for room in 0..5 {
        assert_eq!(redis_counts(&redis, &format!("b{room}")), (40, 80));
    }
    // Remove under i1: nobody's last; then under i2: everybody's last. And a removal under an
    // instance that holds nothing says so without touching the counts.
    for (instance, last) in [("i1", false), ("i2", true)] {
        let mut removes = Vec::new();
        for room in 0..5 {
            for client in 0..40 {
                removes.push(spawn(
                    false,
                    format!("b{room}"),
                    format!("c{client}"),
                    instance,
                ));
            }
        }
        for r in removes {
            assert_eq!(r.await.unwrap().1, last, "removed under {instance}");
        }
    }
    assert!(
        !spawn(false, "b0".into(), "c0".into(), "i3")
            .await
            .unwrap()
            .1
    );
    for room in 0..5 {
        assert_eq!(redis_counts(&redis, &format!("b{room}")), (0, 0));
    }
    // One announcement per first add and per last removal, each on its room's channel.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while heard.lock().unwrap().len() < 400 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut heard = heard.lock().unwrap().clone();
    heard.sort();
    let mut expected: Vec<String> = (0..5)
        .flat_map(|r| (0..40).flat_map(move |c| ["+", "-"].map(|op| format!("{op}:b{r}:c{c}"))))
        .collect();
    expected.sort();
    assert_eq!(
        heard, expected,
        "exactly one announcement per first add and last removal"
    );
}

/// The room's connections are its client ids plus an extra-connections counter that only a
/// client id's second (third…) connection moves: every presence script keeps it exact — joins
/// and leaves, written-behind entries, rewrites after Redis lost its data, and sweeps — and it
/// is gone once nobody is left.
#[tokio::test]
async fn every_presence_script_keeps_the_connections_count_exact() {
    use ringcast_node::bus::presence::Presence;
    use ringcast_node::bus::redis::RedisBus;
    use std::sync::Arc;

    let redis = RedisServer::start();
    let bus = redis_bus(&redis, Arc::new(|_| {})).await;
    let entry = |client: &str, n: u32| ("r".to_owned(), Arc::<str>::from(client), n);
    async fn counts(bus: &RedisBus) -> (u64, u64) {
        let l = bus.list("r", 10).await.unwrap();
        (l.clients, l.connections)
    }
    assert!(bus.add("r", "a", "i1").await.unwrap());
    assert!(!bus.add("r", "a", "i1").await.unwrap());
    assert_eq!(counts(&bus).await, (1, 2));
    assert!(!bus.add("r", "a", "i2").await.unwrap());
    assert!(bus.add("r", "b", "i2").await.unwrap());
    assert_eq!(counts(&bus).await, (2, 4));
    bus.write_quiet("i3", &[entry("a", 2), entry("c", 1)])
        .await
        .unwrap();
    assert_eq!(counts(&bus).await, (3, 7), "a 5, b 1, c 1");
    bus.resync("i4", &[entry("b", 3)]).await.unwrap();
    assert_eq!(counts(&bus).await, (3, 10), "a 5, b 4, c 1");
    bus.write_quiet("i3", &[entry("a", 0)]).await.unwrap();
    assert_eq!(counts(&bus).await, (3, 8), "a 3, b 4, c 1");
    // i1 and i4 die (no lease ever taken here): their connections go.
    assert!(bus.sweep("i1", "n2").await.unwrap().is_some());
    assert_eq!(counts(&bus).await, (3, 6), "a 1, b 4, c 1");
    assert!(bus.sweep("i4", "n2").await.unwrap().is_some());
    assert_eq!(counts(&bus).await, (3, 3), "a 1, b 1, c 1");
    assert_eq!(redis_counts(&redis, "r"), (3, 3));
    assert!(bus.remove("r", "a", "i2").await.unwrap());
    assert!(bus.remove("r", "b", "i2").await.unwrap());
    bus.write_quiet("i3", &[entry("c", 0)]).await.unwrap();
    assert_eq!(counts(&bus).await, (0, 0));
    let keys = redis
        .cli(&["--scan", "--pattern", "{ringcast:room:r}*"])
        .unwrap();
    assert_eq!(keys.trim(), "", "nothing left of the room's presence");
}

/// A room is listed under the node's instance once, not per join; once taken off the list
/// (nothing counted there) or after Redis lost its data, the next join lists it again — a
/// sweep of the instance always finds the rooms it holds entries in.
#[tokio::test]
async fn a_room_is_listed_once_and_again_after_it_was_taken_off() {
    use ringcast_node::bus::presence::Presence;
    use std::sync::Arc;

    let redis = RedisServer::start();
    let bus = redis_bus(&redis, Arc::new(|_| {})).await;
    let listed = || {
        let mut rooms: Vec<String> = redis
            .cli(&["SMEMBERS", "{ringcast:node:i1}:rooms"])
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        rooms.sort();
        rooms
    };
    let sadds = || {
        let stats = redis.cli(&["INFO", "commandstats"]).unwrap();
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_sadd:calls="))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for client in ["a", "b", "c"] {
        bus.add("r", client, "i1").await.unwrap();
    }
    assert_eq!(listed(), ["r"]);
    assert_eq!(sadds(), 1, "listed once for three joins");
    for client in ["a", "b", "c"] {
        bus.remove("r", client, "i1").await.unwrap();
    }
    bus.unlist_rooms("i1", &["r".to_owned()]).await.unwrap();
    assert!(listed().is_empty());
    bus.add("r", "a", "i1").await.unwrap();
    assert_eq!(listed(), ["r"], "listed again after it was taken off");
    // Redis loses everything; the renewal finds the lease gone, and joins list again.
    redis.cli(&["FLUSHALL"]).unwrap();
    let renewal = bus.renew("i1", Duration::from_secs(5), 1).await.unwrap();
    assert_eq!(renewal, ringcast_node::bus::presence::Renewal::Taken);
    bus.add("r", "b", "i1").await.unwrap();
    assert_eq!(listed(), ["r"], "listed again after Redis lost its data");
    // A listing lost while the lease survived (a failover, a restart from a snapshot): once
    // the bus has connected anew, joins list the room again.
    redis
        .cli(&["SREM", "{ringcast:node:i1}:rooms", "r"])
        .unwrap();
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while listed().is_empty() && tokio::time::Instant::now() < deadline {
        n += 1;
        let _ = bus.add("r", &format!("late{n}"), "i1").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed(), ["r"], "listed again after the bus reconnected");
}

/// One script call can carry changes of one room under several instances (a node's old
/// instance and its new one): the extra-connections counter moves once by their sum, never
/// clamped at 0 half-way — whichever order the changes come in.
#[tokio::test]
async fn changes_of_one_room_under_several_instances_in_one_call_keep_the_count_exact() {
    use ringcast_node::bus::{Bus, PresenceChange, Publish, Published};
    use std::sync::Arc;

    let redis = RedisServer::start();
    let bus = redis_bus(&redis, Arc::new(|_| {})).await;
    let change = |add: bool, room: &str, instance: &str| {
        Publish::Presence(PresenceChange {
            add,
            room: room.into(),
            client: "x".into(),
            instance: instance.into(),
            announce: None,
        })
    };
    // x has one connection under i1 and one under i2 (2 in all: one extra); in one call it
    // gets one under i3 and loses those under i1 and i2, the add at each place in turn.
    for at in 0..3 {
        let room = format!("r{at}");
        for instance in ["i1", "i2"] {
            bus.publish_all(&[change(true, &room, instance)]).await[0]
                .as_ref()
                .unwrap();
        }
        assert_eq!(redis_counts(&redis, &room), (1, 2));
        let mut call = vec![change(false, &room, "i1"), change(false, &room, "i2")];
        call.insert(at, change(true, &room, "i3"));
        let got: Vec<Published> = bus
            .publish_all(&call)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // Last, the add comes after both removals: x had none in between.
        let expected = match at {
            2 => [false, true, true],
            _ => [false; 3],
        };
        assert_eq!(
            got,
            expected.map(Published::Presence),
            "first or last connection (the add at {at})"
        );
        assert_eq!(redis_counts(&redis, &room), (1, 1), "the add at {at}");
    }
    // x has two connections under i1; in one call one goes, one comes under i2, the other
    // under i1 goes: i1's two removals sum to −2 before i2's +1 is counted.
    for _ in 0..2 {
        bus.publish_all(&[change(true, "s", "i1")]).await[0]
            .as_ref()
            .unwrap();
    }
    assert_eq!(redis_counts(&redis, "s"), (1, 2));
    let call = [
        change(false, "s", "i1"),
        change(true, "s", "i2"),
        change(false, "s", "i1"),
    ];
    for answer in bus.publish_all(&call).await {
        assert_eq!(answer.unwrap(), Published::Presence(false));
    }
    assert_eq!(redis_counts(&redis, "s"), (1, 1));
}

/// A Redis bus of node n1 on `redis`, healthy, handing what it hears to `inbox`.
async fn redis_bus(
    redis: &RedisServer,
    inbox: ringcast_node::bus::Inbox,
) -> ringcast_node::bus::redis::RedisBus {
    use ringcast_node::bus::redis::RedisBus;
    use ringcast_node::bus::redis_config::RedisBusConfig;
    use ringcast_node::metrics::Metrics;
    use std::sync::Arc;

    let settings = RedisBusConfig::from_config(&support::config("n1", &redis.url())).unwrap();
    let bus = RedisBus::start(settings, inbox, Arc::new(Metrics::new())).unwrap();
    assert!(bus.wait_healthy(Duration::from_secs(5)).await, "Redis up");
    bus
}

/// Redis lost the node's lease but not its rooms (a restart from an older snapshot, say): the
/// node takes the lease anew, removes what its instance had there room by room, and writes its
/// table again. Joins it serves meanwhile land between those removals — in rooms that announce
/// and in rooms written behind — and must end up in presence all the same. And the purge, longer
/// than the lease here, must not cost the node its lease: n2 would sweep it.
#[tokio::test]
async fn joins_served_while_the_node_purges_its_own_instance_are_kept() {
    let redis = RedisServer::start();
    let nodes = support::start_with(&["n1", "n2"], |id| {
        let mut c = leased(id, &redis);
        c.room_options = vec![parse_entry("q*:announce=off").unwrap()];
        c
    })
    .await;
    let (mut w, _) = Client::connect_welcomed(&nodes[1].ws_url("w")).await;
    join(&mut w, "w", "home").await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    join(&mut a, "a", "home").await;
    join(&mut a, "a", "x0").await;
    // s is in x2 before the purge, and leaves it during it.
    let (mut s, _) = Client::connect_welcomed(&nodes[0].ws_url("s")).await;
    join(&mut s, "s", "x2").await;
    let leases = redis
        .cli(&["--scan", "--pattern", "{ringcast:node:n1.*}:lease"])
        .unwrap();
    let lease = leases.lines().next().expect("n1 holds a lease").to_owned();
    let rooms_key = lease.replace(":lease", ":rooms");
    // The purge takes one round trip per listed room: 20 000 more keep it busy for a while
    // (longer than the 600 ms lease), and the rooms b joins are among them.
    let targets: Vec<String> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                format!("x{i}")
            } else {
                format!("q{i}")
            }
        })
        .collect();
    let listed: Vec<String> = (0..20_000)
        .map(|i| format!("filler{i}"))
        .chain(targets.iter().cloned())
        .collect();
    let mut con = support::inspector(&redis).await;
    let before = scripts_run(&redis);
    let _: i64 = redis::cmd("SADD")
        .arg(&rooms_key)
        .arg(&listed)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&lease)
        .query_async(&mut con)
        .await
        .unwrap();
    // The next renewal finds the lease gone and takes it again; the purge starts right after.
    ringcast_testkit::wait_until(Duration::from_secs(5), "the lease taken anew", || {
        let (redis, lease) = (&redis, &lease);
        async move { redis.cli(&["EXISTS", lease]).unwrap().trim() == "1" }
    })
    .await;
    support::leave(&mut s, "s", "x2").await;
    let (mut b, _) = Client::connect_welcomed(&nodes[0].ws_url("b")).await;
    for room in &targets {
        join(&mut b, "b", room).await;
    }
    // The purge runs one script per listed room: once those stop, it is over.
    let mut last = scripts_run(&redis);
    assert!(last < before + 15_000, "the purge was over before b joined");
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = scripts_run(&redis);
        if now < last + 50 {
            break;
        }
        last = now;
    }
    assert!(
        last > before + 15_000,
        "the purge did not run: {before} → {last}"
    );
    for room in &targets {
        let want: &[&str] = if room == "x0" { &["a", "b"] } else { &["b"] };
        let got = presence_until(&mut b, room, want, Duration::from_secs(10)).await;
        assert_eq!(got, want, "b's join of {room} was wiped by the purge");
    }
    // a, in x0 since before, hears b join it: once, whether b's join went out with the change
    // or with the retry pass after the purge.
    loop {
        let v = a
            .recv_event_within("user_joined", Duration::from_secs(10))
            .await;
        if v["room"] == "x0" && v["user_id"] == "b" {
            break;
        }
    }
    let again: Vec<Value> = frames(&mut a, Duration::from_millis(1000))
        .await
        .into_iter()
        .filter(|v| v["room"] == "x0" && v["user_id"] == "b")
        .collect();
    assert!(
        again.is_empty(),
        "b's join of x0 announced twice: {again:?}"
    );
    let got = presence_until(&mut a, "home", &["a", "w"], Duration::from_secs(5)).await;
    assert_eq!(got, ["a", "w"], "the table was written again");
    let seen = frames(&mut w, Duration::from_millis(500)).await;
    assert!(
        !seen.iter().any(|v| v["event"] == "user_left"),
        "n1 was swept during its purge: {seen:?}"
    );
}

/// Redis dies half-way through the node's purge of its own instance and comes back (from its
/// AOF, the lease still live): the node starts the purge over rather than leaving the rooms it
/// had not reached yet with what its instance had there — here a client that left while the
/// lease had lapsed, who would stay listed there for good.
#[tokio::test]
async fn a_purge_cut_short_by_redis_dying_is_started_over() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    // Outlives the restart below, so the renewal after it finds the lease held.
    let nodes = support::start_with(&["n1"], |id| leased_for(id, &redis, 10_000)).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("a")).await;
    let rooms: Vec<String> = (0..40).map(|i| format!("x{i}")).collect();
    for room in &rooms {
        join(&mut a, "a", room).await;
    }
    let leases = redis
        .cli(&["--scan", "--pattern", "{ringcast:node:n1.*}:lease"])
        .unwrap();
    let lease = leases.lines().next().expect("n1 holds a lease").to_owned();
    let instance = lease
        .trim_start_matches("{ringcast:node:")
        .trim_end_matches("}:lease")
        .to_owned();
    let rooms_key = lease.replace(":lease", ":rooms");
    // What the instance still has in Redis from before a lapse: "ghost" in every room a is in.
    let mut con = support::inspector(&redis).await;
    for room in &rooms {
        let _: () = redis::pipe()
            .hset(
                format!("{{ringcast:room:{room}}}:pn:{instance}"),
                "ghost",
                1,
            )
            .ignore()
            .hincr(format!("{{ringcast:room:{room}}}:pr"), "ghost", 1)
            .ignore()
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let filler: Vec<String> = (0..20_000).map(|i| format!("filler{i}")).collect();
    let _: i64 = redis::cmd("SADD")
        .arg(&rooms_key)
        .arg(&filler)
        .query_async(&mut con)
        .await
        .unwrap();
    let before = scripts_run(&redis);
    let _: i64 = redis::cmd("DEL")
        .arg(&lease)
        .query_async(&mut con)
        .await
        .unwrap();
    // The purge is on its way: cut it off a quarter of the way through.
    ringcast_testkit::wait_until(Duration::from_secs(20), "the purge under way", || {
        let redis = &redis;
        async move { scripts_run(redis) > before + 5_000 }
    })
    .await;
    redis.kill();
    redis.restart();
    for room in &rooms {
        let got = presence_until(&mut a, room, &["a"], Duration::from_secs(20)).await;
        assert_eq!(
            got,
            ["a"],
            "{room} still lists what the instance had before"
        );
    }
}

/// Scripts Redis has run so far (`EVAL` and `EVALSHA`).
fn scripts_run(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]).unwrap();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
