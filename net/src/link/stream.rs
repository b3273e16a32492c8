//! One client connection carried on a link: reads and writes like a socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{push_frame, Shared, CLOSE, CREDIT, DATA, FIN, GRANT_AT, MAX_PAYLOAD, OUT_CAP};
use crate::cork::Uncork;

/// A stream on a [`super::Link`]. Dropping it closes the stream at both ends.
pub struct LinkStream {
    shared: Arc<Shared>,
    id: u32,
}

impl std::fmt::Debug for LinkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkStream").field("id", &self.id).finish()
    }
}

/// Replaces `slot` with `cx`'s waker unless it already holds one that wakes the same task.
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl LinkStream {
    pub(super) fn new(shared: Arc<Shared>, id: u32) -> Self {
        LinkStream { shared, id }
    }

    /// Ready once a read would not wait: bytes arrived, the peer finished, or the link died.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let dead = inner.dead;
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if !slot.rx.is_empty() || slot.rx_fin || dead {
            return Poll::Ready(Ok(()));
        }
        park(&mut slot.rx_waker, cx);
        Poll::Pending
    }
}

impl AsyncRead for LinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().read(cx, buf)
    }
}

impl LinkStream {
    fn read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.poll_take(
            cx,
            buf,
            |buf, rx| {
                let n = buf.remaining().min(rx.len());
                buf.put_slice(&rx[..n]);
                rx.advance(n);
                (n, BytesMut::new())
            },
            |_| BytesMut::new(),
        )
        .map_ok(|_| ())
    }
}

impl LinkStream {
    /// Moves up to `max` of the bytes that arrived into `buf`, ready with the number moved (0
    /// at the end of the stream). When all of them fit and `buf` is empty they move without a
    /// copy: `buf` takes the stream's own buffer, and an empty `buf` that had room is kept for
    /// the stream's next bytes (also when nothing has arrived: then `buf` is left without a
    /// buffer). At most `max` bytes are granted back per call, so a reader that stops
    /// writing them on holds at most `max` beyond the stream's window.
    pub fn poll_read_into(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        self.poll_take(
            cx,
            buf,
            |buf, rx| {
                let n = rx.len().min(max.max(1));
                if !buf.is_empty() || n < rx.len() {
                    // Copied, not split off: a receive buffer is never shared, so the link
                    // can tell its whole size when it comes back (see `Inner::recycle`).
                    buf.extend_from_slice(&rx[..n]);
                    rx.advance(n);
                    return (n, BytesMut::new());
                }
                (n, std::mem::replace(buf, std::mem::take(rx)))
            },
            |buf| {
                if buf.is_empty() {
                    std::mem::take(buf)
                } else {
                    BytesMut::new()
                }
            },
        )
    }

    /// Lets `take` move received bytes into `dest` when there are any (it returns how many it
    /// took, and an emptied buffer of the caller's to keep for reuse), granting credit back as
    /// they are consumed; otherwise ready at the end of the stream, or pending, keeping the
    /// emptied buffer `idle` gives up. All under one lock.
    fn poll_take<D: ?Sized>(
        &self,
        cx: &mut Context<'_>,
        dest: &mut D,
        take: impl FnOnce(&mut D, &mut BytesMut) -> (usize, BytesMut),
        idle: impl FnOnce(&mut D) -> BytesMut,
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        let Some(slot) = inner.streams.get_mut(&id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if !slot.rx.is_empty() {
            let (n, emptied) = take(dest, &mut slot.rx);
            // An idle stream holds no buffer.
            let drained = if slot.rx.is_empty() {
                std::mem::take(&mut slot.rx)
            } else {
                BytesMut::new()
            };
            slot.unacked += n;
            if slot.unacked >= GRANT_AT && !slot.rx_fin && !inner.dead {
                let grant = std::mem::take(&mut slot.unacked);
                push_frame(
                    &mut inner.out,
                    &mut inner.writer,
                    CREDIT,
                    id,
                    grant as u32,
                    &[],
                );
            }
            inner.recycle(emptied);
            inner.recycle(drained);
            return Poll::Ready(Ok(n));
        }
        let dead = inner.dead;
        if slot.rx_fin {
            return Poll::Ready(Ok(0));
        }
        if dead {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        park(&mut slot.rx_waker, cx);
        inner.recycle(idle(dest));
        Poll::Pending
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_vectored(cx, &[io::IoSlice::new(data)])
    }

    /// The slices travel in one frame, as far as the stream's credit and [`MAX_PAYLOAD`] allow.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush()
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown()
    }
}

impl LinkStream {
    fn write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        if inner.dead {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let Some(slot) = inner.streams.get_mut(&id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if slot.fin_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if slot.peer_closed {
            // Nobody reads it any more; taken and let go, so the writer's other direction
            // (say, a close frame on its way to the client) still finishes.
            return Poll::Ready(Ok(total));
        }
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if slot.credit == 0 {
            park(&mut slot.tx_waker, cx);
            return Poll::Pending;
        }
        if inner.out.len() >= OUT_CAP {
            park(&mut slot.tx_waker, cx);
            if !slot.waiting {
                slot.waiting = true;
                inner.waiting.push(id);
            }
            return Poll::Pending;
        }
        let n = total.min(slot.credit).min(MAX_PAYLOAD);
        slot.credit -= n;
        push_frame(&mut inner.out, &mut inner.writer, DATA, id, n as u32, &[]);
        let mut left = n;
        for buf in bufs {
            let take = buf.len().min(left);
            inner.out.extend_from_slice(&buf[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn flush(&self) -> Poll<io::Result<()>> {
        // Frames leave with the link's next write; there is nothing to push here.
        if self.shared.lock().dead {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn shutdown(&self) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        let dead = inner.dead;
        if let Some(slot) = inner.streams.get_mut(&id) {
            if !slot.fin_sent && !slot.peer_closed && !dead {
                slot.fin_sent = true;
                inner.push_frame(FIN, id, 0, &[]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LinkStream {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if let Some(slot) = inner.streams.remove(&self.id) {
            if !slot.peer_closed && !inner.dead {
                inner.push_frame(CLOSE, self.id, 0, &[]);
            }
        }
        if inner.finished() {
            // The last stream of a finishing link: its writer may end it now.
            if let Some(w) = inner.writer.take() {
                w.wake();
            }
        }
    }
}

impl LinkStream {
    /// Refuses the stream the peer just opened: `reply` (at most [`MAX_PAYLOAD`] bytes, say an
    /// HTTP 503) is its only bytes, then it closes. Takes no wait and no task; the reply counts
    /// against the link's outgoing bytes like any other, which the accepting end's reader keeps
    /// bounded.
    pub fn refuse(self, reply: &[u8]) {
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        if let Some(slot) = inner.streams.remove(&self.id) {
            if !slot.peer_closed && !inner.dead {
                if !reply.is_empty() && reply.len() <= slot.credit.min(MAX_PAYLOAD) {
                    let len = reply.len() as u32;
                    push_frame(&mut inner.out, &mut inner.writer, DATA, self.id, len, reply);
                }
                let full = super::frame::CloseReason::Full.code();
                push_frame(&mut inner.out, &mut inner.writer, CLOSE, self.id, full, &[]);
            }
        }
        // Gone from the table, so dropping it sends nothing more.
    }

    /// A handle that hands whole frames to this stream without waiting (it does not keep the
    /// stream open).
    pub fn sender(&self) -> LinkSender {
        LinkSender {
            shared: self.shared.clone(),
            id: self.id,
        }
    }

    /// Takes the stream apart into a reading and a writing half, without a lock between them
    /// (the link's own lock already guards the stream). The stream closes when both are gone.
    pub fn split(self) -> (LinkHalf, LinkHalf) {
        let both = Arc::new(self);
        (LinkHalf(both.clone()), LinkHalf(both))
    }
}

/// One half of a [`LinkStream`] taken apart by [`LinkStream::split`]: reads and writes like the
/// whole stream.
#[derive(Debug)]
pub struct LinkHalf(Arc<LinkStream>);

impl AsyncRead for LinkHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.read(cx, buf)
    }
}

impl AsyncWrite for LinkHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.flush()
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.shutdown()
    }
}

/// Hands whole frames to one stream of a link, from any task, without waiting.
#[derive(Clone)]
pub struct LinkSender {
    shared: Arc<Shared>,
    id: u32,
}

impl LinkSender {
    /// Sends `frame` on the stream as one piece if it can go at once: the link is alive, the
    /// stream open and not finished, its credit covers all of `frame`, and the link's outgoing
    /// bytes are under [`OUT_CAP`]. Otherwise sends nothing and returns false.
    pub fn try_send(&self, frame: &[u8]) -> bool {
        if frame.is_empty() || frame.len() > MAX_PAYLOAD {
            return false;
        }
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        if inner.dead || inner.out.len() >= OUT_CAP {
            return false;
        }
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return false;
        };
        // Streams already waiting for the link to drain go first.
        if slot.fin_sent
            || slot.peer_closed
            || slot.credit < frame.len()
            || !inner.waiting.is_empty()
        {
            return false;
        }
        slot.credit -= frame.len();
        push_frame(
            &mut inner.out,
            &mut inner.writer,
            DATA,
            self.id,
            frame.len() as u32,
            frame,
        );
        true
    }
}

impl std::fmt::Debug for LinkSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSender").field("id", &self.id).finish()
    }
}

/// A stream was never corked: its bytes leave with the link's next write.
impl Uncork for LinkStream {
    fn uncork(&self) {}
}
