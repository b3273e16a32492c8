//! One connection's writer: drains its outbound queue into the socket, several frames per
//! flush, sends pings, and performs the server side of the closing handshake.
//!
//! It never parses and never waits on anyone but its own client: when the socket stops taking
//! bytes, the queue fills and the fan-out side closes the connection instead of waiting.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::outbound::{Closing, Frames, OutboundRx};

/// Most frames written per flush.
const BATCH: usize = 64;
/// How long a closing connection may take to send its close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Writes queued frames, several per flush, plus pings; closes the connection when asked.
pub async fn write_loop<S>(mut sink: Sink<S>, mut rx: OutboundRx, ping_every: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let closing = loop {
        let OutboundRx { frames, close, .. } = &mut rx;
        tokio::select! {
            biased;
            _ = close.changed() => break *close.borrow(),
            first = frames.recv() => {
                let write = write_batch(&mut sink, first, frames);
                let written = tokio::select! {
                    w = write => w,
                    // The client stopped reading while we wait on the socket: give up on it.
                    _ = close.changed() => return,
                };
                match written {
                    Ok(bytes) => rx.written(bytes),
                    Err(_) => return,
                }
            }
            _ = ping.tick() => {
                let send = sink.send(Message::Ping(Bytes::new()));
                if !matches!(timeout(ping_every, send).await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    };
    match closing {
        Some(Closing::Server {
            code,
            reason,
            drain,
        }) => {
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
        Some(Closing::Peer) | None => {
            // Sends tungstenite's pending close reply, if the client started the close.
            let _ = timeout(CLOSE_TIMEOUT, sink.flush()).await;
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, sink.close()).await;
}

async fn write_batch<S>(
    sink: &mut Sink<S>,
    first: Utf8Bytes,
    frames: &mut Frames,
) -> Result<usize, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut bytes = first.len();
    sink.feed(Message::Text(first)).await?;
    for _ in 1..BATCH {
        match frames.try_recv() {
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
