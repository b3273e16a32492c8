//! A client connection that opens with `GET /ws`, served without hyper: read the request head,
//! check it ([`ringcast_net::ws_handshake`], as a node does), forward the upgrade
//! ([`Proxy::open`](crate::proxy::Proxy::open)), answer with the node's 101 and its first frames
//! in one write, then hand both sockets to the tunnel. This is the gateway's only upgrade path.
//!
//! Why: this connection makes exactly one request, and its socket belongs to the tunnel right
//! after. hyper's server would spend a connection task, a dispatcher, request and response
//! objects and an upgrade hand-over on it, and would write the 101 apart from the frames behind
//! it. The request head is read by `ringcast_net::http1_io` under the limits hyper had here (the
//! handshake timeout; the header size limit, with 431 past it). Every answer
//! but a 101 ends the connection. Connections that open otherwise (`/healthz`, `/metrics`,
//! `/nodes`) go to hyper, which upgrades nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use ringcast_net::http1::request::HeadLimits;
use ringcast_net::http1::response::{push_response_head, Body};
use ringcast_net::http1_io::{self, read_head_after};
use ringcast_net::ws_handshake::{self, Refusal};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use crate::client_io::ClientIo;
use crate::http::Http;
use crate::limits::ConnectionPermit;
use crate::tunnel;
use crate::upstream::Switched;

/// Serves one connection that opened with `GET /ws` (`prefix`: its first bytes, already read);
/// its head must be in by `deadline`.
pub async fn serve(
    http: Arc<Http>,
    mut stream: ClientIo,
    prefix: Vec<u8>,
    peer: SocketAddr,
    permit: ConnectionPermit,
    deadline: tokio::time::Instant,
) {
    let proxy = &http.proxy;
    let limits = HeadLimits::client(http.max_header_bytes);
    let read = read_head_after(&mut stream, prefix, limits);
    let head = tokio::time::timeout_at(deadline, read).await;
    let (req, client_early) = match head {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => match Refusal::of_head(e) {
            Some(refusal) => {
                let resp = proxy.refuse_handshake(refusal);
                return answer(&http, &mut stream, resp).await;
            }
            None => return, // closed
        },
        Err(_) => return, // silent through the handshake timeout
    };
    // The node's order: the handshake first, then whether this server takes upgrades at all.
    let accepted = match ws_handshake::check(&req) {
        Ok(accepted) => accepted,
        Err(refusal) => return answer(&http, &mut stream, proxy.refuse_handshake(refusal)).await,
    };
    let opened = if http.is_draining() {
        Err(proxy.reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the gateway is shutting down",
        ))
    } else {
        proxy.open(&req, accepted, peer).await
    };
    let (node, switched) = match opened {
        Ok(opened) => opened,
        Err(resp) => return answer(&http, &mut stream, resp).await,
    };
    let Switched {
        stream: node_stream,
        headers,
        early,
    } = switched;
    // The 101 and whatever the node sent behind it (its welcome) in one write.
    let mut out = Vec::with_capacity(256 + early.len());
    push_response_head(&mut out, StatusCode::SWITCHING_PROTOCOLS, &headers);
    out.extend_from_slice(&early);
    // Flushed too: over TLS the answer is a record rustls may hold until then.
    let written = tokio::time::timeout(http.handshake_timeout, async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        debug!(%peer, "client gone before its 101 was written");
        return;
    }
    proxy
        .metrics
        .bytes_node_to_client
        .inc_by(early.len() as u64);
    drop(out);
    let client = tunnel::Client {
        stream,
        early: client_early,
    };
    // A task of its own, so this one's state (the head, the answer) is gone while it runs.
    let tunnel = proxy.tunnel(&node, client, node_stream, Bytes::new(), permit);
    proxy.drain.spawn_session(tunnel);
}

/// Writes a refusal and ends the connection.
async fn answer(http: &Http, stream: &mut ClientIo, resp: Response<Body>) {
    http1_io::answer(stream, resp, http.handshake_timeout).await;
}
