//! One connection's writer: drains its outbound queue into the socket, several frames per
//! flush, sends pings, and performs the server side of the closing handshake.
//!
//! It never parses and never waits on anyone but its own client: when the socket stops taking
//! bytes, the queue fills and the fan-out side closes the connection instead of waiting.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, timeout, Instant};
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

/// What woke the writer.
enum Wake {
    Next(Next),
    Ping,
}

/// Writes queued frames, several per flush, plus pings; closes the connection when asked.
///
/// An idle writer waits here, so this future is kept small (it lives as long as the
/// connection): one timer for the ping and its send timeout, and the closing handshake boxed,
/// since it runs once.
pub async fn write_loop<S>(mut sink: Sink<S>, rx: OutboundRx, ping_every: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ping = pin!(sleep(ping_every));
    let closing = loop {
        let wake = poll_fn(|cx| {
            if let Poll::Ready(next) = rx.poll_next(cx) {
                return Poll::Ready(Wake::Next(next));
            }
            ping.as_mut().poll(cx).map(|()| Wake::Ping)
        })
        .await;
        match wake {
            Wake::Next(Next::Close(closing)) => break closing,
            Wake::Next(Next::Frame(first)) => {
                let mut write = pin!(write_batch(&mut sink, first, &rx));
                let written = poll_fn(|cx| {
                    if let Poll::Ready(written) = write.as_mut().poll(cx) {
                        return Poll::Ready(Some(written));
                    }
                    // The client stopped reading while we wait on the socket: give up on it.
                    rx.poll_close(cx).map(|_| None)
                })
                .await;
                match written {
                    Some(Ok(bytes)) => rx.written(bytes),
                    _ => return,
                }
            }
            Wake::Ping => {
                // The ping must be taken within one interval; the same timer is the limit.
                ping.as_mut().reset(Instant::now() + ping_every);
                let mut send = pin!(sink.send(Message::Ping(Bytes::new())));
                let sent = poll_fn(|cx| {
                    if let Poll::Ready(sent) = send.as_mut().poll(cx) {
                        return Poll::Ready(sent.is_ok());
                    }
                    ping.as_mut().poll(cx).map(|()| false)
                })
                .await;
                if !sent {
                    return;
                }
                ping.as_mut().reset(Instant::now() + ping_every);
            }
        }
    };
    Box::pin(close(sink, rx, closing)).await;
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
                    while let Ok(frame) = rx.frames.try_recv() {
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

async fn write_batch<S>(
    sink: &mut Sink<S>,
    first: Utf8Bytes,
    rx: &OutboundRx,
) -> Result<usize, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut bytes = first.len();
    sink.feed(Message::Text(first)).await?;
    for _ in 1..BATCH {
        match rx.frames.try_recv() {
            Ok(frame) => {
                bytes += frame.len();
                sink.feed(Message::Text(frame)).await?;
            }
            Err(_) => break,
        }
    }
    sink.flush().await?;
    Ok(bytes)
}
