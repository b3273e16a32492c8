//! One client connection from accept to hand-off: read its first bytes, then serve it on the
//! direct upgrade path, through hyper, or with a refusal.
//!
//! A connection that opens with `GET /ws` goes to the direct path (see the `direct` module);
//! every other HTTP/1 opening (`/healthz`, `/metrics`, `/nodes`, a head too short to tell, a
//! link preface, which is for nodes) goes to hyper, which reads the detected bytes again first.

use std::net::SocketAddr;
use std::sync::Arc;

use ringcast_net::detect::{detect, Opening, Prefixed};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::direct;
use crate::http::{self, Http};
use crate::proxy::PermitSlot;

/// Serves one client connection until it closes, upgrades, or `force_close` fires.
pub async fn serve(
    http: Arc<Http>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: PermitSlot,
    force_close: CancellationToken,
) {
    let mut stream = stream;
    // One deadline for the first bytes and the whole head, as hyper had.
    let deadline = tokio::time::Instant::now() + http.handshake_timeout;
    let prefix = match tokio::time::timeout_at(deadline, detect(&mut stream)).await {
        Ok(Some((Opening::WsUpgrade, prefix))) => {
            let permit = permit.lock().ok().and_then(|mut p| p.take());
            return direct::serve(http, stream, prefix, peer, permit, deadline).await;
        }
        // A link is for nodes; hyper answers the gateway's 404.
        Ok(Some((Opening::Other | Opening::Link, prefix))) => prefix,
        Ok(Some((Opening::Http2Preface, _))) => {
            // hyper's HTTP/1 server drops a prior-knowledge HTTP/2 connection without a word;
            // tell the client why instead.
            let body = r#"{"error":"bad_upgrade","message":"HTTP/2 is not supported; WebSocket upgrades need HTTP/1.1"}"#;
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(
                http.handshake_timeout,
                tokio::io::AsyncWriteExt::write_all(&mut stream, resp.as_bytes()),
            )
            .await;
            return;
        }
        Ok(None) | Err(_) => return, // closed or silent through the handshake timeout
    };
    http::serve(
        http,
        Prefixed::new(prefix, stream),
        peer,
        permit,
        force_close,
    )
    .await;
}
