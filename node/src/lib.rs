//! A ringcast node: holds WebSocket connections, tracks rooms, and relays broadcast, room and
//! direct traffic to other nodes over a bus (in memory in one process, Redis across many).
//!
//! The binary is a thin wrapper over [`run`]; tests call the same function on port 0.

pub mod admin;
pub mod api;
pub mod bus;
pub mod config;
pub mod gap_fill;
pub mod history_request;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbound;
pub mod presence;
pub mod presence_lease;
pub mod publisher;
pub mod ratelimit;
pub mod registration;
pub mod room_options;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod subscriptions;
pub mod wire;
pub mod writer;

use std::sync::Arc;

use ringcast_protocol::auth::Authenticator;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

pub use bus::memory::MemoryBroker;
pub use config::Config;

use bus::redis::RedisBus;
use bus::redis_config::RedisBusConfig;
use bus::{Bus, Channel, Inbox};
use hub::Hub;
use metrics::Metrics;
use ringcast_net::drain::Drain;
use state::Shared;

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The bus could not be set up.
    #[error("bus: {0}")]
    Bus(#[from] bus::BusError),
}

/// Runs a node on `listener` until `shutdown` turns true, then drains and returns.
/// Uses Redis when `config.redis_url` is set, else a private in-memory bus.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let Some(settings) = RedisBusConfig::from_config(&config) else {
        return run_with_broker(listener, config, MemoryBroker::new(), shutdown).await;
    };
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(&config.resolved_node_id(), metrics.clone()));
    let bus = RedisBus::start(settings, inbox(&hub), metrics.clone())
        .map_err(|e| NodeError::Config(e.to_string()))?;
    // Redis down at startup is not fatal: after a short wait (enough for a reachable Redis) the
    // node serves, unhealthy (/healthz 503), while the bus keeps reconnecting in the background.
    let startup_wait = config.bus_timeout().min(std::time::Duration::from_secs(1));
    if !bus.wait_healthy(startup_wait).await {
        warn!("Redis unreachable at startup; serving unhealthy and retrying");
    }
    run_on_bus(listener, config, hub, Arc::new(bus), metrics, shutdown).await
}

/// Runs a node on an in-memory bus shared with the other nodes of `broker` (same process).
pub async fn run_with_broker(
    listener: TcpListener,
    config: Config,
    broker: MemoryBroker,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(&config.resolved_node_id(), metrics.clone()));
    let bus: Arc<dyn Bus> = Arc::new(broker.attach(inbox(&hub)));
    run_on_bus(listener, config, hub, bus, metrics, shutdown).await
}

/// The inbox that hands bus payloads to the hub.
pub fn inbox(hub: &Arc<Hub>) -> Inbox {
    let hub = hub.clone();
    Arc::new(move |payload| hub.deliver(payload))
}

async fn run_on_bus(
    listener: TcpListener,
    config: Config,
    hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    metrics.init_api_labels(&api::methods::METHODS);
    let auth = Authenticator::from_args(&config.auth).map_err(NodeError::Config)?;
    let room_options = config.room_options().map_err(NodeError::Config)?;
    // Bounded: a bus that is down must not keep the node from serving. A bus that can fail keeps
    // the broadcast channel wanted and follows it once it is back.
    match tokio::time::timeout(config.bus_timeout(), bus.subscribe(&[Channel::Broadcast])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "broadcast channel not subscribed yet; followed once the bus is up")
        }
        Err(_) => warn!("broadcast subscription timed out"),
    }
    let registration = config.registration();
    hub.follow_bus(bus.subscriptions_live());
    let reader = gap_fill::Reader {
        bus: bus.clone(),
        bus_timeout: config.bus_timeout(),
        meta_ttl: config.meta_ttl(),
    };
    // The one shutdown value every part gets; `shutdown` (which ends when it turns true or its
    // sender is gone) only begins it.
    let drain = Drain::new();
    let begin = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
        drain.begin();
    };
    let tls = server::tls(&config.tls, &drain).map_err(NodeError::Config)?;
    let shared = Arc::new(Shared::new(
        config,
        room_options,
        auth,
        hub.clone(),
        bus.clone(),
        metrics,
        drain.clone(),
    ));
    drain.spawn(gap_fill::run(hub.clone(), reader, drain.clone()));
    drain.spawn(presence_lease::run(shared.clone(), bus.clone()));
    drain.spawn(subscriptions::run(hub, bus, drain.clone()));
    // Runs beside the server in this same future (not spawned), so a node that stops or is
    // dropped stops heartbeating; once draining begins it deregisters.
    let register = async {
        if let Some(reg) = registration {
            registration::run(reg, drain.clone()).await;
        }
    };
    let serve = server::serve(listener, shared.clone(), tls);
    tokio::join!(begin, register, serve, shutdown::drain(&shared));
    Ok(())
}
