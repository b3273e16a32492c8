//! The gateway's links: one TCP connection per node, carrying every client routed there (see
//! `ringcast_net::link`).
//!
//! A link is made on the first upgrade routed to a node and reused until it dies; concurrent
//! upgrades to the same node wait for the one being made instead of each making their own. The
//! request presents the link secret (`--link-secret`), and the whole attempt — TCP connect and
//! the node's 101 — is bounded by the connect timeout, so a frozen node leaves the upgrade time
//! to fail over. A server that refuses the link (a 4xx: a node with another secret, a version
//! without links) or does not speak it (answers something that is not HTTP: a server that is
//! not a ringcast node) is reached with one TCP connection per client, as before, and asked
//! again after [`RETRY_UNSUPPORTED`]; each refusal is counted by its code, and logged at warn
//! when it is new for that node (at debug when it repeats). An attempt that breaks off before
//! any answer (reset, or closed with nothing said) says nothing about links: that upgrade goes
//! direct and a link is tried again after [`RETRY_BROKEN`], doubling while it keeps happening.
//!
//! The request offers `Upgrade: ringcast-link/1`. A node of the release before versioning
//! answers that with a 400 `bad_request`, and a node that does not know the version with a 426
//! `link_version_unsupported`: either way the gateway asks again at once with the unversioned
//! `ringcast-link`, and keeps asking that node with it for [`RETRY_UNSUPPORTED`] (then tries
//! the versioned token first again, so an upgraded node is found out). A legacy link has no
//! `GOAWAY`.
//!
//! A node that begins to drain sends `GOAWAY` on its link: the link takes no new streams, and
//! until it ends every upgrade routed to that node moves on to the next candidate at once,
//! without asking the node; the clients already on the link stay until the node closes them.
//! A link that ends after its `GOAWAY` ended as planned: it is logged at info, not as a
//! failure, and nothing counts against the node's health.
//!
//! Each link's driver is a task of the gateway's drain: once the drain is over (its grace period
//! ended, or every tunnel did) the link is closed and its driver returns.
//!
//! Nodes come and go (a scaled deployment gives each new pod a new address), so a node's entry
//! does not outlive its use: whenever an address is seen for the first time, the entries of
//! every other address that has no live link and nothing left to remember are dropped.

use std::collections::HashMap;
use std::io;

use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use ringcast_net::drain::Drain;
use ringcast_net::http1::client::push_request_head;
use ringcast_net::link::frame::GoAwayReason;
use ringcast_net::link::upgrade::Version;
use ringcast_net::link::{self, Link, LinkSecret, LinkStream, Role, MAX_STREAMS};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::node_io::{ConnectError, Connector, NodeIo};
use crate::upstream::{self, Answer, ExchangeError};

/// How long a node that refused a link is reached without one before it is asked again.
pub const RETRY_UNSUPPORTED: Duration = Duration::from_secs(60);

/// How an upgrade reaches a node.
pub enum Route {
    /// A stream on the node's link.
    Stream(LinkStream),
    /// The node has no links: a TCP connection of the upgrade's own.
    Direct,
}

/// How long a link attempt that timed out stands for every upgrade to that node, so upgrades
/// queued behind it move on to the next node at once instead of each waiting as long.
pub const RETRY_FAILED: Duration = Duration::from_secs(1);

/// How long upgrades to a node whose link attempt broke off before any answer (the connection
/// reset or closed with nothing said: a node that crashed between accept and 101, a load
/// balancer with no ready backend) go direct before a link is tried again; it doubles with
/// each such attempt in a row, up to [`RETRY_UNSUPPORTED`].
pub const RETRY_BROKEN: Duration = Duration::from_secs(1);

/// Why no link could be had.
#[derive(Debug, Clone)]
pub enum LinkError {
    /// Nothing listens at the node's address.
    Refused(String),
    /// The node did not answer in time, broke off or answered nonsense.
    Unreachable(String),
    /// The node answered with a 5xx (draining, full).
    Declined(hyper::StatusCode),
    /// The node's link carries a `GOAWAY` for draining: it takes no new clients.
    Draining,
}

/// Links by node address.
pub struct Links {
    nodes: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<Entry>>>>,
    /// The gateway's shutdown: every link's driver runs on it, and its link closes once it
    /// stops.
    drain: Drain,
    /// Bound on a whole link attempt: the TCP connect and the node's answer.
    connect_timeout: Duration,
    /// Presented in every link request.
    secret: Option<LinkSecret>,
    /// TCP, or TLS with `--node-tls`.
    connector: Connector,
    /// Links open.
    gauge: IntGauge,
    /// Link requests refused by nodes, by code.
    refusals: IntCounterVec,
    /// Link attempts that broke off before any answer.
    broken: IntCounter,
    /// `GOAWAY`s received from nodes.
    goaways: IntCounter,
}

/// One node's entry: its link as far as it got, and since when it is known to speak only the
/// unversioned link token.
struct Entry {
    state: State,
    legacy_since: Option<Instant>,
}

impl Entry {
    /// The version to ask this node for first.
    fn first_version(&self) -> Version {
        match self.legacy_since {
            Some(since) if since.elapsed() < RETRY_UNSUPPORTED => Version::Legacy,
            _ => Version::V1,
        }
    }
}

/// Whether a node's entry can go: nobody is routing through it right now, and it holds neither
/// a live link nor a verdict still standing (a refusal of links, a recent failure).
fn forgettable(entry: &Arc<tokio::sync::Mutex<Entry>>) -> bool {
    if Arc::strong_count(entry) > 1 {
        return false;
    }
    let Ok(entry) = entry.try_lock() else {
        return false;
    };
    match &entry.state {
        State::None => true,
        State::Up(link) => !link.is_alive(),
        State::Unsupported(since, _) => since.elapsed() >= RETRY_UNSUPPORTED,
        State::Broken(since, wait) => since.elapsed() >= *wait,
        State::Failed(since, _) => since.elapsed() >= RETRY_FAILED,
    }
}

/// One node's link, as far as it got.
enum State {
    None,
    Up(Link),
    /// The node refused links or does not speak them (why: a refusal code): direct until
    /// [`RETRY_UNSUPPORTED`].
    Unsupported(Instant, &'static str),
    /// The attempt broke off before any answer: direct for the wait, then asked again.
    Broken(Instant, Duration),
    Failed(Instant, LinkError),
}

/// How a link attempt that reached the node ended.
enum Made {
    /// A link.
    Link(Link),
    /// Refused or not spoken, with the refusal's code.
    Unsupported(&'static str),
    /// Broken off before any answer.
    Broken(String),
    /// The node does not know the version asked for (a 426, or the 400 of a node from before
    /// versioning), with the code to count if no version gets a link.
    OtherVersion(&'static str),
}

impl Links {
    /// No links yet; each is made within `connect_timeout` (TCP connect and 101 together),
    /// presenting `secret`.
    /// Counted in `metrics`; closed once `drain` stops.
    pub fn new(
        connect_timeout: Duration,
        secret: Option<LinkSecret>,
        metrics: &Metrics,
        drain: Drain,
    ) -> Self {
        Links {
            gauge: metrics.node_links.clone(),
            refusals: metrics.link_refusals.clone(),
            broken: metrics.link_attempts_broken.clone(),
            goaways: metrics.link_goaways.clone(),
            nodes: Mutex::new(HashMap::new()),
            drain,
            connect_timeout,
            secret,
            connector: Connector::plain(),
        }
    }

    /// Links made with `connector` (TLS with `--node-tls`).
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = connector;
        self
    }

    /// A new stream to the node at `addr`, making its link first if need be.
    pub async fn route(&self, addr: &Arc<str>) -> Result<Route, LinkError> {
        let state = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            if !nodes.contains_key(addr) {
                nodes.retain(|_, state| !forgettable(state));
            }
            nodes
                .entry(addr.clone())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(Entry {
                        state: State::None,
                        legacy_since: None,
                    }))
                })
                .clone()
        };
        let mut entry = state.lock().await;
        let first = entry.first_version();
        let state = &mut entry.state;
        match &*state {
            // Draining: the next node, without asking this one (a new link would be refused).
            State::Up(link)
                if link.going_away() == Some(GoAwayReason::Draining) && link.is_alive() =>
            {
                return Err(LinkError::Draining)
            }
            State::Up(link) => match link.open() {
                Ok(stream) => return Ok(Route::Stream(stream)),
                Err(e) => debug!(%addr, error = %e, "link unusable; making a new one"),
            },
            State::Unsupported(since, _) if since.elapsed() < RETRY_UNSUPPORTED => {
                return Ok(Route::Direct)
            }
            State::Broken(since, wait) if since.elapsed() < *wait => return Ok(Route::Direct),
            State::Failed(since, e) if since.elapsed() < RETRY_FAILED => return Err(e.clone()),
            _ => {}
        }
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut made = self.connect(addr, first, deadline).await;
        if first == Version::V1 && matches!(made, Ok(Made::OtherVersion(_))) {
            // A node from before versioning (or one that dropped this version): ask again in
            // the words of the release before.
            made = self.connect(addr, Version::Legacy, deadline).await;
            if matches!(made, Ok(Made::Link(_))) {
                info!(%addr, "the node speaks only the unversioned link token (an older release); linked with it, without GOAWAY");
                entry.legacy_since = Some(Instant::now());
            }
        }
        let state = &mut entry.state;
        let made = match made {
            Ok(made) => made,
            Err(e) => {
                // Only a slow failure is worth sparing the upgrades queued behind it; a refusal
                // is instant, and a node restarted on its address must be reachable at once.
                if matches!(e, LinkError::Unreachable(_)) {
                    *state = State::Failed(Instant::now(), e.clone());
                }
                return Err(e);
            }
        };
        match made {
            Made::Link(link) => {
                let stream = link
                    .open()
                    .map_err(|e| LinkError::Unreachable(e.to_string()))?;
                *state = State::Up(link);
                Ok(Route::Stream(stream))
            }
            Made::Unsupported(code) | Made::OtherVersion(code) => {
                // Logged at warn once per change: asked again every minute, a node with another
                // secret would otherwise warn forever (the counter has every refusal).
                let again = matches!(&*state, State::Unsupported(_, was) if *was == code);
                let why = match code {
                    "link_unauthorized" => "the node wants another link secret (check --link-secret on both sides)",
                    "link_forbidden" => "the node has no link secret and takes links from its own host only (set --link-secret on both sides)",
                    "not_http" => "the server does not speak the link protocol",
                    "link_version_unsupported" => "the node speaks no link version this gateway does",
                    _ => "the node does not take links",
                };
                if again {
                    debug!(%addr, code, "no link, again: {why}; one connection per client");
                } else {
                    warn!(%addr, code, "no link: {why}; one connection per client");
                }
                self.refusals.with_label_values(&[code]).inc();
                *state = State::Unsupported(Instant::now(), code);
                Ok(Route::Direct)
            }
            Made::Broken(e) => {
                // Says nothing about links: this upgrade goes direct (where a node that is down
                // fails the usual way, counted in its health), and a link is tried again soon.
                let wait = match &*state {
                    State::Broken(_, wait) => (*wait * 2).min(RETRY_UNSUPPORTED),
                    _ => RETRY_BROKEN,
                };
                if matches!(&*state, State::Broken(..)) {
                    debug!(%addr, error = %e, "link attempt broke off again; this upgrade goes direct");
                } else {
                    warn!(%addr, error = %e, retry_in = ?wait, "link attempt broke off before any answer; this upgrade goes direct");
                }
                self.broken.inc();
                *state = State::Broken(Instant::now(), wait);
                Ok(Route::Direct)
            }
        }
    }

    /// Makes a link of `version` to `addr` by `deadline`, or says why the node gave none.
    async fn connect(
        &self,
        addr: &str,
        version: Version,
        deadline: tokio::time::Instant,
    ) -> Result<Made, LinkError> {
        let socket = self
            .connector
            .connect(addr, deadline)
            .await
            .map_err(|e| match e {
                ConnectError::Refused(e) => LinkError::Refused(e),
                ConnectError::Unreachable(e) => LinkError::Unreachable(e),
            })?;
        let authorization = self.secret.as_ref().map(LinkSecret::authorization);
        let mut headers = vec![
            ("Host", addr),
            ("Upgrade", version.token()),
            ("Connection", "Upgrade"),
        ];
        if let Some(value) = &authorization {
            headers.push(("Authorization", value.as_str()));
        }
        let mut head = Vec::with_capacity(256);
        push_request_head(&mut head, "GET", link::PATH, None, headers)
            .map_err(|e| LinkError::Unreachable(format!("cannot write the link request: {e}")))?;
        let answer = tokio::time::timeout_at(deadline, upstream::exchange(socket, &head))
            .await
            .map_err(|_| LinkError::Unreachable("no answer to the link request in time".into()))?;
        let switched = match answer {
            Ok(Answer::Switched(switched)) => switched,
            // It answered, but not in HTTP: a server that does not speak links.
            Err(ExchangeError::Invalid(_)) => return Ok(Made::Unsupported("not_http")),
            Err(ExchangeError::Broken(e)) => return Ok(Made::Broken(e)),
            Ok(Answer::Other(refusal)) if refusal.status.is_server_error() => {
                // Draining or full: not a node without links.
                return Err(LinkError::Declined(refusal.status));
            }
            Ok(Answer::Other(refusal)) => {
                let code = upstream::error_code(&refusal.body);
                if refusal.status == hyper::StatusCode::UPGRADE_REQUIRED {
                    return Ok(Made::OtherVersion("link_version_unsupported"));
                }
                if refusal.status == hyper::StatusCode::BAD_REQUEST
                    && code.as_deref() == Some("bad_request")
                {
                    // What a node from before versioning answers a token it does not know.
                    return Ok(Made::OtherVersion("other"));
                }
                let code = match code.as_deref() {
                    Some("link_unauthorized") => "link_unauthorized",
                    Some("link_forbidden") => "link_forbidden",
                    _ => "other",
                };
                return Ok(Made::Unsupported(code));
            }
        };
        // One boxed driver type for a TCP and a TLS link: a link is made once per node.
        let early = switched.early;
        let (link, driver): (Link, BoxFuture<'static, io::Result<()>>) = match switched.stream {
            NodeIo::Tcp(socket) => {
                let (link, driver) = Link::new(socket, early, Role::Opener, MAX_STREAMS, |_| {});
                (link, Box::pin(driver))
            }
            NodeIo::Tls(socket) => {
                let (rd, wr) = tokio::io::split(*socket);
                let (link, driver) = Link::over(rd, wr, early, Role::Opener, MAX_STREAMS, |_| {});
                (link, Box::pin(driver))
            }
            NodeIo::Link(_) => {
                return Err(LinkError::Unreachable("a link inside a link".into()));
            }
        };
        let addr_owned = addr.to_string();
        let gauge = self.gauge.clone();
        let goaways = self.goaways.clone();
        let watched = link.clone();
        gauge.inc();
        let drain = self.drain.clone();
        // Each driver ends with its link, which is closed once the drain is over.
        self.drain.spawn(async move {
            let mut driver = std::pin::pin!(driver);
            let result = tokio::select! {
                r = &mut driver => r,
                reason = watched.goaway() => {
                    if let Some(reason) = reason {
                        goaways.inc();
                        info!(addr = %addr_owned, ?reason, "the node sent GOAWAY: no new clients on its link");
                    }
                    tokio::select! {
                        r = &mut driver => r,
                        _ = drain.stopped() => {
                            watched.close();
                            driver.await
                        }
                    }
                }
                _ = drain.stopped() => {
                    watched.close();
                    driver.await
                }
            };
            match (result, watched.going_away()) {
                (Ok(()), _) => info!(addr = %addr_owned, "link closed"),
                // The node said it was going: its closing the link is no failure.
                (Err(e), Some(_)) => {
                    info!(addr = %addr_owned, error = %e, "link ended after GOAWAY")
                }
                (Err(e), None) => warn!(addr = %addr_owned, error = %e, "link failed"),
            }
            gauge.dec();
        });
        info!(%addr, version = version.token(), "link opened");
        Ok(Made::Link(link))
    }

    /// Addresses with an entry (for tests).
    #[cfg(test)]
    fn known(&self) -> Vec<Arc<str>> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_testkit::{DeadPort, TestNode};

    fn links() -> Links {
        Links::new(Duration::from_secs(2), None, &Metrics::new(), Drain::new())
    }

    #[tokio::test]
    async fn entries_of_gone_nodes_are_dropped_and_live_links_kept() {
        let links = links();
        let live = TestNode::start(ringcast_node::Config::for_tests()).await;
        let live_addr: Arc<str> = live.addr.to_string().into();
        let leaving = TestNode::start(ringcast_node::Config::for_tests()).await;
        let leaving_addr: Arc<str> = leaving.addr.to_string().into();
        let _a = links.route(&live_addr).await.unwrap();
        let b = links.route(&leaving_addr).await.unwrap();
        drop(b);
        // A node that refuses connections leaves nothing worth keeping.
        let dead = DeadPort::new();
        let refused: Arc<str> = dead.addr().to_string().into();
        assert!(matches!(
            links.route(&refused).await,
            Err(LinkError::Refused(_))
        ));

        // The second node goes away, and its link dies with it.
        leaving.stop().await.unwrap();
        let link = {
            let nodes = links.nodes.lock().unwrap();
            let entry = nodes[&leaving_addr].try_lock().unwrap();
            match &entry.state {
                State::Up(link) => link.clone(),
                _ => panic!("no link was made"),
            }
        };
        ringcast_testkit::wait_until(Duration::from_secs(10), "the link to die", || {
            let alive = link.is_alive();
            async move { !alive }
        })
        .await;

        // The next new address sweeps both away; the live link stays and is reused.
        let another = DeadPort::new();
        let _ = links.route(&another.addr().to_string().into()).await;
        let known = links.known();
        assert!(known.contains(&live_addr), "{known:?}");
        assert!(!known.contains(&leaving_addr), "{known:?}");
        assert!(!known.contains(&refused), "{known:?}");
        assert!(matches!(
            links.route(&live_addr).await,
            Ok(Route::Stream(_))
        ));
        live.stop().await.unwrap();
    }
}
