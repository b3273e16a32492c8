//! The byte pipe behind an upgraded connection: client ↔ node, both ways, until either closes.
//!
//! Memory per idle tunnel is the point here. A tunnel is one small future that owns both
//! sockets and, per direction, a buffer that exists only while bytes are in flight: a direction
//! waits for readiness with no buffer, takes one to move what arrived, and gives it back as soon
//! as its source has nothing more. No task per direction, no split halves, no copy buffers held
//! by idle connections.
//!
//! Reads go through `poll_read`, which (unlike `try_read`) treats a short read as "drained", so a
//! burst costs one read, not a read plus one that fails with `WouldBlock`. Polling both sockets
//! from this task also replaces the wakers hyper's connection tasks left on them; until then
//! those wakers keep the finished tasks' memory alive.
//!
//! Bytes already read past the HTTP head on either side (a pipelined frame, a node's first
//! frame) are written first, so nothing is lost.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use prometheus::IntCounter;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;

use crate::client_io::ClientIo;
use crate::metrics::Metrics;
use crate::node_io::{NodeIo, ReadReady};

/// The client's end of a tunnel: its connection, and what it sent behind its request head.
pub struct Client {
    /// The connection (TCP or TLS).
    pub stream: ClientIo,
    /// Bytes read past the request head (a frame sent right behind the upgrade), for the node.
    pub early: Bytes,
}

/// Copies bytes between `client` and `node` until both directions end (the second within
/// `linger` of the first), one fails, or `stopped` resolves (the gateway's drain is over). `node_early` is what the node
/// sent behind its 101 and has not reached the client yet; it goes first.
///
/// A plain function returning an `async move` block: the returned future lives as long as the
/// connection, and an `async fn` would keep its arguments beside the tunnel built from them.
pub fn run(
    client: Client,
    node: NodeIo,
    node_early: Bytes,
    buf_size: usize,
    linger: std::time::Duration,
    metrics: &Metrics,
    stopped: WaitForCancellationFutureOwned,
) -> impl Future<Output = ()> + Send + 'static {
    let mut tunnel = Tunnel {
        client: client.stream,
        node,
        up: Pipe::new(client.early, metrics.bytes_client_to_node.clone()),
        down: Pipe::new(node_early, metrics.bytes_node_to_client.clone()),
        buf_size: buf_size.clamp(512, 1024 * 1024),
        down_first: false,
    };
    async move {
        let mut stopped = std::pin::pin!(stopped);
        // When one direction ends cleanly (a half-close), the other gets `linger` to finish the
        // WebSocket close handshake; then the tunnel ends even if that peer vanished silently.
        let first = tokio::select! {
            r = poll_fn(|cx| tunnel.poll_ended(cx, 1)) => r,
            _ = &mut stopped => {
                debug!("tunnel closed at the end of the shutdown grace");
                return;
            }
        };
        if let Err(e) = first {
            debug!(error = %e, "tunnel ended with an error");
            return;
        }
        tokio::select! {
            r = tokio::time::timeout(linger, poll_fn(|cx| tunnel.poll_ended(cx, 2))) => {
                if let Ok(Err(e)) = r {
                    debug!(error = %e, "tunnel ended with an error");
                }
            }
            _ = &mut stopped => {}
        }
    }
}

/// Both sockets and both directions of one tunnel.
struct Tunnel {
    client: ClientIo,
    node: NodeIo,
    /// Client → node.
    up: Pipe,
    /// Node → client.
    down: Pipe,
    buf_size: usize,
    /// Which direction the next poll starts with (alternates).
    down_first: bool,
}

impl Tunnel {
    /// Moves bytes both ways until at least `ended` directions have ended, or one fails.
    fn poll_ended(&mut self, cx: &mut Context<'_>, ended: usize) -> Poll<io::Result<()>> {
        // Each poll starts with the other direction: both draw on the task's tokio budget, and a
        // direction polled first every time could use it all during a sustained upload, leaving
        // the node's answers (a rate-limit error, a close frame) waiting.
        self.down_first = !self.down_first;
        let Tunnel {
            client,
            node,
            up,
            down,
            buf_size,
            down_first,
        } = self;
        for polling_down in [*down_first, !*down_first] {
            let copied = if polling_down {
                down.poll_copy(cx, node, client, *buf_size)
            } else {
                up.poll_copy(cx, client, node, *buf_size)
            };
            if let Poll::Ready(Err(e)) = copied {
                return Poll::Ready(Err(e));
            }
        }
        if usize::from(up.ended) + usize::from(down.ended) >= ended {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// One direction: the bytes read but not yet written, if any.
struct Pipe {
    /// Unwritten bytes; no capacity while the direction is idle.
    buf: BytesMut,
    /// The source reached EOF (passed on as a write shutdown once `buf` is written).
    eof: bool,
    /// EOF was passed on: this direction is finished (and polling it does nothing).
    ended: bool,
    /// Bytes written to a destination that buffers writes (TLS) and not flushed since.
    unflushed: bool,
    counter: IntCounter,
}

impl Pipe {
    fn new(early: Bytes, counter: IntCounter) -> Self {
        Pipe {
            // A copy, so hyper's whole read buffer is not kept alive by a few early bytes.
            buf: BytesMut::from(&early[..]),
            eof: false,
            ended: false,
            unflushed: false,
            counter,
        }
    }

    /// Copies from `from` to `to` until `from` has nothing more for now (`Pending`, holding no
    /// buffer unless `to` is the one that is full), its EOF was passed on (`Ready(Ok)`), or an
    /// error.
    fn poll_copy<F: ReadReady, T: ReadReady>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut F,
        to: &mut T,
        buf_size: usize,
    ) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.buf.is_empty() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.counter.inc_by(n as u64);
                self.buf.advance(n);
                self.unflushed = to.buffers_writes();
            }
            if self.eof {
                // A peer that is already gone cannot take the half-close; the other direction
                // still gets its linger.
                let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                self.ended = true;
                return Poll::Ready(Ok(()));
            }
            if self.buf.capacity() == 0 && !from.lends_buffers() {
                // Wait for bytes before taking a buffer for them.
                ready!(from.poll_read_ready(cx))?;
            }
            // Reuses the drained buffer whole, or takes a new one.
            match from.poll_read_into(cx, &mut self.buf, buf_size) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    self.buf = BytesMut::new();
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Drained: give the buffer back until the next bytes arrive, and push out
                    // what the destination holds (a TLS record) before waiting.
                    self.buf = BytesMut::new();
                    if self.unflushed {
                        if let Poll::Ready(r) = Pin::new(&mut *to).poll_flush(cx) {
                            r?;
                            self.unflushed = false;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap());
        let (a, b) = tokio::join!(a, listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Polls `pipe` once; `None` while it waits.
    async fn step(
        pipe: &mut Pipe,
        from: &mut TcpStream,
        to: &mut TcpStream,
    ) -> Option<io::Result<()>> {
        poll_fn(|cx| match pipe.poll_copy(cx, from, to, 4096) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    #[tokio::test]
    async fn early_bytes_first_no_buffer_while_idle_and_eof_passed_on() {
        let (mut sender, mut from) = pair().await;
        let (mut to, mut receiver) = pair().await;
        let counter = IntCounter::new("bytes", "bytes").unwrap();
        let mut pipe = Pipe::new(Bytes::from_static(b"early;"), counter.clone());

        sender.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 11 {
            assert!(step(&mut pipe, &mut from, &mut to).await.is_none());
            let mut buf = [0u8; 64];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(20), receiver.read(&mut buf)).await
            {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, b"early;hello");
        assert_eq!(counter.get(), 11);
        assert!(step(&mut pipe, &mut from, &mut to).await.is_none());
        assert_eq!(pipe.buf.capacity(), 0, "an idle direction holds no buffer");

        drop(sender);
        let ended = loop {
            if let Some(r) = step(&mut pipe, &mut from, &mut to).await {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(ended.is_ok());
        let mut rest = Vec::new();
        receiver.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "EOF is passed on as a write shutdown");
    }
}
