//! SIGKILL one of three node processes: its clients reconnect to the next node on the ring,
//! clients of the other nodes never notice, and the restarted node rejoins and gets its ids back.
//!
//! The nodes are real `ringcast-node` processes (see `support::node_binary` for how the binary
//! is found), so the kill is a real SIGKILL by PID.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ringcast_testkit::{wait_until, Client};
use serde_json::json;
use support::{NodeProcess, TestGateway};

#[tokio::test]
async fn a_killed_node_fails_over_and_rejoins_when_restarted() {
    let mut nodes = [
        NodeProcess::start("k1").await,
        NodeProcess::start("k2").await,
        NodeProcess::start("k3").await,
    ];
    let specs: Vec<String> = nodes.iter().map(NodeProcess::spec).collect();
    let args: Vec<&str> = specs.iter().flat_map(|s| ["--node", s.as_str()]).collect();
    let gw = TestGateway::start(&args).await;

    // Connect until every node holds at least two clients (bounded).
    let mut clients: Vec<(String, Client, String)> = Vec::new();
    for i in 0..60 {
        let id = format!("fo-{i}");
        let mut c = Client::connect(&gw.ws_url(&id)).await;
        let node = c.recv_event("welcome").await["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        clients.push((id, c, node));
        let count = |n: &str| clients.iter().filter(|(_, _, x)| x == n).count();
        if ["k1", "k2", "k3"].iter().all(|n| count(n) >= 2) {
            break;
        }
    }
    let owner_before: HashMap<String, String> = clients
        .iter()
        .map(|(id, _, n)| (id.clone(), n.clone()))
        .collect();

    // SIGKILL k2.
    let victim = 1;
    nodes[victim].kill();
    let (victims, mut survivors): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(_, _, n)| n == "k2");
    assert!(!victims.is_empty() && !survivors.is_empty());

    // The killed node's clients lose their connection and reconnect: they land elsewhere.
    for (id, mut c, _) in victims {
        let _ = c.expect_close(Duration::from_secs(5)).await;
        let mut again = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                // A reconnect may race the gateway noticing the death; it retries the next
                // candidate itself, so one attempt normally suffices.
                if let Ok(c) = Client::try_connect(&gw.ws_url(&id)).await {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} could not reconnect within 2 s"));
        let w = again.recv_event("welcome").await;
        assert_ne!(w["node"], "k2", "{id} was routed to the dead node");
        again.close().await;
    }
    assert_eq!(gw.healthy_ids().await, ["k1", "k3"]);

    // Clients of the surviving nodes were never disconnected: their tunnels still work.
    for (id, c, _) in survivors.iter_mut() {
        c.send_json(json!({"type":"ping"})).await;
        c.next_json(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{id} lost its connection: {e}"));
    }

    // Restart k2 on the same port: the health checks put it back and its ids route home again.
    nodes[victim].restart().await;
    wait_until(Duration::from_secs(5), "k2 back in the ring", || async {
        gw.healthy_ids().await == ["k1", "k2", "k3"]
    })
    .await;
    for (id, owner) in owner_before.iter().filter(|(_, n)| *n == "k2") {
        let mut c = Client::connect(&gw.ws_url(id)).await;
        assert_eq!(c.recv_event("welcome").await["node"], owner.as_str());
        c.close().await;
    }
}
