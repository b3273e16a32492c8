//! One client connection from accept to hand-off: the TLS handshake when the listener has a
//! certificate, then its first bytes, then the upgrade path, hyper, or a refusal.
//!
//! A connection that opens with `GET /ws ` or `GET /ws?` goes to the upgrade path (see the
//! `direct` module), the only one; every other HTTP/1 opening (`/healthz`, `/metrics`, `/nodes`,
//! a link preface, which is for nodes) goes to hyper, which reads the detected bytes again first
//! and upgrades nothing. The HTTP/2 preface gets the handshake table's `bad_http_version`.
//!
//! The TLS handshake runs here, in the connection's own task, after the accept loop took the
//! connection's permits (so the per-address limit applies before any TLS work), and under the
//! same deadline as the request head: `--handshake-timeout-secs` bounds both together, and a
//! client that opens TCP and never speaks TLS is dropped when it passes.

use std::net::SocketAddr;
use std::sync::Arc;

use ringcast_net::detect::{detect, Opening, Prefixed};
use ringcast_net::http1_io;
use ringcast_net::ws_handshake::Refusal;
use tokio::net::TcpStream;

use crate::client_io::ClientIo;
use crate::direct;
use crate::http::{self, Http};
use crate::limits::ConnectionPermit;
use crate::tls::Tls;

/// What one listener does with its connections.
#[derive(Debug, Clone)]
pub struct Edge {
    /// TLS first, when the listener has a certificate.
    pub tls: Option<Arc<Tls>>,
    /// Whether `/ws` upgrades are served (the plain in-cluster listener beside a TLS one
    /// serves HTTP only: `/ws` gets hyper's refusal there).
    pub upgrades: bool,
}

/// Serves one client connection until it closes, upgrades, or the gateway's drain is over.
pub async fn serve(
    http: Arc<Http>,
    edge: Edge,
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
) {
    // One deadline for the TLS handshake, the first bytes and the whole head.
    let deadline = tokio::time::Instant::now() + http.handshake_timeout;
    let mut stream = match &edge.tls {
        Some(tls) => match tls.accept(stream, deadline).await {
            Some(tls) => ClientIo::Tls(Box::new(tls)),
            None => return, // failed, closed, or silent through the handshake timeout
        },
        None => ClientIo::Plain(stream),
    };
    let prefix = match tokio::time::timeout_at(deadline, detect(&mut stream)).await {
        Ok(Some((Opening::WsUpgrade, prefix))) if edge.upgrades => {
            return direct::serve(http, stream, prefix, peer, permit, deadline).await;
        }
        // A link is for nodes; hyper answers the gateway's 404.
        Ok(Some((Opening::WsUpgrade | Opening::Other | Opening::Link, prefix))) => prefix,
        Ok(Some((Opening::Http2Preface, _))) => {
            // hyper's HTTP/1 server drops a prior-knowledge HTTP/2 connection without a word;
            // tell the client why instead, as a node does.
            let resp = http.proxy.refuse_handshake(Refusal::BadHttpVersion);
            return http1_io::answer(&mut stream, resp, http.handshake_timeout).await;
        }
        Ok(None) | Err(_) => return, // closed or silent through the handshake timeout
    };
    http::serve(
        http,
        Prefixed::new(prefix, stream),
        peer,
        permit,
        edge.upgrades,
    )
    .await;
}
