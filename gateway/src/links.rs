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
//! Nodes come and go (a scaled deployment gives each new pod a new address), so a node's entry
//! does not outlive its use: whenever an address is seen for the first time, the entries of
//! every other address that has no live link and nothing left to remember are dropped.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use ringcast_net::link::{self, Link, LinkSecret, LinkStream, Role, MAX_STREAMS};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::node_io::NodeIo;
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
}

/// Links by node address.
pub struct Links {
    nodes: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<State>>>>,
    /// Every link made, for [`Links::close_all`]; dead ones are pruned as new ones come.
    made: Mutex<Vec<Link>>,
    /// Bound on a whole link attempt: the TCP connect and the node's answer.
    connect_timeout: Duration,
    /// Presented in every link request.
    secret: Option<LinkSecret>,
    /// Links open.
    gauge: IntGauge,
    /// Link requests refused by nodes, by code.
    refusals: IntCounterVec,
    /// Link attempts that broke off before any answer.
    broken: IntCounter,
}

/// Whether a node's entry can go: nobody is routing through it right now, and it holds neither
/// a live link nor a verdict still standing (a refusal of links, a recent failure).
fn forgettable(state: &Arc<tokio::sync::Mutex<State>>) -> bool {
    if Arc::strong_count(state) > 1 {
        return false;
    }
    let Ok(state) = state.try_lock() else {
        return false;
    };
    match &*state {
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
}

impl Links {
    /// No links yet; each is made within `connect_timeout` (TCP connect and 101 together),
    /// presenting `secret`.
    /// Counted in `metrics`.
    pub fn new(connect_timeout: Duration, secret: Option<LinkSecret>, metrics: &Metrics) -> Self {
        Links {
            gauge: metrics.node_links.clone(),
            refusals: metrics.link_refusals.clone(),
            broken: metrics.link_attempts_broken.clone(),
            nodes: Mutex::new(HashMap::new()),
            made: Mutex::new(Vec::new()),
            connect_timeout,
            secret,
        }
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
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(State::None)))
                .clone()
        };
        let mut state = state.lock().await;
        match &*state {
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
        let made = match self.connect(addr).await {
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
            Made::Unsupported(code) => {
                // Logged at warn once per change: asked again every minute, a node with another
                // secret would otherwise warn forever (the counter has every refusal).
                let again = matches!(&*state, State::Unsupported(_, was) if *was == code);
                let why = match code {
                    "link_unauthorized" => "the node wants another link secret (check --link-secret on both sides)",
                    "link_forbidden" => "the node has no link secret and takes links from its own host only (set --link-secret on both sides)",
                    "not_http" => "the server does not speak the link protocol",
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

    /// Makes a link to `addr` within the connect timeout, or says why the node gave none.
    async fn connect(&self, addr: &str) -> Result<Made, LinkError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let socket = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| LinkError::Unreachable("connect timed out".into()))?
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionRefused => LinkError::Refused(e.to_string()),
                _ => LinkError::Unreachable(e.to_string()),
            })?;
        let _ = socket.set_nodelay(true);
        let head = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: {}\r\nConnection: Upgrade\r\n{}\r\n",
            link::PATH,
            link::PROTOCOL,
            self.secret
                .as_ref()
                .map(LinkSecret::header_line)
                .unwrap_or_default(),
        );
        let answer = tokio::time::timeout_at(
            deadline,
            upstream::exchange(NodeIo::Tcp(socket), head.as_bytes()),
        )
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
                let code = match upstream::error_code(&refusal.body).as_deref() {
                    Some("link_unauthorized") => "link_unauthorized",
                    Some("link_forbidden") => "link_forbidden",
                    _ => "other",
                };
                return Ok(Made::Unsupported(code));
            }
        };
        let NodeIo::Tcp(socket) = switched.stream else {
            return Err(LinkError::Unreachable("a link inside a link".into()));
        };
        let (link, driver) = Link::new(socket, switched.early, Role::Opener, MAX_STREAMS, |_| {});
        let addr_owned = addr.to_string();
        let gauge = self.gauge.clone();
        gauge.inc();
        // Each driver ends with its link, which `close_all` ends at shutdown.
        tokio::spawn(async move {
            match driver.await {
                Ok(()) => info!(addr = %addr_owned, "link closed"),
                Err(e) => warn!(addr = %addr_owned, error = %e, "link failed"),
            }
            gauge.dec();
        });
        info!(%addr, "link opened");
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made.retain(Link::is_alive);
        made.push(link.clone());
        Ok(Made::Link(link))
    }

    /// Addresses with an entry (for tests).
    #[cfg(test)]
    fn known(&self) -> Vec<Arc<str>> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.keys().cloned().collect()
    }

    /// Closes every link (their tunnels end with them).
    pub fn close_all(&self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|e| e.into_inner()));
        made.iter().for_each(Link::close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_testkit::{DeadPort, TestNode};

    fn links() -> Links {
        Links::new(Duration::from_secs(2), None, &Metrics::new())
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
            let state = nodes[&leaving_addr].try_lock().unwrap();
            match &*state {
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
