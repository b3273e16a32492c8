//! Room options across a cluster: every node shows the hash of its options on `/healthz`, the
//! gateway reads it with each health check, and `/nodes` (and a metric) flags nodes that run
//! different options, until the odd one leaves the ring.

mod support;

use std::time::Duration;

use ringcast_node::room_options::parse_entry;
use ringcast_node::Config as NodeConfig;
use ringcast_testkit::{http_get, metric_sum, wait_until, TestNode};
use serde_json::Value;
use support::TestGateway;

fn node(id: &str, entries: &[&str]) -> NodeConfig {
    let mut c = NodeConfig::for_tests();
    c.node_id = Some(id.into());
    c.room_options = entries.iter().map(|e| parse_entry(e).unwrap()).collect();
    c
}

async fn nodes_view(gw: &TestGateway) -> Value {
    let (status, body) = http_get(gw.addr, "/nodes").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/nodes is JSON")
}

#[tokio::test]
async fn the_gateway_flags_nodes_whose_room_options_differ_until_the_odd_one_leaves() {
    let same = ["support:*:post=anyone", "live:*:announce=off"];
    // The same options written differently are the same options.
    let same_spelled_otherwise = ["support:*:post=anyone,announce=on", "live:*: announce=off"];
    let n1 = TestNode::start(node("n1", &same)).await;
    let n2 = TestNode::start(node("n2", &same_spelled_otherwise)).await;
    let n3 = TestNode::start(node("n3", &["live:*:announce=on"])).await;
    let spec = |id: &str, n: &TestNode| format!("{id}={}", n.addr);
    let (s1, s2, s3) = (spec("n1", &n1), spec("n2", &n2), spec("n3", &n3));

    let gw = TestGateway::start(&["--node", &s1, "--node", &s2]).await;
    wait_until(Duration::from_secs(5), "both hashes read", || async {
        let v = nodes_view(&gw).await;
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["room_options"].is_string())
    })
    .await;
    let v = nodes_view(&gw).await;
    assert_eq!(v["room_options_mismatch"], false, "{v}");
    assert_eq!(v["nodes"][0]["room_options"], v["nodes"][1]["room_options"]);
    drop(gw);

    let gw = TestGateway::start(&["--node", &s1, "--node", &s2, "--node", &s3]).await;
    wait_until(Duration::from_secs(5), "the mismatch flagged", || async {
        nodes_view(&gw).await["room_options_mismatch"] == true
    })
    .await;
    let v = nodes_view(&gw).await;
    let hash = |id: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["room_options"].clone())
            .unwrap()
    };
    assert_eq!(hash("n1"), hash("n2"));
    assert_ne!(hash("n1"), hash("n3"));
    let (_, metrics) = http_get(gw.addr, "/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "ringcast_gateway_room_options_mismatch"),
        1.0
    );

    // The odd node goes away: once it is off the ring, the rest agree.
    n3.stop().await.unwrap();
    wait_until(Duration::from_secs(10), "the mismatch cleared", || async {
        nodes_view(&gw).await["room_options_mismatch"] == false
    })
    .await;
    let (_, metrics) = http_get(gw.addr, "/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "ringcast_gateway_room_options_mismatch"),
        0.0
    );
}

/// `ringcast-gateway` with `RINGCAST_ROOM_OPTIONS` set to `options` for its embedded node.
fn gateway_command(options: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast-gateway"));
    cmd.env("RINGCAST_ROOM_OPTIONS", options)
        .env_remove("RINGCAST_NODES")
        .env_remove("RINGCAST_REDIS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[test]
fn a_bare_gateway_checks_its_embedded_nodes_room_options() {
    let out = gateway_command("ok:*:announce=off;bad:*:colour=red")
        .arg("--check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad:*:colour=red") && err.contains("unknown key"),
        "{err}"
    );
    let out = gateway_command("ok:*:announce=off")
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
}

#[tokio::test]
async fn a_bare_gateway_applies_room_options_a_tutorial_client_posts_without_joining() {
    let (child, port) = ringcast_testkit::spawn_listening(
        env!("CARGO_BIN_EXE_ringcast-gateway"),
        Duration::from_secs(10),
        |port| {
            let mut cmd = gateway_command("open:*:post=anyone");
            cmd.args(["--listen", &format!("127.0.0.1:{port}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            cmd
        },
    );
    let _gateway = Killed(child);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let (mut member, _) =
        ringcast_testkit::Client::connect_welcomed(&ringcast_testkit::ws_url(addr, "m")).await;
    let (mut poster, _) =
        ringcast_testkit::Client::connect_welcomed(&ringcast_testkit::ws_url(addr, "p")).await;
    for room in ["open:lobby", "closed"] {
        member
            .send_json(serde_json::json!({"type":"join_room","room":room}))
            .await;
        assert_eq!(member.recv_event("user_joined").await["room"], room);
    }
    poster
        .send_json(serde_json::json!({"type":"room_message","room":"closed","content":"no"}))
        .await;
    assert_eq!(poster.recv_error_code().await, "not_in_room");
    poster
        .send_json(serde_json::json!({"type":"room_message","room":"open:lobby","content":"hi"}))
        .await;
    let got = member.recv_event("chat").await;
    assert_eq!(
        ringcast_testkit::unnumbered(&got),
        serde_json::json!({"event":"chat","from":"p","room":"open:lobby","content":"hi"})
    );
}

/// A child process killed and reaped when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
