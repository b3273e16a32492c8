//! Helpers for the loadtest's integration tests: run the real binary with a time limit.
#![allow(dead_code)] // each test file uses a different part of the helpers

use std::time::Duration;

/// What the binary did.
pub struct Run {
    /// Exit status code (-1 when killed by a signal).
    pub code: i32,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Run {
    /// Asserts the run exited 0 and returns its `--json` result object.
    pub fn ok_json(&self) -> serde_json::Value {
        assert_eq!(
            self.code, 0,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        self.json()
    }

    /// stdout parsed as the `--json` result object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `ringcast-loadtest ARGS` (no progress bar) and waits at most 20 s.
pub async fn loadtest(args: &[&str]) -> Run {
    loadtest_with(args, &[], Duration::from_secs(20)).await
}

/// Runs `ringcast-loadtest ARGS` (no progress bar) with extra environment `envs` and waits at
/// most `limit`.
pub async fn loadtest_with(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringcast-loadtest"));
    cmd.arg("--no-progress")
        .args(args)
        .kill_on_drop(true)
        .env_remove("RINGCAST_LOADTEST_URL")
        .envs(envs.iter().copied());
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ringcast-loadtest did not finish within {limit:?}"))
        .expect("ringcast-loadtest could not be started");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An in-process node on the test config with `tweak` applied, and its `ws://ADDR/ws` URL.
pub async fn node_with(
    tweak: impl FnOnce(&mut ringcast_node::Config),
) -> (ringcast_testkit::TestNode, String) {
    let mut config = ringcast_node::Config::for_tests();
    tweak(&mut config);
    let node = ringcast_testkit::TestNode::start(config).await;
    let url = node.ws_url("");
    (node, url)
}
