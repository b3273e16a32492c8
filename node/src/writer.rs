//! One connection's writer: drains its outbound queue into the socket, several frames per
//! write, sends pings, and performs the server side of the closing handshake.
//!
//! It never parses and never waits on anyone but its own client: when the socket stops taking
//! bytes, the queue fills and the fan-out side closes the connection instead of waiting. The
//! queue holds frames already encoded ([`crate::wire`]), shared with every other member of a
//! room, so writing them is one vectored write per batch and no copy of our own.
//!
//! A close asked for in the middle of a write (a drain, a too-big message, a slow consumer) takes
//! the write over: the frame in progress is finished first, within a time limit, then the close
//! frame follows. A client that keeps reading gets whole frames and then the close code, never a
//! cut frame or a bare end it cannot tell from a crash.

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
/// How long a closing connection may take to send its close frame (the session waits twice as
/// long for the writer to end).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a draining close may spend on what is queued; the three limits together stay within
/// the session's wait for the writer.
const DRAIN_TIMEOUT: Duration = CLOSE_TIMEOUT;
/// For the frame in progress and the close frame, after the drain.
const CLOSE_FRAME_TIMEOUT: Duration = Duration::from_secs(1);
/// For ending our sending side.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

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
            Some(closing) => Box::pin(close(writer.io, writer.rx, writer.batch, closing)).await,
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
    /// Writes until asked to close (ready with the request; a write in progress stays in
    /// `batch`, for [`close`] to finish), or until writing fails or a ping is not taken within
    /// its interval (ready with `None`: no close frame can be sent then).
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
                    Poll::Pending => {
                        // A close asked for meanwhile is handled once this write is finished.
                        if let Poll::Ready(closing) = self.rx.poll_close(cx) {
                            return Poll::Ready(Some(closing));
                        }
                        // The ping must be taken within one interval; the same timer is the limit.
                        if self.batch.ping {
                            return ping.as_mut().poll(cx).map(|()| None);
                        }
                        return Poll::Pending;
                    }
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

    /// Keeps only the frames started (written whole, or in part): the rest are not sent.
    fn keep_started(&mut self) {
        let started = self.done + usize::from(self.partial > 0);
        self.frames.truncate(started);
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

/// The server side of the closing handshake, possibly in the middle of a write (`batch`): with
/// a draining close, the write in progress and what is queued (for up to [`DRAIN_TIMEOUT`]);
/// then the frame still in progress, if any, and the close frame; then the end of our sending
/// side. A client that takes no bytes at all gets no close frame after a cut frame: the
/// connection just ends.
async fn close<W>(mut io: W, rx: OutboundRx, mut batch: Batch, closing: Closing)
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
    if let Some(frame) = frame {
        if !drain {
            batch.keep_started();
        }
        // Cancelled at the time limit between two writes, `batch` still says what is written.
        let queued = timeout(DRAIN_TIMEOUT, async {
            loop {
                if batch.is_empty() && drain {
                    batch.take(&rx);
                }
                if batch.is_empty() {
                    return Ok::<(), io::Error>(());
                }
                poll_fn(|cx| batch.poll_write(&mut io, cx)).await?;
                rx.written(batch.bytes);
                batch.clear();
            }
        })
        .await;
        // A failed write leaves nothing to send a close frame on.
        if !matches!(queued, Ok(Err(_))) {
            batch.keep_started();
            batch.push(frame, false);
            let _ = timeout(
                CLOSE_FRAME_TIMEOUT,
                poll_fn(|cx| batch.poll_write(&mut io, cx)),
            )
            .await;
        }
    }
    // Ends our side at once on a socket or a link stream: a FIN after what was written.
    let _ = timeout(SHUTDOWN_TIMEOUT, io.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::outbound::{
        Outbound, Push, FLOOD, SERVICE_RESTART, SLOW_CONSUMER, TOKEN_EXPIRED, TOO_BIG,
    };

    /// What a [`Probe`] saw.
    #[derive(Default)]
    struct Seen {
        got: Vec<u8>,
        calls: usize,
        shut: bool,
        /// Bytes the probe still takes, in all.
        budget: usize,
        /// The writer waiting for the socket to take bytes again.
        waiting: Option<std::task::Waker>,
    }

    /// Lets a stalled [`Probe`] take bytes again (its peer reads on).
    fn unstall(seen: &Arc<Mutex<Seen>>) {
        let mut seen = seen.lock().unwrap();
        seen.budget = usize::MAX;
        if let Some(w) = seen.waiting.take() {
            w.wake();
        }
    }

    /// A socket stand-in: takes at most `max` bytes per call and `budget` bytes in all (then
    /// stays pending, as a socket whose peer stopped reading), or fails every write.
    struct Probe {
        seen: Arc<Mutex<Seen>>,
        max: usize,
        fail: bool,
    }

    impl Probe {
        fn new(max: usize, budget: usize) -> (Self, Arc<Mutex<Seen>>) {
            let seen = Arc::new(Mutex::new(Seen {
                budget,
                ..Seen::default()
            }));
            let probe = Probe {
                seen: seen.clone(),
                max,
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
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let mut seen = self.seen.lock().unwrap();
            if seen.budget == 0 {
                seen.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut left = self.max.min(seen.budget);
            let taken = left;
            for b in bufs {
                let n = b.len().min(left);
                seen.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            seen.calls += 1;
            seen.budget -= taken - left;
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

    #[tokio::test(start_paused = true)]
    async fn a_close_during_a_write_that_never_resumes_sends_nothing_after_the_cut_frame() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        let frame = wire::text("0123456789");
        out.push(&frame);
        out.push(&frame);
        // The client stops reading in the middle of the first frame, for good.
        let (probe, seen) = Probe::new(usize::MAX, 5);
        let writer = tokio::spawn(write_loop(probe, rx, Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !writer.is_finished(),
            "the writer waits on the stalled socket"
        );
        out.close(SERVICE_RESTART);
        tokio::time::timeout(CLOSE_TIMEOUT * 2, writer)
            .await
            .expect("the writer ends within its limits")
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.got, frame[..5], "no close frame after a cut frame");
        assert!(seen.shut);
    }

    /// Stalls a writer in the middle of the first of two frames, asks for `closing`, then lets
    /// the socket take bytes again; returns what was written.
    async fn close_mid_write(closing: Closing) -> Vec<u8> {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        out.push(&wire::text("0123456789"));
        out.push(&wire::text("abcdefghij"));
        let (probe, seen) = Probe::new(usize::MAX, 5);
        let writer = tokio::spawn(write_loop(probe, rx, Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "stalled mid-frame");
        out.close(closing);
        tokio::time::sleep(Duration::from_millis(50)).await;
        unstall(&seen);
        tokio::time::timeout(CLOSE_TIMEOUT * 2, writer)
            .await
            .expect("the writer ends after closing")
            .unwrap();
        let seen = seen.lock().unwrap();
        assert!(seen.shut, "our sending side ends after the close frame");
        seen.got.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_close_during_a_write_finishes_it_then_the_queue_then_the_close_frame() {
        for (closing, code, reason) in [
            (SERVICE_RESTART, 1012, "node shutting down"),
            (TOO_BIG, 1009, "message too big"),
            (FLOOD, 1008, "rate limit exceeded repeatedly"),
            (TOKEN_EXPIRED, 4001, "token expired"),
        ] {
            let expected = [
                wire::text("0123456789"),
                wire::text("abcdefghij"),
                wire::close(Some(code), reason),
            ]
            .concat();
            assert_eq!(close_mid_write(closing).await, expected, "{code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_without_drain_during_a_write_finishes_that_frame_only() {
        let expected = [
            wire::text("0123456789"),
            wire::close(Some(1013), "slow consumer: send queue full"),
        ]
        .concat();
        assert_eq!(close_mid_write(SLOW_CONSUMER).await, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_runs_out_of_time_ends_the_frame_in_progress_and_closes() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        let frame = wire::text("0123456789");
        out.push(&frame);
        out.push(&frame);
        let (probe, seen) = Probe::new(usize::MAX, 5);
        let writer = tokio::spawn(write_loop(probe, rx, Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        out.close(SERVICE_RESTART);
        // The client takes nothing until the drain's time is up, then reads on.
        tokio::time::sleep(DRAIN_TIMEOUT + Duration::from_millis(50)).await;
        unstall(&seen);
        tokio::time::timeout(CLOSE_TIMEOUT * 2, writer)
            .await
            .expect("the writer ends after closing")
            .unwrap();
        let expected = [frame, wire::close(Some(1012), "node shutting down")].concat();
        assert_eq!(
            seen.lock().unwrap().got,
            expected,
            "the rest of the queue is dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_during_a_stalled_ping_still_sends_the_close_frame() {
        let (out, rx) = Outbound::new(1, "a".into(), 100, 1 << 20);
        // A ping is due at once; the socket takes one byte of it, then stalls.
        let (probe, seen) = Probe::new(usize::MAX, 1);
        let writer = tokio::spawn(write_loop(probe, rx, Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(!writer.is_finished(), "stalled in the ping");
        out.close(SERVICE_RESTART);
        tokio::time::sleep(Duration::from_millis(50)).await;
        unstall(&seen);
        tokio::time::timeout(CLOSE_TIMEOUT * 2, writer)
            .await
            .expect("the writer ends after closing")
            .unwrap();
        let expected = [wire::ping(), wire::close(Some(1012), "node shutting down")].concat();
        assert_eq!(seen.lock().unwrap().got, expected);
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
