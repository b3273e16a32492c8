//! The embedded default: with no nodes and no Redis configured, the gateway runs one node
//! in-process (memory bus) on a loopback port and routes to it, so a bare
//! `ringcast-gateway` serves a working `/ws`.
//!
//! The node is a task of the gateway's drain: it begins its own drain (its clients get 1012
//! through their tunnels) when the gateway's begins, and the gateway's end waits for it.

use ringcast_net::drain::Drain;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

/// The id the embedded node reports in `welcome`.
pub const EMBEDDED_NODE_ID: &str = "embedded";

/// A running in-process node.
pub struct EmbeddedNode {
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
}

impl EmbeddedNode {
    /// The embedded node's configuration, checked (the gateway's `--check-config` calls this
    /// too, so a bad `RINGCAST_ROOM_OPTIONS` fails there and not only at start).
    pub fn config(
        auth: &ringcast_protocol::auth::AuthArgs,
        api_keys: &[String],
    ) -> Result<ringcast_node::Config, String> {
        let mut config = <ringcast_node::Config as clap::Parser>::try_parse_from(["ringcast-node"])
            .map_err(|e| format!("embedded node configuration: {e}"))?;
        if config.node_id.is_none() {
            config.node_id = Some(EMBEDDED_NODE_ID.to_owned());
        }
        config.redis_url = None;
        config.redis_cluster.clear();
        config.auth = auth.clone();
        config.api.api_keys = api_keys.to_vec();
        config
            .validate()
            .map_err(|e| format!("embedded node configuration: {e}"))?;
        Ok(config)
    }

    /// Starts the node. Its settings come from the same `RINGCAST_*` environment as the node
    /// binary's (limits, heartbeat, announce); its id is `embedded` unless `RINGCAST_NODE_ID`
    /// says otherwise; its authentication is the gateway's (`auth`), flags included. It runs on
    /// `drain` and drains with it.
    pub async fn start(
        auth: &ringcast_protocol::auth::AuthArgs,
        api_keys: &[String],
        drain: &Drain,
    ) -> Result<Self, String> {
        let config = Self::config(auth, api_keys)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the embedded node: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("embedded node address: {e}"))?
            .to_string();
        // The node's `run` takes its shutdown as a `watch`; it turns true when the gateway's
        // drain begins.
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let begin = {
            let drain = drain.clone();
            async move {
                drain.draining().await;
                let _ = shutdown_tx.send(true);
            }
        };
        let node = async move {
            if let Err(e) = ringcast_node::run(listener, config, shutdown_rx).await {
                warn!(error = %e, "embedded node failed");
            }
        };
        drain.spawn(async move {
            tokio::join!(node, begin);
        });
        info!(%addr, "no nodes configured: running an embedded node");
        Ok(EmbeddedNode { addr })
    }
}
