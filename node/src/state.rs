//! What every connection of a node shares: its configuration, hub, bus, metrics, limits and
//! publisher, and the session slots that bound its connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::bus::Bus;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::room_options::RoomOptions;
use ringcast_net::drain::Drain;
use ringcast_protocol::auth::Authenticator;

/// What every connection of a node shares.
pub struct Shared {
    /// The configuration the node runs with.
    pub config: Config,
    /// What each kind of room does (`--room-options`), resolved once per join.
    pub room_options: RoomOptions,
    /// This node's id.
    pub node_id: Arc<str>,
    /// Local membership.
    pub hub: Arc<Hub>,
    /// Where frames enter the bus (see `publisher.rs`).
    pub publisher: Publisher,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// WebSocket limits applied to every session.
    pub ws_config: WebSocketConfig,
    /// Whether the bus is up.
    pub bus_healthy: watch::Receiver<bool>,
    /// What this node counts in presence.
    pub presence: crate::presence::Tracker,
    /// Token validation; `None` when authentication is off.
    pub auth: Option<Authenticator>,
    /// The node's shutdown: every connection's task, session and the tasks that finish a
    /// connection's business (a session's drop guard announcing it gone) run under it.
    pub drain: Drain,
    /// Session slots taken, counted from the upgrade on (before the session registers), so
    /// concurrent upgrades cannot overshoot `max_connections`.
    sessions: Arc<AtomicUsize>,
}

/// One reserved session slot; released when dropped.
pub struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Builds the shared state around a bus and starts its publisher (whose task ends once this
    /// state is dropped). Must be called within a Tokio runtime.
    pub fn new(
        config: Config,
        room_options: RoomOptions,
        auth: Option<Authenticator>,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        drain: Drain,
    ) -> Self {
        let max = config.max_message_bytes.max(128);
        let ws_config = WebSocketConfig::default()
            // Held by every connection, idle or not; client frames are small, and a larger
            // frame grows the buffer for itself. 4 KiB cost ~3 KB more RSS per idle connection.
            .read_buffer_size(1024)
            // tungstenite only reads: the node writes frames itself (`writer.rs`), and what
            // tungstenite writes on its own goes nowhere (`split.rs`), so it buffers nothing.
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let node_id: Arc<str> = config.resolved_node_id().into();
        Shared {
            publisher: Publisher::start(node_id.clone(), bus.clone(), metrics.clone()),
            presence: crate::presence::Tracker::new(bus.clone(), node_id.clone(), metrics.clone()),
            node_id,
            bus_healthy: bus.healthy(),
            config,
            room_options,
            hub,
            metrics,
            ws_config,
            auth,
            drain,
            sessions: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Takes a session slot, or `None` at `max_connections`.
    pub fn reserve_session(&self) -> Option<SessionSlot> {
        let taken = self.sessions.fetch_add(1, Ordering::AcqRel);
        let slot = SessionSlot(self.sessions.clone());
        (taken < self.config.max_connections).then_some(slot)
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }
}
