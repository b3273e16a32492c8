//! The operations kit checked by a real Prometheus: it scrapes a gateway and two nodes on Redis
//! with the scrape config of `deploy/compose/prometheus.yml` (targets moved to loopback) and
//! loads `deploy/prometheus/alerts.yml`, while the test provokes traffic, an error event, a
//! refusal, a slow consumer, an API call, a recovery and a gateway failover. Then every PromQL
//! expression of the Grafana dashboard must parse and return at least one series, and every
//! alerting rule must evaluate without error.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringcast_testkit::{http_raw, spawn_listening, wait_until, Client, RedisServer};
use serde_json::{json, Value};
use support::manifests;
use support::nodes_behind_gateway;
use tokio_tungstenite::tungstenite::Message;

/// Prometheus, killed by PID on drop, with its data in a temporary directory.
struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Starts `prometheus` with `config` (YAML text) on a free port.
    fn start(config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringcast-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&file)
            .output()
            .expect("promtool is not installed: run the README's test command");
        assert!(
            check.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let (child, port) = spawn_listening("prometheus", Duration::from_secs(20), |port| {
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        });
        Prometheus { child, port, dir }
    }

    /// `GET /api/v1/PATH` with `query` URL-encoded; the JSON answer.
    async fn api(&self, path: &str, query: Option<&str>) -> Value {
        let target = match query {
            Some(q) => format!("/api/v1/{path}?query={}", encode(q)),
            None => format!("/api/v1/{path}"),
        };
        let (_, body) =
            ringcast_testkit::http_get(([127, 0, 0, 1], self.port).into(), &target).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"))
    }

    /// An instant query's series.
    async fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let answer = self.api("query", Some(q)).await;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The compose scrape config with each job's targets replaced by ours, scrapes every second,
/// and the alert rules loaded.
fn scrape_config(nodes: &[String], gateway: &str) -> String {
    let compose = manifests::deploy_dir().join("compose/prometheus.yml");
    let mut config: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&compose).expect("prometheus.yml"))
            .expect("prometheus.yml is YAML");
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let rules = manifests::deploy_dir().join("prometheus/alerts.yml");
    config["rule_files"] = serde_norway::Value::Sequence(vec![rules.display().to_string().into()]);
    let jobs = config["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let mut seen = Vec::new();
    for job in jobs.iter_mut() {
        let name = job["job_name"].as_str().unwrap_or_default().to_owned();
        let targets: Vec<serde_norway::Value> = match name.as_str() {
            "ringcast-node" => nodes.iter().map(|n| n.as_str().into()).collect(),
            "ringcast-gateway" => vec![gateway.into()],
            other => panic!("prometheus.yml has a job this test does not know: {other}"),
        };
        job["static_configs"] = serde_norway::Value::Sequence(vec![{
            let mut m = serde_norway::Mapping::new();
            m.insert("targets".into(), serde_norway::Value::Sequence(targets));
            serde_norway::Value::Mapping(m)
        }]);
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["ringcast-gateway", "ringcast-node"],
        "the jobs scraped"
    );
    serde_norway::to_string(&config).expect("YAML")
}

/// Every (panel title, PromQL) of the dashboard, Grafana's range variables set to 1m.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = manifests::deploy_dir().join("compose/grafana/dashboards/ringcast.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL target").to_owned();
            let expr = ["$__rate_interval", "$__interval", "$__range"]
                .iter()
                .fold(expr, |e, var| e.replace(var, "1m"));
            out.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr));
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_and_every_alert_evaluates_on_a_real_prometheus() {
    let redis = RedisServer::start();
    let node_args = [
        "--api-key",
        "ops-key",
        "--send-queue-frames",
        "16",
        "--send-queue-bytes",
        "65536",
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
    ];
    // Health checks far apart: the killed node is found by a failed upgrade (a failover).
    let (mut nodes, gw) = nodes_behind_gateway(
        &redis.url(),
        &["p1", "p2"],
        &node_args,
        &["--api-key", "ops-key", "--health-interval-ms", "600000"],
    )
    .await;
    let node_addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let prometheus = Prometheus::start(&scrape_config(&node_addrs, &gw.addr.to_string()));

    // Traffic through the gateway: a room with history, a message with an id, a rejoin with
    // `since` (a recovery), and an error event.
    let (mut a, _) = Client::connect_welcomed(&gw.ws_url("alice")).await;
    let (mut b, _) = Client::connect_welcomed(&gw.ws_url("bob")).await;
    for c in [&mut a, &mut b] {
        c.send_json(json!({"type":"join_room","room":"ops"})).await;
    }
    a.send_json(json!({"type":"room_message","room":"ops","content":"hi","id":"m1"}))
        .await;
    let mut epoch = Value::Null;
    while let Ok(v) = a.next_json(Duration::from_secs(5)).await {
        if v["event"] == "ack" {
            epoch = v["epoch"].clone();
            break;
        }
    }
    assert!(epoch.is_string(), "acknowledged");
    b.send_json(json!({"type":"leave_room","room":"ops"})).await;
    b.send_json(json!({"type":"join_room","room":"ops","since":{"offset":0,"epoch":epoch}}))
        .await;
    b.send(Message::text("not json")).await;
    // A refusal at the edge.
    let bad = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        gw.addr
    );
    assert_eq!(http_raw(gw.addr, &bad).await.0, 400);
    // A server API call.
    let body = r#"{"room":"ops","data":"from the backend"}"#;
    let post = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey ops-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(http_raw(gw.addr, &post).await.0, 200);

    // A slow consumer: a member on p1 that never reads while 32 KiB messages flood its room.
    let (mut slow, _) =
        Client::connect_welcomed(&ringcast_testkit::ws_url(nodes[0].addr, "slow")).await;
    slow.send_json(json!({"type":"join_room","room":"flood"}))
        .await;
    let (mut flooder, _) =
        Client::connect_welcomed(&ringcast_testkit::ws_url(nodes[0].addr, "flooder")).await;
    flooder
        .send_json(json!({"type":"join_room","room":"flood"}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let big = "x".repeat(32 * 1024);
    let p1 = nodes[0].addr;
    let flood = async {
        for _ in 0..600 {
            let frame = json!({"type":"room_message","room":"flood","content":big}).to_string();
            if !flooder.feed(Message::text(frame)).await {
                break;
            }
            // The flooder reads its own echoes, so only `slow` falls behind.
            while flooder.next_json(Duration::from_millis(0)).await.is_ok() {}
        }
        flooder.flush().await;
    };
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the flood ends");
    wait_until(
        Duration::from_secs(20),
        "a slow consumer disconnected on p1",
        || async move {
            let (_, text) = ringcast_testkit::http_get(p1, "/metrics").await;
            ringcast_testkit::metric_sum(&text, "ringcast_node_slow_consumer_disconnects_total")
                > 0.0
        },
    )
    .await;
    drop(slow);

    // A failover: p2 dies unseen (no health checks); upgrades routed to it move on to p1.
    nodes[1].kill();
    for i in 0..20 {
        let _ = Client::connect_welcomed(&gw.ws_url(&format!("after-{i}"))).await;
    }
    assert!(
        gw.metric("ringcast_gateway_failovers_total").await > 0.0,
        "some of 20 client ids hash to the dead node"
    );

    // Two scrapes of everything after the events.
    wait_until(
        Duration::from_secs(30),
        "Prometheus scraped the failover",
        || async {
            prometheus
                .query("ringcast_gateway_failovers_total > 0")
                .await
                .is_ok_and(|r| !r.is_empty())
                && prometheus
                    .query(
                        "count_over_time(ringcast_node_slow_consumer_disconnects_total[1m]) >= 2",
                    )
                    .await
                    .is_ok_and(|r| !r.is_empty())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut failures = Vec::new();
    for (title, expr) in dashboard_queries() {
        match prometheus.query(&expr).await {
            Ok(series) if series.is_empty() => {
                failures.push(format!("panel {title:?}: no series for {expr}"))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("panel {title:?}: {expr} fails: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries:\n{}",
        failures.join("\n")
    );

    // Every alerting rule was loaded and evaluates without error.
    let alerts: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(manifests::deploy_dir().join("prometheus/alerts.yml"))
            .expect("alerts.yml"),
    )
    .expect("alerts.yml is YAML");
    let want: usize = alerts["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .map(|g| g["rules"].as_sequence().map_or(0, Vec::len))
        .sum();
    wait_until(Duration::from_secs(10), "every rule evaluated", || async {
        let rules = prometheus.api("rules", None).await;
        let evaluated = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
            .count();
        evaluated == want
    })
    .await;
    let rules = prometheus.api("rules", None).await;
    let bad: Vec<String> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    assert!(bad.is_empty(), "alert rules that do not evaluate: {bad:?}");
    // The dead node is seen as such by the gateway's scrape (the alert's input exists).
    assert!(!prometheus
        .query("ringcast_gateway_node_up")
        .await
        .expect("query")
        .is_empty());
    drop(a);
    drop(b);
}
