//! The node's shared state and its accept loop, from bind to graceful shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringcast_protocol::auth::Authenticator;
use ringcast_protocol::{Envelope, Target};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bus::{Bus, BusError, Channel};
use crate::config::Config;
use crate::hub::{now_micros, Hub};
use crate::metrics::Metrics;
use crate::outbound::SERVICE_RESTART;
use crate::publisher;
use crate::writer::CLOSE_TIMEOUT;

/// Slack above `max_connections` for plain HTTP (health checks, scrapes) while sessions are full.
const HTTP_HEADROOM: usize = 256;

/// What every connection of a node shares.
pub struct Shared {
    /// The configuration the node runs with.
    pub config: Config,
    /// This node's id.
    pub node_id: Arc<str>,
    /// Local membership.
    pub hub: Arc<Hub>,
    /// Transport to the other nodes.
    pub bus: Arc<dyn Bus>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// WebSocket limits applied to every session.
    pub ws_config: WebSocketConfig,
    /// Set once shutdown begins: `/healthz` turns 503 and upgrades are refused.
    pub draining: AtomicBool,
    /// Whether the bus is up.
    pub bus_healthy: watch::Receiver<bool>,
    /// Token validation; `None` when authentication is off.
    pub auth: Option<Authenticator>,
    /// The node's publishing queue (see `publisher.rs`).
    publish_tx: mpsc::Sender<publisher::Job>,
    /// Cancelled when the node has drained: its links (see `link.rs`) close.
    pub stopped: tokio_util::sync::CancellationToken,
    /// Every connection's task, and the tasks that finish a connection's business (a session's
    /// drop guard announcing it gone): shutdown waits for them (see [`serve`]).
    pub tracker: TaskTracker,
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
    /// Builds the shared state around a bus and starts its publishing task (which ends once this
    /// state is dropped). Must be called within a Tokio runtime.
    pub fn new(
        config: Config,
        auth: Option<Authenticator>,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let max = config.max_message_bytes.max(128);
        let ws_config = WebSocketConfig::default()
            // Held by every connection, idle or not; client frames are small, and a larger
            // frame grows the buffer for itself. 4 KiB cost ~3 KB more RSS per idle connection.
            .read_buffer_size(1024)
            // tungstenite only reads: the node writes frames itself (`crate::writer`), and what
            // tungstenite writes on its own goes nowhere (`crate::split`), so it buffers nothing.
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let (publish_tx, publish_rx) = mpsc::channel(publisher::QUEUE);
        tokio::spawn(publisher::run(bus.clone(), metrics.clone(), publish_rx));
        Shared {
            publish_tx,
            node_id: config.resolved_node_id().into(),
            bus_healthy: bus.healthy(),
            config,
            hub,
            bus,
            metrics,
            ws_config,
            draining: AtomicBool::new(false),
            auth,
            stopped: tokio_util::sync::CancellationToken::new(),
            tracker: TaskTracker::new(),
            sessions: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Wraps a client frame in an envelope and publishes it, after everything queued before it:
    /// the one place frames enter the bus. Returns how many nodes were subscribed.
    pub async fn publish(
        &self,
        channel: Channel,
        target: Target,
        frame: &Bytes,
    ) -> Result<usize, BusError> {
        if !self.bus.batches_publishes() {
            return self.publish_now(channel, target, frame).await;
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(channel, target, frame, publisher::Done::Reply(tx))
            .await?;
        rx.await
            .unwrap_or_else(|_| Err(BusError::Unavailable("node is shutting down".into())))
    }

    /// Like [`Shared::publish`] but returns once the envelope is queued (waiting only while the
    /// queue is full); `then` runs with the outcome once it is published.
    pub async fn publish_queued(
        &self,
        channel: Channel,
        target: Target,
        frame: &Bytes,
        then: publisher::Then,
    ) {
        if !self.bus.batches_publishes() {
            let result = self.publish_now(channel, target, frame).await;
            then(&result);
            return;
        }
        let done = publisher::Done::Then(then);
        if let Err(e) = self.enqueue(channel, target, frame, done).await {
            warn!(error = %e, "publish not queued");
        }
    }

    /// Publishes right away, on the caller's task (for a bus without round trips).
    async fn publish_now(
        &self,
        channel: Channel,
        target: Target,
        frame: &Bytes,
    ) -> Result<usize, BusError> {
        let envelope = Envelope::new(&self.node_id, now_micros(), target, frame);
        let payload = envelope
            .encode()
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        match self.bus.publish(&channel, payload).await {
            Ok(n) => {
                self.metrics.bus_published.inc();
                Ok(n)
            }
            Err(e) => {
                self.metrics.bus_publish_failures.inc();
                warn!(error = %e, channel = %channel, "publish failed");
                Err(e)
            }
        }
    }

    async fn enqueue(
        &self,
        channel: Channel,
        target: Target,
        frame: &Bytes,
        done: publisher::Done,
    ) -> Result<(), BusError> {
        let envelope = Envelope::new(&self.node_id, now_micros(), target, frame);
        let payload = match envelope.encode() {
            Ok(p) => p,
            Err(e) => {
                let e = BusError::Unavailable(e.to_string());
                if let publisher::Done::Then(f) = done {
                    f(&Err(e.clone()));
                }
                return Err(e);
            }
        };
        let job = publisher::Job {
            channel,
            payload,
            done,
        };
        if let Err(mpsc::error::SendError(job)) = self.publish_tx.send(job).await {
            let e = BusError::Unavailable("node is shutting down".into());
            if let publisher::Done::Then(f) = job.done {
                f(&Err(e.clone()));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes a session slot, or `None` at `max_connections`.
    pub fn reserve_session(&self) -> Option<SessionSlot> {
        let taken = self.sessions.fetch_add(1, Ordering::AcqRel);
        let slot = SessionSlot(self.sessions.clone());
        (taken < self.config.max_connections).then_some(slot)
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Accepts connections until `shutdown` turns true, then drains: `/healthz` turns 503 and upgrades
/// are refused, clients are closed with 1012 after the drain delay, and the node waits for them up
/// to the grace period. HTTP keeps being answered during the drain.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tracker = shared.tracker.clone();
    let permits = Arc::new(Semaphore::new(
        shared.config.max_connections + HTTP_HEADROOM,
    ));
    info!(addr = ?listener.local_addr().ok(), node = %shared.node_id, "node listening");
    if shared.config.link_secret.is_none() {
        info!("no --link-secret set: links (/link) are taken from loopback peers only");
    }
    let accept = accept_loop(&listener, &shared, &permits, &tracker);
    tokio::select! {
        _ = accept => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    shared.draining.store(true, Ordering::Release);
    info!(
        connections = shared.hub.connection_count(),
        delay_secs = shared.config.drain_delay_secs,
        "draining"
    );
    let drain = async {
        tokio::time::sleep(Duration::from_secs(shared.config.drain_delay_secs)).await;
        shared.hub.close_all(SERVICE_RESTART);
        let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
        let grace_end = Instant::now().checked_add(grace);
        let sessions_closed = async {
            while shared.hub.connection_count() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, sessions_closed).await.is_err() {
            warn!(
                remaining = shared.hub.connection_count(),
                "grace period over; dropping remaining connections"
            );
        }
        grace_end
    };
    // Keep answering HTTP (503 on /healthz and /ws) while draining.
    let grace_end = tokio::select! {
        grace_end = drain => grace_end,
        _ = accept_loop(&listener, &shared, &permits, &tracker) => Some(Instant::now()),
    };
    drop(listener);
    shared.stopped.cancel();
    tracker.close();
    // A session leaves the hub once its client answered the close or it stopped waiting for
    // that (CLOSE_TIMEOUT); its writer may still be sending the close frame to a client that
    // reads slowly, and a link still carrying it. Returning now would end the process under
    // them (the client sees 1006): wait for every connection task, for what is left of the
    // grace period and at least as long as a session waits for its writer.
    let left = grace_end.map_or(Duration::MAX, |end| {
        end.saturating_duration_since(Instant::now())
    });
    let limit = left.max(CLOSE_TIMEOUT * 2);
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        warn!(
            tasks = tracker.len(),
            "connections still open at exit; dropping them"
        );
    }
    info!("drained");
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let conn_tracker = tracker.clone();
                tracker.spawn(async move {
                    crate::http::serve_connection(shared, stream, peer, conn_tracker).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
