//! HTTP on the node's port: `/ws` upgrades, the admin views (`admin.rs`), `/metrics` and the
//! server API (`api/`).
//!
//! A connection that opens with `GET /ws ` or `GET /ws?` is upgraded without hyper
//! ([`serve_upgrade`]); hyper serves every other connection and never upgrades one. A `/ws`
//! request that reaches hyper (another method, an absolute-form target, a second request on a
//! kept-alive connection) gets the refusal [`ws_handshake::check`] gives it, or, should it pass,
//! 400 `unsupported_upgrade`: one upgrade path, so one place where sessions start.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ringcast_net::cork::Uncork;
use ringcast_net::detect::{detect, Opening, Prefixed};
use ringcast_net::http1::request::{HeadError, HeadLimits};
use ringcast_net::http1::response::{self, json_error, metrics_text, push_response_head, Body};
use ringcast_net::http1_io::{self, read_head_after};
use ringcast_net::link::frame::GoAwayReason;
use ringcast_net::link::upgrade::{self, Offer, Version};
use ringcast_net::link::{self, Link, LinkStream};
use ringcast_net::split::SplitIo;
use ringcast_net::ws_handshake::{self, Refusal};
use ringcast_protocol::auth::Identity;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use crate::admin;
use crate::session::serve;
use crate::state::{SessionSlot, Shared};

/// Largest request head accepted, on the direct path and through hyper alike (431 past it):
/// a client's limit plus the room a gateway needs to forward a head it accepted.
const MAX_HEAD_BYTES: usize = HeadLimits::NODE.bytes;

/// Serves HTTP/1.1 on one connection (TCP, or TLS with `--tls-cert`), handing upgraded ones to a
/// session.
pub async fn serve_connection<S>(shared: Arc<Shared>, mut stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Uncork + SplitIo + Unpin + Send + 'static,
{
    let handshake_timeout = shared.config.handshake_timeout();
    // One deadline for the first bytes and the whole head, as hyper had.
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    // A connection that has sent nothing by the time the node has drained is not waited for.
    let opening = tokio::select! {
        opening = tokio::time::timeout_at(deadline, detect(&mut stream)) => opening,
        _ = shared.drain.stopped() => return,
    };
    let prefix = match opening {
        Ok(Some((Opening::WsUpgrade, prefix))) => {
            // The 101 waits for the welcome (see `cork`); the session uncorks.
            stream.cork();
            let serve = serve_upgrade(shared, stream, prefix, None, deadline, handshake_timeout);
            return serve.await;
        }
        Ok(Some((Opening::Link, prefix))) => {
            let serve = serve_link(shared, stream, prefix, peer, deadline, handshake_timeout);
            return serve.await;
        }
        Ok(Some((Opening::Http2Preface, _))) => {
            // hyper's HTTP/1 server would drop it without a word; say why, as the gateway does.
            let resp = refuse_with(&shared, Refusal::BadHttpVersion);
            return http1_io::answer(&mut stream, resp, handshake_timeout).await;
        }
        Ok(Some((Opening::Other, prefix))) => prefix,
        Ok(None) | Err(_) => return, // closed, or silent through the handshake timeout
    };
    // hyper reads the detected bytes again first.
    let io = TokioIo::new(Prefixed::new(prefix, stream));
    let drain = shared.drain.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            if crate::api::is_api(req.uri().path()) {
                return Ok::<_, Infallible>(crate::api::serve(shared, req).await);
            }
            Ok::<_, Infallible>(route(shared, req))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    // Once the node has drained, a kept-alive connection ends after the request in progress
    // (the node waits for its connections before exiting).
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = drain.stopped() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "http connection ended with an error");
    }
}

fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/ws" => upgrade_elsewhere(&shared, &req),
        "/healthz" => admin::health(&shared),
        "/stats" => admin::stats(&shared),
        "/rooms" => admin::rooms(&shared, req.uri().query()),
        "/metrics" => {
            let up = *shared.bus_healthy.borrow();
            shared.metrics.bus_up.set(i64::from(up));
            metrics_text(shared.metrics.render())
        }
        _ => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "try /ws, /healthz, /stats, /rooms or /metrics",
        ),
    }
}

/// The status, code and message of an upgrade refused at `--max-connections`.
const AT_LIMIT: (StatusCode, &str, &str) = (
    StatusCode::SERVICE_UNAVAILABLE,
    "too_many_connections",
    "node is at its connection limit",
);

/// A refused upgrade's answer, counted.
fn refuse(shared: &Shared, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    count_refusal(shared, code);
    refusal(status, code, message)
}

/// A refused upgrade's answer from the handshake table, counted.
fn refuse_with(shared: &Shared, refusal: Refusal) -> Response<Body> {
    count_refusal(shared, refusal.code());
    refusal.response()
}

fn count_refusal(shared: &Shared, code: &str) {
    shared
        .metrics
        .upgrades_refused
        .with_label_values(&[code])
        .inc();
}

/// A refused upgrade's answer.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut resp = json_error(status, code, message);
    // A client whose upgrade failed has nothing more to say on this connection.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// An upgrade that passed every check: what its session needs and what its 101 says.
struct Admitted {
    slot: SessionSlot,
    client_id: Arc<str>,
    identity: Option<Identity>,
    accept_key: String,
    /// Whether to confirm the `ringcast.v1` subprotocol.
    subprotocol: bool,
}

impl Admitted {
    /// The headers of the 101.
    fn switching_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(4);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&self.accept_key) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if self.subprotocol {
            // Never echo the bearer entry: it is the token.
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(ringcast_protocol::auth::SUBPROTOCOL),
            );
        }
        h
    }
}

/// Checks an upgrade request: the handshake, draining, the connection limit, the token; names
/// the client. `Err` is the refusal to send.
///
/// `reserved` is a session slot taken before the request arrived (a link stream takes one when
/// it opens); without it, one is taken here.
fn admit<B>(
    shared: &Shared,
    req: &Request<B>,
    reserved: Option<SessionSlot>,
) -> Result<Admitted, Box<Response<Body>>> {
    let refused =
        |status, code: &str, message: &str| Box::new(refuse(shared, status, code, message));
    let accepted = ws_handshake::check(req).map_err(|r| Box::new(refuse_with(shared, r)))?;
    if shared.is_draining() {
        return Err(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is shutting down; reconnect",
        ));
    }
    let Some(slot) = reserved.or_else(|| shared.reserve_session()) else {
        let (status, code, message) = AT_LIMIT;
        return Err(refused(status, code, message));
    };
    let identity = match &shared.auth {
        None => None,
        Some(auth) => match auth.authenticate(req.headers(), req.uri().query()) {
            Ok(identity) => Some(identity),
            Err(e) => {
                let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
                debug!(reason = e.code(), "upgrade refused by authentication");
                return Err(refused(status, e.code(), &e.to_string()));
            }
        },
    };
    let client_id: Arc<str> = match (&identity, accepted.client_id) {
        (Some(identity), _) => identity.sub.as_str().into(),
        (None, Some(id)) => id.into(),
        (None, None) => ringcast_protocol::generate_client_id(rand::random::<u8>).into(),
    };
    let subprotocol = ringcast_protocol::auth::offered_subprotocols(req.headers())
        .any(|p| p == ringcast_protocol::auth::SUBPROTOCOL);
    Ok(Admitted {
        slot,
        client_id,
        identity,
        accept_key: accepted.accept_key,
        subprotocol,
    })
}

/// A connection that opened with `GET /ws`, served without hyper (see [`ringcast_net::http1_io`]): the
/// head is read, the 101 written (held back by the cork until the welcome follows), and the
/// session spawned on the stream.
async fn serve_upgrade<S>(
    shared: Arc<Shared>,
    mut stream: S,
    prefix: Vec<u8>,
    reserved: Option<SessionSlot>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Uncork + SplitIo + Unpin + Send + 'static,
{
    let bad = |why| refuse_with(&shared, Refusal::MalformedHead(why));
    let head = head_or_answer(&mut stream, prefix, deadline, timeout, bad).await;
    let Some((req, early)) = head else {
        return;
    };
    let admitted = match admit(&shared, &req, reserved) {
        Ok(admitted) => admitted,
        Err(resp) => return http1_io::answer(&mut stream, *resp, timeout).await,
    };
    drop(req);
    let mut headers = admitted.switching_headers();
    headers.insert(header::DATE, response::date());
    let mut out = Vec::with_capacity(256);
    push_response_head(&mut out, StatusCode::SWITCHING_PROTOCOLS, &headers);
    if !matches!(
        tokio::time::timeout(timeout, stream.write_all(&out)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let Admitted {
        slot,
        client_id,
        identity,
        ..
    } = admitted;
    // The task is the session's own (small) future; an `async` block awaiting it would hold a
    // second copy of it for the connection's life.
    let drain = shared.drain.clone();
    let session = serve(shared, stream, early, client_id, identity);
    drain.spawn_session(session.map(move |()| drop(slot)));
}

/// Reads the request head by `deadline`; an oversized one is answered with 431 and a malformed
/// one with `bad(why)`, and then, as when the peer closed or stayed silent, there is none.
async fn head_or_answer<S, F>(
    stream: &mut S,
    prefix: Vec<u8>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    bad: F,
) -> Option<(Request<()>, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&'static str) -> Response<Body>,
{
    let read = read_head_after(stream, prefix, HeadLimits::NODE);
    let resp = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(parsed)) => return Some(parsed),
        Ok(Err(HeadError::TooLarge)) => json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request head is too large",
        ),
        Ok(Err(HeadError::Invalid(why))) => bad(why),
        Ok(Err(HeadError::Closed)) | Err(_) => return None,
    };
    http1_io::answer(stream, resp, timeout).await;
    None
}

/// A connection that opened with `GET /link`: a gateway carrying its clients over this one
/// connection (see [`ringcast_net::link`]). Each stream it opens is served like a connection that
/// opened with `GET /ws`, under the same handshake timeout, limits and checks. The link ends
/// when the gateway closes it, breaks the link protocol, or the node has drained.
///
/// Only a gateway that presents the link secret gets a link (see [`link::secret`]). Each stream
/// is a connection from the moment it opens: it takes a session slot then, and one opened at
/// `--max-connections` is refused at once with a 503 `too_many_connections`, as a connection
/// would be.
async fn serve_link<S>(
    shared: Arc<Shared>,
    mut stream: S,
    prefix: Vec<u8>,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + SplitIo + Unpin + Send + 'static,
{
    let bad = |why| json_error(StatusCode::BAD_REQUEST, "bad_request", why);
    let head = head_or_answer(&mut stream, prefix, deadline, timeout, bad).await;
    let Some((req, early)) = head else {
        return;
    };
    let version = match link_version(&shared, &req) {
        Ok(version) => version,
        Err(resp) => return http1_io::answer(&mut stream, *resp, timeout).await,
    };
    if let Err(refusal) =
        link::secret::admit(shared.config.link_secret.as_ref(), req.headers(), peer)
    {
        use link::secret::Refusal;
        let reason = refusal.reason();
        shared
            .metrics
            .link_refusals
            .with_label_values(&[reason])
            .inc();
        let why = match refusal {
            Refusal::Unauthorized => "the request did not present the link secret",
            Refusal::NotLoopback => {
                "no --link-secret is set, so links are taken from loopback peers only"
            }
            Refusal::Proxied => {
                "no --link-secret is set and the request came through a proxy, so its loopback peer address proves nothing"
            }
        };
        if warn_now(refusal) {
            warn!(%peer, reason, "link refused: {why} (more refusals for this reason in the next minute are logged at debug; ringcast_node_link_refusals_total counts them all)");
        } else {
            debug!(%peer, reason, "link refused: {why}");
        }
        let resp = match refusal {
            Refusal::Unauthorized => json_error(
                StatusCode::UNAUTHORIZED,
                "link_unauthorized",
                "a link needs the node's link secret",
            ),
            Refusal::Proxied => json_error(
                StatusCode::FORBIDDEN,
                "link_forbidden",
                "this node has no link secret: it takes links from loopback peers only, not through a proxy",
            ),
            Refusal::NotLoopback => json_error(
                StatusCode::FORBIDDEN,
                "link_forbidden",
                "this node takes links from loopback peers only (it has no link secret)",
            ),
        };
        return http1_io::answer(&mut stream, resp, timeout).await;
    }
    if shared.is_draining() {
        shared
            .metrics
            .link_refusals
            .with_label_values(&["draining"])
            .inc();
        let resp = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is shutting down; reconnect",
        );
        return http1_io::answer(&mut stream, resp, timeout).await;
    }
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(header::UPGRADE, HeaderValue::from_static(version.token()));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::DATE, response::date());
    let mut out = Vec::with_capacity(128);
    push_response_head(&mut out, StatusCode::SWITCHING_PROTOCOLS, &headers);
    if !matches!(
        tokio::time::timeout(timeout, stream.write_all(&out)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    debug!(version = version.token(), "link opened");
    let gauge = shared.metrics.links.clone();
    gauge.inc();
    let drain = shared.drain.clone();
    // A stream is a connection: it holds a session slot from its OPEN on, so the node's
    // connection limit bounds every link's streams together (those still in their handshake
    // included). A stream gives its slot back about when it leaves the link (a refused
    // upgrade's answer may still be on its way); the slack covers that, and past it a stream is
    // closed as soon as it opens.
    let max_streams = shared.config.max_connections.saturating_add(1024);
    let full = stream_refusal(timeout).await;
    let full_reply = full.clone();
    let on_open = {
        let drain = drain.clone();
        move |s: LinkStream| {
            let Some(slot) = shared.reserve_session() else {
                count_refusal(&shared, AT_LIMIT.1);
                s.refuse(&full);
                return;
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let serve = serve_upgrade(shared.clone(), s, Vec::new(), Some(slot), deadline, timeout);
            drain.spawn(serve);
        }
    };
    let (rd, wr) = stream.split_io();
    let (link, driver) = Link::over(rd, wr, early, link::Role::Acceptor, max_streams, on_open);
    // Past the table's own bound a stream is refused as one at the connection limit is.
    link.set_full_reply(&full_reply);
    let mut driver = std::pin::pin!(driver);
    // Once the node begins to drain, the gateway is told to open no new streams here, so that
    // it sends new clients elsewhere at once; the streams open run on until their sessions end.
    let mut goaway_due = version.has_goaway();
    let ended = loop {
        tokio::select! {
            r = &mut driver => break Some(r),
            _ = drain.draining(), if goaway_due => {
                link.go_away(GoAwayReason::Draining);
                goaway_due = false;
            }
            _ = drain.stopped() => break None,
        }
    };
    match ended {
        Some(Ok(())) => debug!(%peer, "link ended"),
        Some(Err(e)) => warn!(%peer, reason = %e, "link closed"),
        None => {
            // The node has drained: what its sessions wrote last (their close frames) still
            // goes out before the link ends.
            link.finish();
            if tokio::time::timeout(crate::writer::CLOSE_TIMEOUT, driver)
                .await
                .is_err()
            {
                link.close();
            }
        }
    }
    gauge.dec();
}

/// The link version a `/link` request asks for, or the answer that refuses it: 400 for a
/// request that is no link upgrade, 426 (listing the tokens this node speaks in `Upgrade`) for
/// one that offers only versions it does not know. With `--link-legacy-only`, answered as the
/// release before versioning did: only the unversioned token, everything else its 400.
fn link_version<B>(shared: &Shared, req: &Request<B>) -> Result<Version, Box<Response<Body>>> {
    let is_get = req.method() == hyper::Method::GET && req.version() == hyper::Version::HTTP_11;
    let offer = if shared.config.link_legacy_only {
        let legacy = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(upgrade::LEGACY_PROTOCOL));
        if legacy {
            Offer::Link(Version::Legacy)
        } else {
            Offer::NotALink
        }
    } else {
        upgrade::offered(req.headers())
    };
    let (status, code, message) = match offer {
        Offer::Link(version) if is_get => return Ok(version),
        Offer::UnknownVersion if is_get => {
            shared
                .metrics
                .link_refusals
                .with_label_values(&["unknown_version"])
                .inc();
            (
                StatusCode::UPGRADE_REQUIRED,
                "link_version_unsupported",
                "this node speaks ringcast-link/1 and ringcast-link; ask again with one of them",
            )
        }
        _ if shared.config.link_legacy_only => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a link is GET /link HTTP/1.1 with Upgrade: ringcast-link",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a link is GET /link HTTP/1.1 with Upgrade: ringcast-link/1",
        ),
    };
    let mut resp = json_error(status, code, message);
    if status == StatusCode::UPGRADE_REQUIRED {
        // RFC 9110 §15.5.22: a 426 names the protocols that would be served.
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static(upgrade::SPOKEN));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    Err(Box::new(resp))
}

/// Whether a refused link request is logged at warn: the first for its reason, then at most one
/// a minute per reason, so that a gateway with another secret (it asks again every minute) or
/// anyone who reaches the port cannot fill the log. Process-wide: one node per process, outside
/// tests.
fn warn_now(refusal: link::secret::Refusal) -> bool {
    use link::secret::Refusal;
    static LAST: std::sync::Mutex<[Option<std::time::Instant>; 3]> =
        std::sync::Mutex::new([None; 3]);
    let i = match refusal {
        Refusal::Unauthorized => 0,
        Refusal::NotLoopback => 1,
        Refusal::Proxied => 2,
    };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    if last[i].is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
        return false;
    }
    last[i] = Some(now);
    true
}

/// The whole answer to a link stream opened at the connection limit: what a connection at the
/// limit gets, as [`http1_io::answer`] writes it (its `Date` is the link's opening time; the
/// gateway reads only the status and the code).
async fn stream_refusal(timeout: Duration) -> Vec<u8> {
    let (status, code, message) = AT_LIMIT;
    let mut out = Vec::with_capacity(256);
    http1_io::answer(&mut out, refusal(status, code, message), timeout).await;
    out
}

/// A `/ws` request that reached hyper: its connection did not open with `GET /ws ` or
/// `GET /ws?`. The handshake check's refusal, or `unsupported_upgrade` when it passes — hyper
/// upgrades nothing (see the module doc).
fn upgrade_elsewhere(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let refusal = ws_handshake::check(req).err();
    refuse_with(shared, refusal.unwrap_or(Refusal::UnsupportedUpgrade))
}
