//! The ringcast gateway: the one public URL. It admits each WebSocket upgrade (Origin list,
//! token, per-address cap) before contacting any node, routes it to the node that owns its
//! client_id (the token's `sub` with authentication on) on a consistent-hash ring, fails over
//! along the ring when a node is down, and then only copies bytes.
//!
//! The binary is a thin wrapper over [`run`]; tests call the same function on port 0.

pub mod admission;
pub mod api;
pub mod client_io;
pub mod config;
pub mod connection;
pub mod demo;
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
pub mod shutdown;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, LogFormat, NodeSpec, NodeTransport};

use admission::Admission;
use embedded::{EmbeddedNode, EMBEDDED_NODE_ID};
use links::Links;
use membership::{health, registry, Membership, Source, Thresholds};
use metrics::Metrics;
use origin::OriginPolicy;
use proxy::Proxy;
use ringcast_net::drain::Drain;
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

/// Runs a gateway on `listener` until `shutdown` turns true (or its sender is gone), then
/// drains (see [`shutdown`]) and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
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
    // The one shutdown value every part gets and every task runs on; `shutdown` only begins it.
    let drain = Drain::new();
    // Whatever `run` returns with, early (a flag that fails past this point) or after the drain,
    // every task it spawned is told to stop.
    let _stop_on_return = drain.stop_on_drop();
    // Before anything listens: a pair that cannot be served stops the start.
    let tls = tls::Tls::start(&config.tls, &metrics, &drain)
        .map_err(|e| GatewayError::Config(format!("TLS: {e}")))?;
    // Before the embedded node starts: --node-tls with no other node stops the start.
    let connector = config.node_connector().map_err(GatewayError::Config)?;
    if connector.is_tls() {
        info!("--node-tls: connections to nodes are TLS, verified against --node-ca");
    }
    if config.embedded() {
        // It drains together with the gateway: its clients get 1012 through their tunnels and
        // reconnect once the process is back.
        let node = EmbeddedNode::start(&config.auth, &config.api.api_keys, &drain)
            .await
            .map_err(GatewayError::Embedded)?;
        membership.upsert(EMBEDDED_NODE_ID, &node.addr, 1, Source::Embedded);
    }

    let via = upstream::own_via();
    drain.spawn(health::run(
        membership.clone(),
        config.health_interval(),
        config.health_timeout(),
        via.clone(),
        connector.clone(),
        drain.clone(),
    ));
    if let Some(target) = config.redis_target() {
        drain.spawn(registry::run(
            target,
            config.redis_prefix.clone(),
            config.poll_interval(),
            membership.clone(),
            metrics.clone(),
            drain.clone(),
        ));
    }

    if config.node_transport == NodeTransport::Tcp && config.link_secret.is_some() {
        warn!("--link-secret is set but --node-transport is tcp: no links are made, the secret is unused");
    }
    let links = (config.node_transport == NodeTransport::Link).then(|| {
        Links::new(
            config.connect_timeout(),
            config.link_secret.clone(),
            &metrics,
            drain.clone(),
        )
        .with_connector(connector.clone())
    });
    let proxy = Arc::new(Proxy {
        membership,
        metrics,
        admission: Admission { auth, origins },
        drain: drain.clone(),
        connect_timeout: config.connect_timeout(),
        handshake_timeout: config.handshake_timeout(),
        max_attempts: config.max_attempts,
        copy_buffer_bytes: config.copy_buffer_bytes,
        tunnel_linger: Duration::from_secs(config.tunnel_linger_secs),
        connector: connector.clone(),
        links,
        via,
    });
    if config.max_header_bytes != config.max_header_bytes() {
        tracing::warn!(
            asked = config.max_header_bytes,
            used = config.max_header_bytes(),
            "--max-header-bytes is 8192..=16384 (what a node accepts); using the nearest"
        );
    }
    let api = Arc::new(
        api::Api::new(
            config.api.api_keys.clone(),
            config.api.api_max_body_bytes as usize,
            proxy.membership.clone(),
            config.connect_timeout(),
            Duration::from_secs(30),
        )
        .with_connector(connector),
    );
    if let Some(addr) = config.api_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| GatewayError::Config(format!("--api-listen {addr}: {e}")))?;
        drain.spawn(api::serve_listener(listener, api.clone(), drain.clone()));
    }
    let http = Arc::new(http::Http {
        proxy,
        handshake_timeout: config.handshake_timeout(),
        max_header_bytes: config.max_header_bytes(),
        api: config.api_listen.is_none().then_some(api),
        demo: config.demo,
    });
    let begin = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
        drain.begin();
    };
    let limits = server::Limits {
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
    };
    if let Some(addr) = config.plain_listen {
        let plain = TcpListener::bind(addr)
            .await
            .map_err(|e| GatewayError::Config(format!("--plain-listen {addr}: {e}")))?;
        let edge = connection::Edge {
            tls: None,
            upgrades: false,
        };
        // Probes and scrapes only: a small bound of its own, apart from the clients' limit.
        let limits = server::Limits {
            max_connections: 1024,
            max_connections_per_ip: 0,
        };
        drain.spawn(server::serve(
            plain,
            http.clone(),
            edge,
            limits,
            drain.clone(),
        ));
    }
    let edge = connection::Edge {
        tls,
        upgrades: true,
    };
    let serve = server::serve(listener, http, edge, limits, drain.clone());
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    tokio::join!(begin, serve, shutdown::drain(&drain, grace));
    Ok(())
}
