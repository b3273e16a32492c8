//! The edge: what reaches a node's or a gateway's port before any upgrade — the first bytes of
//! a connection, the request head — and the registry and metrics the edge is built from.

use std::net::SocketAddr;
use std::time::Duration;

use ringcast_testkit::{http_get, spawn_server, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::NodeProcess;

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
