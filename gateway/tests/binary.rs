//! The `ringcast-gateway` binary itself: configuration from `RINGCAST_*` environment variables
//! (including the comma-separated `RINGCAST_NODES`), the embedded default, and a clean exit on
//! SIGTERM.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringcast_node::{Config as NodeConfig, MemoryBroker};
use ringcast_testkit::{spawn_listening, wait_until, Client, TestNode};
use support::healthz_ok;

fn spawn_gateway(envs: &[(&str, String)]) -> (Child, SocketAddr) {
    let (child, port) = spawn_listening("ringcast-gateway", Duration::from_secs(10), |port| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast-gateway"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
            cmd.env_remove(k);
        }
        cmd.env("RINGCAST_LISTEN", format!("127.0.0.1:{port}"))
            .env("RINGCAST_SHUTDOWN_GRACE_SECS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    });
    (child, ([127, 0, 0, 1], port).into())
}

/// SIGTERM by PID, then wait (bounded) for the exit status.
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("gateway did not exit within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nodes_from_the_environment_and_a_clean_exit_on_sigterm() {
    let broker = MemoryBroker::new();
    let mut nodes = Vec::new();
    for id in ["e1", "e2"] {
        let mut c = NodeConfig::for_tests();
        c.node_id = Some(id.into());
        nodes.push(TestNode::start_on(c, broker.clone()).await);
    }
    let list = format!("e1={},e2={}", nodes[0].addr, nodes[1].addr);
    let (child, addr) = spawn_gateway(&[("RINGCAST_NODES", list)]);
    wait_until(Duration::from_secs(10), "gateway /healthz", || {
        healthz_ok(addr)
    })
    .await;
    let (_, body) = ringcast_testkit::http_get(addr, "/nodes").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("/nodes JSON");
    let ids: Vec<&str> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
    let (mut c, _) = Client::connect_welcomed(&format!("ws://{addr}/ws?client_id=env")).await;
    let status = terminate(child).await;
    assert!(status.success(), "exit status {status:?}");
    // The tunnel ended with the process.
    let _ = c.expect_close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn with_no_configuration_the_binary_serves_through_an_embedded_node() {
    let (child, addr) = spawn_gateway(&[]);
    wait_until(Duration::from_secs(10), "gateway /healthz", || {
        healthz_ok(addr)
    })
    .await;
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    let w = c.recv_event("welcome").await;
    assert_eq!(w["node"], "embedded");
    c.send_json(serde_json::json!({"type":"ping"})).await;
    c.recv_event("pong").await;
    let status = terminate(child).await;
    assert!(status.success(), "exit status {status:?}");
}
