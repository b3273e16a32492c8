//! The client's end of a connection: plain TCP, or TLS over TCP when the listener has a
//! certificate. Everything after the handshake (detection, the head, hyper, the tunnel) reads
//! and writes through this one type.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::node_io::ReadReady;

/// A client connection.
#[derive(Debug)]
pub enum ClientIo {
    /// Plain TCP (`ws://`).
    Plain(TcpStream),
    /// TLS (`wss://`); boxed, as the TLS state is a few KiB while a plain socket is a word.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ReadReady for ClientIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientIo::Plain(s) => s.poll_read_ready(cx),
            // The socket's readiness says nothing about plaintext rustls already holds; a read
            // is tried instead (see `lends_buffers`).
            ClientIo::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    /// A TLS read may find plaintext decrypted earlier with the socket idle, so it is tried
    /// without waiting for the socket (the buffer taken for it is given back when it waits).
    fn lends_buffers(&self) -> bool {
        matches!(self, ClientIo::Tls(_))
    }

    fn buffers_writes(&self) -> bool {
        matches!(self, ClientIo::Tls(_))
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, data),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
