//! The ringcast gateway: the one public URL. It admits each WebSocket upgrade (Origin list,
//! token, per-address cap) before contacting any node, routes it to the node that owns its
//! client_id (the token's `sub` with authentication on) on a consistent-hash ring, fails over
//! along the ring when a node is down, and then only copies bytes.
//!
//! The binary is a thin wrapper over [`run`]; tests call the same function on port 0.

pub mod admission;
pub mod config;
pub mod connection;
pub mod direct;
pub mod embedded;
pub mod http;
pub mod limits;
pub mod links;
pub mod membership;
pub mod metrics;
pub mod node_io;
pub mod origin;
pub mod proxy;
pub mod server;
pub mod token;
pub mod tunnel;
pub mod upstream;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, LogFormat, NodeSpec, NodeTransport};

use admission::Admission;
use embedded::{EmbeddedNode, EMBEDDED_NODE_ID};
use links::Links;
use membership::{health, registry, Membership, Source, Thresholds};
use metrics::Metrics;
use origin::OriginPolicy;
use proxy::Proxy;
use ringcast_protocol::auth::Authenticator;
use tracing::{info, warn};

/// Why a gateway could not start.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The embedded node could not start.
    #[error("embedded node: {0}")]
    Embedded(String),
    /// The configuration cannot work (say, an unreadable JWT key).
    #[error("configuration: {0}")]
    Config(String),
}

/// Runs a gateway on `listener` until `shutdown` turns true, then drains and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    let auth = Authenticator::from_args(&config.auth).map_err(GatewayError::Config)?;
    if auth.is_some() {
        info!("authentication on: every upgrade needs a valid token");
    }
    let origins = OriginPolicy::new(config.allowed_origins.clone());
    let metrics = Arc::new(Metrics::new());
    let membership = Arc::new(Membership::new(
        config.vnodes,
        Thresholds {
            unhealthy: config.unhealthy_threshold,
            healthy: config.healthy_threshold,
        },
        metrics.clone(),
    ));
    for node in &config.nodes {
        membership.upsert(&node.id, &node.addr, node.weight, Source::Static);
    }
    let embedded = if config.embedded() {
        let node = EmbeddedNode::start(&config.auth)
            .await
            .map_err(GatewayError::Embedded)?;
        membership.upsert(EMBEDDED_NODE_ID, &node.addr, 1, Source::Embedded);
        Some(node)
    } else {
        None
    };

    let via = upstream::own_via();
    let (tasks_stop_tx, tasks_stop_rx) = watch::channel(false);
    let mut background = Vec::new();
    background.push(tokio::spawn(health::run(
        membership.clone(),
        config.health_interval(),
        config.health_timeout(),
        via.clone(),
        tasks_stop_rx.clone(),
    )));
    if let Some(url) = config.redis_url.clone() {
        background.push(tokio::spawn(registry::run(
            url,
            config.redis_prefix.clone(),
            config.poll_interval(),
            membership.clone(),
            metrics.clone(),
            tasks_stop_rx.clone(),
        )));
    }

    if config.node_transport == NodeTransport::Tcp && config.link_secret.is_some() {
        warn!("--link-secret is set but --node-transport is tcp: no links are made, the secret is unused");
    }
    let links = (config.node_transport == NodeTransport::Link).then(|| {
        Links::new(
            config.connect_timeout(),
            config.link_secret.clone(),
            &metrics,
        )
    });
    let proxy = Arc::new(Proxy {
        membership,
        metrics,
        admission: Admission { auth, origins },
        tunnels: TaskTracker::new(),
        force_close: CancellationToken::new(),
        connect_timeout: config.connect_timeout(),
        handshake_timeout: config.handshake_timeout(),
        max_attempts: config.max_attempts,
        copy_buffer_bytes: config.copy_buffer_bytes,
        tunnel_linger: Duration::from_secs(config.tunnel_linger_secs),
        links,
        via,
    });
    let proxy_after = proxy.clone();
    if config.max_header_bytes != config.max_header_bytes() {
        tracing::warn!(
            asked = config.max_header_bytes,
            used = config.max_header_bytes(),
            "--max-header-bytes is 8192..=16384 (what a node accepts); using the nearest"
        );
    }
    let http = Arc::new(http::Http {
        proxy,
        draining: AtomicBool::new(false),
        handshake_timeout: config.handshake_timeout(),
        max_header_bytes: config.max_header_bytes(),
    });
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    // The embedded node drains together with the gateway: its clients get 1012 through their
    // tunnels and reconnect once the process is back.
    let embedded_stop = async {
        if let Some(node) = embedded {
            let mut shutdown = shutdown.clone();
            let _ = shutdown.wait_for(|s| *s).await;
            node.stop().await;
        }
    };
    tokio::join!(
        server::serve(
            listener,
            http,
            server::Limits {
                max_connections: config.max_connections,
                max_connections_per_ip: config.max_connections_per_ip,
            },
            grace,
            shutdown.clone()
        ),
        embedded_stop
    );
    if let Some(links) = &proxy_after.links {
        links.close_all();
    }
    let _ = tasks_stop_tx.send(true);
    for task in background {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(())
}
