//! The gateway's Prometheus metrics: tunnels per node, upgrade latency, bytes, failovers,
//! ring size, health-check results and refusals at the edge.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the gateway exports, registered on its own registry.
pub struct Metrics {
    registry: Registry,
    /// Open tunnels per node.
    pub open_connections: IntGaugeVec,
    /// Tunnels ever established per node.
    pub connections_total: IntCounterVec,
    /// Seconds from receiving an upgrade to sending the node's 101.
    pub upgrade_seconds: Histogram,
    /// Bytes copied from clients to nodes.
    pub bytes_client_to_node: IntCounter,
    /// Bytes copied from nodes to clients.
    pub bytes_node_to_client: IntCounter,
    /// Upgrades that moved on to another node after a failed attempt.
    pub failovers: IntCounter,
    /// Links open to nodes (each carries every client routed to its node).
    pub node_links: IntGauge,
    /// Link requests a node refused, by code (`link_unauthorized`, `link_forbidden`,
    /// `not_http`, `link_version_unsupported`, `other`).
    pub link_refusals: IntCounterVec,
    /// Link attempts that broke off before any answer (those upgrades went direct).
    pub link_attempts_broken: IntCounter,
    /// `GOAWAY`s received on links (a node began to drain).
    pub link_goaways: IntCounter,
    /// Healthy nodes on the ring.
    pub ring_size: IntGauge,
    /// Members known (healthy or not).
    pub members: IntGauge,
    /// Health-check results per node (`result` = ok | fail).
    pub health_checks: IntCounterVec,
    /// 1 while a node is healthy, 0 while down.
    pub node_up: IntGaugeVec,
    /// 1 while the healthy nodes report different room options.
    pub room_options_mismatch: IntGauge,
    /// Upgrades refused, by HTTP status.
    pub rejected: IntCounterVec,
    /// Failures to read the Redis registry.
    pub membership_errors: IntCounter,
    /// Requests refused before any node was contacted (origin, token, client id, per-address
    /// limit), by reason code.
    pub edge_refusals: IntCounterVec,
    /// TLS handshakes on the public listener, by result (`ok`, `failed`, `timeout`, `closed`);
    /// exported only with TLS on.
    pub tls_handshakes: IntCounterVec,
    /// Certificate reloads, by result (`ok`, `error`: refused, the old pair stays); exported
    /// only with TLS on.
    pub tls_reloads: IntCounterVec,
    /// `notAfter` of the certificate served, in Unix seconds; exported only with TLS on, so
    /// an alert on it never fires for a gateway without TLS.
    pub tls_cert_expiry: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("ringcast_gateway".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let m = Metrics {
            open_connections: IntGaugeVec::new(
                Opts::new("open_connections", "Open tunnels per node"),
                &["node"],
            )
            .expect("static metric definition"),
            connections_total: IntCounterVec::new(
                Opts::new("connections_total", "Tunnels established per node"),
                &["node"],
            )
            .expect("static metric definition"),
            upgrade_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "upgrade_seconds",
                    "Time from receiving an upgrade to relaying the node's 101",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .expect("static metric definition"),
            bytes_client_to_node: IntCounter::new(
                "bytes_client_to_node_total",
                "Bytes copied from clients to nodes",
            )
            .expect("static metric definition"),
            bytes_node_to_client: IntCounter::new(
                "bytes_node_to_client_total",
                "Bytes copied from nodes to clients",
            )
            .expect("static metric definition"),
            failovers: IntCounter::new(
                "failovers_total",
                "Upgrades retried on the next node after a failed attempt",
            )
            .expect("static metric definition"),
            node_links: IntGauge::new(
                "node_links",
                "Links open to nodes, each carrying every client routed to its node",
            )
            .expect("static metric definition"),
            link_refusals: IntCounterVec::new(
                Opts::new(
                    "link_refusals_total",
                    "Link requests refused by nodes (clients then go one connection each), by code",
                ),
                &["code"],
            )
            .expect("static metric definition"),
            link_attempts_broken: IntCounter::new(
                "link_attempts_broken_total",
                "Link attempts that broke off before any answer (those upgrades went direct)",
            )
            .expect("static metric definition"),
            link_goaways: IntCounter::new(
                "link_goaways_total",
                "GOAWAYs received from nodes on links (the node drains; new clients go elsewhere)",
            )
            .expect("static metric definition"),
            ring_size: IntGauge::new("ring_size", "Healthy nodes on the ring")
                .expect("static metric definition"),
            members: IntGauge::new("members", "Known nodes, healthy or not")
                .expect("static metric definition"),
            health_checks: IntCounterVec::new(
                Opts::new(
                    "health_checks_total",
                    "Active /healthz checks by node and result",
                ),
                &["node", "result"],
            )
            .expect("static metric definition"),
            room_options_mismatch: IntGauge::new(
                "room_options_mismatch",
                "1 while the healthy nodes report different room options",
            )
            .expect("static metric definition"),
            node_up: IntGaugeVec::new(Opts::new("node_up", "1 while a node is healthy"), &["node"])
                .expect("static metric definition"),
            rejected: IntCounterVec::new(
                Opts::new("rejected_upgrades_total", "Upgrades refused, by status"),
                &["status"],
            )
            .expect("static metric definition"),
            membership_errors: IntCounter::new(
                "membership_errors_total",
                "Failed reads of the Redis node registry",
            )
            .expect("static metric definition"),
            edge_refusals: IntCounterVec::new(
                Opts::new(
                    "edge_refusals_total",
                    "Requests refused before any node was contacted, by reason",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            tls_handshakes: IntCounterVec::new(
                Opts::new(
                    "tls_handshakes_total",
                    "TLS handshakes on the public listener, by result",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "tls_reloads_total",
                    "Certificate reloads, by result (error: refused, the previous pair stays)",
                ),
                &["result"],
            )
            .expect("static metric definition"),
            tls_cert_expiry: IntGauge::new(
                "tls_cert_expiry_timestamp_seconds",
                "notAfter of the TLS certificate served, in Unix seconds",
            )
            .expect("static metric definition"),
            registry,
        };
        let r = &m.registry;
        let _ = r.register(Box::new(m.open_connections.clone()));
        let _ = r.register(Box::new(m.connections_total.clone()));
        let _ = r.register(Box::new(m.upgrade_seconds.clone()));
        let _ = r.register(Box::new(m.bytes_client_to_node.clone()));
        let _ = r.register(Box::new(m.bytes_node_to_client.clone()));
        let _ = r.register(Box::new(m.failovers.clone()));
        let _ = r.register(Box::new(m.node_links.clone()));
        let _ = r.register(Box::new(m.link_refusals.clone()));
        let _ = r.register(Box::new(m.link_attempts_broken.clone()));
        let _ = r.register(Box::new(m.link_goaways.clone()));
        let _ = r.register(Box::new(m.ring_size.clone()));
        let _ = r.register(Box::new(m.members.clone()));
        let _ = r.register(Box::new(m.health_checks.clone()));
        let _ = r.register(Box::new(m.node_up.clone()));
        let _ = r.register(Box::new(m.room_options_mismatch.clone()));
        let _ = r.register(Box::new(m.rejected.clone()));
        let _ = r.register(Box::new(m.membership_errors.clone()));
        let _ = r.register(Box::new(m.edge_refusals.clone()));
        m.init_labels();
        m
    }

    /// Creates the label sets alerts and the dashboard read, at 0, so each series exists from
    /// the first scrape (per-node series appear with their node).
    fn init_labels(&self) {
        for status in ["400", "401", "403", "429", "502", "503"] {
            self.rejected.with_label_values(&[status]);
        }
        let edge = ringcast_protocol::auth::AuthError::CODES
            .into_iter()
            .chain(ringcast_net::ws_handshake::Refusal::CODES)
            .chain(["origin_not_allowed", "too_many_connections_from_ip"]);
        for code in edge {
            self.edge_refusals.with_label_values(&[code]);
        }
        for code in [
            "link_unauthorized",
            "link_forbidden",
            "not_http",
            "link_version_unsupported",
            "other",
        ] {
            self.link_refusals.with_label_values(&[code]);
        }
    }

    /// Exports the TLS metrics, every label at zero, once TLS is configured.
    pub fn enable_tls(&self) {
        let r = &self.registry;
        let _ = r.register(Box::new(self.tls_handshakes.clone()));
        let _ = r.register(Box::new(self.tls_reloads.clone()));
        let _ = r.register(Box::new(self.tls_cert_expiry.clone()));
        for result in ["ok", "failed", "timeout", "closed"] {
            self.tls_handshakes.with_label_values(&[result]);
        }
        for result in ["ok", "error"] {
            self.tls_reloads.with_label_values(&[result]);
        }
    }

    /// Drops every per-node series (`node` label) of a node `is_member` no longer knows, so
    /// the series do not pile up as nodes come and go under new names (pods). A sweep rather
    /// than one node's labels: it also catches a series a straggler (a tunnel that opened as
    /// its node left) brought back since the last change.
    pub fn forget_departed(&self, is_member: impl Fn(&str) -> bool) {
        forget(&self.open_connections, &is_member);
        forget(&self.connections_total, &is_member);
        forget(&self.health_checks, &is_member);
        forget(&self.node_up, &is_member);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Removes the series of `vec` whose `node` label `is_member` rejects.
fn forget<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    is_member: &impl Fn(&str) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("node").is_some_and(|node| !is_member(node)) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
