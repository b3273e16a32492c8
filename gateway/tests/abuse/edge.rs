//! The edge: what reaches a node's or a gateway's port before any upgrade — the first bytes of
//! a connection, the request head — and the registry and metrics the edge is built from.

use std::net::SocketAddr;
use std::time::Duration;

use ringcast_testkit::{http_get, spawn_server, Client, TestNode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{upgrade_request, NodeProcess, TestGateway};

/// A child process, SIGKILLed by PID and reaped when dropped (a failed assertion included).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Context switches so far of every thread of process `pid` (`/proc/PID/task/*/status`): a
/// count of how often the process woke up, whatever the machine's speed.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        panic!("process {pid} is gone");
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Opens `count` connections to `addr` that each send `first` and then nothing.
async fn idle_openers(addr: SocketAddr, count: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(first).await.expect("write");
        conns.push(s);
    }
    conns
}

/// How often process `pid` woke up over two seconds while `conns` sat idle.
async fn wakeups_while_idle(pid: u32) -> u64 {
    // Let the server take in what was sent first; its own start-up is over by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = wakeups(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    wakeups(pid) - before
}

/// Every connection in `conns` is closed by the server (EOF or reset) within `limit`.
async fn all_closed_within(conns: Vec<TcpStream>, limit: Duration) {
    for mut s in conns {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // an answer before the close is fine
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a connection stayed open past the handshake timeout"
        );
    }
}

/// Most wakeups an idle server may have over the two seconds measured: its own timers (health
/// checks every 100 ms, ping and stats ticks) with room to spare. A connection that polls wakes
/// its server ~100 times a second, so 100 of them would cost thousands.
const IDLE_WAKEUPS: u64 = 600;

#[tokio::test]
async fn a_first_byte_of_the_http2_preface_costs_no_wakeups_while_it_waits() {
    let node =
        NodeProcess::start_with("preface-node", &["--handshake-timeout-secs", "4"], None).await;
    let node_spec = node.spec();
    let (gateway, gw_addr) = spawn_server(
        env!("CARGO_BIN_EXE_ringcast-gateway"),
        &[
            "--node",
            &node_spec,
            "--handshake-timeout-secs",
            "4",
            "--health-interval-ms",
            "100",
        ],
    );
    let gateway = Reaped(gateway);
    ringcast_testkit::wait_until(Duration::from_secs(10), "gateway sees the node", || async {
        http_get(gw_addr, "/healthz").await.0 == 200
    })
    .await;

    for (what, addr, pid) in [
        ("node", node.addr, node.pid()),
        ("gateway", gw_addr, gateway.0.id()),
    ] {
        // `P`: a prefix of `PRI * HTTP/2.0`, so protocol detection cannot decide yet.
        let conns = idle_openers(addr, 100, b"P").await;
        let woke = wakeups_while_idle(pid).await;
        eprintln!("{what}: {woke} wakeups in 2 s with 100 connections that sent `P`");
        assert!(
            woke < IDLE_WAKEUPS,
            "{what} woke {woke} times in 2 s while 100 connections that sent one byte sat idle"
        );
        // An ordinary client is served meanwhile.
        assert_eq!(http_get(addr, "/healthz").await.0, 200, "{what} /healthz");
        // The handshake timeout (4 s) still ends them.
        all_closed_within(conns, Duration::from_secs(6)).await;
    }
    let (mut c, _) =
        Client::connect_welcomed(&format!("ws://{gw_addr}/ws?client_id=after-p")).await;
    c.send_json(json!({"type":"ping"})).await;
    c.recv_event("pong").await;
}

/// Sends `request` and returns the status of the answer (any answer: a 101 stays open, so this
/// reads only up to the end of the head).
async fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    let exchange = ringcast_net::http1_io::exchange(&mut s, request, &mut buf, |h| h.status);
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer head within 5 s"))
        .unwrap_or_else(|e| panic!("no HTTP answer: {e}"));
    status
}

/// An upgrade for `client_id` with `extra` header lines added, padded by one `X-Pad` header to
/// exactly `total` bytes when `total` is given.
fn upgrade_with(addr: SocketAddr, client_id: &str, extra: &str, total: Option<usize>) -> Vec<u8> {
    let base = upgrade_request(addr, &format!("/ws?client_id={client_id}"));
    let head = base.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n"), 1);
    let Some(total) = total else {
        return head.into_bytes();
    };
    let line = "X-Pad: \r\n".len();
    let pad = "p".repeat(total - head.len() - line);
    let padded = head.replacen("\r\n\r\n", &format!("\r\nX-Pad: {pad}\r\n\r\n"), 1);
    assert_eq!(padded.len(), total);
    padded.into_bytes()
}

#[tokio::test]
async fn a_head_the_gateway_accepts_is_one_its_node_accepts() {
    for transport in ["link", "tcp"] {
        let mut config = ringcast_node::Config::for_tests();
        config.node_id = Some("heads".into());
        let node = TestNode::start(config).await;
        let spec = format!("heads={}", node.addr);
        let gw = TestGateway::start(&["--node", &spec, "--node-transport", transport]).await;
        let addr = gw.addr;
        // 100 header lines, the most the gateway reads; it adds X-Forwarded-For and Via.
        let many: String = (0..95).map(|i| format!("X-Pad-{i}: v\r\n")).collect();
        let status = status_of(addr, &upgrade_with(addr, "many", &many, None)).await;
        assert_eq!(status, 101, "{transport}: 100 headers");
        // A head of exactly the gateway's --max-header-bytes (16 KiB), X-Forwarded-For and Via
        // from the client included, so the gateway's own entries make it longer still.
        let chain = "X-Forwarded-For: 10.1.2.3, 10.4.5.6\r\nVia: 1.1 corporate-proxy\r\n";
        let status = status_of(addr, &upgrade_with(addr, "full", chain, Some(16 * 1024))).await;
        assert_eq!(status, 101, "{transport}: a head of 16 KiB");
        // Both at once: 94 headers, the padding one and the upgrade's own five.
        let most: String = (0..94).map(|i| format!("X-Pad-{i}: v\r\n")).collect();
        let status = status_of(addr, &upgrade_with(addr, "both", &most, Some(16 * 1024))).await;
        assert_eq!(status, 101, "{transport}: 100 headers in 16 KiB");
        // One byte or one header more is the gateway's clear 431, and the node never saw it.
        let refused_before = gw.metric("ringcast_gateway_rejected_upgrades_total").await;
        let over = upgrade_with(addr, "over", "", Some(16 * 1024 + 1));
        assert_eq!(status_of(addr, &over).await, 431, "{transport}: 16 KiB + 1");
        let more: String = (0..96).map(|i| format!("X-Pad-{i}: v\r\n")).collect();
        let status = status_of(addr, &upgrade_with(addr, "more", &more, None)).await;
        assert_eq!(status, 431, "{transport}: 101 headers");
        assert_eq!(
            gw.metric("ringcast_gateway_rejected_upgrades_total").await,
            refused_before + 2.0,
            "{transport}: both refusals are the gateway's"
        );
        assert_eq!(
            node.metric("ringcast_node_upgrades_refused_total").await,
            0.0
        );
        assert_eq!(gw.healthy_ids().await, ["heads"], "{transport}");
        let (mut c, _) = Client::connect_welcomed(&gw.ws_url("after-heads")).await;
        c.send_json(json!({"type":"ping"})).await;
        c.recv_event("pong").await;
    }
}
