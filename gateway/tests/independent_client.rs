//! The protocol scenario driven by an independent client — python `websockets`, not this
//! project's code (`tests/scenario.py`) — through the gateway in front of three nodes on a real
//! redis-server. The README's test command installs `websockets` and `redis-server`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use ringcast_node::Config as NodeConfig;
use ringcast_testkit::{RedisServer, TestNode};
use support::TestGateway;

#[tokio::test]
async fn python_websockets_client_runs_the_scenario_through_the_gateway() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for id in ["p1", "p2", "p3"] {
        let mut c = NodeConfig::for_tests();
        c.node_id = Some(id.into());
        c.redis_url = Some(redis.url());
        let node = TestNode::start(c).await;
        specs.push(format!("{id}={}", node.addr));
        nodes.push(node);
    }
    // Each node serves once its Redis connections are up.
    for node in &nodes {
        let addr = node.addr;
        ringcast_testkit::wait_until(Duration::from_secs(10), "node /healthz", || {
            support::healthz_ok(addr)
        })
        .await;
    }
    let args: Vec<&str> = specs.iter().flat_map(|s| ["--node", s.as_str()]).collect();
    let gw = TestGateway::start(&args).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenario.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format!("ws://{}/ws", gw.addr))
        .args(nodes.iter().map(|n| format!("http://{}/stats", n.addr)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is needed (the README's test command installs it with websockets)");
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("scenario did not finish within 15 s")
        .expect("run scenario.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("scenario ok"), "{stdout}");
    drop(nodes);
}
