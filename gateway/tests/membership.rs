//! Dynamic membership through a real Redis: nodes started with `--redis-url` and `--advertise`
//! register with a TTL heartbeat; the gateway adds them within 2 s, drops them within 5 s of
//! their last heartbeat, and at once when a draining node deregisters.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use ringcast_node::{Config as NodeConfig, MemoryBroker, NodeError};
use ringcast_testkit::{http_raw, wait_until, Client, RedisServer, TestNode};
use serde_json::json;
use support::{upgrade_request, TestGateway};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A node registering itself in `redis` (in-process, memory bus). Dropping the handle without
/// sending shutdown aborts it: heartbeats stop and nothing deregisters, as in a crash.
struct RegisteredNode {
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<Result<(), NodeError>>,
}

async fn start_registered(id: &str, redis: &RedisServer, extra: &[&str]) -> RegisteredNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let advertise = addr.to_string();
    let url = redis.url();
    let mut argv = vec![
        "ringcast-node",
        "--node-id",
        id,
        "--redis-url",
        &url,
        "--advertise",
        &advertise,
        "--shutdown-grace-secs",
        "1",
    ];
    argv.extend_from_slice(extra);
    let config = NodeConfig::parse_from(argv);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The registration runs beside any bus; the memory bus keeps this test about membership.
    let task = tokio::spawn(ringcast_node::run_with_broker(
        listener,
        config,
        MemoryBroker::new(),
        shutdown_rx,
    ));
    RegisteredNode {
        addr,
        shutdown_tx,
        task,
    }
}

async fn member_ids(gw: &TestGateway) -> Vec<String> {
    let v = gw.nodes().await;
    let mut ids: Vec<String> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_node_joins_within_2s_and_leaves_at_once_when_it_deregisters() {
    let redis = RedisServer::start();
    let gw = TestGateway::start(&["--redis-url", &redis.url()]).await;
    // Nothing registered yet: no node to route to.
    let (status, body) = http_raw(gw.addr, &upgrade_request(gw.addr, "/ws?client_id=early")).await;
    assert_eq!(status, 503, "{body}");

    // A TTL of 60 s: only the explicit deregistration can explain a prompt removal below.
    let node = start_registered("dyn-1", &redis, &["--register-ttl-ms", "60000"]).await;
    let started = Instant::now();
    wait_until(Duration::from_secs(2), "dyn-1 added within 2 s", || async {
        gw.healthy_ids().await == ["dyn-1"]
    })
    .await;
    eprintln!("joined after {:?}", started.elapsed());
    let (mut c, _) = Client::connect_welcomed(&gw.ws_url("dynamic-client")).await;
    c.send_json(json!({"type":"ping"})).await;
    c.recv_event("pong").await;
    let nodes = gw.nodes().await;
    assert_eq!(nodes["nodes"][0]["source"], "redis");
    assert_eq!(nodes["nodes"][0]["addr"], node.addr.to_string());

    // Graceful shutdown: the node deletes its key first thing, the gateway drops it at once.
    let _ = node.shutdown_tx.send(true);
    // Within two polls (500 ms each) and a stall's slack; the TTL would take 60 s.
    wait_until(
        Duration::from_secs(3),
        "dyn-1 removed after deregistering",
        || async { member_ids(&gw).await.is_empty() },
    )
    .await;
    // Nothing left behind: not in the index, not under the key older gateways read.
    for args in [
        &["ZCARD", "{ringcast:nodes}"][..],
        &["HLEN", "{ringcast:nodes}:addrs"],
        &["EXISTS", "ringcast:node:dyn-1"],
    ] {
        assert_eq!(
            redis.cli(args).map(|s| s.trim().to_owned()).as_deref(),
            Some("0"),
            "{args:?}"
        );
    }
    let _ = node.task.await;
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_is_dropped_once_its_ttl_lapses() {
    let redis = RedisServer::start();
    let gw = TestGateway::start(&["--redis-url", &redis.url()]).await;
    // Default heartbeat (1 s) and TTL (3 s).
    let crashed = start_registered("dyn-crash", &redis, &[]).await;
    let steady = start_registered("dyn-steady", &redis, &[]).await;
    wait_until(Duration::from_secs(2), "both nodes added", || async {
        member_ids(&gw).await == ["dyn-crash", "dyn-steady"]
    })
    .await;
    // Abort without shutdown: no deregistration, heartbeats just stop (at most 1 s ago).
    crashed.task.abort();
    let _ = crashed.task.await;
    // TTL (3 s) plus a poll (0.5 s), with a stall's slack.
    wait_until(Duration::from_secs(6), "dyn-crash dropped", || async {
        member_ids(&gw).await == ["dyn-steady"]
    })
    .await;
    // The other node stays, heartbeat after heartbeat, and its heartbeats prune the lapsed
    // lease from the index.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(member_ids(&gw).await, ["dyn-steady"]);
    assert_eq!(
        redis
            .cli(&["ZRANGE", "{ringcast:nodes}", "0", "-1"])
            .map(|s| s.trim().to_owned())
            .as_deref(),
        Some("dyn-steady")
    );
    assert_eq!(
        redis
            .cli(&["HKEYS", "{ringcast:nodes}:addrs"])
            .map(|s| s.trim().to_owned())
            .as_deref(),
        Some("dyn-steady")
    );
    let _ = steady.shutdown_tx.send(true);
    let _ = steady.task.await;
}

#[tokio::test]
async fn losing_redis_keeps_the_known_nodes_and_both_sides_recover() {
    let mut redis = RedisServer::start();
    let gw = TestGateway::start(&["--redis-url", &redis.url()]).await;
    let node = start_registered("dyn-r", &redis, &["--register-interval-ms", "200"]).await;
    wait_until(Duration::from_secs(2), "dyn-r added", || async {
        member_ids(&gw).await == ["dyn-r"]
    })
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The registry is unreadable, not empty: the node keeps serving through the gateway.
    assert_eq!(member_ids(&gw).await, ["dyn-r"]);
    let (mut c, _) = Client::connect_welcomed(&gw.ws_url("through-outage")).await;
    c.send_json(json!({"type":"ping"})).await;
    c.recv_event("pong").await;
    assert!(gw.metric("ringcast_gateway_membership_errors_total").await >= 1.0);
    // A fresh (empty) Redis on the same port: the node re-registers on its next heartbeat.
    redis.restart();
    wait_until(Duration::from_secs(3), "dyn-r registered again", || async {
        redis
            .cli(&["HGET", "{ringcast:nodes}:addrs", "dyn-r"])
            .is_some_and(|v| v.trim() == node.addr.to_string())
    })
    .await;
    // The gateway may have read the empty registry before the node wrote its key again; its
    // next poll (500 ms) brings the node back.
    wait_until(Duration::from_secs(3), "dyn-r a member again", || async {
        member_ids(&gw).await == ["dyn-r"]
    })
    .await;
    let _ = node.shutdown_tx.send(true);
    let _ = node.task.await;
}

#[tokio::test]
async fn a_registered_weight_sets_the_nodes_share_of_clients() {
    let redis = RedisServer::start();
    let gw = TestGateway::start(&["--redis-url", &redis.url()]).await;
    let heavy = start_registered("dyn-heavy", &redis, &["--weight", "3"]).await;
    let light = start_registered("dyn-light", &redis, &[]).await;
    wait_until(
        Duration::from_secs(3),
        "both nodes added and healthy",
        || async { gw.healthy_ids().await == ["dyn-heavy", "dyn-light"] },
    )
    .await;
    let view = gw.nodes().await;
    let weight = |id: &str| {
        view["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == id)
            .map(|n| n["weight"].clone())
    };
    assert_eq!(weight("dyn-heavy"), Some(json!(3)), "{view}");
    assert_eq!(weight("dyn-light"), Some(json!(1)), "{view}");

    // Three quarters of the client ids should land on the heavy node.
    let mut on_heavy = 0;
    let total = 120;
    for i in 0..total {
        let mut c = Client::connect(&gw.ws_url(&format!("weighted-{i}"))).await;
        if c.recv_event("welcome").await["node"] == "dyn-heavy" {
            on_heavy += 1;
        }
        c.close().await;
    }
    assert!(
        on_heavy >= total * 6 / 10 && on_heavy < total,
        "{on_heavy} of {total} clients on the node of weight 3"
    );
    for node in [heavy, light] {
        let _ = node.shutdown_tx.send(true);
        let _ = node.task.await;
    }
}

/// Writes `count` keys that have nothing to do with ringcast into `redis`, as a shared Redis
/// holds (pipelined MSET batches of 10 000 keys: a few hundred milliseconds for 300 000).
async fn fill_with_unrelated_keys(redis: &RedisServer, count: usize) {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let batch = 10_000;
    for start in (0..count).step_by(batch) {
        let mut mset = redis::cmd("MSET");
        for i in start..(start + batch).min(count) {
            mset.arg(format!("other-app:session:{i}")).arg("x");
        }
        let () = mset.query_async(&mut conn).await.expect("MSET");
    }
    let size: usize = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .expect("DBSIZE");
    assert!(size >= count, "only {size} keys written");
}

#[tokio::test]
async fn a_shared_redis_full_of_other_keys_keeps_every_registered_node() {
    let redis = RedisServer::start();
    fill_with_unrelated_keys(&redis, 300_000).await;
    let gw = TestGateway::start(&["--redis-url", &redis.url()]).await;
    let node = start_registered("dyn-crowded", &redis, &[]).await;
    // A second, later node too: the registry must list every node, not a lucky first page.
    let late = start_registered("dyn-crowded-2", &redis, &[]).await;
    wait_until(
        Duration::from_secs(5),
        "both nodes added beside 300 000 unrelated keys",
        || async { gw.healthy_ids().await == ["dyn-crowded", "dyn-crowded-2"] },
    )
    .await;
    // And they stay, poll after poll (500 ms each).
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(member_ids(&gw).await, ["dyn-crowded", "dyn-crowded-2"]);
    }
    let (mut c, _) = Client::connect_welcomed(&gw.ws_url("in-a-crowd")).await;
    c.send_json(json!({"type":"ping"})).await;
    c.recv_event("pong").await;
    for n in [node, late] {
        let _ = n.shutdown_tx.send(true);
        let _ = n.task.await;
    }
}

#[tokio::test]
async fn the_metrics_of_a_node_that_left_go_with_it() {
    let redis = RedisServer::start();
    let gw =
        TestGateway::start(&["--redis-url", &redis.url(), "--membership-poll-ms", "100"]).await;
    // One real node behind ten registrations, one after the other, as pods come and go under
    // new names.
    let node = TestNode::start(NodeConfig::for_tests()).await;
    let addr = node.addr.to_string();
    for i in 0..10 {
        let id = format!("churn-{i}");
        // A lease far in the future: only its removal below ends it.
        redis.cli(&["HSET", "{ringcast:nodes}:addrs", &id, &addr]);
        redis.cli(&["ZADD", "{ringcast:nodes}", "99999999999999", &id]);
        wait_until(Duration::from_secs(3), "the registration joins", || async {
            gw.healthy_ids().await == [id.as_str()]
        })
        .await;
        let (mut c, _) = Client::connect_welcomed(&gw.ws_url(&format!("churner-{i}"))).await;
        c.send_json(json!({"type":"ping"})).await;
        c.recv_event("pong").await;
        c.close().await;
        let label = format!("node=\"{id}\"");
        wait_until(Duration::from_secs(3), "its series exist", || async {
            let (_, text) = gw.get("/metrics").await;
            [
                "open_connections",
                "connections_total",
                "health_checks_total",
                "node_up",
            ]
            .iter()
            .all(|m| text.lines().any(|l| l.contains(m) && l.contains(&label)))
        })
        .await;
        redis.cli(&["ZREM", "{ringcast:nodes}", &id]);
        redis.cli(&["HDEL", "{ringcast:nodes}:addrs", &id]);
        wait_until(
            Duration::from_secs(3),
            "the registration leaves",
            || async { member_ids(&gw).await.is_empty() },
        )
        .await;
    }
    // Health checks still in flight when a node left must not bring its series back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, text) = gw.get("/metrics").await;
    let stale: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("node=\"churn-"))
        .collect();
    assert!(stale.is_empty(), "series of departed nodes: {stale:#?}");
}

#[tokio::test]
async fn an_unreadable_index_keeps_the_known_nodes() {
    let redis = RedisServer::start();
    let gw = TestGateway::start(&["--redis-url", &redis.url()]).await;
    let node = start_registered("dyn-kept", &redis, &["--register-interval-ms", "200"]).await;
    wait_until(Duration::from_secs(2), "dyn-kept added", || async {
        member_ids(&gw).await == ["dyn-kept"]
    })
    .await;
    // Someone overwrites the index with a string: every read now fails (WRONGTYPE), which
    // must not read as an empty registry.
    redis.cli(&["DEL", "{ringcast:nodes}"]);
    redis.cli(&["SET", "{ringcast:nodes}", "not-a-sorted-set"]);
    let errors = gw.metric("ringcast_gateway_membership_errors_total").await;
    wait_until(
        Duration::from_secs(3),
        "failed reads are counted",
        || async { gw.metric("ringcast_gateway_membership_errors_total").await >= errors + 2.0 },
    )
    .await;
    assert_eq!(member_ids(&gw).await, ["dyn-kept"]);
    let (mut c, _) = Client::connect_welcomed(&gw.ws_url("through-a-bad-index")).await;
    c.send_json(json!({"type":"ping"})).await;
    c.recv_event("pong").await;
    // Repaired: the node's next heartbeat writes its lease again and reads work.
    redis.cli(&["DEL", "{ringcast:nodes}"]);
    wait_until(Duration::from_secs(3), "the lease is back", || async {
        redis
            .cli(&["ZSCORE", "{ringcast:nodes}", "dyn-kept"])
            .is_some_and(|v| !v.trim().is_empty())
    })
    .await;
    assert_eq!(member_ids(&gw).await, ["dyn-kept"]);
    let _ = node.shutdown_tx.send(true);
    let _ = node.task.await;
}
