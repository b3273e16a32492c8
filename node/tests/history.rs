//! History and recovery as clients see them: numbered room messages, joins with `since` that
//! replay exactly what was missed before going live, `recovered:false` when history cannot, the
//! `history` request, and what a Redis restart does with and without persistence.

mod support;

use std::time::Duration;

use ringcast_node::room_options::parse_entry;
use ringcast_node::{Config, MemoryBroker};
use ringcast_testkit::{Client, RedisServer, TestNode};
use serde_json::{json, Value};
use support::config as redis_config;

fn config(id: &str, entries: &[&str]) -> Config {
    let mut c = Config::for_tests();
    c.node_id = Some(id.into());
    c.announce_connections = false;
    c.rate_limit_per_sec = 1_000_000.0;
    c.rate_limit_burst = 1_000_000.0;
    c.room_options = entries.iter().map(|e| parse_entry(e).unwrap()).collect();
    c
}

/// Joins `room` (with `since` when given) and returns every frame up to and including the
/// joiner's own `user_joined`.
async fn join(c: &mut Client, me: &str, room: &str, since: Option<Value>) -> Vec<Value> {
    let mut msg = json!({"type":"join_room","room":room});
    if let Some(s) = since {
        msg["since"] = s;
    }
    c.send_json(msg).await;
    let mut got = Vec::new();
    loop {
        let v = c.recv().await;
        let done = v["event"] == "user_joined" && v["user_id"] == me;
        got.push(v);
        if done {
            return got;
        }
    }
}

async fn post(c: &mut Client, room: &str, n: u64) {
    c.send_json(json!({"type":"room_message","room":room,"content":n}))
        .await;
}

/// Reads chat events until one with content `last`; returns their contents in order.
async fn chats_through(c: &mut Client, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let v = c.recv_event("chat").await;
        let n = v["content"].as_u64().unwrap();
        seen.push(n);
        if n == last {
            return seen;
        }
    }
}

fn contents(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|v| v["event"] == "chat")
        .map(|v| v["content"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_client_that_rejoins_with_since_gets_exactly_what_it_missed_then_live() {
    let node = TestNode::start(config("n1", &[])).await;
    let (mut publisher, _) = Client::connect_welcomed(&node.ws_url("pub")).await;
    let joined = join(&mut publisher, "pub", "r", None).await;
    let ack = joined.last().unwrap().clone();
    assert_eq!(ack["offset"], 0, "a new room's top: {ack}");
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        ack.get("recovered"),
        None,
        "a plain join does not say: {ack}"
    );

    let (mut sub, _) = Client::connect_welcomed(&node.ws_url("sub")).await;
    join(&mut sub, "sub", "r", None).await;
    for n in 1..=3 {
        post(&mut publisher, "r", n).await;
    }
    let mut last = json!(null);
    for n in 1..=3 {
        last = sub.recv_event("chat").await;
        assert_eq!(last["offset"], n);
        assert_eq!(last["epoch"], epoch.as_str());
        assert_eq!(last["content"], n);
    }
    sub.close().await;
    for n in 4..=8 {
        post(&mut publisher, "r", n).await;
    }
    assert_eq!(
        chats_through(&mut publisher, 8).await,
        (1..=8).collect::<Vec<_>>()
    );

    let (mut sub, _) = Client::connect_welcomed(&node.ws_url("sub")).await;
    let since = json!({"offset": last["offset"], "epoch": last["epoch"]});
    let frames = join(&mut sub, "sub", "r", Some(since)).await;
    assert_eq!(
        contents(&frames),
        [4, 5, 6, 7, 8],
        "replayed in order: {frames:?}"
    );
    let ack = frames.last().unwrap();
    assert_eq!(
        ack,
        &json!({"event":"user_joined","user_id":"sub","room":"r","recovered":true,
                "offset":8,"epoch":epoch})
    );
    post(&mut publisher, "r", 9).await;
    let live = sub.recv_event("chat").await;
    assert_eq!(
        (live["offset"].as_u64(), live["content"].as_u64()),
        (Some(9), Some(9))
    );

    // Nothing missed: recovered, nothing replayed.
    let (mut again, _) = Client::connect_welcomed(&node.ws_url("again")).await;
    let frames = join(
        &mut again,
        "again",
        "r",
        Some(json!({"offset":9,"epoch":epoch})),
    )
    .await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["recovered"], true);
    assert_eq!(frames[0]["offset"], 9);
}

#[tokio::test]
async fn the_seam_between_replay_and_live_has_no_gap_no_duplicate_no_reordering() {
    let broker = MemoryBroker::new();
    let n1 = TestNode::start_on(config("n1", &[]), broker.clone()).await;
    let n2 = TestNode::start_on(config("n2", &[]), broker).await;
    let (mut publisher, _) = Client::connect_welcomed(&n1.ws_url("pub")).await;
    join(&mut publisher, "pub", "r", None).await;
    let (mut sub, _) = Client::connect_welcomed(&n2.ws_url("sub")).await;
    let ack = join(&mut sub, "sub", "r", None).await.pop().unwrap();
    let epoch = ack["epoch"].clone();
    for n in 1..=50 {
        post(&mut publisher, "r", n).await;
    }
    assert_eq!(chats_through(&mut sub, 50).await.len(), 50);
    sub.close().await;

    // The publisher goes on while the subscriber comes back, so messages keep arriving on the
    // node during the replay.
    let publishing = tokio::spawn(async move {
        for n in 51..=400 {
            post(&mut publisher, "r", n).await;
            if n % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        publisher
    });
    let (mut sub, _) = Client::connect_welcomed(&n2.ws_url("sub")).await;
    let frames = join(
        &mut sub,
        "sub",
        "r",
        Some(json!({"offset":50,"epoch":epoch})),
    )
    .await;
    let ack = frames.last().unwrap().clone();
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut offsets: Vec<u64> = frames
        .iter()
        .filter(|v| v["event"] == "chat")
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets.last().copied().unwrap_or(50),
        ack["offset"].as_u64().unwrap(),
        "the ack names the last offset replayed"
    );
    let _publisher = publishing.await.unwrap();
    loop {
        let v = sub.recv_event("chat").await;
        offsets.push(v["offset"].as_u64().unwrap());
        if v["content"] == 400 {
            break;
        }
    }
    assert_eq!(offsets, (51..=400).collect::<Vec<_>>());
}

#[tokio::test]
async fn history_that_no_longer_holds_everything_says_recovered_false_and_replays_nothing() {
    let node = TestNode::start(config("n1", &["short:*:history=3"])).await;
    let (mut p, _) = Client::connect_welcomed(&node.ws_url("p")).await;
    let epoch = join(&mut p, "p", "short:1", None).await.pop().unwrap()["epoch"].clone();
    for n in 1..=10 {
        post(&mut p, "short:1", n).await;
    }
    chats_through(&mut p, 10).await;
    let (mut c, _) = Client::connect_welcomed(&node.ws_url("c")).await;
    // 6 missed, 3 kept: trimmed.
    let frames = join(
        &mut c,
        "c",
        "short:1",
        Some(json!({"offset":4,"epoch":epoch})),
    )
    .await;
    assert_eq!(frames.len(), 1, "nothing replayed: {frames:?}");
    assert_eq!(frames[0]["recovered"], false);
    assert_eq!(frames[0]["offset"], 10, "the room's top");
    // 3 missed, 3 kept: recovered.
    let (mut d, _) = Client::connect_welcomed(&node.ws_url("d")).await;
    let frames = join(
        &mut d,
        "d",
        "short:1",
        Some(json!({"offset":7,"epoch":epoch})),
    )
    .await;
    assert_eq!(contents(&frames), [8, 9, 10]);
    assert_eq!(frames.last().unwrap()["recovered"], true);
    // Another epoch: not recovered.
    let (mut e, _) = Client::connect_welcomed(&node.ws_url("e")).await;
    let frames = join(
        &mut e,
        "e",
        "short:1",
        Some(json!({"offset":9,"epoch":"other"})),
    )
    .await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["recovered"], false);
    assert_eq!(frames[0]["epoch"], epoch);
}

#[tokio::test]
async fn a_bad_since_gets_invalid_since_and_the_join_goes_on_as_a_plain_join() {
    let node = TestNode::start(config("n1", &[])).await;
    let (mut p, _) = Client::connect_welcomed(&node.ws_url("p")).await;
    let epoch = join(&mut p, "p", "r", None).await.pop().unwrap()["epoch"].clone();
    post(&mut p, "r", 1).await;
    chats_through(&mut p, 1).await;
    for (i, since) in [
        json!("yesterday"),
        json!({"offset":"1","epoch":epoch}),
        json!({"offset":-1,"epoch":epoch}),
        json!({"offset":1}),
        json!({"offset":50,"epoch":epoch}),
    ]
    .into_iter()
    .enumerate()
    {
        let me = format!("c{i}");
        let (mut c, _) = Client::connect_welcomed(&node.ws_url(&me)).await;
        let frames = join(&mut c, &me, "r", Some(since.clone())).await;
        assert_eq!(frames[0]["code"], "invalid_since", "{since}: {frames:?}");
        let ack = frames.last().unwrap();
        assert_eq!(ack["recovered"], false, "{since}: {ack}");
        assert_eq!(ack["offset"], 1 + i as u64, "the room's top");
        assert_eq!(frames.len(), 2, "nothing replayed: {frames:?}");
        // And it is a member: live messages reach it.
        post(&mut p, "r", 100 + i as u64).await;
        assert_eq!(c.recv_event("chat").await["content"], 100 + i as u64);
    }
}

#[tokio::test]
async fn history_requests_page_forward_read_the_newest_and_are_for_members() {
    let node = TestNode::start(config("n1", &["quiet:*:history=0"])).await;
    let (mut p, _) = Client::connect_welcomed(&node.ws_url("p")).await;
    let epoch = join(&mut p, "p", "r", None).await.pop().unwrap()["epoch"].clone();
    for n in 1..=5 {
        post(&mut p, "r", n).await;
    }
    chats_through(&mut p, 5).await;
    let ask = |since: Option<Value>, limit: Option<u64>| {
        let mut m = json!({"type":"history","room":"r"});
        if let Some(s) = since {
            m["since"] = s;
        }
        if let Some(l) = limit {
            m["limit"] = json!(l);
        }
        m
    };
    p.send_json(ask(Some(json!({"offset":1,"epoch":epoch})), Some(2)))
        .await;
    let page = p.recv_event("history").await;
    assert_eq!(contents(page["messages"].as_array().unwrap()), [2, 3]);
    assert_eq!(
        (page["offset"].clone(), page["complete"].clone()),
        (json!(5), json!(false))
    );
    assert_eq!(page["epoch"], epoch);
    p.send_json(ask(Some(json!({"offset":3,"epoch":epoch})), Some(2)))
        .await;
    let page = p.recv_event("history").await;
    assert_eq!(contents(page["messages"].as_array().unwrap()), [4, 5]);
    assert_eq!(page["complete"], true);
    p.send_json(ask(None, Some(2))).await;
    let page = p.recv_event("history").await;
    assert_eq!(
        contents(page["messages"].as_array().unwrap()),
        [4, 5],
        "the newest, ascending"
    );
    // Every message is the chat event members got, offset and epoch included.
    assert_eq!(page["messages"][1]["offset"], 5);
    p.send_json(ask(None, None)).await;
    let page = p.recv_event("history").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 5);
    p.send_json(ask(Some(json!({"offset":9,"epoch":epoch})), None))
        .await;
    assert_eq!(p.recv_error_code().await, "invalid_since");
    p.send_json(ask(Some(json!({"offset":"x"})), None)).await;
    assert_eq!(p.recv_error_code().await, "invalid_since");

    let (mut outsider, _) = Client::connect_welcomed(&node.ws_url("o")).await;
    outsider.send_json(ask(None, None)).await;
    assert_eq!(outsider.recv_error_code().await, "not_in_room");

    // A room that keeps nothing: messages are not numbered, history is empty.
    join(&mut p, "p", "quiet:1", None).await;
    post(&mut p, "quiet:1", 1).await;
    let chat = p.recv_event("chat").await;
    assert_eq!(chat.get("offset"), None, "{chat}");
    p.send_json(json!({"type":"history","room":"quiet:1"}))
        .await;
    let page = p.recv_event("history").await;
    assert_eq!(page["messages"], json!([]));
}

#[tokio::test]
async fn a_long_replay_is_paced_by_the_send_queue_and_never_closes_the_client() {
    // The publisher posts without being a member, so its own small queue holds no echoes.
    let mut c = config("n1", &["big:*:history=3000,post=anyone"]);
    c.send_queue_frames = 64;
    let node = TestNode::start(c).await;
    let (mut w, _) = Client::connect_welcomed(&node.ws_url("w")).await;
    let epoch = join(&mut w, "w", "big:1", None).await.pop().unwrap()["epoch"].clone();
    w.close().await;
    let (mut p, _) = Client::connect_welcomed(&node.ws_url("p")).await;
    for n in 1..=2500 {
        post(&mut p, "big:1", n).await;
    }
    // A join after the posts is answered after them: its ack shows all 2500 stored.
    let ack = join(&mut p, "p", "big:1", None).await.pop().unwrap();
    assert_eq!(ack["offset"], 2500, "{ack}");
    let (mut c, _) = Client::connect_welcomed(&node.ws_url("c")).await;
    let frames = join(
        &mut c,
        "c",
        "big:1",
        Some(json!({"offset":0,"epoch":epoch})),
    )
    .await;
    assert_eq!(contents(&frames), (1..=2500).collect::<Vec<_>>());
    assert_eq!(frames.last().unwrap()["recovered"], true);
}

/// Two nodes on `redis`; a subscriber on `n2` reads 1..=5, leaves, 6..=10 are published on
/// `n1`; returns the nodes, the publisher and what the subscriber's `since` is.
async fn missed_five(redis: &RedisServer) -> (Vec<TestNode>, Client, Value) {
    let nodes = support::start_nodes(redis, &["n1", "n2"]).await;
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("p")).await;
    join(&mut p, "p", "r", None).await;
    let (mut s, _) = Client::connect_welcomed(&nodes[1].ws_url("s")).await;
    join(&mut s, "s", "r", None).await;
    for n in 1..=5 {
        post(&mut p, "r", n).await;
    }
    let mut last = json!(null);
    for _ in 1..=5 {
        last = s.recv_event("chat").await;
    }
    s.close().await;
    for n in 6..=10 {
        post(&mut p, "r", n).await;
    }
    chats_through(&mut p, 10).await;
    let since = json!({"offset": last["offset"], "epoch": last["epoch"]});
    (nodes, p, since)
}

#[tokio::test]
async fn on_redis_a_client_recovers_on_another_node_than_the_one_it_left() {
    let redis = RedisServer::start();
    let (nodes, _p, since) = missed_five(&redis).await;
    assert_eq!(since["offset"], 5);
    let (mut s, _) = Client::connect_welcomed(&nodes[0].ws_url("s")).await;
    let frames = join(&mut s, "s", "r", Some(since)).await;
    assert_eq!(contents(&frames), [6, 7, 8, 9, 10]);
    assert_eq!(frames.last().unwrap()["recovered"], true);
    // The keys and channel share the room's hash tag.
    let keys = redis
        .cli(&["--scan", "--pattern", "{ringcast:room:r}*"])
        .unwrap();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    // History (log, meta) and presence (pr, and pn:INSTANCE per node with members; no px, as
    // no client id has a second connection here).
    let mut kinds: Vec<&str> = keys
        .iter()
        .map(|k| k.trim_start_matches("{ringcast:room:r}:"))
        .map(|k| k.split(':').next().unwrap_or_default())
        .collect();
    kinds.dedup();
    assert_eq!(kinds, ["log", "meta", "pn", "pr"], "{keys:?}");
}

#[tokio::test]
async fn a_redis_restart_without_persistence_starts_a_new_epoch_and_nobody_is_told_recovered() {
    let mut redis = RedisServer::start();
    let (nodes, mut p, since) = missed_five(&redis).await;
    let (mut member, _) = Client::connect_welcomed(&nodes[1].ws_url("m")).await;
    join(&mut member, "m", "r", None).await;
    redis.restart();
    for node in &nodes {
        support::wait_healthy(node, Duration::from_secs(10)).await;
    }
    // The publisher's next message starts the new epoch; the member that stayed is told.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        post(&mut p, "r", 11).await;
        let answer = p.next_json(Duration::from_millis(500)).await;
        if matches!(&answer, Ok(v) if v["event"] == "chat") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no post after the restart: {answer:?}"
        );
    }
    let reset = member.recv_event("history_reset").await;
    assert_eq!(reset["room"], "r");
    assert_ne!(reset["epoch"], since["epoch"]);
    let next = member.recv_event("chat").await;
    assert_eq!(next["epoch"], reset["epoch"]);
    assert_eq!(next["offset"], 1, "offsets start again under the new epoch");
    let (mut s, _) = Client::connect_welcomed(&nodes[0].ws_url("s")).await;
    let frames = join(&mut s, "s", "r", Some(since)).await;
    let ack = frames.last().unwrap();
    assert_eq!(ack["recovered"], false, "{frames:?}");
    assert_eq!(contents(&frames), Vec::<u64>::new());
}

#[tokio::test]
async fn with_appendfsync_always_a_redis_restart_loses_nothing() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let (nodes, _p, since) = missed_five(&redis).await;
    redis.restart();
    for node in &nodes {
        support::wait_healthy(node, Duration::from_secs(10)).await;
    }
    let (mut s, _) = Client::connect_welcomed(&nodes[0].ws_url("s")).await;
    let frames = join(&mut s, "s", "r", Some(since)).await;
    assert_eq!(contents(&frames), [6, 7, 8, 9, 10]);
    assert_eq!(frames.last().unwrap()["recovered"], true);
}

#[test]
fn redis_config_helper_is_shared() {
    // The Redis tests above use the shared node config (fast probes, no rate limit).
    let c = redis_config("n", "redis://127.0.0.1:1");
    assert!(c.rate_limit_per_sec >= 1_000_000.0);
}

/// Everything a client read until `quiet` passed without a frame.
async fn drain_frames(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Ok(v) = c.next_json(quiet).await {
        got.push(v);
    }
    got
}

/// Posts `1..=n` to `room`, `gap` apart, then reads everything that comes back.
async fn post_stream(mut p: Client, room: &'static str, n: u64, gap: Duration) -> Vec<Value> {
    for i in 1..=n {
        post(&mut p, room, i).await;
        tokio::time::sleep(gap).await;
    }
    drain_frames(&mut p, Duration::from_secs(3)).await
}

/// What a member that stayed connected saw: the chats' (offset, content) in arrival order,
/// and how many `history_reset`s.
fn stream_of(frames: &[Value]) -> (Vec<(u64, u64)>, usize) {
    let chats = frames
        .iter()
        .filter(|v| v["event"] == "chat")
        .map(|v| {
            (
                v["offset"].as_u64().unwrap(),
                v["content"].as_u64().unwrap(),
            )
        })
        .collect();
    let resets = frames
        .iter()
        .filter(|v| v["event"] == "history_reset")
        .count();
    (chats, resets)
}

/// Offsets 1..=K each once, in order, with contents strictly increasing.
fn assert_exact(who: &str, chats: &[(u64, u64)]) {
    let offsets: Vec<u64> = chats.iter().map(|c| c.0).collect();
    assert_eq!(
        offsets,
        (1..=chats.len() as u64).collect::<Vec<_>>(),
        "{who}: offsets"
    );
    assert!(
        chats.windows(2).all(|w| w[0].1 < w[1].1),
        "{who}: contents out of order: {chats:?}"
    );
}

#[tokio::test]
async fn members_who_stay_connected_miss_nothing_when_the_bus_drops_their_subscriptions() {
    let redis = RedisServer::start();
    let nodes = support::start_nodes(&redis, &["n1", "n2"]).await;
    let (mut members, p) = room_r_on(&nodes).await;
    let n = 600;
    let posting = tokio::spawn(post_stream(p, "r", n, Duration::from_millis(2)));
    // Redis drops every subscriber connection, again and again, while the stream runs: what is
    // published before a node has resubscribed never reaches it over pub/sub.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
    }
    let own = posting.await.unwrap();
    assert!(
        own.iter().all(|v| v["event"] != "error"),
        "every post was stored"
    );
    let mut filled = 0.0;
    for node in &nodes {
        filled += node.metric("ringcast_node_gap_filled_total").await;
    }
    assert!(
        filled > 0.0,
        "the test must lose pub/sub messages to mean anything"
    );
    for (who, m) in
        std::iter::once(("publisher".to_owned(), own)).chain(futures_frames(&mut members).await)
    {
        let (chats, resets) = stream_of(&m);
        assert_eq!(resets, 0, "{who}: nothing was lost, nothing to reset");
        assert_exact(&who, &chats);
        assert_eq!(chats.len() as u64, n, "{who}: every message");
    }
}

/// A member of room `r` on each node (`m0`, `m1`, …) and a publisher in it on the first.
async fn room_r_on(nodes: &[TestNode]) -> (Vec<Client>, Client) {
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let me = format!("m{i}");
        let (mut m, _) = Client::connect_welcomed(&node.ws_url(&me)).await;
        join(&mut m, &me, "r", None).await;
        members.push(m);
    }
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("p")).await;
    join(&mut p, "p", "r", None).await;
    (members, p)
}

/// Every member's frames until quiet, by name.
async fn futures_frames(members: &mut [Client]) -> Vec<(String, Vec<Value>)> {
    let mut all = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        all.push((
            format!("m{i}"),
            drain_frames(m, Duration::from_secs(2)).await,
        ));
    }
    all
}

#[tokio::test]
async fn with_appendfsync_always_members_who_stay_connected_through_a_redis_restart_miss_nothing() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let nodes = support::start_nodes(&redis, &["n1", "n2"]).await;
    let (mut members, p) = room_r_on(&nodes).await;
    let n = 1500;
    let posting = tokio::spawn(post_stream(p, "r", n, Duration::from_millis(2)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.restart();
    let own = posting.await.unwrap();
    let refused = own
        .iter()
        .filter(|v| v["event"] == "error" && v["code"] == "bus_unavailable")
        .count() as u64;
    let (own_chats, _) = stream_of(&own);
    for (who, m) in futures_frames(&mut members).await {
        let (chats, resets) = stream_of(&m);
        assert_eq!(resets, 0, "{who}: Redis kept everything, nothing to reset");
        assert_exact(&who, &chats);
        assert_eq!(chats, own_chats, "{who} saw what the publisher saw");
        // A publish whose answer was lost with the connection may be stored though refused.
        assert!(
            chats.len() as u64 >= n - refused,
            "{who}: {} of {n}, {refused} refused",
            chats.len()
        );
    }
    assert_exact("publisher", &own_chats);
}

#[tokio::test]
async fn the_last_message_published_while_nodes_resubscribe_arrives_without_a_next_one() {
    let redis = RedisServer::start();
    let nodes = support::start_nodes(&redis, &["n1", "n2"]).await;
    let (mut m, _) = Client::connect_welcomed(&nodes[1].ws_url("m")).await;
    join(&mut m, "m", "r", None).await;
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("p")).await;
    join(&mut p, "p", "r", None).await;
    post(&mut p, "r", 1).await;
    assert_eq!(m.recv_event("chat").await["offset"], 1);
    // Existing connections stay; the subscribers Redis now drops cannot come back until the
    // limit is lifted, so the next message is published with no node subscribed.
    let mut admin = support::inspector(&redis).await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxclients", "1"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    post(&mut p, "r", 2).await;
    m.expect_silence(Duration::from_millis(500)).await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxclients", "10000"])
        .query_async(&mut admin)
        .await
        .unwrap();
    // Once resubscribed, the node reads what it missed: no later message needed to notice.
    let chat = m.recv_event("chat").await;
    assert_eq!(
        (chat["offset"].clone(), chat["content"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(p.recv_event("chat").await["offset"], 1);
    assert_eq!(p.recv_event("chat").await["offset"], 2);
    assert!(nodes[1].metric("ringcast_node_gap_filled_total").await >= 1.0);
}

#[tokio::test]
async fn a_flushed_script_cache_costs_nothing_and_publishes_nothing_twice() {
    let redis = RedisServer::start();
    let nodes = support::start_nodes(&redis, &["n1"]).await;
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("p")).await;
    join(&mut p, "p", "r", None).await;
    for round in 0..3u64 {
        // Redis forgets the publish script (as after `SCRIPT FLUSH` or a restart): the node
        // finds out from NOSCRIPT and sends it again.
        redis.cli(&["SCRIPT", "FLUSH"]).unwrap();
        for n in 1..=20 {
            post(&mut p, "r", round * 100 + n).await;
        }
        let got = chats_through(&mut p, round * 100 + 20).await;
        assert_eq!(
            got,
            (round * 100 + 1..=round * 100 + 20).collect::<Vec<_>>()
        );
    }
    p.expect_silence(Duration::from_millis(200)).await;
}
