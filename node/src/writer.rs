//! One connection's writer: drains its outbound queue into the socket, several frames per
//! flush, sends pings, and performs the server side of the closing handshake.
//!
//! It never parses and never waits on anyone but its own client: when the socket stops taking
//! bytes, the queue fills and the fan-out side closes the connection instead of waiting.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, timeout, Instant, Sleep};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::outbound::{Closing, Next, OutboundRx};

/// Most frames written per flush.
const BATCH: usize = 64;
/// How long a closing connection may take to send its close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Writes queued frames, several per flush, plus pings; closes the connection when asked.
///
/// An idle writer waits here for the connection's whole life, so its state is kept small: the
/// writing is a hand-written state machine ([`Batch`]) holding at most one unsent message, one
/// timer serves the ping and its send timeout, and the closing handshake (run once) is boxed.
/// (A plain function returning an `async move` block: an `async fn` would keep a second copy of
/// its arguments for the connection's life.)
pub fn write_loop<S>(
    sink: Sink<S>,
    rx: OutboundRx,
    ping_every: Duration,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut writer = Writer {
        sink,
        rx,
        ping_every,
        batch: None,
    };
    async move {
        let mut ping = pin!(sleep(writer.ping_every));
        let closing = poll_fn(|cx| writer.poll(ping.as_mut(), cx)).await;
        if let Some(closing) = closing {
            Box::pin(close(writer.sink, writer.rx, closing)).await;
        }
    }
}

/// Writes what is queued now (up to [`BATCH`] frames) in one flush: the session's first write,
/// made before the writer starts.
pub async fn write_queued<S>(ws: &mut WebSocketStream<S>, rx: &OutboundRx) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut bytes = 0;
    let mut fed = 0;
    let result = async {
        while fed < BATCH {
            let Ok(frame) = rx.try_recv() else { break };
            bytes += frame.len();
            fed += 1;
            ws.feed(Message::Text(frame)).await?;
        }
        ws.flush().await
    }
    .await;
    rx.written(bytes);
    result
}

/// The writer's state between wake-ups (one struct, so the future polling it holds one pointer).
struct Writer<S> {
    sink: Sink<S>,
    rx: OutboundRx,
    ping_every: Duration,
    /// The flush in progress, if any.
    batch: Option<Batch>,
}

impl<S> Writer<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Writes until asked to close (ready with the request), or until writing fails, stalls, or
    /// is abandoned because a close arrived while the socket would not take bytes (ready with
    /// `None`: no close frame can be sent then).
    fn poll(&mut self, mut ping: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<Option<Closing>> {
        loop {
            if let Some(writing) = &mut self.batch {
                match writing.poll(&mut self.sink, &self.rx, cx) {
                    Poll::Ready(Ok(bytes)) => {
                        self.rx.written(bytes);
                        if writing.ping {
                            ping.as_mut().reset(Instant::now() + self.ping_every);
                        }
                        self.batch = None;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending if writing.ping => {
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
                    self.batch = Some(Batch::frames(first));
                    continue;
                }
                Poll::Pending => {}
            }
            if ping.as_mut().poll(cx).is_ready() {
                ping.as_mut().reset(Instant::now() + self.ping_every);
                self.batch = Some(Batch::ping());
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// One flush in progress: frames fed to the sink (up to [`BATCH`]), or a ping.
struct Batch {
    /// Waiting for the sink to take it (a text frame, or the ping).
    next: Option<Utf8Bytes>,
    /// Messages handed to the sink so far (at most [`BATCH`]).
    fed: u8,
    /// Frame bytes taken from the queue so far.
    bytes: usize,
    /// A ping, not frames: take nothing from the queue.
    ping: bool,
}

impl Batch {
    fn frames(first: Utf8Bytes) -> Self {
        Batch {
            bytes: first.len(),
            next: Some(first),
            fed: 0,
            ping: false,
        }
    }

    fn ping() -> Self {
        Batch {
            next: Some(Utf8Bytes::default()),
            fed: 0,
            bytes: 0,
            ping: true,
        }
    }

    /// Feeds the pending message and whatever else is queued, then flushes; ready with the
    /// frame bytes written.
    fn poll<S>(
        &mut self,
        sink: &mut Sink<S>,
        rx: &OutboundRx,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, WsError>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        loop {
            if self.next.is_some() {
                ready!(sink.poll_ready_unpin(cx))?;
                if let Some(frame) = self.next.take() {
                    let message = if self.ping {
                        Message::Ping(Bytes::new())
                    } else {
                        Message::Text(frame)
                    };
                    sink.start_send_unpin(message)?;
                    self.fed += 1;
                }
            }
            if self.ping || usize::from(self.fed) >= BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(frame) => {
                    self.bytes += frame.len();
                    self.next = Some(frame);
                }
                Err(_) => break,
            }
        }
        ready!(sink.poll_flush_unpin(cx))?;
        Poll::Ready(Ok(self.bytes))
    }
}

/// The server side of the closing handshake.
async fn close<S>(mut sink: Sink<S>, rx: OutboundRx, closing: Closing)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match closing {
        Closing::Server {
            code,
            reason,
            drain,
        } => {
            let close_frame = async {
                if drain {
                    while let Ok(frame) = rx.try_recv() {
                        sink.feed(Message::Text(frame)).await?;
                    }
                }
                sink.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                })))
                .await
            };
            let _ = timeout(CLOSE_TIMEOUT, close_frame).await;
        }
        Closing::Peer => {
            // Sends tungstenite's pending close reply, if the client started the close.
            let _ = timeout(CLOSE_TIMEOUT, sink.flush()).await;
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, sink.close()).await;
}
