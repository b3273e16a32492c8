//! One connection's writer: drains its outbound queue into the socket, several frames per
//! write, sends pings, and performs the server side of the closing handshake.
//!
//! It never parses and never waits on anyone but its own client: when the socket stops taking
//! bytes, the queue fills and the fan-out side closes the connection instead of waiting. The
//! queue holds frames already encoded ([`crate::wire`]), shared with every other member of a
//! room, so writing them is one vectored write per batch and no copy of our own.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep, timeout, Instant, Sleep};

use crate::outbound::{Closing, Next, OutboundRx};
use crate::wire;

/// Most frames written per write.
const BATCH: usize = 64;
/// How long a closing connection may take to send its close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes queued frames, several per write, plus pings; closes the connection when asked.
///
/// An idle writer waits here for the connection's whole life, so its state is kept small: the
/// writing is a hand-written state machine ([`Batch`]) that holds frames only while a write is
/// in progress, one timer serves the ping and its send timeout, and the closing handshake (run
/// once) is boxed. (A plain function returning an `async move` block: an `async fn` would keep a
/// second copy of its arguments for the connection's life.)
pub fn write_loop<W>(io: W, rx: OutboundRx, ping_every: Duration) -> impl Future<Output = ()> + Send
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut writer = Writer {
        io,
        rx,
        ping_every,
        batch: Batch::default(),
    };
    async move {
        let mut ping = pin!(sleep(writer.ping_every));
        let closing = poll_fn(|cx| writer.poll(ping.as_mut(), cx)).await;
        if let Some(closing) = closing {
            Box::pin(close(writer.io, writer.rx, closing)).await;
        }
    }
}

/// Writes what is queued now (up to [`BATCH`] frames) in one write: the session's first write,
/// made before the writer starts.
pub async fn write_queued<W>(io: &mut W, rx: &OutboundRx) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut batch = Batch::default();
    batch.take(rx);
    let result = poll_fn(|cx| batch.poll_write(io, cx)).await;
    rx.written(batch.bytes);
    result
}

/// The writer's state between wake-ups (one struct, so the future polling it holds one pointer).
struct Writer<W> {
    io: W,
    rx: OutboundRx,
    ping_every: Duration,
    /// The write in progress, if any.
    batch: Batch,
}

impl<W> Writer<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// Writes until asked to close (ready with the request), or until writing fails, stalls, or
    /// is abandoned because a close arrived while the socket would not take bytes (ready with
    /// `None`: no close frame can be sent then).
    fn poll(&mut self, mut ping: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<Option<Closing>> {
        loop {
            if !self.batch.is_empty() {
                match self.batch.poll_write(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => {
                        self.rx.written(self.batch.bytes);
                        if self.batch.ping {
                            ping.as_mut().reset(Instant::now() + self.ping_every);
                        }
                        self.batch.clear();
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending if self.batch.ping => {
                        // The ping must be taken within one interval; the same timer is the limit.
                        return ping.as_mut().poll(cx).map(|()| None);
                    }
                    // The client stopped reading while we wait on the socket: give up on it.
                    Poll::Pending => return self.rx.poll_close(cx).map(|_| None),
                }
            }
            match self.rx.poll_next(cx) {
                Poll::Ready(Next::Close(closing)) => return Poll::Ready(Some(closing)),
                Poll::Ready(Next::Frame(first)) => {
                    self.batch.push(first, true);
                    self.batch.take(&self.rx);
                    continue;
                }
                Poll::Pending => {}
            }
            if ping.as_mut().poll(cx).is_ready() {
                ping.as_mut().reset(Instant::now() + self.ping_every);
                self.batch.push(wire::ping(), false);
                self.batch.ping = true;
                continue;
            }
            // Going idle: an idle connection holds no batch buffer.
            self.batch.release();
            return Poll::Pending;
        }
    }
}

/// Frames on their way into the socket: taken from the queue (up to [`BATCH`]), or a ping.
#[derive(Default)]
struct Batch {
    frames: Vec<Bytes>,
    /// Frames written whole so far.
    done: usize,
    /// Bytes of `frames[done]` written so far.
    partial: usize,
    /// Queue bytes these frames account for (a ping accounts for none).
    bytes: usize,
    /// This batch is a ping, not frames from the queue.
    ping: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn push(&mut self, frame: Bytes, queued: bool) {
        if queued {
            self.bytes += frame.len();
        }
        self.frames.push(frame);
    }

    /// Adds whatever is queued, up to [`BATCH`] frames in all.
    fn take(&mut self, rx: &OutboundRx) {
        while self.frames.len() < BATCH {
            let Ok(frame) = rx.try_recv() else { break };
            self.push(frame, true);
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.done = 0;
        self.partial = 0;
        self.bytes = 0;
        self.ping = false;
    }

    fn release(&mut self) {
        if self.frames.capacity() > 0 {
            self.frames = Vec::new();
        }
    }

    /// Writes the frames, as many per call as the socket takes; ready once all are written.
    fn poll_write<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        while self.done < self.frames.len() {
            let mut slices = [IoSlice::new(&[]); BATCH];
            let rest = &self.frames[self.done..];
            slices[0] = IoSlice::new(&rest[0][self.partial..]);
            for (slice, frame) in slices[1..].iter_mut().zip(&rest[1..]) {
                *slice = IoSlice::new(frame);
            }
            let n = ready!(
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..rest.len().min(BATCH)])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Pin::new(io).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let left = self.frames[self.done].len() - self.partial;
            if n < left {
                self.partial += n;
                return;
            }
            n -= left;
            self.done += 1;
            self.partial = 0;
        }
    }
}

/// The server side of the closing handshake: the close frame (after what is queued, when the
/// close asks for it), then the end of our sending side.
async fn close<W>(mut io: W, rx: OutboundRx, closing: Closing)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let frame = match closing {
        Closing::Server {
            code,
            reason,
            drain,
        } => {
            if drain {
                let drained = async {
                    loop {
                        let mut batch = Batch::default();
                        batch.take(&rx);
                        if batch.is_empty() {
                            return Ok::<(), io::Error>(());
                        }
                        poll_fn(|cx| batch.poll_write(&mut io, cx)).await?;
                        rx.written(batch.bytes);
                    }
                };
                if !matches!(timeout(CLOSE_TIMEOUT, drained).await, Ok(Ok(()))) {
                    return;
                }
            }
            Some(wire::close(Some(code), reason))
        }
        Closing::Answer { code } => Some(wire::close(code, "")),
        Closing::Gone => None,
    };
    if let Some(frame) = frame {
        let _ = timeout(CLOSE_TIMEOUT, io.write_all(&frame)).await;
    }
    let _ = timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `max` bytes per call and records what it got.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.max;
            for b in bufs {
                let n = b.len().min(left);
                self.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            self.calls += 1;
            Poll::Ready(Ok(self.max - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame_and_keep_the_order() {
        let (out, rx) = crate::outbound::Outbound::new(1, "a".into(), 100, 1 << 20);
        let frames: Vec<Bytes> = (0..10).map(|i| wire::text(&"m".repeat(i * 7))).collect();
        for f in &frames {
            out.push(f);
        }
        let mut sink = Trickle {
            got: Vec::new(),
            max: 5,
            calls: 0,
        };
        write_queued(&mut sink, &rx).await.unwrap();
        assert_eq!(sink.got, frames.concat());
        assert!(sink.calls > frames.len(), "the sink took 5 bytes per call");
        assert!(rx.try_recv().is_err(), "all ten were taken in one batch");
    }

    #[tokio::test]
    async fn one_write_carries_a_whole_batch() {
        let (out, rx) = crate::outbound::Outbound::new(1, "a".into(), 1000, 1 << 20);
        for _ in 0..BATCH + 6 {
            out.push(&wire::text("hello"));
        }
        let mut sink = Trickle {
            got: Vec::new(),
            max: usize::MAX,
            calls: 0,
        };
        write_queued(&mut sink, &rx).await.unwrap();
        assert_eq!(sink.calls, 1);
        assert_eq!(sink.got.len(), BATCH * 7);
        assert!(
            rx.try_recv().is_ok(),
            "the frames past one batch stay queued"
        );
    }
}
