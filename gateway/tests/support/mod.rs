//! Helpers for the gateway's integration tests: a gateway on port 0, node processes, raw HTTP.
#![allow(dead_code)]

pub mod auth;
pub mod manifests;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use ringcast_gateway::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A gateway running `ringcast_gateway::run` in the test's process on a port-0 listener.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), ringcast_gateway::GatewayError>>>,
}

impl TestGateway {
    /// Starts a gateway with `args` (flags after the program name); health checks every
    /// 100 ms and 500 ms timeouts unless `args` says otherwise.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with(Self::config(args)).await
    }

    /// The config [`TestGateway::start`] runs with `args`.
    pub fn config(args: &[&str]) -> Config {
        let mut argv = vec!["ringcast-gateway"];
        for (flag, value) in [
            ("--health-interval-ms", "100"),
            ("--health-timeout-ms", "500"),
            ("--connect-timeout-ms", "500"),
        ] {
            if !args.contains(&flag) {
                argv.extend([flag, value]);
            }
        }
        argv.extend_from_slice(args);
        Config::parse_from(argv)
    }

    /// Starts a gateway with `config`.
    pub async fn start_with(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        Self::start_on(listener, config)
    }

    /// Starts a gateway with `config` on `listener`, for a config that names the gateway's own
    /// address.
    pub fn start_on(listener: TcpListener, config: Config) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(ringcast_gateway::run(listener, config, shutdown_rx));
        TestGateway {
            addr,
            shutdown_tx,
            task: Some(task),
        }
    }

    /// `ws://ADDR/ws?client_id=ID` (no query when `id` is empty).
    pub fn ws_url(&self, id: &str) -> String {
        ringcast_testkit::ws_url(self.addr, id)
    }

    /// GET a path on the gateway.
    pub async fn get(&self, path: &str) -> (u16, String) {
        ringcast_testkit::http_get(self.addr, path).await
    }

    /// `/nodes` as JSON.
    pub async fn nodes(&self) -> serde_json::Value {
        let (status, body) = self.get("/nodes").await;
        assert_eq!(status, 200, "/nodes: {body}");
        serde_json::from_str(&body).expect("/nodes is JSON")
    }

    /// Ids of the healthy members, sorted.
    pub async fn healthy_ids(&self) -> Vec<String> {
        let v = self.nodes().await;
        let mut ids: Vec<String> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["healthy"] == true)
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// The sum of a metric's samples (all label sets) from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        ringcast_testkit::metric_sum(&body, name)
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Signals shutdown and waits (up to 30 s) for `run` to return.
    pub async fn stop(mut self) {
        self.signal_stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("gateway did not stop within 30 s")
                .expect("gateway task panicked")
                .expect("gateway returned an error");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The `ringcast-node` binary. `CARGO_BIN_EXE_*` only exists for a package's own binaries, so
/// it is found next to this test executable (`target/<profile>/deps/..` → `target/<profile>/`),
/// where `cargo test --workspace` has built it; when it is missing (e.g. `cargo test -p
/// ringcast-gateway` on a clean tree) it is built with `cargo build -p ringcast-node --bin
/// ringcast-node`. `RINGCAST_NODE_BIN` overrides the path.
pub fn node_binary() -> PathBuf {
    if let Ok(p) = std::env::var("RINGCAST_NODE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("ringcast-node");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let status = Command::new(cargo)
            .args(["build", "-p", "ringcast-node", "--bin", "ringcast-node"])
            .current_dir(workspace)
            .status()
            .expect("run cargo build for ringcast-node");
        assert!(status.success(), "building ringcast-node failed");
    }
    assert!(bin.exists(), "ringcast-node not found at {}", bin.display());
    bin
}

/// A `ringcast-node` child process, SIGKILLed by PID when dropped.
pub struct NodeProcess {
    /// Its node id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    extra_args: Vec<String>,
    log: Option<std::path::PathBuf>,
    /// Holds the port while the process is down, until [`NodeProcess::restart`].
    reserved: Option<ringcast_testkit::DeadPort>,
}

impl NodeProcess {
    /// Starts `ringcast-node --listen 127.0.0.1:PORT --node-id ID` on a free port and waits
    /// until its `/healthz` answers 200.
    pub async fn start(id: &str) -> Self {
        Self::start_with(id, &[], None).await
    }

    /// Like [`NodeProcess::start`], with extra flags; with `log`, the process runs with
    /// `RUST_LOG=debug` and its stdout and stderr both go to that file.
    pub async fn start_with(id: &str, extra_args: &[&str], log: Option<&std::path::Path>) -> Self {
        let mut node = NodeProcess {
            id: id.to_owned(),
            addr: ([127, 0, 0, 1], 0).into(),
            child: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            log: log.map(std::path::Path::to_path_buf),
            reserved: None,
        };
        let (child, port) =
            ringcast_testkit::spawn_listening("ringcast-node", Duration::from_secs(10), |port| {
                node.command(port)
            });
        node.child = Some(child);
        node.addr.set_port(port);
        node.wait_healthy().await;
        node
    }

    /// Starts the process again on its port, after [`NodeProcess::kill`], with the same flags.
    pub async fn restart(&mut self) {
        self.kill();
        self.reserved = None; // given up the moment before the new process binds it
        let port = self.addr.port();
        let mut child = self.command(port).spawn().expect("spawn ringcast-node");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ringcast_testkit::listens_on(child.id(), port) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ringcast-node could not restart on port {port}: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ringcast-node did not listen again on port {port} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.child = Some(child);
        self.wait_healthy().await;
    }

    fn command(&self, port: u16) -> Command {
        let mut cmd = Command::new(node_binary());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
            cmd.env_remove(k);
        }
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-id",
            &self.id,
        ])
        .args(["--shutdown-grace-secs", "1"])
        .args(&self.extra_args);
        match &self.log {
            Some(path) => {
                let out = std::fs::File::create(path).expect("create the node log file");
                let err = out.try_clone().expect("clone the log file handle");
                cmd.env("RUST_LOG", "debug").stdout(out).stderr(err)
            }
            None => cmd
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        };
        cmd
    }

    async fn wait_healthy(&self) {
        let addr = self.addr;
        ringcast_testkit::wait_until(Duration::from_secs(10), "node process /healthz", || {
            healthz_ok(addr)
        })
        .await;
    }

    /// `ID=127.0.0.1:PORT`, as `--node` takes it.
    pub fn spec(&self) -> String {
        format!("{}={}", self.id, self.addr)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGKILLs the process and reaps it. Its port stays reserved, refusing connections as a
    /// dead node's does, until [`NodeProcess::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.reserved = ringcast_testkit::DeadPort::hold(self.addr.port());
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `GET /healthz` on `addr` answers 200 (false when nothing listens).
pub async fn healthz_ok(addr: SocketAddr) -> bool {
    use ringcast_net::http1::client::push_request_head;
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let mut req = Vec::new();
    let host = addr.to_string();
    push_request_head(
        &mut req,
        "GET",
        "/healthz",
        None,
        [("Host", host.as_str()), ("Connection", "close")],
    )
    .expect("a plain request");
    let mut buf = Vec::new();
    let status = ringcast_net::http1_io::exchange(&mut s, &req, &mut buf, |h| h.status);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), status).await,
        Ok(Ok((200, _)))
    )
}

/// A valid upgrade request head for `path_and_query` (ends with the blank line).
pub fn upgrade_request(addr: SocketAddr, path_and_query: &str) -> String {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client text frame carrying `payload` (< 126 bytes).
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Connects `id` through the gateway; returns the client and the node that welcomed it.
pub async fn connect_to_node(gw: &TestGateway, id: &str) -> (ringcast_testkit::Client, String) {
    let mut c = ringcast_testkit::Client::connect(&gw.ws_url(id)).await;
    let w = c.recv_event("welcome").await;
    let node = w["node"].as_str().expect("welcome.node").to_owned();
    (c, node)
}

/// Sends `signal` (`-TERM`, `-STOP`, …) to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {signal} {pid}");
}

/// Node processes `ids` on the Redis at `redis_url` (fast reconnects, and `node_args`), and an
/// in-process gateway over them with `gateway_args`.
pub async fn nodes_behind_gateway(
    redis_url: &str,
    ids: &[&str],
    node_args: &[&str],
    gateway_args: &[&str],
) -> (Vec<NodeProcess>, TestGateway) {
    let mut nodes = Vec::new();
    for id in ids {
        let mut args = vec!["--redis-url", redis_url, "--redis-reconnect-max-ms", "250"];
        args.extend_from_slice(node_args);
        nodes.push(NodeProcess::start_with(id, &args, None).await);
    }
    let specs: Vec<String> = nodes.iter().map(NodeProcess::spec).collect();
    let mut args: Vec<&str> = specs.iter().flat_map(|s| ["--node", s.as_str()]).collect();
    args.extend_from_slice(gateway_args);
    let gw = TestGateway::start(&args).await;
    (nodes, gw)
}
