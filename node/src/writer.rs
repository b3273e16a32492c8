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
        match closing {
            Some(closing) => Box::pin(close(writer.io, writer.rx, closing)).await,
            None => Box::pin(give_up(writer.io, writer.rx)).await,
        }
    }
}

/// Ends a connection whose writing failed, stalled, or stopped mid-frame: the session is told
/// (so it stops reading and serving), and the peer gets the end of our sending side, with no
/// frame after whatever was cut off.
pub async fn give_up<W>(mut io: W, rx: OutboundRx)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    rx.abandon();
    let _ = timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}

/// Writes what is queued now (up to [`BATCH`] frames) in one write; ready with the number of
/// frames written (0: the queue was empty). The session's first write, made before the writer
/// starts, and the drain before a close frame.
pub async fn write_queued<W>(io: &mut W, rx: &OutboundRx) -> io::Result<usize>
where
    W: AsyncWrite + Unpin,
{
    let mut batch = Batch::default();
    batch.take(rx);
    let result = poll_fn(|cx| batch.poll_write(io, cx)).await;
    rx.written(batch.bytes);
    result.map(|()| batch.frames.len())
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
                self.rx.hold();
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
/// close asks for it), then the end of our sending side; all within [`CLOSE_TIMEOUT`].
async fn close<W>(mut io: W, rx: OutboundRx, closing: Closing)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (drain, frame) = match closing {
        Closing::Server {
            code,
            reason,
            drain,
        } => (drain, Some(wire::close(Some(code), reason))),
        Closing::Answer { code } => (false, Some(wire::close(code, ""))),
        Closing::Gone => (false, None),
    };
    let handshake = async {
        while drain && write_queued(&mut io, &rx).await? > 0 {}
        if let Some(frame) = frame {
            io.write_all(&frame).await?;
        }
        Ok::<(), io::Error>(())
    };
    // Cut off mid-frame (timed out or failed), the connection can only end.
    let _ = timeout(CLOSE_TIMEOUT, handshake).await;
    // Ends our side at once on a socket or a link stream: a FIN after what was written.
    let _ = timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::outbound::{Outbound, Push, SERVICE_RESTART, SLOW_CONSUMER};

    /// What a [`Probe`] saw.
    #[derive(Default)]
    struct Seen {
        got: Vec<u8>,
        calls: usize,
        shut: bool,
    }

    /// A socket stand-in: takes at most `max` bytes per call and `budget` bytes in all (then
    /// stays pending, as a socket whose peer stopped reading), or fails every write.
    struct Probe {
        seen: Arc<Mutex<Seen>>,
        max: usize,
        budget: usize,
        fail: bool,
    }

    impl Probe {
        fn new(max: usize, budget: usize) -> (Self, Arc<Mutex<Seen>>) {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let probe = Probe {
                seen: seen.clone(),
                max,
                budget,
                fail: false,
            };
            (probe, seen)
        }
    }

    impl AsyncWrite for Probe {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if self.budget == 0 {
                return Poll::Pending;
            }
            let mut left = self.max.min(self.budget);
            let taken = left;
            let mut seen = self.seen.lock().unwrap();
            for b in bufs {
                let n = b.len().min(left);
                seen.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            seen.calls += 1;
            drop(seen);
            self.budget -= taken - left;
            Poll::Ready(Ok(taken - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.seen.lock().unwrap().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame_and_keep_the_order() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        let frames: Vec<Bytes> = (0..10).map(|i| wire::text(&"m".repeat(i * 7))).collect();
        for f in &frames {
            out.push(f);
        }
        let (mut probe, seen) = Probe::new(5, usize::MAX);
        write_queued(&mut probe, &rx).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.got, frames.concat());
        assert!(seen.calls > frames.len(), "the sink took 5 bytes per call");
        assert!(rx.try_recv().is_err(), "all ten were taken in one batch");
    }

    #[tokio::test]
    async fn one_write_carries_a_whole_batch() {
        let (out, rx) = Outbound::new(1, "a".into(), 1000, 1 << 20);
        for _ in 0..BATCH + 6 {
            out.push(&wire::text("hello"));
        }
        let (mut probe, seen) = Probe::new(usize::MAX, usize::MAX);
        write_queued(&mut probe, &rx).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.calls, 1);
        assert_eq!(seen.got.len(), BATCH * 7);
        assert!(
            rx.try_recv().is_ok(),
            "the frames past one batch stay queued"
        );
    }

    #[tokio::test]
    async fn a_draining_close_writes_the_queue_then_the_close_frame_then_ends() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        out.push(&wire::text("one"));
        out.push(&wire::text("two"));
        out.close(SERVICE_RESTART);
        let (probe, seen) = Probe::new(3, usize::MAX);
        tokio::time::timeout(
            Duration::from_secs(5),
            write_loop(probe, rx, Duration::from_secs(60)),
        )
        .await
        .expect("the writer ends after closing");
        let seen = seen.lock().unwrap();
        let expected = [
            wire::text("one"),
            wire::text("two"),
            wire::close(Some(1012), "node shutting down"),
        ]
        .concat();
        assert_eq!(seen.got, expected);
        assert!(seen.shut, "our sending side ends after the close frame");
    }

    #[tokio::test]
    async fn a_stalled_write_is_given_up_on_close_with_nothing_after_the_cut_frame() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        let frame = wire::text("0123456789");
        out.push(&frame);
        out.push(&frame);
        // The client stops reading in the middle of the first frame.
        let (probe, seen) = Probe::new(usize::MAX, 5);
        let writer = tokio::spawn(write_loop(probe, rx, Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !writer.is_finished(),
            "the writer waits on the stalled socket"
        );
        out.close(SLOW_CONSUMER);
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("a close wakes the stalled writer")
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.got, frame[..5], "no close frame after a cut frame");
        assert!(seen.shut);
    }

    #[tokio::test]
    async fn a_failed_write_tells_the_session() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        out.push(&wire::text("hello"));
        let (mut probe, _seen) = Probe::new(usize::MAX, usize::MAX);
        probe.fail = true;
        tokio::time::timeout(
            Duration::from_secs(5),
            write_loop(probe, rx, Duration::from_secs(60)),
        )
        .await
        .expect("the writer ends when writing fails");
        assert!(out.is_closing(), "the reader is asked to stop");
        assert_eq!(out.push(&wire::text("late")), Push::Closed);
    }

    #[tokio::test]
    async fn a_cut_first_write_sends_nothing_more_even_when_a_close_was_asked_for() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        out.push(&wire::text("0123456789"));
        out.close(SLOW_CONSUMER);
        let (probe, seen) = Probe::new(usize::MAX, 4);
        give_up(probe, rx).await;
        let seen = seen.lock().unwrap();
        assert!(seen.got.is_empty(), "give_up writes no frame");
        assert!(seen.shut);
        assert!(out.is_closing());
    }
}
