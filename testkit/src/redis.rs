//! A real `redis-server` on a free loopback port, killed by PID when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::DeadPort;

/// One redis-server process owned by a test.
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on (kept across [`RedisServer::restart`]).
    pub port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    /// Holds the port while the server is down, so that no other test's server takes it
    /// before [`RedisServer::restart`].
    reserved: Option<DeadPort>,
}

/// Per-process counter for the servers' data directories.
static SERVERS: AtomicU32 = AtomicU32::new(0);

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING.
    /// Panics (failing the test loudly) when `redis-server` is not installed.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments (kept across restarts),
    /// e.g. a TLS port or ACL users. The plain port stays open for readiness checks and `cli`.
    pub fn start_with_args(extra_args: &[&str]) -> Self {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringcast-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis temp dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            reserved: None,
        };
        let (child, port) =
            crate::spawn_listening("redis-server", Duration::from_secs(10), |port| {
                server.command(port)
            });
        server.child = Some(child);
        server.port = port;
        server.wait_ready();
        server
    }

    fn command(&self, port: u16) -> Command {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
        ])
        .arg(&self.dir)
        .args(&self.extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd
    }

    /// Waits until the server answers PING.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .cli(&["PING"])
                .map(|o| o.trim() == "PONG")
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs `redis-cli -p PORT args…`; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILLs the server (by PID) and reaps it. Its port stays reserved, refusing
    /// connections, until [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.reserved = DeadPort::hold(self.port);
            if self.reserved.is_none() {
                eprintln!(
                    "redis port {} was taken the moment its server died; a restart will fail",
                    self.port
                );
            }
        }
    }

    /// Starts a fresh server on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        // Given up the moment before the new server binds it.
        self.reserved = None;
        let mut child = self
            .command(self.port)
            .spawn()
            .expect("redis-server is not installed or not on PATH: run the README's test command, which installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !crate::listens_on(child.id(), self.port) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server could not restart on port {}: {status}",
                    self.port
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server did not listen again on port {} within 10 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        self.wait_ready();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
