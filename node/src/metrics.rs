//! The node's Prometheus metrics, in a registry of its own (tests run several nodes per process).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric a node exports on `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// WebSocket connections accepted since start.
    pub connections_total: IntCounter,
    /// Gateway links open (each carries many of the connections; see `link.rs`).
    pub links: IntGauge,
    /// Rooms with at least one local member.
    pub rooms: IntGauge,
    /// Client messages received, by `type`.
    pub messages_in: IntCounterVec,
    /// Frames queued to clients, by what routed them (broadcast, room, direct, reply).
    pub messages_out: IntCounterVec,
    /// Error events sent to clients, by code.
    pub errors: IntCounterVec,
    /// Connections closed by the server, by reason.
    pub closes: IntCounterVec,
    /// Frames dropped because a client's send queue was full.
    pub send_queue_drops: IntCounter,
    /// Clients disconnected because they did not read fast enough.
    pub slow_consumer_disconnects: IntCounter,
    /// Envelopes published on the bus.
    pub bus_published: IntCounter,
    /// Envelopes the bus failed to publish.
    pub bus_publish_failures: IntCounter,
    /// Envelopes received from the bus.
    pub bus_received: IntCounter,
    /// Envelopes received from the bus and rejected, by reason.
    pub bus_rejected: IntCounterVec,
    /// Bus (re)connections after a failure.
    pub bus_reconnects: IntCounter,
    /// Bus subscriber connections rebuilt because the probe saw nothing come back.
    pub bus_probe_failures: IntCounter,
    /// Seconds from publish to a frame being queued for local recipients.
    pub delivery_latency: Histogram,
    /// HTTP upgrades refused, by reason.
    pub upgrades_refused: IntCounterVec,
    /// Link requests refused, by reason (`unauthorized`, `not_loopback`, `proxied`,
    /// `unknown_version`, `draining`).
    pub link_refusals: IntCounterVec,
    /// Numbered room messages that arrived twice and were delivered once.
    pub history_duplicates: IntCounter,
    /// Times a room's stream broke on this node and its members were told `history_reset`.
    pub history_resets: IntCounter,
    /// Joins with `since`, by outcome (`recovered`, `not_recovered`).
    pub recoveries: IntCounterVec,
    /// Messages replayed to joiners from history.
    pub replayed: IntCounter,
    /// Messages this node missed on the bus and delivered from history (gap fill).
    pub gap_filled: IntCounter,
    /// Room messages with an `id` acknowledged to their sender (repeats included).
    pub acks: IntCounter,
    /// Room messages with an `id` that repeated one still in history: acknowledged with the
    /// first one's offset, not stored or delivered again.
    pub deduped: IntCounter,
    /// Server API calls by method and result (`ok` or the error code).
    pub api_calls: IntCounterVec,
    /// Seconds a server API call took, by method.
    pub api_latency: prometheus::HistogramVec,
    /// Connections this node counts in presence (room memberships with presence on).
    pub presence_entries: IntGauge,
    /// Sweeps of a dead node's presence this node made.
    pub presence_sweeps: IntCounter,
    /// `user_left` announcements those sweeps sent.
    pub presence_sweep_announcements: IntCounter,
    /// Times this node found itself swept (it was unresponsive past its lease).
    pub presence_swept_self: IntCounter,
    /// 1 while the bus (Redis) is healthy, 0 while it is not (set when scraped).
    pub bus_up: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("metric names are static and registered once per registry");
            m
        }
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("static metric options are valid"),
            )
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &[label])
                    .expect("static metric options are valid"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(
                &registry,
                IntGauge::new(name, help).expect("static metric options are valid"),
            )
        };
        let metrics = Metrics {
            connections: gauge("ringcast_node_connections", "Open WebSocket connections"),
            links: gauge(
                "ringcast_node_links",
                "Gateway links open, each carrying many connections",
            ),
            connections_total: counter(
                "ringcast_node_connections_total",
                "WebSocket connections accepted",
            ),
            rooms: gauge(
                "ringcast_node_rooms",
                "Rooms with at least one local member",
            ),
            messages_in: counter_vec(
                "ringcast_node_messages_in_total",
                "Client messages received, by type",
                "type",
            ),
            messages_out: counter_vec(
                "ringcast_node_messages_out_total",
                "Frames queued to clients, by route",
                "route",
            ),
            errors: counter_vec(
                "ringcast_node_errors_total",
                "Error events sent to clients, by code",
                "code",
            ),
            closes: counter_vec(
                "ringcast_node_server_closes_total",
                "Connections closed by the server, by reason",
                "reason",
            ),
            send_queue_drops: counter(
                "ringcast_node_send_queue_drops_total",
                "Frames dropped because a client's send queue was full",
            ),
            slow_consumer_disconnects: counter(
                "ringcast_node_slow_consumer_disconnects_total",
                "Clients disconnected for not reading fast enough",
            ),
            bus_published: counter(
                "ringcast_node_bus_published_total",
                "Envelopes published on the bus",
            ),
            bus_publish_failures: counter(
                "ringcast_node_bus_publish_failures_total",
                "Envelopes the bus failed to publish",
            ),
            bus_received: counter(
                "ringcast_node_bus_received_total",
                "Envelopes received from the bus",
            ),
            bus_rejected: counter_vec(
                "ringcast_node_bus_rejected_total",
                "Envelopes from the bus rejected, by reason",
                "reason",
            ),
            bus_reconnects: counter(
                "ringcast_node_bus_reconnects_total",
                "Bus reconnections after a failure",
            ),
            bus_probe_failures: counter(
                "ringcast_node_bus_probe_failures_total",
                "Subscriber connections rebuilt after a failed probe",
            ),
            delivery_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ringcast_node_delivery_latency_seconds",
                        "Seconds from publish to queueing for local recipients",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("static metric options are valid"),
            ),
            upgrades_refused: counter_vec(
                "ringcast_node_upgrades_refused_total",
                "WebSocket upgrades refused, by reason",
                "reason",
            ),
            link_refusals: counter_vec(
                "ringcast_node_link_refusals_total",
                "Link (/link) requests refused, by reason",
                "reason",
            ),
            history_duplicates: counter(
                "ringcast_node_history_duplicates_total",
                "Numbered room messages that arrived twice and were delivered once",
            ),
            history_resets: counter(
                "ringcast_node_history_resets_total",
                "Room streams that broke here (members told history_reset)",
            ),
            recoveries: counter_vec(
                "ringcast_node_recoveries_total",
                "Joins with since, by outcome",
                "outcome",
            ),
            replayed: counter(
                "ringcast_node_replayed_total",
                "Messages replayed to joiners from history",
            ),
            gap_filled: counter(
                "ringcast_node_gap_filled_total",
                "Room messages missed on the bus and delivered from history instead",
            ),
            acks: counter(
                "ringcast_node_publish_acks_total",
                "Room messages with an id acknowledged to their sender (repeats included)",
            ),
            deduped: counter(
                "ringcast_node_publish_deduped_total",
                "Room messages with an id that repeated one still in history (not stored again)",
            ),
            api_calls: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "ringcast_node_api_calls_total",
                        "Server API calls by method and result",
                    ),
                    &["method", "result"],
                )
                .expect("static metric options are valid"),
            ),
            api_latency: reg(
                &registry,
                prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "ringcast_node_api_latency_seconds",
                        "Seconds a server API call took, by method",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ]),
                    &["method"],
                )
                .expect("static metric options are valid"),
            ),
            presence_entries: gauge(
                "ringcast_node_presence_entries",
                "Room memberships this node counts in presence",
            ),
            presence_sweeps: counter(
                "ringcast_node_presence_sweeps_total",
                "Dead nodes whose presence this node swept",
            ),
            presence_sweep_announcements: counter(
                "ringcast_node_presence_sweep_announcements_total",
                "user_left announcements sent by presence sweeps",
            ),
            presence_swept_self: counter(
                "ringcast_node_presence_swept_self_total",
                "Times this node found it had been swept (unresponsive past its lease)",
            ),
            bus_up: gauge(
                "ringcast_node_bus_up",
                "1 while the message bus (Redis) is healthy on this node, 0 while it is not",
            ),
            registry,
        };
        metrics.init_labels();
        metrics
    }

    /// Creates every label set an alert or a dashboard panel reads, at 0, so that a series
    /// exists from the first scrape, not only after its first event (`rate()` of a series that
    /// appears at 1 shows nothing).
    fn init_labels(&self) {
        for code in ringcast_protocol::ErrorCode::ALL {
            self.errors.with_label_values(&[code.as_str()]);
        }
        let refusals = ringcast_net::ws_handshake::Refusal::CODES
            .into_iter()
            .chain(
                ringcast_protocol::auth::AuthError::CODES
                    .into_iter()
                    .chain(["draining", "too_many_connections"]),
            );
        for code in refusals {
            self.upgrades_refused.with_label_values(&[code]);
        }
        for outcome in ["recovered", "not_recovered"] {
            self.recoveries.with_label_values(&[outcome]);
        }
        for reason in [
            "flood",
            "idle",
            "protocol",
            "token_expired",
            "too_big",
            "api_disconnect",
        ] {
            self.closes.with_label_values(&[reason]);
        }
    }

    /// Creates the server API's series for `methods` at 0 (the API module names them).
    pub fn init_api_labels(&self, methods: &[&str]) {
        for method in methods {
            self.api_calls.with_label_values(&[method, "ok"]);
            self.api_latency.with_label_values(&[method]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a bug in a metric name.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
