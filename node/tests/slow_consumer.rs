//! A client that stops reading is disconnected once its bounded send queue fills; the node's
//! memory stays bounded and the other members of the room keep receiving everything.

use std::process::Child;
use std::time::Duration;

use ringcast_testkit::{http_get, spawn_server, wait_until, Client};
use serde_json::json;
use tokio::net::TcpSocket;

const MESSAGES: usize = 1500;
const CONTENT_BYTES: usize = 32 * 1024;
/// Messages the publisher sends before reading its own echoes: 320 KiB in flight, well under the
/// 1 MiB queue of a member that keeps reading.
const BATCH: usize = 10;

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc status")
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_stalled_reader_is_cut_off_and_the_room_keeps_flowing() {
    let (child, addr) = spawn_server(
        env!("CARGO_BIN_EXE_ringcast-node"),
        &[
            "--announce-connections=false",
            "--send-queue-bytes",
            "1048576",
            "--send-queue-frames",
            "1024",
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ],
    );
    let node = Node(child);
    let url = |id: &str| format!("ws://{addr}/ws?client_id={id}");

    // The stalled client: a tiny receive buffer, joins, then never reads again.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut stalled, _) = tokio_tungstenite::client_async(url("stalled"), stream)
        .await
        .expect("stalled handshake");
    {
        use futures_util::{SinkExt, StreamExt};
        stalled
            .send(tokio_tungstenite::tungstenite::Message::text(
                json!({"type":"join_room","room":"busy"}).to_string(),
            ))
            .await
            .expect("join");
        // welcome, then the join ack
        for _ in 0..2 {
            stalled.next().await.expect("frame").expect("frame ok");
        }
    }

    let (mut publisher, _) = Client::connect_welcomed(&url("publisher")).await;
    let (mut member, _) = Client::connect_welcomed(&url("member")).await;
    for c in [&mut publisher, &mut member] {
        c.send_json(json!({"type":"join_room","room":"busy"})).await;
        c.recv_event("user_joined").await;
    }
    let rss_before = rss_kib(node.0.id());

    let reader = tokio::spawn(async move {
        let mut next = 0usize;
        while next < MESSAGES {
            let v = member.recv().await;
            if v["event"] != "chat" {
                continue;
            }
            let n = v["content"]["n"].as_u64().expect("numbered content") as usize;
            assert_eq!(n, next, "member lost or reordered a message");
            next += 1;
        }
        member
    });
    let pad = "p".repeat(CONTENT_BYTES);
    for chunk in 0..MESSAGES / BATCH {
        for i in 0..BATCH {
            let n = chunk * BATCH + i;
            publisher
                .send_json(json!({"type":"room_message","room":"busy","content":{"n":n,"pad":pad}}))
                .await;
        }
        for _ in 0..BATCH {
            publisher.recv_event("chat").await;
        }
    }
    let mut member = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("member received all messages in time")
        .expect("member task");

    assert!(
        metric(addr, "ringcast_node_slow_consumer_disconnects_total").await >= 1.0,
        "the stalled client was not counted as a slow consumer"
    );
    // The stalled client is cut off, not necessarily gone yet: its writer gives the frame in
    // progress and the close frame a few seconds each (writer.rs) before it drops the socket,
    // and on a fast machine the room's 1 500 messages are through before that.
    wait_until(
        Duration::from_secs(15),
        "the stalled client's connection ends",
        || async {
            let (_, stats) = http_get(addr, "/stats").await;
            let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
            stats["local_connections"] == 2
        },
    )
    .await;

    // ~48 MiB went through the room; a queue without bounds would have kept all of it for the
    // stalled client. With 1 MiB queues the node grows by far less.
    let growth_kib = rss_kib(node.0.id()).saturating_sub(rss_before);
    assert!(
        growth_kib < 24 * 1024,
        "node RSS grew by {growth_kib} KiB while a client stalled"
    );

    // The survivors are still served.
    publisher
        .send_json(json!({"type":"room_message","room":"busy","content":"after"}))
        .await;
    assert_eq!(member.recv_event("chat").await["content"], "after");
    drop(stalled);
}
