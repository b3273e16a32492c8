//! HTTP on the gateway's port, served by hyper: `/healthz`, `/metrics`, `/nodes` (and `/demo/`
//! with `--demo`). Connections
//! reach it from the `connection` module, which sends those that open with `GET /ws ` or
//! `GET /ws?` down the upgrade path (the `direct` module) instead; hyper upgrades nothing. A
//! `/ws` request that reaches hyper anyway (another method, an absolute-form target, a second
//! request on a kept-alive connection) gets the refusal the handshake check gives it, or, should
//! it pass, 400 `unsupported_upgrade` — what a node answers to the same request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::debug;

use crate::client_io::ClientIo;
use crate::limits::ConnectionPermit;
use crate::proxy::Proxy;
use ringcast_net::detect::Prefixed;
use ringcast_net::http1::response::{json, json_error, metrics_text, Body};
use ringcast_net::ws_handshake::{self, Refusal};

/// What the HTTP layer needs.
pub struct Http {
    /// The upgrade proxy (and through it membership and metrics).
    pub proxy: Arc<Proxy>,
    /// Seconds a client has to send its request head.
    pub handshake_timeout: std::time::Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// The server API when it is served here (not on `--api-listen`).
    pub api: Option<Arc<crate::api::Api>>,
    /// Whether `/demo/` serves the demo chat (`--demo`).
    pub demo: bool,
}

impl Http {
    /// Whether shutdown has begun: `/healthz` answers 503 and upgrades are refused.
    pub fn is_draining(&self) -> bool {
        self.proxy.drain.is_draining()
    }
}

/// Serves HTTP/1.1 with hyper on one client connection (`stream` replays the bytes detection
/// read) until it closes or the gateway's drain is over; `permit` is held as long. `upgrades`:
/// whether the listener serves `/ws` at all (the plain in-cluster listener does not).
pub async fn serve(
    http: Arc<Http>,
    stream: Prefixed<ClientIo>,
    peer: SocketAddr,
    permit: ConnectionPermit,
    upgrades: bool,
) {
    let io = TokioIo::new(stream);
    let svc_http = http.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let http = svc_http.clone();
        async move {
            // The plain listener beside a TLS one (`upgrades` false) serves no API: its keys
            // would cross the network in cleartext there.
            if upgrades && crate::api::is_api(req.uri().path()) {
                if let Some(api) = &http.api {
                    return Ok::<_, Infallible>(api.serve(req).await);
                }
            }
            Ok::<_, Infallible>(route(&http, req, upgrades))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(http.handshake_timeout)
        .max_buf_size(http.max_header_bytes.max(8192))
        .serve_connection(io, svc);
    tokio::select! {
        r = conn => if let Err(e) = r {
            debug!(%peer, error = %e, "client connection ended with an error");
        },
        _ = http.proxy.drain.stopped() => {}
    }
    drop(permit);
}

fn route(http: &Arc<Http>, req: Request<Incoming>, upgrades: bool) -> Response<Body> {
    let draining = http.is_draining();
    let proxy = &http.proxy;
    match req.uri().path() {
        "/ws" if !upgrades => proxy.reject(
            StatusCode::BAD_REQUEST,
            "no_upgrades_here",
            "this listener (--plain-listen) serves /healthz, /metrics and /nodes only; connect to the public TLS listener for /ws",
        ),
        "/ws" => {
            let refusal = ws_handshake::check(&req).err();
            proxy.refuse_handshake(refusal.unwrap_or(Refusal::UnsupportedUpgrade))
        }
        // A gateway's health check that reached a gateway: its node address is wrong.
        "/healthz" if crate::upstream::from_a_gateway(req.headers()) => json_error(
            StatusCode::LOOP_DETECTED,
            "proxy_loop",
            "this is a ringcast gateway, not a node: a gateway's node address leads here",
        ),
        "/healthz" => {
            let ring = proxy.membership.ring().len();
            let status = if draining || ring == 0 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            json(
                status,
                serde_json::json!({
                    "status": if status == StatusCode::OK { "ok" } else { "unavailable" },
                    "draining": draining,
                    "ring_size": ring,
                }),
            )
        }
        "/nodes" => json(
            StatusCode::OK,
            serde_json::json!({
                "ring_size": proxy.membership.ring().len(),
                "room_options_mismatch": proxy.membership.room_options_mismatch(),
                "nodes": proxy.membership.view(),
            }),
        ),
        "/metrics" => metrics_text(proxy.metrics.render()),
        path if upgrades && http.demo && crate::demo::is_demo(path) => crate::demo::serve(path)
            .unwrap_or_else(|| json_error(StatusCode::NOT_FOUND, "not_found", "no such path")),
        path if crate::api::is_api(path) => ringcast_net::api_auth::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the server API is served on --api-listen, not here",
        ),
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such path"),
    }
}
