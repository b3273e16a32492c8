//! The byte pipe behind an upgraded connection: client ↔ node, both ways, until either closes.
//!
//! Memory per idle tunnel is the point here: instead of two permanently allocated copy buffers
//! (`copy_bidirectional`'s 2 × 8 KiB), each direction waits for readiness with no buffer and
//! allocates one only while bytes flow, dropping it once the socket is drained. Bytes hyper
//! had already read past the HTTP head on either side (a pipelined frame, a node's first frame)
//! are written first, so nothing is lost.

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Metrics;

/// Copies bytes between `client` and `node` until both directions end (the second within
/// `linger` of the first), one fails, or `force_close` fires.
pub async fn run(
    client: Upgraded,
    node: Upgraded,
    buf_size: usize,
    linger: std::time::Duration,
    metrics: &Metrics,
    force_close: &CancellationToken,
) {
    let buf_size = buf_size.clamp(512, 1024 * 1024);
    // Our listeners and node connections are plain TCP, so both downcasts succeed; the generic
    // fallbacks keep this correct should that ever change.
    let client = match client.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(client) => {
            let (c, n) = (TokioIo::new(client), TokioIo::new(node));
            return generic(c, n, buf_size, metrics, force_close).await;
        }
    };
    let node = match node.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(node) => {
            let mut n = TokioIo::new(node);
            if n.write_all(&client.read_buf).await.is_err() {
                return;
            }
            let c = client.io.into_inner();
            return generic(c, n, buf_size, metrics, force_close).await;
        }
    };
    let ((client_tcp, client_early), (node_tcp, node_early)) = (
        (client.io.into_inner(), client.read_buf),
        (node.io.into_inner(), node.read_buf),
    );
    let (client_rx, client_tx) = client_tcp.into_split();
    let (node_rx, node_tx) = node_tcp.into_split();
    let up = pump(
        client_rx,
        node_tx,
        client_early,
        buf_size,
        &metrics.bytes_client_to_node,
    );
    let down = pump(
        node_rx,
        client_tx,
        node_early,
        buf_size,
        &metrics.bytes_node_to_client,
    );
    tokio::pin!(up, down);
    // When one direction ends cleanly (a half-close), the other gets `linger` to finish the
    // WebSocket close handshake; then the tunnel ends even if that peer vanished silently.
    let (first, other) = tokio::select! {
        r = &mut up => (r, Some(down.as_mut())),
        r = &mut down => (r, Some(up.as_mut())),
        _ = force_close.cancelled() => {
            debug!("tunnel closed at the end of the shutdown grace");
            (Ok(()), None)
        }
    };
    match (first, other) {
        (Ok(()), Some(other)) => {
            tokio::select! {
                r = tokio::time::timeout(linger, other) => {
                    if let Ok(Err(e)) = r {
                        debug!(error = %e, "tunnel ended with an error");
                    }
                }
                _ = force_close.cancelled() => {}
            }
        }
        (Err(e), _) => debug!(error = %e, "tunnel ended with an error"),
        (Ok(()), None) => {}
    }
}

/// A buffered copy both ways, for streams that are not plain TCP.
async fn generic<A, B>(
    mut client: A,
    mut node: B,
    buf_size: usize,
    metrics: &Metrics,
    force_close: &CancellationToken,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut node, buf_size, buf_size) => {
            if let Ok((up, down)) = r {
                metrics.bytes_client_to_node.inc_by(up);
                metrics.bytes_node_to_client.inc_by(down);
            }
        }
        _ = force_close.cancelled() => {}
    }
}

/// One direction: `early` bytes first, then whatever `from` yields, until EOF (which is passed
/// on as a write shutdown, keeping half-closes intact) or an error.
async fn pump(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    early: Bytes,
    buf_size: usize,
    counter: &IntCounter,
) -> std::io::Result<()> {
    if !early.is_empty() {
        to.write_all(&early).await?;
        counter.inc_by(early.len() as u64);
    }
    drop(early);
    loop {
        from.readable().await?;
        // Allocated only while this direction has bytes to move; idle tunnels hold none.
        let mut buf = vec![0u8; buf_size];
        loop {
            match from.try_read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Ok(n) => {
                    to.write_all(&buf[..n]).await?;
                    counter.inc_by(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}
