//! The `/ws` upgrade proxy: admit a checked upgrade, pick the client_id's node on the ring,
//! forward the HTTP/1.1 upgrade there (failing over along the ring's replica order; [`crate::upstream`] speaks to the node),
//! relay the node's 101, then hand both sockets to [`crate::tunnel`]. After the 101 the gateway
//! never parses a frame.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use ringcast_net::drain::Drain;
use ringcast_net::http1::response::{json_error, Body};
use ringcast_net::ws_handshake::{self, Accepted};
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::limits::ConnectionPermit;
use crate::links::{LinkError, Links, Route};
use crate::membership::ring::RingNode;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::node_io::{ConnectError, Connector, NodeIo};
use crate::tunnel;
use crate::upstream::{self, Answer, Rejection, Switched};

/// What every upgrade shares.
pub struct Proxy {
    /// Members and the ring.
    pub membership: Arc<Membership>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Origin and token checks, done before any node is contacted.
    pub admission: Admission,
    /// The gateway's shutdown: client connections and tunnels are its sessions, which the
    /// grace period waits for; once it stops, every tunnel closes.
    pub drain: Drain,
    /// TCP connect timeout per candidate.
    pub connect_timeout: Duration,
    /// Bound on the whole upgrade, node answer included.
    pub handshake_timeout: Duration,
    /// Most candidates tried.
    pub max_attempts: usize,
    /// Copy buffer size of a tunnel while data flows.
    pub copy_buffer_bytes: usize,
    /// How long a tunnel's second direction may outlive the first.
    pub tunnel_linger: Duration,
    /// How connections of their own to nodes are made (TCP, or TLS with `--node-tls`).
    pub connector: Connector,
    /// The nodes' links, when clients reach nodes over links (else one TCP connection each).
    pub links: Option<Links>,
    /// This gateway's `Via` entry ([`upstream::own_via`]), added to what it forwards.
    pub via: HeaderValue,
}

/// Why one attempt on one node failed.
enum Attempt {
    /// Nothing listens there (connection refused): the node is down, take it out now.
    Refused(String),
    /// The node did not answer in time or broke off: counts as one failed health check, since
    /// a loaded node or host can be slow without being down.
    Unreachable(String),
    /// The node answered with a 5xx (draining, full): try the next one. Not a health failure.
    Declined(StatusCode),
    /// The node answered 503 at its connection limit: try the next one. Not a health failure;
    /// if no candidate takes the client, it gets 503 `node_full`.
    Full,
    /// The node's link carries its `GOAWAY` (it drains): try the next one without asking it.
    /// Not a health failure.
    Draining,
}

/// Whether a node's 5xx says it is at its connection limit.
fn says_full(refusal: &Rejection) -> bool {
    refusal.status == StatusCode::SERVICE_UNAVAILABLE
        && matches!(
            upstream::error_code(&refusal.body).as_deref(),
            Some("too_many_connections" | "node_full")
        )
}

impl Proxy {
    /// Admits an upgrade request from `peer` that passed the handshake check (`accepted`) and
    /// forwards it along its node's candidates: the node and its 101, or the response the
    /// client gets instead.
    pub async fn open<B>(
        &self,
        req: &Request<B>,
        accepted: Accepted,
        peer: SocketAddr,
    ) -> Result<(RingNode, Switched), Response<Body>> {
        let started = Instant::now();
        if upstream::from_a_gateway(req.headers()) {
            // Answered here, so the gateway that sent it tries its next node instead.
            return Err(self.reject(
                StatusCode::LOOP_DETECTED,
                "proxy_loop",
                "this is a ringcast gateway, not a node: a gateway's node address leads here",
            ));
        }
        let asked = accepted.client_id;
        let admitted = self
            .admission
            .admit(req.headers(), req.uri().query(), asked);
        let (client_id, query) = match admitted {
            Ok(admitted) => (admitted.client_id, admitted.query),
            Err(refusal) => return Err(self.refuse_at_edge(refusal, peer)),
        };
        let candidates = self
            .membership
            .ring()
            .candidates(&client_id, self.max_attempts.max(1));
        if candidates.is_empty() {
            return Err(self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_node",
                "no healthy node is available; retry shortly",
            ));
        }
        let forwarded = forwarded_for(req, peer);
        let Some(head) = upstream::request_head(&query, req.headers(), &forwarded, &self.via)
        else {
            // Not expected: the query came in a request line and the id added to it is a valid
            // client id.
            let refusal = ws_handshake::Refusal::MalformedHead("the query cannot be forwarded");
            return Err(self.refuse_handshake(refusal));
        };
        let attempts = tokio::time::timeout(
            self.handshake_timeout,
            self.try_candidates(&head, &candidates, &client_id),
        )
        .await;
        let (node, switched) = match attempts {
            Ok(found) => found?,
            Err(_) => {
                return Err(self.reject(
                    StatusCode::BAD_GATEWAY,
                    "node_timeout",
                    "the node did not answer the upgrade in time",
                ))
            }
        };
        self.metrics
            .upgrade_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .connections_total
            .with_label_values(&[&*node.id])
            .inc();
        debug!(%client_id, node = %node.id, "tunnel opening");
        Ok((node, switched))
    }

    /// One tunnel, counted in the node's open connections while it runs; the connection permit
    /// is released when it ends. Spawn it: it lives as long as the connection, so it is built
    /// from combinators that hold each part once.
    pub fn tunnel(
        &self,
        node: &RingNode,
        client: tunnel::Client,
        node_stream: NodeIo,
        node_early: Bytes,
        permit: ConnectionPermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let gauge = self
            .metrics
            .open_connections
            .with_label_values(&[&*node.id]);
        gauge.inc();
        tunnel::run(
            client,
            node_stream,
            node_early,
            self.copy_buffer_bytes,
            self.tunnel_linger,
            &self.metrics,
            self.drain.stopped_owned(),
        )
        .map(move |()| {
            gauge.dec();
            drop(permit);
        })
    }

    /// Sends `head` to each candidate in order; returns the node and its 101, or the response
    /// to send.
    async fn try_candidates(
        &self,
        head: &[u8],
        candidates: &[RingNode],
        client_id: &str,
    ) -> Result<(RingNode, Switched), Response<Body>> {
        let mut full = false;
        for (i, node) in candidates.iter().enumerate() {
            if i > 0 {
                self.metrics.failovers.inc();
                info!(%client_id, node = %node.id, attempt = i + 1, "failing over");
            }
            match self.attempt(head, node).await {
                Ok(Answer::Switched(switched)) => return Ok((node.clone(), switched)),
                Ok(Answer::Other(refusal)) => return Err(self.relay_refusal(refusal)),
                Err(Attempt::Refused(e)) => {
                    warn!(node = %node.id, addr = %node.addr, error = %e, "node refused the connection");
                    self.membership.mark_down(&node.id);
                }
                Err(Attempt::Unreachable(e)) => {
                    warn!(node = %node.id, addr = %node.addr, error = %e, "node unreachable");
                    self.membership.report_check(&node.id, &node.addr, false);
                }
                Err(Attempt::Declined(StatusCode::LOOP_DETECTED)) => {
                    warn!(node = %node.id, addr = %node.addr, "the node's address leads to a ringcast gateway (a proxy loop): check --node and the nodes' advertised addresses");
                }
                Err(Attempt::Declined(status)) => {
                    info!(node = %node.id, %status, "node refused the upgrade");
                }
                Err(Attempt::Draining) => {
                    debug!(node = %node.id, "node is draining (GOAWAY on its link)");
                }
                Err(Attempt::Full) => {
                    info!(node = %node.id, "node is at its connection limit");
                    full = true;
                }
            }
        }
        if full {
            return Err(self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_full",
                "the client's nodes are at their connection limit; retry shortly",
            ));
        }
        Err(self.reject(
            StatusCode::BAD_GATEWAY,
            "nodes_failed",
            "every candidate node failed; retry shortly",
        ))
    }

    /// One forwarded upgrade to one node: its answer, or why there was none worth relaying.
    async fn attempt(&self, head: &[u8], node: &RingNode) -> Result<Answer, Attempt> {
        let route = match &self.links {
            Some(links) => links.route(&node.addr).await.map_err(|e| match e {
                LinkError::Refused(e) => Attempt::Refused(e),
                LinkError::Unreachable(e) => Attempt::Unreachable(e),
                LinkError::Declined(status) => Attempt::Declined(status),
                LinkError::Draining => Attempt::Draining,
            })?,
            None => Route::Direct,
        };
        let answer = match route {
            // On a link no connect timeout guards the attempt: the answer is bounded by
            // the same time instead, so a node that stopped answering (its link not yet found
            // dead by the keepalive) costs an upgrade no more than a connect to it would, and
            // the next node gets its turn. The link stays: one slow answer proves nothing.
            Route::Stream(stream) => {
                let exchange = upstream::exchange(NodeIo::Link(stream), head);
                match tokio::time::timeout(self.connect_timeout, exchange).await {
                    Ok(answer) => answer,
                    Err(_) => Err(upstream::ExchangeError::Broken(
                        "no answer over the link in time".to_owned(),
                    )),
                }
            }
            Route::Direct => {
                let stream = self.connect(node).await?;
                upstream::exchange(stream, head).await
            }
        };
        match answer {
            Ok(Answer::Other(r)) if says_full(&r) => Err(Attempt::Full),
            Ok(Answer::Other(r)) if r.status.is_server_error() => Err(Attempt::Declined(r.status)),
            Ok(answer) => Ok(answer),
            Err(e) => Err(Attempt::Unreachable(e.to_string())),
        }
    }

    /// A connection of its own to `node` (TCP, or TLS with `--node-tls`).
    async fn connect(&self, node: &RingNode) -> Result<NodeIo, Attempt> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        self.connector
            .connect(&node.addr, deadline)
            .await
            .map_err(|e| match e {
                ConnectError::Refused(e) => Attempt::Refused(e),
                ConnectError::Unreachable(e) => Attempt::Unreachable(e),
            })
    }

    /// A node refused with a 4xx (say, it rejects the client_id): the client sees that answer.
    fn relay_refusal(&self, refusal: Rejection) -> Response<Body> {
        let Rejection {
            status,
            content_type,
            body,
        } = refusal;
        self.metrics
            .rejected
            .with_label_values(&[status.as_str()])
            .inc();
        let mut out = Response::new(Full::new(body));
        *out.status_mut() = status;
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let Some(ct) = content_type {
            out.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        out
    }

    /// Refuses an upgrade that failed admission; no node was contacted. Logs and counts only
    /// the reason code, never the token.
    fn refuse_at_edge(&self, refusal: Refusal, peer: SocketAddr) -> Response<Body> {
        debug!(reason = refusal.code, peer = %peer.ip(), "upgrade refused at the edge");
        self.metrics
            .edge_refusals
            .with_label_values(&[refusal.code])
            .inc();
        let mut resp = self.reject(refusal.status, refusal.code, &refusal.message);
        if refusal.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ringcast\""),
            );
        }
        resp
    }

    /// The answer to a request refused by the handshake check (a node's answer to it too),
    /// counted by status.
    pub fn refuse_handshake(&self, refusal: ws_handshake::Refusal) -> Response<Body> {
        self.metrics
            .rejected
            .with_label_values(&[refusal.status().as_str()])
            .inc();
        refusal.response()
    }

    /// A JSON refusal that ends the connection, counted by status.
    pub fn reject(&self, status: StatusCode, code: &str, message: &str) -> Response<Body> {
        self.metrics
            .rejected
            .with_label_values(&[status.as_str()])
            .inc();
        let mut resp = json_error(status, code, message);
        // A refused upgrade ends the connection: the client reconnects from scratch anyway.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

/// `X-Forwarded-For`: the incoming chain plus this peer.
fn forwarded_for<B>(req: &Request<B>, peer: SocketAddr) -> HeaderValue {
    let ip = peer.ip().to_string();
    let chain = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() < 1024)
        .map(|v| format!("{v}, {ip}"))
        .unwrap_or(ip);
    HeaderValue::from_str(&chain).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
