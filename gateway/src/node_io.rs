//! The node's end of a tunnel: its own TCP connection (TLS with `--node-tls`), or a stream on
//! the node's link (see `ringcast_net::link`); and the [`Connector`] every connection to a node
//! is made with (links, tunnels, health checks, API calls).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use ringcast_net::link::LinkStream;
use ringcast_net::tls::{self, TlsError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

/// A connection to a node, as a tunnel uses it.
#[derive(Debug)]
pub enum NodeIo {
    /// A TCP connection of its own.
    Tcp(TcpStream),
    /// A TLS connection of its own (`--node-tls`).
    Tls(Box<TlsStream<TcpStream>>),
    /// A stream on the node's link.
    Link(LinkStream),
}

/// Why no connection to a node was made.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing listens there (connection refused).
    Refused(String),
    /// No connection in time, or the TLS handshake failed (the node's certificate not trusted,
    /// not naming its address, a node without TLS).
    Unreachable(String),
}

/// How the gateway connects to nodes: plain TCP, or TLS verified against `--node-ca` (the
/// node's certificate must name the host of its address, an IP SAN for an IP address).
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// Plain TCP to every node.
    pub fn plain() -> Connector {
        Connector::default()
    }

    /// TLS to every node, trusting the certificate authorities in the PEM file `ca` only.
    pub fn tls(ca: &Path) -> Result<Connector, TlsError> {
        let roots = tls::load_roots(ca)?;
        let config = tls::client_config(roots).map_err(|error| TlsError::Key {
            path: ca.to_owned(),
            error,
        })?;
        Ok(Connector {
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// Whether connections to nodes are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A connection to `addr` (`HOST:PORT`), TCP connect and TLS handshake done by `deadline`.
    pub async fn connect(
        &self,
        addr: &str,
        deadline: tokio::time::Instant,
    ) -> Result<NodeIo, ConnectError> {
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Unreachable("connect timed out".into()))?
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionRefused => ConnectError::Refused(e.to_string()),
                _ => ConnectError::Unreachable(e.to_string()),
            })?;
        let _ = stream.set_nodelay(true);
        let Some(connector) = &self.tls else {
            return Ok(NodeIo::Tcp(stream));
        };
        let Some(name) = tls::server_name(addr) else {
            return Err(ConnectError::Unreachable(format!(
                "TLS: {addr} has no host a certificate can name"
            )));
        };
        match tokio::time::timeout_at(deadline, connector.connect(name, stream)).await {
            Ok(Ok(stream)) => Ok(NodeIo::Tls(Box::new(stream))),
            Ok(Err(e)) => {
                // A certificate the CA did not sign, or one for another name: a configuration
                // to fix, said at warn (each attempt and each health check says it again).
                let why = format!("TLS handshake with the node failed: {e}");
                warn!(%addr, error = %e, "TLS handshake with the node failed (check --node-ca and the node's certificate names its advertised address)");
                Err(ConnectError::Unreachable(why))
            }
            Err(_) => Err(ConnectError::Unreachable(
                "TLS handshake with the node timed out".into(),
            )),
        }
    }
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
            // The socket's readiness says nothing about plaintext rustls already holds: a read
            // is always worth trying.
            NodeIo::Tls(_) => Poll::Ready(Ok(())),
            NodeIo::Link(s) => s.poll_read_ready(cx),
        }
    }

    fn lends_buffers(&self) -> bool {
        matches!(self, NodeIo::Link(_))
    }

    fn buffers_writes(&self) -> bool {
        matches!(self, NodeIo::Tls(_))
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
            NodeIo::Tls(s) => {
                buf.reserve(size);
                tokio_util::io::poll_read_buf(Pin::new(s.as_mut()), cx, buf)
            }
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
            NodeIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            NodeIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            NodeIo::Link(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            NodeIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            NodeIo::Link(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            NodeIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            NodeIo::Link(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
