//! A client connection taken apart: the reading half goes to tungstenite, the writing half to
//! our own writer.
//!
//! tungstenite parses what the client sends, but the node writes frames itself (see
//! the node's `wire` module): so the two halves of a connection are separate, and tungstenite sees a
//! read-only stream. The few frames tungstenite would write on its own (the answer to a ping or
//! to a close) are sent by the session through the connection's queue instead; what tungstenite
//! writes into [`ReadOnly`] goes nowhere.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::link::{LinkHalf, LinkSender, LinkStream};

/// A connection that comes apart into a reading and a writing half.
pub trait SplitIo {
    /// The reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// Takes the connection apart.
    fn split_io(self) -> (Self::Read, Self::Write);

    /// For a stream on a link: a handle that sends frames to it without waiting (see
    /// the node's `Outbound::send_directly`).
    fn link_sender(&self) -> Option<LinkSender> {
        None
    }
}

/// A TCP connection splits without a lock.
impl SplitIo for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    fn split_io(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

/// A link stream splits without a lock too: the link's own lock guards it.
impl SplitIo for LinkStream {
    type Read = LinkHalf;
    type Write = LinkHalf;

    fn split_io(self) -> (LinkHalf, LinkHalf) {
        self.split()
    }

    fn link_sender(&self) -> Option<LinkSender> {
        Some(self.sender())
    }
}

impl<T> SplitIo for TokioIo<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    type Read = tokio::io::ReadHalf<TokioIo<T>>;
    type Write = tokio::io::WriteHalf<TokioIo<T>>;

    fn split_io(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// A reading half that tungstenite can hold as its stream: reads pass through, writes are
/// taken and dropped.
#[derive(Debug)]
pub struct ReadOnly<R>(pub R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
