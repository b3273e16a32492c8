//! The faults themselves: `deploy/local/cluster.sh VERB NAME` (`drain`, `kill`, `restart`), each
//! call bounded in time, so the processes are found, checked and restarted the one way the
//! script knows.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Fault;

/// Runs `deploy/local/cluster.sh VERB NAME`, each call bounded.
pub(super) struct Cluster {
    /// The script.
    pub(super) script: PathBuf,
    /// How long one call may take.
    pub(super) timeout: Duration,
}

impl Cluster {
    async fn run(&self, verb: &str, name: &str) -> Result<(), String> {
        let what = format!("{} {verb} {name}", self.script.display());
        let out = tokio::process::Command::new("bash")
            .arg(&self.script)
            .args([verb, name])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(self.timeout, out)
            .await
            .map_err(|_| format!("{what}: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        Err(format!("{what}: {} {last}", out.status))
    }

    /// Applies `fault` to `node` (or Redis) and brings it back.
    pub(super) async fn apply(
        &self,
        fault: Fault,
        node: &str,
        down: Duration,
    ) -> Result<(), String> {
        match fault {
            Fault::Drain => {
                self.run("drain", node).await?;
                self.run("restart", node).await
            }
            Fault::Crash | Fault::CrashPublisher => {
                self.run("kill", node).await?;
                tokio::time::sleep(down).await;
                self.run("restart", node).await
            }
            Fault::Redis => {
                self.run("kill", "redis").await?;
                tokio::time::sleep(down).await;
                self.run("restart", "redis").await
            }
        }
    }
}
