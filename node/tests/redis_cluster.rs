//! Nodes on a real Redis Cluster (3 primaries + 3 replicas started by the test): room, direct
//! and broadcast traffic across nodes over sharded pub/sub; a primary killed and its replica
//! promoted (members are told the history may be lost, and traffic resumes); a room's slot
//! migrated while messages flow to it (members miss nothing and see nothing twice, and the
//! nodes end up subscribed on the new owner).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringcast_node::Config;
use ringcast_testkit::{Client, RedisCluster};
use serde_json::{json, Value};
use support::{join, start_with};

/// A node config on the cluster with fast probes and reconnects.
fn config(id: &str, cluster: &RedisCluster) -> Config {
    let mut c = support::config(id, "redis://unused");
    c.redis_url = None;
    c.redis_cluster = cluster.seeds();
    c
}

async fn cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster start")
}

/// Reads until `pred` holds for a frame, up to `limit`; panics with what came instead.
async fn until(c: &mut Client, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_json(left).await {
            Ok(v) if pred(&v) => return v,
            Ok(v) => seen.push(v),
            Err(e) => panic!("no matching frame within {limit:?} ({e}); got {seen:?}"),
        }
    }
}

fn room_slot(room: &str) -> u16 {
    RedisCluster::slot_of(&format!("{{ringcast:room:{room}}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_directs_broadcasts_presence_and_history_cross_nodes_on_a_cluster() {
    let redis = cluster().await;
    let nodes = start_with(&["c1", "c2"], |id| config(id, &redis)).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("alice")).await;
    let (mut b, _) = Client::connect_welcomed(&nodes[1].ws_url("bob")).await;
    // Rooms that land on every shard.
    let rooms: Vec<String> = {
        let mut by_owner = BTreeMap::new();
        for i in 0..200 {
            let room = format!("room-{i}");
            by_owner
                .entry(redis.primary_of_slot(room_slot(&room)))
                .or_insert(room);
        }
        by_owner.into_values().collect()
    };
    assert_eq!(rooms.len(), 3, "a room on each of the 3 shards: {rooms:?}");
    for room in &rooms {
        join(&mut a, "alice", room).await;
    }
    for room in &rooms {
        join(&mut b, "bob", room).await;
    }
    // Bob's joins are announced to alice on the other node: each from the presence script on
    // its room's shard (`SPUBLISH` from within it).
    for room in &rooms {
        let joined = until(&mut a, Duration::from_secs(5), |v| {
            v["event"] == "user_joined" && v["user_id"] == "bob"
        })
        .await;
        assert_eq!(joined["room"], json!(room), "{joined}");
    }
    let mut epochs = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let id = format!("m{i}");
        a.send_json(json!({"type":"room_message","room":room,"content":i,"id":id}))
            .await;
        let ack = until(&mut a, Duration::from_secs(5), |v| v["event"] == "ack").await;
        assert_eq!(
            (&ack["id"], ack["offset"].as_u64()),
            (&json!(id), Some(1)),
            "{ack}"
        );
        let got = until(&mut b, Duration::from_secs(5), |v| v["event"] == "chat").await;
        assert_eq!(
            (&got["room"], &got["content"], &got["from"], &got["epoch"]),
            (&json!(room), &json!(i), &json!("alice"), &ack["epoch"]),
            "{got}"
        );
        epochs.push(ack["epoch"].clone());
    }
    b.send_json(json!({"type":"direct_message","target":"alice","content":"dm"}))
        .await;
    let dm = until(&mut a, Duration::from_secs(5), |v| {
        v["event"] == "direct_message"
    })
    .await;
    assert_eq!((&dm["from"], &dm["content"]), (&json!("bob"), &json!("dm")));
    b.send_json(json!({"type":"chat","content":"all"})).await;
    let all = until(&mut a, Duration::from_secs(5), |v| {
        v["event"] == "chat" && v["content"] == "all"
    })
    .await;
    assert_eq!(all["from"], "bob");
    a.send_json(json!({"type":"presence","room":&rooms[0]}))
        .await;
    let p = until(&mut a, Duration::from_secs(5), |v| v["event"] == "presence").await;
    assert_eq!(
        (&p["members"], &p["count"]),
        (&json!(["alice", "bob"]), &json!(2))
    );

    // A third client joins each room on c2 with `since` offset 0 of its epoch: the message is
    // replayed before its join ack; with an unknown epoch nothing is, and it is told.
    let (mut c, _) = Client::connect_welcomed(&nodes[1].ws_url("carol")).await;
    for (i, (room, epoch)) in rooms.iter().zip(&epochs).enumerate() {
        c.send_json(json!({"type":"join_room","room":room,"since":{"offset":0,"epoch":epoch}}))
            .await;
        let replayed = until(&mut c, Duration::from_secs(5), |v| v["event"] == "chat").await;
        assert_eq!(
            (&replayed["event"], &replayed["content"]),
            (&json!("chat"), &json!(i))
        );
        let joined = until(&mut c, Duration::from_secs(5), |v| v["user_id"] == "carol").await;
        assert_eq!(
            (&joined["recovered"], &joined["offset"]),
            (&json!(true), &json!(1)),
            "{joined}"
        );
    }
    let (mut e, _) = Client::connect_welcomed(&nodes[1].ws_url("erin")).await;
    e.send_json(json!({"type":"join_room","room":&rooms[0],"since":{"offset":0,"epoch":"gone"}}))
        .await;
    let joined = until(&mut e, Duration::from_secs(5), |v| {
        v["event"] == "user_joined"
    })
    .await;
    assert_eq!(joined["recovered"], false, "{joined}");
    // History reads go to the room's shard too (members may read it).
    a.send_json(json!({"type":"history","room":&rooms[1]}))
        .await;
    let h = until(&mut a, Duration::from_secs(5), |v| {
        v["event"] == "history" || v["event"] == "error"
    })
    .await;
    assert_eq!(h["event"], "history", "{h}");
    assert_eq!(h["messages"][0]["content"], 1, "{h}");
    // Bob leaves each room: alice hears it once per room, from the room's shard.
    for room in &rooms {
        b.send_json(json!({"type":"leave_room","room":room})).await;
        let left = until(&mut a, Duration::from_secs(5), |v| {
            v["event"] == "user_left" && v["user_id"] == "bob"
        })
        .await;
        assert_eq!(left["room"], json!(room), "{left}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_members_hear_of_the_possible_loss() {
    let mut redis = cluster().await;
    let nodes = start_with(&["f1", "f2"], |id| config(id, &redis)).await;
    let (mut a, _) = Client::connect_welcomed(&nodes[0].ws_url("alice")).await;
    let (mut b, _) = Client::connect_welcomed(&nodes[1].ws_url("bob")).await;
    join(&mut a, "alice", "fo").await;
    join(&mut b, "bob", "fo").await;
    a.send_json(json!({"type":"room_message","room":"fo","content":"before","id":"b1"}))
        .await;
    let first = until(&mut a, Duration::from_secs(5), |v| v["event"] == "ack").await;
    until(&mut b, Duration::from_secs(5), |v| v["content"] == "before").await;

    let slot = room_slot("fo");
    let old = redis.kill_primary_of_slot(slot);
    let promoted =
        tokio::task::block_in_place(|| redis.wait_failover(slot, old, Duration::from_secs(20)));
    assert_ne!(promoted, old);

    // The sender retries until the new primary takes it (errors meanwhile name the id).
    let deadline = Instant::now() + Duration::from_secs(20);
    let ack = loop {
        assert!(Instant::now() < deadline, "never stored after the failover");
        a.send_json(json!({"type":"room_message","room":"fo","content":"after","id":"a1"}))
            .await;
        let v = until(&mut a, Duration::from_secs(5), |v| {
            v["event"] == "ack" || (v["event"] == "error" && v["id"] == "a1")
        })
        .await;
        if v["event"] == "ack" {
            break v;
        }
        assert_eq!(v["code"], "bus_unavailable", "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A failover may lose what the old primary had not replicated: a new epoch, never
    // the old one's offsets given out again.
    assert_ne!(ack["epoch"], first["epoch"], "{ack} vs {first}");
    let reset = until(&mut b, Duration::from_secs(10), |v| {
        v["event"] == "history_reset" || v["content"] == "after"
    })
    .await;
    assert_eq!(
        reset["event"], "history_reset",
        "told before the new epoch's messages"
    );
    assert_eq!(reset["epoch"], ack["epoch"]);
    let after = until(&mut b, Duration::from_secs(10), |v| v["content"] == "after").await;
    assert_eq!(
        (&after["offset"], &after["epoch"]),
        (&ack["offset"], &ack["epoch"])
    );
    // The subscriber was rebuilt on the new owner: direct traffic works too.
    // While alice's node resubscribes (a few round trips) a direct message to her finds no
    // subscriber and bob is told `target_offline`; once done, it arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    'resend: loop {
        assert!(Instant::now() < deadline, "alice never reachable again");
        b.send_json(json!({"type":"direct_message","target":"alice","content":"still here"}))
            .await;
        loop {
            assert!(Instant::now() < deadline, "alice never reachable again");
            if let Ok(v) = a.next_json(Duration::from_millis(50)).await {
                if v["content"] == "still here" {
                    break 'resend;
                }
            }
            if let Ok(v) = b.next_json(Duration::from_millis(10)).await {
                assert_eq!(v["code"], "target_offline", "{v}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'resend;
            }
        }
    }
}

/// A publisher at ≥ 200 msg/s with ids into one room while its slot moves to another primary;
/// each subscriber must end with every acknowledged message once, in offset order, in one
/// epoch, and both nodes must follow the room on its new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_load_loses_and_repeats_nothing() {
    let redis = std::sync::Arc::new(cluster().await);
    let nodes = start_with(&["m1", "m2"], |id| config(id, &redis)).await;
    let room = "moving";
    let slot = room_slot(room);
    let from = redis.primary_of_slot(slot);
    let to = *redis
        .primaries()
        .iter()
        .find(|p| **p != from)
        .expect("another primary");

    let mut subs = Vec::new();
    for (i, node) in [&nodes[0], &nodes[1], &nodes[1]].iter().enumerate() {
        let me = format!("s{i}");
        let (mut c, _) = Client::connect_welcomed(&node.ws_url(&me)).await;
        join(&mut c, &me, room).await;
        subs.push(c);
    }
    let (mut p, _) = Client::connect_welcomed(&nodes[0].ws_url("pub")).await;
    join(&mut p, "pub", room).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    // Until told to stop, wait as long as it takes; then until 1.5 s of quiet.
                    let quiet = if *stop.borrow() { 1500 } else { 60_000 };
                    tokio::select! {
                        v = c.next_json(Duration::from_millis(quiet)) => match v {
                            Ok(v) if v["event"] == "chat" || v["event"] == "history_reset" => got.push(v),
                            Ok(_) => {}
                            // The client is handed back: its membership must outlive the check.
                            Err(_) => return (got, c),
                        },
                        _ = stop.changed(), if !*stop.borrow() => {}
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut migration = None;
    let mut acked: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut pending: BTreeMap<String, Instant> = BTreeMap::new();
    let mut sent = 0u64;
    // 5 messages every 20 ms (≈ 250 msg/s) for 4 s; the migration starts after 1 s and runs
    // on its own thread while the messages keep flowing.
    // Ticks missed while the publisher was busy are caught up in bursts: the rate holds.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while started.elapsed() < Duration::from_secs(4) {
        tick.tick().await;
        for _ in 0..5 {
            let id = format!("x{sent}");
            p.send_json(json!({"type":"room_message","room":room,"content":sent,"id":id}))
                .await;
            pending.insert(id, Instant::now());
            sent += 1;
        }
        if migration.is_none() && started.elapsed() > Duration::from_secs(1) {
            let redis = redis.clone();
            migration = Some(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                redis.migrate_slot(slot, to);
                t.elapsed()
            }));
        }
        while let Ok(v) = p.next_json(Duration::from_millis(1)).await {
            settle(&mut p, &v, room, &mut acked, &mut pending).await;
        }
    }
    let took = migration
        .expect("the migration started")
        .await
        .expect("the migration finished");
    eprintln!("slot {slot} moved from {from} to {to} in {took:?} under {sent} messages");
    // Every message acknowledged in the end (a resend is answered by the dedupe).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pending.is_empty() && Instant::now() < deadline {
        if let Ok(v) = p.next_json(Duration::from_millis(100)).await {
            settle(&mut p, &v, room, &mut acked, &mut pending).await;
        }
    }
    assert!(pending.is_empty(), "never acknowledged: {pending:?}");
    assert!(sent >= 800, "{sent}");
    assert_eq!(redis.primary_of_slot(slot), to, "the slot moved");
    let _ = stop_tx.send(true);
    let epochs: std::collections::BTreeSet<&str> =
        acked.values().map(|(_, e)| e.as_str()).collect();
    assert_eq!(epochs.len(), 1, "a migration keeps the epoch: {epochs:?}");
    let mut expected: Vec<u64> = acked.values().map(|(o, _)| *o).collect();
    expected.sort_unstable();
    assert_eq!(expected.len() as u64, sent);
    let mut clients = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let (got, c) = r.await.expect("reader");
        clients.push(c);
        let resets: Vec<&Value> = got
            .iter()
            .filter(|v| v["event"] == "history_reset")
            .collect();
        assert!(resets.is_empty(), "subscriber {i}: {resets:?}");
        let offsets: Vec<u64> = got.iter().filter_map(|v| v["offset"].as_u64()).collect();
        assert_eq!(
            offsets, expected,
            "subscriber {i}: every message once, in order"
        );
    }
    // Both nodes follow the room's channel on its new owner.
    let channel = format!("{{ringcast:room:{room}}}");
    let numsub = redis.cli(to, &["PUBSUB", "SHARDNUMSUB", &channel]);
    assert!(numsub.trim_end().ends_with('2'), "{numsub}");
}

/// Takes one frame of the publisher: an ack settles its id; an error on an id sends it again.
async fn settle(
    p: &mut Client,
    v: &Value,
    room: &str,
    acked: &mut BTreeMap<String, (u64, String)>,
    pending: &mut BTreeMap<String, Instant>,
) {
    match v["event"].as_str() {
        Some("ack") => {
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            if let (Some(o), Some(e)) = (v["offset"].as_u64(), v["epoch"].as_str()) {
                pending.remove(&id);
                if let Some((first, _)) = acked.insert(id.clone(), (o, e.to_owned())) {
                    assert_eq!(first, o, "{id} acknowledged at two offsets");
                }
            }
        }
        Some("error") => {
            let Some(id) = v["id"].as_str() else { return };
            assert_eq!(v["code"], "bus_unavailable", "{v}");
            let n: u64 = id.trim_start_matches('x').parse().unwrap_or(0);
            p.send_json(json!({"type":"room_message","room":room,"content":n,"id":id}))
                .await;
        }
        _ => {}
    }
}
