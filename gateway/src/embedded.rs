//! The embedded default: with no nodes and no Redis configured, the gateway runs one node
//! in-process (memory bus) on a loopback port and routes to it, so a bare
//! `ringcast-gateway` serves a working `/ws`.

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// The id the embedded node reports in `welcome`.
pub const EMBEDDED_NODE_ID: &str = "embedded";

/// A running in-process node.
pub struct EmbeddedNode {
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<Result<(), ringcast_node::NodeError>>,
}

impl EmbeddedNode {
    /// The embedded node's configuration, checked (the gateway's `--check-config` calls this
    /// too, so a bad `RINGCAST_ROOM_OPTIONS` fails there and not only at start).
    pub fn config(
        auth: &ringcast_protocol::auth::AuthArgs,
    ) -> Result<ringcast_node::Config, String> {
        let mut config = <ringcast_node::Config as clap::Parser>::try_parse_from(["ringcast-node"])
            .map_err(|e| format!("embedded node configuration: {e}"))?;
        if config.node_id.is_none() {
            config.node_id = Some(EMBEDDED_NODE_ID.to_owned());
        }
        config.redis_url = None;
        config.auth = auth.clone();
        config
            .validate()
            .map_err(|e| format!("embedded node configuration: {e}"))?;
        Ok(config)
    }

    /// Starts the node. Its settings come from the same `RINGCAST_*` environment as the node
    /// binary's (limits, heartbeat, announce); its id is `embedded` unless `RINGCAST_NODE_ID`
    /// says otherwise; its authentication is the gateway's (`auth`), flags included.
    pub async fn start(auth: &ringcast_protocol::auth::AuthArgs) -> Result<Self, String> {
        let config = Self::config(auth)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the embedded node: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("embedded node address: {e}"))?
            .to_string();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(ringcast_node::run(listener, config, shutdown_rx));
        info!(%addr, "no nodes configured: running an embedded node");
        Ok(EmbeddedNode {
            addr,
            shutdown_tx,
            task,
        })
    }

    /// Drains the node (its clients get 1012) and waits for it to finish.
    pub async fn stop(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.task.await;
    }
}
