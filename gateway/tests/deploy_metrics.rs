//! The manifests against running binaries: a node and a gateway started with the Kubernetes
//! base's own environment (addresses moved to loopback) and a real redis-server; every probe
//! path and the image's HEALTHCHECK answer 200, and every metric the Grafana dashboard queries is
//! exported by the node or the gateway once a little traffic has flowed. And the Redis Cluster
//! variant: its create script makes six real redis-servers one cluster, once, and the overlay's
//! node and gateway carry messages over it.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringcast_testkit::{http_get, spawn_listening, wait_until, Client, RedisServer};
use support::healthz_ok;
use support::manifests::{self, Bin, Launch};
use tokio_tungstenite::tungstenite::Message;

/// A child process killed (SIGKILL, by PID) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the launch's binary with its manifest environment plus `overrides`.
/// Runs `launch` with `overrides` and with `RINGCAST_LISTEN` (and, for a node,
/// `RINGCAST_ADVERTISE`) on a free port; returns the process and where it listens.
fn spawn(launch: &Launch, overrides: &[(&str, String)]) -> (Proc, SocketAddr) {
    let (child, port) = spawn_listening("binary", Duration::from_secs(15), |port| {
        let mut cmd = Command::new(launch.bin.path());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .args(&launch.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        for (k, v) in overrides {
            cmd.env(k, v);
        }
        let addr = format!("127.0.0.1:{port}");
        cmd.env("RINGCAST_LISTEN", &addr);
        if launch.bin == Bin::Node {
            cmd.env("RINGCAST_ADVERTISE", &addr);
        }
        cmd
    });
    (Proc(child), ([127, 0, 0, 1], port).into())
}

fn metric_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

fn dashboard_metrics() -> BTreeSet<String> {
    let path = manifests::deploy_dir().join("compose/grafana/dashboards/ringcast.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut names = BTreeSet::new();
    for panel in v["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let found: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("ringcast_"))
                .collect();
            assert!(!found.is_empty(), "{expr} queries no ringcast metric");
            names.extend(found.into_iter().map(str::to_owned));
        }
    }
    names
}

#[tokio::test]
async fn probes_healthcheck_and_dashboard_metrics_match_the_running_binaries() {
    let redis = RedisServer::start();
    let launches = manifests::k8s_launches();
    let of = |b: Bin| {
        launches
            .iter()
            .find(|l| l.bin == b)
            .expect("k8s runs both binaries")
            .clone()
    };
    // The Secret as an operator creates it: both binaries refuse the shipped placeholder.
    let secret = manifests::operator_value("RINGCAST_LINK_SECRET");
    let (_node, node_addr) = spawn(
        &of(Bin::Node),
        &[
            ("RINGCAST_REDIS_URL", redis.url()),
            ("RINGCAST_LINK_SECRET", secret.clone()),
        ],
    );
    let (_gateway, gateway_addr) = spawn(
        &of(Bin::Gateway),
        &[
            ("RINGCAST_REDIS_URL", redis.url()),
            ("RINGCAST_HEALTH_INTERVAL_MS", "100".into()),
            ("RINGCAST_LINK_SECRET", secret),
        ],
    );
    wait_until(Duration::from_secs(15), "node /healthz", || {
        healthz_ok(node_addr)
    })
    .await;
    // The gateway is healthy once the node registered through Redis is on its ring.
    wait_until(Duration::from_secs(15), "gateway /healthz", || {
        healthz_ok(gateway_addr)
    })
    .await;

    // Every Kubernetes probe path, and the image's HEALTHCHECK path, answer 200.
    for (name, w) in manifests::k8s_workloads() {
        for c in w["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let addr = match c["command"][0].as_str() {
                Some("ringcast-node") => node_addr,
                Some("ringcast-gateway") => gateway_addr,
                _ => continue,
            };
            for probe in ["readinessProbe", "livenessProbe"] {
                let path = c[probe]["httpGet"]["path"].as_str().expect("httpGet path");
                let (status, body) = http_get(addr, path).await;
                assert_eq!(status, 200, "{name} {probe} {path}: {body}");
            }
        }
    }
    let dockerfile =
        std::fs::read_to_string(manifests::deploy_dir().join("docker/Dockerfile")).expect("read");
    assert!(
        dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz\""),
        "the image checks /healthz"
    );
    for addr in [node_addr, gateway_addr] {
        assert_eq!(http_get(addr, "/healthz").await.0, 200);
    }

    // A little traffic through the gateway, so labelled metrics have samples.
    let url = |id: &str| format!("ws://{gateway_addr}/ws?client_id={id}");
    let (mut a, _) = Client::connect_welcomed(&url("dash-a")).await;
    let (mut b, _) = Client::connect_welcomed(&url("dash-b")).await;
    a.send_json(serde_json::json!({"type": "chat", "content": "hello"}))
        .await;
    b.recv_event("chat").await;
    a.send(Message::Text("not json".into())).await;
    let code = a.recv_error_code().await;
    assert!(!code.is_empty());

    let (_, node_metrics) = http_get(node_addr, "/metrics").await;
    let (_, gateway_metrics) = http_get(gateway_addr, "/metrics").await;
    let exported: BTreeSet<String> = metric_names(&node_metrics)
        .into_iter()
        .chain(metric_names(&gateway_metrics))
        .collect();
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 10, "{wanted:?}");
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics nobody exports: {missing:?}\nexported: {exported:?}"
    );
    a.close().await;
    b.close().await;
}

/// `sh create-cluster.sh` (the redis-cluster overlay's Job and compose service) with `seeds`;
/// returns (success, stdout + stderr).
fn create_cluster(seeds: &str) -> (bool, String) {
    let script = manifests::deploy_dir().join("k8s/overlays/redis-cluster/create-cluster.sh");
    let out = Command::new("sh")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RINGCAST_REDIS_CLUSTER", seeds)
        .env("RINGCAST_CLUSTER_WAIT_SECS", "60")
        .output()
        .expect("run create-cluster.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Node ids and roles (`master` / `slave`) the cluster has, from `CLUSTER NODES` at `redis`.
fn cluster_nodes(redis: &RedisServer) -> BTreeSet<(String, String)> {
    let nodes = redis.cli(&["CLUSTER", "NODES"]).expect("CLUSTER NODES");
    nodes
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let role = f
                .get(2)?
                .split(',')
                .find(|r| *r == "master" || *r == "slave")?;
            Some((f[0].to_owned(), role.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn the_redis_cluster_script_makes_one_cluster_once_and_the_overlays_ringcast_runs_on_it() {
    let servers: Vec<RedisServer> = (0..6)
        .map(|_| {
            RedisServer::start_with_args(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ])
        })
        .collect();
    let seeds = servers
        .iter()
        .map(RedisServer::url)
        .collect::<Vec<_>>()
        .join(",");

    let (ok, out) = create_cluster(&seeds);
    assert!(ok, "create-cluster.sh failed:\n{out}");
    // Roles reach every node's view by gossip, a moment after cluster_state:ok.
    let roles = |nodes: &BTreeSet<(String, String)>| {
        let count = |role: &str| nodes.iter().filter(|(_, r)| r == role).count();
        (count("master"), count("slave"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let made = loop {
        let views: Vec<_> = servers.iter().map(cluster_nodes).collect();
        if views.iter().all(|v| v == &views[0] && roles(v) == (3, 3)) {
            break views[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not 3 primaries + 3 replicas in every view: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for s in &servers {
        let info = s.cli(&["CLUSTER", "INFO"]).expect("CLUSTER INFO");
        assert!(info.contains("cluster_state:ok"), "{}: {info}", s.port);
    }
    // Run again (the Job after its TTL, the next `docker compose up`): the same cluster.
    let (ok, again) = create_cluster(&seeds);
    assert!(ok && again.contains("nothing to do"), "{again}");
    assert_eq!(cluster_nodes(&servers[0]), made);

    // The overlay's node and gateway, as Kubernetes would start them, on this cluster.
    let docs = manifests::kustomize(&manifests::deploy_dir().join("k8s/overlays/redis-cluster"));
    let launches = manifests::launches_in("redis-cluster", &docs);
    let of = |b: Bin| launches.iter().find(|l| l.bin == b).expect("both").clone();
    let secret = manifests::operator_value("RINGCAST_LINK_SECRET");
    let (_node, node_addr) = spawn(
        &of(Bin::Node),
        &[
            ("RINGCAST_REDIS_CLUSTER", seeds.clone()),
            ("RINGCAST_LINK_SECRET", secret.clone()),
        ],
    );
    let (_gateway, gateway_addr) = spawn(
        &of(Bin::Gateway),
        &[
            ("RINGCAST_REDIS_CLUSTER", seeds.clone()),
            ("RINGCAST_HEALTH_INTERVAL_MS", "100".into()),
            ("RINGCAST_LINK_SECRET", secret),
        ],
    );
    wait_until(Duration::from_secs(20), "node /healthz", || {
        healthz_ok(node_addr)
    })
    .await;
    // Healthy once the node registered through the cluster is on the gateway's ring.
    wait_until(Duration::from_secs(20), "gateway /healthz", || {
        healthz_ok(gateway_addr)
    })
    .await;
    let url = |id: &str| format!("ws://{gateway_addr}/ws?client_id={id}");
    let (mut a, _) = Client::connect_welcomed(&url("cluster-a")).await;
    let (mut b, _) = Client::connect_welcomed(&url("cluster-b")).await;
    for c in [&mut a, &mut b] {
        c.send_json(serde_json::json!({"type": "join_room", "room": "sharded"}))
            .await;
        c.recv_event("user_joined").await;
    }
    a.send_json(serde_json::json!({"type": "room_message", "room": "sharded", "content": "hi"}))
        .await;
    let got = b.recv_event("chat").await;
    assert_eq!(got["content"], "hi", "{got}");
    a.close().await;
    b.close().await;
}
