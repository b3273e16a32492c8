//! Connection lifecycle against a real `ringcast-node` process: graceful shutdown on SIGTERM
//! (1012, /healthz 503, exit 0) and the idle timeout for clients that stop answering pings.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ringcast_testkit::{http_get, spawn_server, Client};
use serde_json::json;

struct NodeProcess {
    child: Child,
    addr: std::net::SocketAddr,
}

impl NodeProcess {
    fn spawn(extra: &[&str]) -> Self {
        let mut args = vec!["--node-id", "life"];
        args.extend_from_slice(extra);
        let (child, addr) = spawn_server(env!("CARGO_BIN_EXE_ringcast-node"), &args);
        NodeProcess { child, addr }
    }

    fn url(&self, id: &str) -> String {
        format!("ws://{}/ws?client_id={id}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_exits_zero() {
    // A drain delay long enough for the checks below on a slow machine.
    let mut node = NodeProcess::spawn(&["--drain-delay-secs", "3", "--shutdown-grace-secs", "5"]);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (mut c, _) = Client::connect_welcomed(&node.url(&format!("c{i}"))).await;
        c.send_json(json!({"type":"join_room","room":"r"})).await;
        c.recv_event("user_joined").await;
        clients.push(c);
    }
    assert_eq!(http_get(node.addr, "/healthz").await.0, 200);
    let signalled = Instant::now();
    node.signal("-TERM");
    // During the drain delay: unhealthy, no new sessions, existing ones still served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = http_get(node.addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let refused = Client::try_connect(&node.url("late")).await.err();
    assert!(
        refused.is_some_and(|e| e.to_string().contains("503")),
        "upgrade during drain must get 503"
    );
    clients[0]
        .send_json(json!({"type":"room_message","room":"r","content":"still here"}))
        .await;
    assert_eq!(clients[1].recv_event("chat").await["content"], "still here");
    for c in &mut clients {
        assert_eq!(c.expect_close(Duration::from_secs(8)).await, Some(1012));
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = node.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3 + 5 + 2),
        "exited within drain delay + grace"
    );
}

#[tokio::test]
async fn silent_clients_are_closed_after_the_idle_timeout() {
    let node = NodeProcess::spawn(&["--ping-interval-secs", "1", "--idle-timeout-secs", "2"]);
    // `silent` never reads, so its client library never answers the server's pings.
    let (mut silent, _) = Client::connect_welcomed(&node.url("silent")).await;
    let (mut lively, _) = Client::connect_welcomed(&node.url("lively")).await;
    // `lively` keeps reading (auto-answering pings) for 3.5 s, past the timeout, while `silent`
    // is not polled at all.
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match lively.next_json(left).await {
            Ok(_) => continue,
            Err(e) => assert!(e.contains("nothing"), "lively client was disconnected: {e}"),
        }
    }
    let code = silent.expect_close(Duration::from_secs(5)).await;
    assert!(
        code.is_none() || code == Some(1001),
        "silent client: expected close 1001 or a dropped connection, got {code:?}"
    );
    lively.send_json(json!({"type":"ping"})).await;
    assert_eq!(lively.recv().await["event"], "pong");
}

#[tokio::test]
async fn client_pings_are_answered_and_client_closes_are_echoed() {
    let node = NodeProcess::spawn(&[]);
    let (mut pinger, _) = Client::connect_welcomed(&node.url("pinger")).await;
    let (mut bystander, _) = Client::connect_welcomed(&node.url("bystander")).await;
    let limit = Duration::from_secs(5);

    assert_eq!(pinger.ping(b"are you there", limit).await, b"are you there");
    // The close handshake: the node answers with the client's own code.
    assert_eq!(pinger.close_with(4321, limit).await, Some(4321));

    // A close code nobody may send (1005 is "no status", RFC 6455 7.4.1) is answered with 1002.
    let (mut wrong, _) = Client::connect_welcomed(&node.url("wrong")).await;
    assert_eq!(wrong.close_with(1005, limit).await, Some(1002));

    bystander.send_json(json!({"type":"ping"})).await;
    bystander.recv_event("pong").await;
}
