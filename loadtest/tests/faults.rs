//! `faults` for real: deploy/local/cluster.sh starts a real redis-server, three `ringcast-node`
//! processes and a gateway in a state folder of its own; `ringcast-loadtest faults` drains one
//! node, SIGKILLs one, SIGKILLs the publisher's, then SIGKILLs Redis (restarting each through
//! the script), with every client reconnecting and rejoining with `since` and the publisher
//! sending again, with the same ids, whatever was not acknowledged. Nothing stored may be
//! missing or arrive twice, nothing sent may go unacknowledged, and the faults must really have
//! moved clients and forced messages to be sent again.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/cluster.sh");

/// The node and gateway binaries beside this test's own (`target/<profile>/`), built when
/// missing (e.g. `cargo test -p ringcast-loadtest` on a clean tree).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf();
    let missing = ["ringcast-node", "ringcast-gateway"]
        .iter()
        .any(|b| !dir.join(b).exists());
    if missing {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "ringcast-node", "-p", "ringcast-gateway"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build for the node and the gateway");
        assert!(status.success(), "building ringcast-node/gateway failed");
    }
    dir
}

/// A cluster.sh cluster in its own state folder; `down` on drop, so a failing test leaves no
/// process behind.
struct Cluster {
    state: PathBuf,
    bin_dir: PathBuf,
    url: String,
}

impl Cluster {
    fn up(nodes: u32) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let state =
            std::env::temp_dir().join(format!("ringcast-faults-{}-{nanos}", std::process::id()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cluster = Cluster {
            state,
            bin_dir: bin_dir(),
            url: String::new(),
        };
        let out = cluster.run(&[
            "up",
            "--nodes",
            &nodes.to_string(),
            "--gateway-port",
            &port.to_string(),
        ]);
        assert!(out.0, "cluster.sh up failed:\n{}", out.1);
        cluster.url = format!("ws://127.0.0.1:{port}/ws");
        cluster
    }

    /// `cluster.sh ARGS` with this state folder, bounded by 60 s; (success, stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("bash");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .arg(CLUSTER)
            .args(args)
            .envs(self.env())
            .env("RINGCAST_BIN_DIR", &self.bin_dir)
            // Drains that fit the test's time, and room for the publisher's rate.
            .env("RINGCAST_LOCAL_DRAIN_DELAY_SECS", "1")
            .env("RINGCAST_LOCAL_SHUTDOWN_GRACE_SECS", "1")
            .env(
                "RINGCAST_LOCAL_NODE_ARGS",
                "--rate-limit-per-sec 1000 --rate-limit-burst 2000",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run deploy/local/cluster.sh");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("cluster.sh output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The environment cluster.sh and the load generator share: the state folder.
    fn env(&self) -> Vec<(&'static str, &Path)> {
        vec![("RINGCAST_LOCAL_STATE", self.state.as_path())]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_and_duplicate_nothing_and_retries_are_stored_once() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::up(3))
        .await
        .expect("cluster up");
    let state = cluster.state.to_string_lossy().into_owned();
    let run = support::loadtest_with(
        &[
            "--url",
            &cluster.url,
            "--json",
            "faults",
            "--faults",
            "drain,crash,crash-publisher,redis",
            "--cluster",
            CLUSTER,
            "--subscribers",
            "20",
            "--rate",
            "100",
            "--settle-secs",
            "2",
            "--down-secs",
            "0.5",
            "--drain-timeout-secs",
            "1",
        ],
        &[("RINGCAST_LOCAL_STATE", &state)],
        Duration::from_secs(90),
    )
    .await;
    let v = run.json();
    assert_eq!(v["publisher"], "ids", "{v:#}");
    let phases = v["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["fault"].as_str()).collect();
    assert_eq!(
        names,
        ["baseline", "drain", "crash", "crash-publisher", "redis"],
        "{v:#}"
    );
    for p in phases {
        let fault = &p["fault"];
        assert_eq!(p["error"], serde_json::Value::Null, "{fault}: {p}");
        assert!(
            p["stored"].as_u64() > Some(0),
            "{fault}: nothing stored: {p}"
        );
        assert_eq!(p["missing"], 0, "{fault}: stored messages missing: {p}");
        assert_eq!(p["duplicated"], 0, "{fault}: duplicate deliveries: {p}");
        if fault != "redis" {
            // Only a Redis that lost the room (and its dedupe records) may deliver a message
            // whose first store was never acknowledged a second time, in the new epoch.
            assert_eq!(p["redelivered_after_reset"], 0, "{fault}: {p}");
        }
        assert_eq!(p["rate_limited"], 0, "{fault}: {p}");
        // Every message the publisher sent was acknowledged, none at a second offset.
        assert_eq!(p["lost"], 0, "{fault}: sent, never acknowledged: {p}");
        assert_eq!(p["acked"], p["sent"], "{fault}: {p}");
        assert_eq!(p["ack_conflicts"], 0, "{fault}: stored twice: {p}");
    }
    for fault in &phases[1..4] {
        // The fault hit a node serving clients: someone had to come back.
        assert!(
            fault["reconnects"].as_u64() > Some(0),
            "{}: no client reconnected, so no fault happened: {fault}",
            fault["fault"]
        );
        assert!(
            fault["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("node-")),
            "{fault}"
        );
    }
    // The publisher's node died: it came back elsewhere, sent its last acknowledged messages
    // again, and the server's dedupe answered every one with its first offset.
    let crash = &phases[3];
    assert!(crash["publisher_reconnects"].as_u64() > Some(0), "{crash}");
    let rechecked = crash["rechecked"].as_u64().unwrap_or(0);
    assert!(
        rechecked > 0,
        "nothing sent again after the reconnect: {crash}"
    );
    assert!(
        crash["repeat_acks"].as_u64() >= Some(rechecked),
        "a message sent again was not answered by the dedupe: {crash}"
    );
    // Redis went away: publishes were refused, and every refused one was sent again.
    let redis = &phases[4];
    let refused = redis["refused"].as_u64().unwrap_or(0);
    assert!(
        refused > 0,
        "no publish was refused while Redis was down: {redis}"
    );
    assert!(
        redis["resent"].as_u64() > Some(0),
        "refused messages were not sent again: {redis}"
    );
    assert_eq!(run.code, 0, "problems: {}", run.stderr);
    assert_eq!(v["ok"], true, "{v:#}");
}
