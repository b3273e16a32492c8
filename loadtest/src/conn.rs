//! The client connection the setup steps (welcome, join, leave) talk through: the [`Conn`]
//! trait, what it reads ([`Incoming`]), and its tungstenite implementation [`Ws`].
//!
//! The connector opens and sets up connections of any [`Conn`]; the other implementation is the
//! hand-read `RawWs`, for connections that only listen once joined. This file imports neither,
//! so both can import it.

use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stream::Stream;

/// A connected client, on tungstenite.
pub type Ws = WebSocketStream<Stream>;

/// What a connection being set up received next; pings are answered and pongs skipped on the
/// way.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary,
    /// A close frame, with its status code and reason if it carried one.
    Close(Option<(u16, String)>),
    /// A read error or a broken frame.
    Failed(String),
    /// The connection ended without a close frame.
    Ended,
}

/// A client connection the setup steps (welcome, join, leave) can talk through.
pub trait Conn: Sized + Send {
    /// Wraps a stream whose upgrade succeeded; `read` holds what the server sent after the
    /// response head, in a buffer of the configured read-buffer size.
    fn upgraded(
        stream: Stream,
        read: Vec<u8>,
        config: WebSocketConfig,
    ) -> impl Future<Output = Self> + Send;

    /// Sends one text message.
    fn send_text(&mut self, text: String) -> impl Future<Output = Result<(), String>> + Send;

    /// Reads until the next text, binary or close message, or the end.
    fn next_incoming(&mut self) -> impl Future<Output = Incoming> + Send;
}

impl Conn for Ws {
    async fn upgraded(stream: Stream, read: Vec<u8>, config: WebSocketConfig) -> Self {
        WebSocketStream::from_partially_read(stream, read, Role::Client, Some(config)).await
    }

    async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    async fn next_incoming(&mut self) -> Incoming {
        loop {
            return match self.next().await {
                Some(Ok(Message::Text(t))) => Incoming::Text(t.as_str().to_owned()),
                Some(Ok(Message::Binary(_))) => Incoming::Binary,
                Some(Ok(Message::Close(frame))) => {
                    Incoming::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                // Pings (answered by tungstenite), pongs, raw frames.
                Some(Ok(_)) => continue,
                Some(Err(e)) => Incoming::Failed(e.to_string()),
                None => Incoming::Ended,
            };
        }
    }
}
