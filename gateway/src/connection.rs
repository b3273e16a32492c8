//! One client connection from accept to hand-off: read its first bytes, then serve it on the
//! upgrade path, through hyper, or with a refusal.
//!
//! A connection that opens with `GET /ws ` or `GET /ws?` goes to the upgrade path (see the
//! `direct` module), the only one; every other HTTP/1 opening (`/healthz`, `/metrics`, `/nodes`,
//! a link preface, which is for nodes) goes to hyper, which reads the detected bytes again first
//! and upgrades nothing. The HTTP/2 preface gets the handshake table's `bad_http_version`.

use std::net::SocketAddr;
use std::sync::Arc;

use ringcast_net::detect::{detect, Opening, Prefixed};
use ringcast_net::http1_io;
use ringcast_net::ws_handshake::Refusal;
use tokio::net::TcpStream;

use crate::direct;
use crate::http::{self, Http};
use crate::limits::ConnectionPermit;

/// Serves one client connection until it closes, upgrades, or the gateway's drain is over.
pub async fn serve(http: Arc<Http>, stream: TcpStream, peer: SocketAddr, permit: ConnectionPermit) {
    let mut stream = stream;
    // One deadline for the first bytes and the whole head, as hyper had.
    let deadline = tokio::time::Instant::now() + http.handshake_timeout;
    let prefix = match tokio::time::timeout_at(deadline, detect(&mut stream)).await {
        Ok(Some((Opening::WsUpgrade, prefix))) => {
            return direct::serve(http, stream, prefix, peer, permit, deadline).await;
        }
        // A link is for nodes; hyper answers the gateway's 404.
        Ok(Some((Opening::Other | Opening::Link, prefix))) => prefix,
        Ok(Some((Opening::Http2Preface, _))) => {
            // hyper's HTTP/1 server drops a prior-knowledge HTTP/2 connection without a word;
            // tell the client why instead, as a node does.
            let resp = http.proxy.refuse_handshake(Refusal::BadHttpVersion);
            return http1_io::answer(&mut stream, resp, http.handshake_timeout).await;
        }
        Ok(None) | Err(_) => return, // closed or silent through the handshake timeout
    };
    http::serve(http, Prefixed::new(prefix, stream), peer, permit).await;
}
