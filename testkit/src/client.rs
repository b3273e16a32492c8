//! A WebSocket test client that speaks JSON and reports what a user would see.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long `recv` waits before failing the test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// One connected WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:PORT/ws?client_id=alice`).
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// Connects, returning the handshake error (e.g. an HTTP status) instead of panicking.
    pub async fn try_connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client { ws })
    }

    /// Connects with extra request headers (e.g. `Authorization`, `Sec-WebSocket-Protocol`);
    /// returns the client and the response headers.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<
        (Self, tokio_tungstenite::tungstenite::http::HeaderMap),
        tokio_tungstenite::tungstenite::Error,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut req = url.into_client_request()?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            let value = HeaderValue::from_str(value).expect("header value");
            req.headers_mut().append(name, value);
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        Ok((Client { ws }, resp.headers().clone()))
    }

    /// Connects and reads the `welcome` event; returns the client and its client id.
    pub async fn connect_welcomed(url: &str) -> (Self, String) {
        let mut c = Self::connect(url).await;
        let w = c.recv_event("welcome").await;
        let id = w["client_id"]
            .as_str()
            .expect("welcome.client_id")
            .to_owned();
        (c, id)
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send(Message::text(v.to_string())).await;
    }

    /// Sends any frame.
    pub async fn send(&mut self, m: Message) {
        self.ws.send(m).await.expect("send frame");
    }

    /// Sends without waiting for the flush (for floods).
    pub async fn feed(&mut self, m: Message) -> bool {
        self.ws.feed(m).await.is_ok()
    }

    /// Flushes fed frames.
    pub async fn flush(&mut self) -> bool {
        self.ws.flush().await.is_ok()
    }

    /// The next text frame as JSON; panics on timeout, close or a non-text frame.
    pub async fn recv(&mut self) -> Value {
        match self.next_json(RECV_TIMEOUT).await {
            Ok(v) => v,
            Err(e) => panic!("expected a JSON frame: {e}"),
        }
    }

    /// The next text frame within `limit`, or a description of what came instead.
    pub async fn next_json(&mut self, limit: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("nothing within {limit:?}"))?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).map_err(|e| format!("not JSON ({e}): {t}"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
                Some(Ok(other)) => return Err(format!("unexpected frame {other:?}")),
                Some(Err(e)) => return Err(format!("error: {e}")),
                None => return Err("stream ended".into()),
            }
        }
    }

    /// Reads until an event named `event` arrives (skipping others); returns it.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        self.recv_event_within(event, RECV_TIMEOUT).await
    }

    /// [`Client::recv_event`] with its own time limit, for events that wait on a restart.
    pub async fn recv_event_within(&mut self, event: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => continue,
                Err(e) => panic!("waiting for event {event:?}: {e}"),
            }
        }
    }

    /// Reads until an `error` event arrives; returns its code.
    pub async fn recv_error_code(&mut self) -> String {
        let e = self.recv_event("error").await;
        e["code"].as_str().unwrap_or_default().to_owned()
    }

    /// Asserts that no text frame arrives within `limit`.
    pub async fn expect_silence(&mut self, limit: Duration) {
        if let Ok(v) = self.next_json(limit).await {
            panic!("expected no frame, got {v}");
        }
    }

    /// Reads (discarding text frames) until the server closes; returns the close code, or
    /// `None` when the connection ended without a close frame. Panics after `limit`.
    pub async fn expect_close(&mut self, limit: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let next = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("connection not closed within {limit:?}"));
            match next {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends a WebSocket ping with `payload` and returns the payload of the first pong that
    /// comes back (frames before it are skipped). Panics after `limit` or if the connection ends.
    pub async fn ping(&mut self, payload: &'static [u8], limit: Duration) -> Vec<u8> {
        self.send(Message::Ping(payload.into())).await;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no pong within {limit:?}"));
            match next {
                Some(Ok(Message::Pong(p))) => return p.to_vec(),
                Some(Ok(_)) => continue,
                other => panic!("connection ended while waiting for a pong: {other:?}"),
            }
        }
    }

    /// Starts the closing handshake with `code` and returns the code the server answers with
    /// (`None`: the connection ended without a close frame). Panics after `limit`.
    pub async fn close_with(&mut self, code: u16, limit: Duration) -> Option<u16> {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        // The client may refuse to send a code it considers invalid; the server never sees it.
        self.ws
            .send(Message::Close(Some(frame)))
            .await
            .expect("send close frame");
        self.expect_close(limit).await
    }

    /// Closes normally.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }

    /// The underlying stream, for tests that need raw control.
    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}
