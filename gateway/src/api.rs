//! The server API on the gateway: `POST /api/<method>`, checked here (key, method, body size)
//! and forwarded to a healthy node, which runs it on the bus. The gateway has no bus of its own.
//!
//! Calls go over kept-alive HTTP/1.1 connections to the nodes, a few idle ones kept per node
//! (bounded), and to the next node of the ring when one cannot be reached. Served on the
//! public listener, or only on `--api-listen` when that is given.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::membership::Membership;
use crate::node_io::{ConnectError, Connector};
use ringcast_net::api_auth;
use ringcast_net::drain::Drain;
use ringcast_net::http1::response::Body;

/// Idle connections kept per node: enough for every call in flight to a node to find one
/// again (fewer made each call past them open a TCP connection and leave it in TIME-WAIT:
/// 64 left ~5 800 after 2.5 s of 256 callers, and a fifth of the rate), few enough to bound.
const IDLE_PER_NODE: usize = 1024;
/// Nodes tried per call.
const ATTEMPTS: usize = 3;

/// One kept-alive HTTP/1.1 connection to a node.
type Sender = SendRequest<Full<Bytes>>;

/// What forwarding needs.
pub struct Api {
    /// Keys accepted (`--api-key`); none: the API is off.
    pub keys: Vec<String>,
    /// Largest body.
    pub max_body: usize,
    /// Where the nodes are.
    pub membership: Arc<Membership>,
    /// Time to connect to a node.
    pub connect_timeout: Duration,
    /// Time a node has to answer a call.
    pub call_timeout: Duration,
    idle: Mutex<HashMap<Arc<str>, Vec<Sender>>>,
    next: AtomicUsize,
    /// TCP, or TLS with `--node-tls`.
    connector: Connector,
}

impl Api {
    /// A forwarder with no connections yet.
    pub fn new(
        keys: Vec<String>,
        max_body: usize,
        membership: Arc<Membership>,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Self {
        Api {
            keys,
            max_body,
            membership,
            connect_timeout,
            call_timeout,
            idle: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            connector: Connector::plain(),
        }
    }

    /// Calls made over connections from `connector` (TLS with `--node-tls`).
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = connector;
        self
    }

    /// Serves one API request.
    pub async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        let auth = req.headers().get(header::AUTHORIZATION).cloned();
        if let Some(refused) = api_auth::refuse(&self.keys, req.method(), auth.as_ref()) {
            return refused;
        }
        let path = req.uri().path().to_owned();
        let body = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return api_auth::too_large(self.max_body)
            }
            Err(_) => {
                return api_auth::error(StatusCode::BAD_REQUEST, "bad_request", "unreadable body")
            }
        };
        // Spread calls over the ring; on failure the next candidates take it.
        let key = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let ring = self.membership.ring();
        for node in ring.candidates(&key, ATTEMPTS) {
            match self.forward(&node.addr, &path, auth.as_ref(), &body).await {
                Ok(resp) => return resp,
                Err(e) => {
                    warn!(node = %node.id, error = %e, "API call not forwarded; trying the next node")
                }
            }
        }
        api_auth::error(
            StatusCode::BAD_GATEWAY,
            "node_unavailable",
            "no node could take the call",
        )
    }

    async fn forward(
        &self,
        addr: &Arc<str>,
        path: &str,
        auth: Option<&HeaderValue>,
        body: &Bytes,
    ) -> Result<Response<Body>, String> {
        let mut sender = self.sender(addr).await?;
        let mut req = Request::post(path)
            .header(header::HOST, &**addr)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>(Response::from_parts(parts, Full::new(bytes)))
        };
        let resp = tokio::time::timeout(self.call_timeout, call)
            .await
            .map_err(|_| "the node did not answer in time".to_owned())??;
        self.put_back(addr, sender);
        Ok(resp)
    }

    /// An idle connection to `addr`, or a new one.
    async fn sender(&self, addr: &Arc<str>) -> Result<Sender, String> {
        loop {
            let idle = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.get_mut(addr).and_then(Vec::pop)
            };
            match idle {
                Some(s) if !s.is_closed() => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let stream = self
            .connector
            .connect(addr, deadline)
            .await
            .map_err(|e| match e {
                ConnectError::Refused(e) | ConnectError::Unreachable(e) => e,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "API connection to a node ended");
            }
        });
        Ok(sender)
    }

    fn put_back(&self, addr: &Arc<str>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr.clone()).or_default();
        if list.len() < IDLE_PER_NODE {
            list.push(sender);
        }
    }
}

/// Whether `path` is the API's.
pub fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Serves the API alone on its own listener (`--api-listen`) until the drain.
pub async fn serve_listener(listener: TcpListener, api: Arc<Api>, drain: Drain) {
    info!(addr = ?listener.local_addr().ok(), "server API listening");
    loop {
        let accepted = tokio::select! {
            _ = drain.draining() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let api = api.clone();
        let stopped = drain.clone();
        drain.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let api = api.clone();
                async move {
                    if is_api(req.uri().path()) {
                        Ok::<_, Infallible>(api.serve(req).await)
                    } else {
                        Ok(api_auth::error(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            "this listener serves /api/<method> only",
                        ))
                    }
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(%peer, error = %e, "API connection ended with an error");
                },
                _ = stopped.stopped() => {}
            }
        });
    }
}
