//! A ringcast node running in the test's process on a port-0 listener.

use std::net::SocketAddr;
use std::time::Duration;

use ringcast_node::{Config, MemoryBroker, NodeError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A node started by a test; stops (gracefully) when [`TestNode::stop`] is called or it is dropped.
pub struct TestNode {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

impl TestNode {
    /// Runs `ringcast_node::run` (memory bus, or Redis when `config.redis_url` is set).
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(ringcast_node::run(listener, config, shutdown_rx));
        TestNode {
            addr,
            shutdown_tx,
            task: Some(task),
        }
    }

    /// Runs a node on a shared in-memory broker (several nodes, one process, no Redis).
    pub async fn start_on(config: Config, broker: MemoryBroker) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(ringcast_node::run_with_broker(
            listener,
            config,
            broker,
            shutdown_rx,
        ));
        TestNode {
            addr,
            shutdown_tx,
            task: Some(task),
        }
    }

    /// `ws://ADDR/ws?client_id=ID` (no query when `id` is empty).
    pub fn ws_url(&self, id: &str) -> String {
        crate::ws_url(self.addr, id)
    }

    /// GET a path on the node.
    pub async fn get(&self, path: &str) -> (u16, String) {
        crate::http_get(self.addr, path).await
    }

    /// `/stats` as JSON.
    pub async fn stats(&self) -> serde_json::Value {
        let (status, body) = self.get("/stats").await;
        assert_eq!(status, 200, "/stats: {body}");
        serde_json::from_str(&body).expect("/stats is JSON")
    }

    /// The value of one un-labelled metric (or the sum over its label sets) from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        crate::metric_sum(&body, name)
    }

    /// Signals shutdown and waits (up to 30 s) for `run` to return.
    pub async fn stop(mut self) -> Result<(), NodeError> {
        let _ = self.shutdown_tx.send(true);
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("node did not stop within 30 s")
            .expect("node task panicked")
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&self) {
        let _ = self.shutdown_tx.send(true);
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
