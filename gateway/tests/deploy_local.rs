//! `deploy/local/cluster.sh` as an operator runs it: `up --nodes 3` (real redis-server, node and
//! gateway processes), an independent client (python `websockets`, `deploy_drain.py`) drives the
//! protocol through its gateway and drains one node (SIGTERM → 1012 → reconnect elsewhere), `add`
//! puts a new node on the gateway's ring, then `down` leaves none of the recorded PIDs alive.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/cluster.sh");

/// A state folder of its own, and `down` on drop so a failing test leaves nothing running.
struct Cluster {
    state: PathBuf,
    bin_dir: PathBuf,
}

impl Cluster {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let state =
            std::env::temp_dir().join(format!("ringcast-local-{}-{nanos}", std::process::id()));
        // The binaries this test run built: the gateway is this package's, the node sits beside it.
        let bin_dir = support::node_binary()
            .parent()
            .expect("binary directory")
            .to_path_buf();
        let gateway = PathBuf::from(env!("CARGO_BIN_EXE_ringcast-gateway"));
        assert_eq!(gateway.parent(), Some(bin_dir.as_path()));
        Cluster { state, bin_dir }
    }

    /// Runs `cluster.sh ARGS` with this cluster's state folder and binaries, bounded by 60 s.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("bash");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .arg(CLUSTER)
            .args(args)
            .env("RINGCAST_LOCAL_STATE", &self.state)
            .env("RINGCAST_BIN_DIR", &self.bin_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run deploy/local/cluster.sh");
        wait_bounded(
            child,
            Duration::from_secs(60),
            &format!("cluster.sh {args:?}"),
        )
    }

    /// PIDs recorded under the state folder (`NAME.pid` holds `PID TICKS EXE`).
    fn pids(&self) -> Vec<(String, u32)> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(&self.state)
            .expect("state folder")
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = text.split_whitespace().next().and_then(|p| p.parse().ok());
                let name = path.file_stem().unwrap_or_default().to_string_lossy();
                pids.push((name.into_owned(), pid.expect("a PID in the .pid file")));
            }
        }
        pids.sort();
        pids
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn wait_bounded(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("collect output"),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "{what} did not finish within {limit:?}:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether PID is a live process (a zombie has exited; it only waits to be reaped).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn exe(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[tokio::test]
async fn local_cluster_up_drain_one_node_add_one_and_down_leaves_nothing_running() {
    let cluster = Cluster::new();
    let gateway_port = ringcast_testkit::free_port().to_string();
    let out = cluster.run(&["up", "--nodes", "3", "--gateway-port", &gateway_port]);
    assert!(out.status.success(), "up failed: {}", text(&out));
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        url,
        format!("ws://127.0.0.1:{gateway_port}/ws"),
        "{}",
        text(&out)
    );

    let pids = cluster.pids();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["gateway", "node-1", "node-2", "node-3", "redis"]);
    for (name, pid) in &pids {
        assert!(alive(*pid), "{name} (pid {pid}) is not running after up");
    }
    let node_exe = exe(pids[1].1).expect("node exe");
    assert_eq!(node_exe.file_name(), Some("ringcast-node".as_ref()));

    let status = cluster.run(&["status"]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    for name in names
        .iter()
        .filter(|n| n.starts_with("node-") || **n == "gateway")
    {
        let line = status_text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from status:\n{status_text}"));
        assert!(line.contains(" 200 "), "{name} not healthy: {line}");
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy_drain.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(&url)
        .arg(CLUSTER)
        .env("RINGCAST_LOCAL_STATE", &cluster.state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed (the README's test command installs it with websockets)");
    let drained = wait_bounded(child, Duration::from_secs(40), "deploy_drain.py");
    assert!(
        drained.status.success(),
        "drain scenario failed: {}",
        text(&drained)
    );
    assert!(
        String::from_utf8_lossy(&drained.stdout).contains("drain ok"),
        "{}",
        text(&drained)
    );
    // The drained node (node-2: the scenario drains the middle of the sorted node names) is gone.
    assert!(!alive(pids[2].1), "node-2 still runs after its drain");

    // Adding a node: it registers through Redis and the gateway puts it on the ring.
    let added = cluster.run(&["add"]);
    assert!(added.status.success(), "add failed: {}", text(&added));
    assert_eq!(String::from_utf8_lossy(&added.stdout).trim(), "node-4");
    let gateway_addr: std::net::SocketAddr =
        format!("127.0.0.1:{gateway_port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = ringcast_testkit::http_get(gateway_addr, "/nodes").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("/nodes JSON");
        let mut healthy: Vec<&str> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["healthy"] == true)
            .filter_map(|n| n["id"].as_str())
            .collect();
        healthy.sort();
        if healthy == ["node-1", "node-3", "node-4"] {
            break;
        }
        assert!(Instant::now() < deadline, "ring after add: {healthy:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = cluster.pids();
    let names_now: Vec<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names_now,
        ["gateway", "node-1", "node-3", "node-4", "redis"]
    );
    // Every process this cluster ever ran: the first five (node-2 included) and node-4.
    let mut pids = pids;
    pids.extend(now.into_iter().filter(|(n, _)| n == "node-4"));

    let down = cluster.run(&["down"]);
    assert!(down.status.success(), "down failed: {}", text(&down));
    for (name, pid) in &pids {
        assert!(
            !alive(*pid),
            "{name} (pid {pid}) still runs after down: {}",
            text(&down)
        );
    }
    assert!(
        cluster.pids().is_empty(),
        "down left .pid files: {:?}",
        cluster.pids()
    );
}

#[test]
fn down_never_kills_a_process_that_is_not_ours() {
    // A .pid file naming a live process this cluster did not start (this test itself, whose
    // start time differs from the recorded one): `down` must leave it alone.
    let cluster = Cluster::new();
    std::fs::create_dir_all(&cluster.state).expect("state folder");
    let me = std::process::id();
    let path: &Path = &cluster.state.join("node-1.pid");
    std::fs::write(path, format!("{me} 1 /bin/false\n")).expect("write pid file");
    let out = cluster.run(&["down"]);
    assert!(out.status.success(), "down failed: {}", text(&out));
    assert!(alive(me));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("left alone"),
        "{}",
        text(&out)
    );
}
