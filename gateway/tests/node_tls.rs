//! TLS between the gateway and its nodes, end to end with the real binaries and certificates
//! made here: a node serving `--tls-cert`/`--tls-key`, a gateway with `--node-tls --node-ca`
//! carrying room messages over a link and over tunnels of their own, health checks and API
//! calls over TLS; a node whose certificate the CA did not sign taken out of the ring (a clear
//! log line, 502 when no node is left, the other nodes served); `--check-config` reading the CA.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use ringcast_testkit::Client;
use serde_json::json;
use support::tls::{connector, https_get, run_gateway, Scratch, ServerPair, TestCa};

/// A child process (node or gateway), its log in a file; killed and reaped on drop.
struct Proc {
    addr: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, what: &str, args: &[String], log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).expect("log file");
    let (child, port) = ringcast_testkit::spawn_listening(what, Duration::from_secs(10), |port| {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
            cmd.env_remove(k);
        }
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--shutdown-grace-secs", "1"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out.try_clone().expect("log file"));
        cmd
    });
    Proc {
        addr: ([127, 0, 0, 1], port).into(),
        log,
        child,
    }
}

/// A `ringcast-node` serving `pair` (written into `dir`) with TLS, once its `/healthz` answers
/// 200 over TLS to a client trusting `ca`.
async fn tls_node(dir: &Scratch, id: &str, pair: &ServerPair, ca: &TestCa) -> Proc {
    let (cert, key) = (
        dir.path(&format!("{id}.crt")),
        dir.path(&format!("{id}.key")),
    );
    pair.write(&cert, &key);
    let args = [
        "--node-id".to_owned(),
        id.to_owned(),
        "--announce-connections=false".to_owned(),
        "--api-key".to_owned(),
        "k1".to_owned(),
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.display().to_string(),
    ];
    let node = spawn(
        &support::node_binary(),
        "ringcast-node",
        &args,
        dir.path(&format!("{id}.log")),
    );
    let tls = connector(&ca.der());
    let addr = node.addr;
    ringcast_testkit::wait_until(Duration::from_secs(10), "node /healthz over TLS", || {
        let tls = tls.clone();
        async move { https_get(&tls, addr, "/healthz").await.0 == 200 }
    })
    .await;
    node
}

/// A `ringcast-gateway` reaching `nodes` with `--node-tls --node-ca ca` and `extra` flags.
fn gateway(dir: &Scratch, name: &str, nodes: &[(&str, &Proc)], ca: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--node-tls".to_owned(),
        "--node-ca".to_owned(),
        ca.display().to_string(),
        "--health-timeout-ms".to_owned(),
        "1000".to_owned(),
        "--api-key".to_owned(),
        "k1".to_owned(),
    ];
    if !extra.contains(&"--health-interval-ms") {
        args.extend(["--health-interval-ms".to_owned(), "100".to_owned()]);
    }
    for (id, node) in nodes {
        args.push("--node".to_owned());
        args.push(format!("{id}={}", node.addr));
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn(
        Path::new(env!("CARGO_BIN_EXE_ringcast-gateway")),
        "ringcast-gateway",
        &args,
        dir.path(&format!("{name}.log")),
    )
}

/// The gateway's `/nodes`: each node's id and health.
async fn health(gw: &Proc) -> Vec<(String, bool)> {
    let (status, body) = ringcast_testkit::http_get(gw.addr, "/nodes").await;
    assert_eq!(status, 200, "/nodes: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/nodes is JSON");
    let mut out: Vec<(String, bool)> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_owned(),
                n["healthy"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

async fn wait_health(gw: &Proc, want: &[(&str, bool)]) {
    let want: Vec<(String, bool)> = want.iter().map(|(id, h)| (id.to_string(), *h)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = health(gw).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes {got:?}, expected {want:?}; gateway log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two clients through `gw` join `room`; a message from one reaches the other.
async fn room_message_flows(gw: &Proc, room: &str) {
    let url = |id: &str| ringcast_testkit::ws_url(gw.addr, id);
    let (mut alice, _) = Client::connect_welcomed(&url(&format!("{room}-alice"))).await;
    let (mut bob, _) = Client::connect_welcomed(&url(&format!("{room}-bob"))).await;
    for c in [&mut alice, &mut bob] {
        c.send_json(json!({"type":"join_room","room":room})).await;
        c.recv_event("user_joined").await;
    }
    alice
        .send_json(json!({"type":"room_message","room":room,"content":"over TLS"}))
        .await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.recv_event("chat").await["content"], "over TLS");
    }
    // And an API call, forwarded to the node over TLS, reaches both.
    let body = json!({"room":room,"data":"from the API"}).to_string();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey k1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = ringcast_testkit::http_raw(gw.addr, &req).await;
    assert_eq!(status, 200, "{text}; gateway log:\n{}", gw.log_text());
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.recv_event("chat").await["content"], "from the API");
    }
}

fn metric(exposition: &str, name: &str) -> f64 {
    ringcast_testkit::metric_sum(exposition, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_node_carries_room_messages_over_a_link_and_over_tunnels() {
    let dir = Scratch::new("node-tls-ok");
    let ca = TestCa::new();
    let ca_file = dir.path("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let node = tls_node(&dir, "n1", &ca.issue("node-one", 0x2001, false), &ca).await;

    // Links (the default): one TLS connection carries every client.
    let gw = gateway(&dir, "gw-link", &[("n1", &node)], &ca_file, &[]);
    wait_health(&gw, &[("n1", true)]).await;
    room_message_flows(&gw, "linked").await;
    let (_, gw_metrics) = ringcast_testkit::http_get(gw.addr, "/metrics").await;
    assert_eq!(
        metric(&gw_metrics, "ringcast_gateway_node_links"),
        1.0,
        "{gw_metrics}"
    );
    assert!(gw.log_text().contains("--node-tls"), "{}", gw.log_text());
    drop(gw);

    // One connection per client: each tunnel is a TLS connection of its own.
    let gw = gateway(
        &dir,
        "gw-tcp",
        &[("n1", &node)],
        &ca_file,
        &["--node-transport", "tcp"],
    );
    wait_health(&gw, &[("n1", true)]).await;
    room_message_flows(&gw, "tunneled").await;
    let (_, gw_metrics) = ringcast_testkit::http_get(gw.addr, "/metrics").await;
    assert_eq!(
        metric(&gw_metrics, "ringcast_gateway_node_links"),
        0.0,
        "{gw_metrics}"
    );

    // The node speaks TLS only: a plain request gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut buf = Vec::new();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "{buf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_ca_did_not_sign_is_refused_and_the_others_served() {
    let dir = Scratch::new("node-tls-wrong-ca");
    let ca = TestCa::new();
    let rogue_ca = TestCa::new();
    let ca_file = dir.path("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let good = tls_node(&dir, "good", &ca.issue("good", 0x3001, false), &ca).await;
    let rogue = tls_node(
        &dir,
        "rogue",
        &rogue_ca.issue("rogue", 0x3002, false),
        &rogue_ca,
    )
    .await;

    let gw = gateway(
        &dir,
        "gw-both",
        &[("good", &good), ("rogue", &rogue)],
        &ca_file,
        &[],
    );
    wait_health(&gw, &[("good", true), ("rogue", false)]).await;
    // Every client lands on the node the gateway trusts.
    for i in 0..8 {
        let url = ringcast_testkit::ws_url(gw.addr, &format!("user-{i}"));
        let mut c = Client::connect(&url).await;
        assert_eq!(c.recv_event("welcome").await["node"], "good");
    }
    room_message_flows(&gw, "trusted").await;
    let log = gw.log_text();
    assert!(
        log.contains("TLS handshake with the node failed") && log.contains(&rogue.addr.to_string()),
        "{log}"
    );
    drop(gw);

    // With only the rogue node, still in the ring (one health check a minute, few failures
    // counted yet), a client gets 502: the gateway tried it and could not trust it.
    let gw = gateway(
        &dir,
        "gw-rogue",
        &[("rogue", &rogue)],
        &ca_file,
        &[
            "--health-interval-ms",
            "60000",
            "--unhealthy-threshold",
            "5",
        ],
    );
    let upgrade = support::upgrade_request(gw.addr, "/ws?client_id=x");
    let (status, body) = ringcast_testkit::http_raw(gw.addr, &upgrade).await;
    assert_eq!(status, 502, "{body}; gateway log:\n{}", gw.log_text());
    let log = gw.log_text();
    assert!(log.contains("TLS handshake with the node failed"), "{log}");
}

#[test]
fn check_config_reads_the_node_ca() {
    let dir = Scratch::new("node-tls-check");
    let ca = TestCa::new();
    let good = dir.path("ca.pem");
    std::fs::write(&good, ca.pem()).unwrap();
    let junk = dir.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let missing = dir.path("missing.pem");
    let run = |ca: &Path| {
        run_gateway(&[
            "--check-config".as_ref(),
            "--node".as_ref(),
            "n1=127.0.0.1:9".as_ref(),
            "--node-tls".as_ref(),
            "--node-ca".as_ref(),
            ca.as_os_str(),
        ])
    };
    let (code, err) = run(&good);
    assert_eq!(code, Some(0), "{err}");
    for bad in [&junk, &missing] {
        let (code, err) = run(bad);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("--node-ca") && err.contains(&bad.display().to_string()),
            "{err}"
        );
    }
    // --node-tls needs nodes other than the embedded one (which serves no TLS).
    let (code, err) = run_gateway(&[
        "--check-config".as_ref(),
        "--node-tls".as_ref(),
        "--node-ca".as_ref(),
        good.as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("embedded node serves no TLS"), "{err}");
    // --node-tls needs a CA.
    let (code, err) = run_gateway(&[
        "--check-config".as_ref(),
        "--node".as_ref(),
        "n1=127.0.0.1:9".as_ref(),
        "--node-tls".as_ref(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--node-ca"), "{err}");
}
