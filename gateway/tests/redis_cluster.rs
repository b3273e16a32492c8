//! A gateway finds its nodes through a real Redis Cluster (3 primaries + 3 replicas) as it does
//! through one Redis: nodes on the cluster bus register with `--advertise`, the gateway reads
//! the registry with `--redis-cluster`, and clients on different nodes share a room.

mod support;

use std::time::Duration;

use clap::Parser;
use ringcast_node::Config as NodeConfig;
use ringcast_testkit::{wait_until, Client, RedisCluster};
use serde_json::json;
use support::TestGateway;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Starts node `id` on the cluster bus, registered for gateways; returns its shutdown sender.
async fn start_node(id: &str, seeds: &str) -> watch::Sender<bool> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let advertise = listener.local_addr().expect("addr").to_string();
    let config = NodeConfig::parse_from([
        "ringcast-node",
        "--node-id",
        id,
        "--redis-cluster",
        seeds,
        "--advertise",
        &advertise,
        "--register-interval-ms",
        "200",
        "--shutdown-grace-secs",
        "1",
    ]);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(ringcast_node::run(listener, config, shutdown_rx));
    shutdown_tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_and_talk_through_a_cluster_and_the_gateway_finds_them() {
    let redis = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let seeds = redis.seeds().join(",");
    let _n1 = start_node("cl-1", &seeds).await;
    let _n2 = start_node("cl-2", &seeds).await;
    let gw = TestGateway::start(&["--redis-cluster", &seeds, "--membership-poll-ms", "200"]).await;
    wait_until(
        Duration::from_secs(10),
        "both nodes healthy at the gateway",
        || async { gw.healthy_ids().await == ["cl-1", "cl-2"] },
    )
    .await;

    // Two clients the ring places on different nodes.
    let mut placed: Vec<(String, Client)> = Vec::new();
    for i in 0..64 {
        let id = format!("u{i}");
        let mut c = Client::connect(&gw.ws_url(&id)).await;
        let welcome = c.recv_event("welcome").await;
        let node = welcome["node"].as_str().unwrap_or_default().to_owned();
        if placed.iter().all(|(n, _)| *n != node) {
            placed.push((node, c));
        }
        if placed.len() == 2 {
            break;
        }
    }
    assert_eq!(placed.len(), 2, "no client landed on the second node");
    let (_, mut b) = placed.pop().expect("two");
    let (_, mut a) = placed.pop().expect("two");
    for c in [&mut a, &mut b] {
        c.send_json(json!({"type":"join_room","room":"lobby"}))
            .await;
        c.recv_event("user_joined").await;
    }
    a.send_json(json!({"type":"room_message","room":"lobby","content":"across","id":"q1"}))
        .await;
    let ack = a.recv_event("ack").await;
    assert_eq!(ack["offset"], 1, "{ack}");
    loop {
        let v = b.recv_event("chat").await;
        if v["content"] == "across" {
            assert_eq!(v["offset"], 1);
            break;
        }
    }
}

/// A seed that is no Redis URL fails `--check-config` (and startup) of both binaries, naming it
/// with its password hidden.
#[test]
fn a_seed_of_another_scheme_is_refused_at_startup() {
    let gateway = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ringcast-gateway"));
    for bin in [gateway, support::node_binary()] {
        let check = |seeds: &str| {
            let out = std::process::Command::new(&bin)
                .arg("--check-config")
                .env_remove("RINGCAST_REDIS_URL")
                .env("RINGCAST_REDIS_CLUSTER", seeds)
                .output()
                .expect("run the binary");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (code, err) = check("redis://a:7000,http://u:hunter2@b:7001");
        assert_eq!(code, Some(2), "{}: {err}", bin.display());
        assert!(
            err.contains("http://***@b:7001") && !err.contains("hunter2"),
            "{err}"
        );
        assert_eq!(
            check("redis://a:7000,rediss://b:7001").0,
            Some(0),
            "{}",
            bin.display()
        );
    }
}
