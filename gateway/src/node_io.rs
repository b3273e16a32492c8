//! The node's end of a tunnel: its own TCP connection, or a stream on the node's link (see
//! `ringcast_net::link`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use ringcast_net::link::LinkStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection to a node, as a tunnel uses it.
#[derive(Debug)]
pub enum NodeIo {
    /// A TCP connection of its own.
    Tcp(TcpStream),
    /// A stream on the node's link.
    Link(LinkStream),
}

/// Something a tunnel reads from: it can say when a read would not wait, so the tunnel takes a
/// buffer only then.
pub trait ReadReady: AsyncRead + AsyncWrite + Unpin {
    /// Ready once a read would not wait.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether reads hand over a buffer of their own, so a read may be tried with no buffer
    /// and without waiting for readiness first (it waits by itself when nothing has arrived).
    fn lends_buffers(&self) -> bool {
        false
    }

    /// Whether writes may stay in a buffer of the stream's own (TLS records) until a flush, so
    /// a tunnel flushes before it waits.
    fn buffers_writes(&self) -> bool {
        false
    }

    /// Reads what arrived into `buf`, taking room for up to `size` bytes; ready with the number
    /// of bytes read (0 at the end of the stream).
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<usize>> {
        buf.reserve(size);
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ReadReady for NodeIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            NodeIo::Tcp(s) => s.poll_read_ready(cx),
            NodeIo::Link(s) => s.poll_read_ready(cx),
        }
    }

    fn lends_buffers(&self) -> bool {
        matches!(self, NodeIo::Link(_))
    }

    /// A link stream hands over the bytes it received as they are, without a copy.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            NodeIo::Tcp(s) => s.poll_read_into(cx, buf, size),
            NodeIo::Link(s) => s.poll_read_into(cx, buf, size),
        }
    }
}

impl AsyncRead for NodeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            NodeIo::Link(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeIo::Tcp(s) => Pin::new(s).poll_write(cx, data),
            NodeIo::Link(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            NodeIo::Link(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            NodeIo::Link(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
