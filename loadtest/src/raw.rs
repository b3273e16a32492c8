//! A WebSocket client connection read by hand, for connections that only listen once they have
//! joined (the fan-out subscribers).
//!
//! A subscriber of a big room takes in a thousand frames a second, and the load generator
//! shares its CPU with the servers it measures. Through tungstenite each frame costs a stream
//! poll and waker registration, a zeroed read buffer, a `BytesMut` split, a UTF-8 check, and a
//! clock read in the receiver. Here one socket read fills a reused buffer that is never zeroed,
//! [`Parser`] walks the frames in place, and every frame of one read gets the same receive time:
//! the one clock read taken when the read returned, which is when those bytes reached the load
//! generator. Pings are answered with a masked pong (the node closes clients it has not heard
//! from), a close frame is echoed and reported, and broken frames end the connection with a
//! [`FrameError`](crate::frame::FrameError) that says what arrived.

use std::ops::ControlFlow;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::conn::{Conn, Incoming};
use crate::frame::{client_frame, FrameError, Message, Parsed, Parser, CLOSE, PONG, TEXT};
use crate::receiver::{closed_by_server, Receiver};
use crate::stamp::now_micros;
use crate::stream::Stream;

/// A client connection that reads and parses frames itself; writes only what a listener needs
/// (its join, pongs, a close reply).
#[derive(Debug)]
pub struct RawWs {
    stream: Stream,
    input: Input,
}

/// The read buffer and the frame parser.
#[derive(Debug)]
struct Input {
    buf: Vec<u8>,
    /// Bytes of `buf` before this are parsed.
    pos: usize,
    parser: Parser,
    /// The buffer's usual capacity, returned to after a message that needed more.
    base: usize,
}

impl Input {
    /// Hands each complete message in the buffer to `handle` until it breaks or the buffer
    /// holds no complete frame; then moves an incomplete frame to the front and makes sure the
    /// buffer can hold all of it. Returns whether `handle` broke.
    fn drain(
        &mut self,
        mut handle: impl FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, FrameError> {
        loop {
            match self.parser.parse(&self.buf[self.pos..])? {
                Parsed::Message(message, used) => {
                    self.pos += used;
                    if handle(message).is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Parsed::Fragment(used) => self.pos += used,
                Parsed::Incomplete(need) => {
                    self.make_room(need);
                    return Ok(ControlFlow::Continue(()));
                }
            }
        }
    }

    /// Drops the parsed bytes and ensures room for a frame of `need` bytes at the front.
    fn make_room(&mut self, need: usize) {
        let rest = self.buf.len() - self.pos;
        if rest == 0 {
            self.buf.clear();
            if self.buf.capacity() > 4 * self.base {
                self.buf = Vec::with_capacity(self.base);
            }
        } else if self.pos > 0 {
            // Less than one frame: cheap to move, and the next read appends to it.
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(rest);
        }
        self.pos = 0;
        if need > self.buf.capacity() {
            self.buf.reserve_exact(need - self.buf.len());
        }
    }

    /// Whether part of a frame is waiting for more bytes.
    fn mid_frame(&self) -> bool {
        self.buf.len() > self.pos
    }
}

/// A fresh masking key; RFC 6455 wants it unpredictable per frame.
fn mask() -> [u8; 4] {
    rand::random()
}

impl RawWs {
    /// Sends one client frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.stream
            .write_all(&client_frame(opcode, payload, mask()))
            .await
    }

    /// Echoes the server's close without waiting: the connection is abandoned right after, and
    /// a full send buffer must not hold that up.
    fn reply_close(&mut self, code: Option<u16>) {
        let payload = code.map(u16::to_be_bytes);
        let frame = client_frame(CLOSE, payload.as_ref().map_or(&[][..], |p| &p[..]), mask());
        let _ = self.stream.try_write(&frame);
    }

    /// Reads into `rx` until `stop` turns true or the connection ends; the counterpart of the
    /// tungstenite loop `traffic::receive_until`, with the same reports in `rx.closed`.
    pub async fn receive_until(
        mut self,
        mut rx: Receiver,
        mut stop: watch::Receiver<bool>,
    ) -> Receiver {
        // Frames that came with the join's answer are handled first, stamped now.
        let mut read_at = now_micros();
        rx.closed = loop {
            let mut pong: Option<Vec<u8>> = None;
            let mut close: Option<Option<(u16, String)>> = None;
            let drained = self.input.drain(|message| match message {
                Message::Text(text) => {
                    rx.on_text(text, read_at);
                    ControlFlow::Continue(())
                }
                Message::Ping(payload) => {
                    // Answering the latest of several pings is enough (RFC 6455 §5.5.3).
                    pong = Some(payload.to_vec());
                    ControlFlow::Continue(())
                }
                Message::Close(frame) => {
                    close = Some(frame.map(|(code, r)| (code, String::from_utf8_lossy(r).into())));
                    ControlFlow::Break(())
                }
                Message::Binary | Message::Pong => ControlFlow::Continue(()),
            });
            if let Err(e) = drained {
                break Some(format!("connection error: {e}"));
            }
            if let Some(frame) = close {
                self.reply_close(frame.as_ref().map(|(code, _)| *code));
                break Some(closed_by_server(
                    frame.as_ref().map(|(c, r)| (*c, r.as_str())),
                ));
            }
            if let Some(payload) = pong {
                if let Err(e) = self.send(PONG, &payload).await {
                    break Some(format!("connection error: answering a ping: {e}"));
                }
            }
            tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.input.buf) => match read {
                    Ok(0) if self.input.mid_frame() => {
                        break Some("connection error: connection ended in the middle of a frame".into());
                    }
                    Ok(0) => break Some("connection ended".into()),
                    Ok(_) => read_at = now_micros(),
                    Err(e) => break Some(format!("connection error: {e}")),
                },
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break None;
                    }
                }
            }
        };
        rx.flush_latency();
        rx
    }
}

impl Conn for RawWs {
    async fn upgraded(stream: Stream, read: Vec<u8>, config: WebSocketConfig) -> Self {
        let base = config.read_buffer_size.max(read.capacity()).max(1024);
        let mut buf = read;
        buf.reserve_exact(base - buf.len());
        RawWs {
            stream,
            input: Input {
                buf,
                pos: 0,
                parser: Parser::default(),
                base,
            },
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.send(TEXT, text.as_bytes())
            .await
            .map_err(|e| e.to_string())
    }

    async fn next_incoming(&mut self) -> Incoming {
        loop {
            let mut got = None;
            let mut pong: Option<Vec<u8>> = None;
            let drained = self.input.drain(|message| {
                got = match message {
                    Message::Text(text) => Some(match std::str::from_utf8(text) {
                        Ok(text) => Incoming::Text(text.to_owned()),
                        Err(e) => Incoming::Failed(format!("text message that is not UTF-8: {e}")),
                    }),
                    Message::Binary => Some(Incoming::Binary),
                    Message::Close(frame) => Some(Incoming::Close(
                        frame.map(|(code, r)| (code, String::from_utf8_lossy(r).into())),
                    )),
                    Message::Ping(payload) => {
                        pong = Some(payload.to_vec());
                        None
                    }
                    Message::Pong => None,
                };
                if got.is_some() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if let Err(e) = drained {
                return Incoming::Failed(e.to_string());
            }
            if let Some(payload) = pong {
                if let Err(e) = self.send(PONG, &payload).await {
                    return Incoming::Failed(format!("answering a ping: {e}"));
                }
            }
            if let Some(incoming) = got {
                if let Incoming::Close(frame) = &incoming {
                    self.reply_close(frame.as_ref().map(|(code, _)| *code));
                }
                return incoming;
            }
            match self.stream.read_buf(&mut self.input.buf).await {
                Ok(0) if self.input.mid_frame() => {
                    return Incoming::Failed("connection ended in the middle of a frame".into())
                }
                Ok(0) => return Incoming::Ended,
                Ok(_) => {}
                Err(e) => return Incoming::Failed(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::counters::Counters;
    use crate::frame::{server_frame, BINARY, CONTINUATION, PING};
    use crate::stamp::FrameBuilder;

    /// A stamped message from sender 0 as a server would forward it.
    fn stamped(seq: u64) -> Vec<u8> {
        let text = FrameBuilder::room_message("r", 0, 20).frame(seq);
        server_frame(true, TEXT, text.as_bytes())
    }

    /// Reads one masked client frame within 5 s; returns its opcode and unmasked payload.
    async fn client_frame_from(s: &mut TcpStream) -> (u8, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(5), read_client_frame(s))
            .await
            .expect("no frame from the client within 5 s")
    }

    async fn read_client_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await.expect("a client frame");
        assert_eq!(head[0] & 0x80, 0x80, "client frames here are final");
        assert_eq!(head[1] & 0x80, 0x80, "client frames are masked");
        let len = usize::from(head[1] & 0x7F);
        assert!(len < 126, "short control or join frames only");
        let mut mask = [0u8; 4];
        s.read_exact(&mut mask).await.unwrap();
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        (head[0] & 0x0F, payload)
    }

    /// A connected pair: the client side as a `RawWs` holding `leftover` as if it had come
    /// with the upgrade answer, and the server's socket.
    async fn pair(leftover: &[u8]) -> (RawWs, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut read = Vec::with_capacity(1024);
        read.extend_from_slice(leftover);
        let config = WebSocketConfig::default().read_buffer_size(1024);
        (
            RawWs::upgraded(Stream::Plain(client), read, config).await,
            server,
        )
    }

    /// The reader's result once it ends; fails the test if it has not within 5 s.
    async fn ended(reader: tokio::task::JoinHandle<Receiver>) -> Receiver {
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader did not end within 5 s")
            .expect("the reader panicked")
    }

    fn receiver(counter: &Counters) -> Receiver {
        Receiver::new(0, 1, None, counter.clone())
    }

    #[tokio::test]
    async fn counts_messages_answers_pings_and_reports_the_close() {
        // The first message arrived together with the upgrade answer.
        let (ws, mut server) = pair(&stamped(0)).await;
        let counter = Counters::default();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let reader = tokio::spawn(ws.receive_until(receiver(&counter), stop_rx));

        // A stamped message cut in two around a ping, then a fragmented one with a ping inside.
        let mut bytes = stamped(1);
        bytes.extend(server_frame(true, PING, b"are you there"));
        let whole = stamped(2);
        let text = &whole[2..];
        bytes.extend(server_frame(false, TEXT, &text[..10]));
        bytes.extend(server_frame(true, PING, b"still?"));
        bytes.extend(server_frame(true, CONTINUATION, &text[10..]));
        bytes.extend(server_frame(true, BINARY, b"\x01"));
        let (first, second) = bytes.split_at(7);
        server.write_all(first).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.write_all(second).await.unwrap();
        // Both pings are answered, or at least the latest one.
        let (opcode, payload) = client_frame_from(&mut server).await;
        assert_eq!(opcode, PONG);
        if payload == b"are you there" {
            let (opcode, payload) = client_frame_from(&mut server).await;
            assert_eq!((opcode, payload.as_slice()), (PONG, &b"still?"[..]));
        } else {
            assert_eq!(payload, b"still?");
        }

        let mut close = 1001u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"idle");
        server
            .write_all(&server_frame(true, CLOSE, &close))
            .await
            .unwrap();
        let rx = ended(reader).await;
        assert_eq!(rx.closed.as_deref(), Some("closed by server: 1001 idle"));
        assert_eq!(rx.stamped, 3);
        assert_eq!(rx.distinct(), 3);
        assert_eq!(counter.total(), 3);
        // The close is echoed with its status code.
        let (opcode, payload) = client_frame_from(&mut server).await;
        assert_eq!((opcode, payload), (CLOSE, 1001u16.to_be_bytes().to_vec()));
    }

    #[tokio::test]
    async fn a_message_bigger_than_the_read_buffer_arrives_whole() {
        let (ws, mut server) = pair(&[]).await;
        let counter = Counters::default();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let reader = tokio::spawn(ws.receive_until(receiver(&counter), stop_rx));
        // Message 0 cut after its header, then message 1 of 10 KB, in 700-byte pieces.
        let first = stamped(0);
        let big = FrameBuilder::room_message("r", 0, 10_000).frame(1);
        let mut bytes = first[..4].to_vec();
        let rest = [&first[4..], &server_frame(true, TEXT, big.as_bytes())].concat();
        server.write_all(&bytes).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for chunk in rest.chunks(700) {
            server.write_all(chunk).await.unwrap();
        }
        bytes.clear();
        for seq in 2..200 {
            bytes.extend(stamped(seq));
        }
        server.write_all(&bytes).await.unwrap();
        drop(server);
        let rx = ended(reader).await;
        assert_eq!(rx.closed.as_deref(), Some("connection ended"));
        assert_eq!(rx.distinct(), 200);
        assert_eq!(rx.trackers[0].duplicates + rx.trackers[0].reordered, 0);
    }

    #[tokio::test]
    async fn stops_when_told_and_when_the_server_goes() {
        let (ws, _server) = pair(&[]).await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let reader = tokio::spawn(ws.receive_until(receiver(&Counters::default()), stop_rx));
        stop_tx.send(true).unwrap();
        let rx = ended(reader).await;
        assert_eq!(rx.closed, None);

        for (what, bytes, expected) in [
            ("between frames", stamped(0), "connection ended"),
            (
                "inside a frame",
                stamped(0)[..5].to_vec(),
                "connection error: connection ended in the middle of a frame",
            ),
        ] {
            let (ws, mut server) = pair(&[]).await;
            let (_stop_tx, stop_rx) = watch::channel(false);
            let reader = tokio::spawn(ws.receive_until(receiver(&Counters::default()), stop_rx));
            server.write_all(&bytes).await.unwrap();
            drop(server);
            let rx = ended(reader).await;
            assert_eq!(rx.closed.as_deref(), Some(expected), "{what}");
        }
    }

    #[tokio::test]
    async fn garbage_ends_the_connection_with_a_clear_error() {
        let (ws, mut server) = pair(&stamped(0)).await;
        let (_stop_tx, stop_rx) = watch::channel(false);
        let reader = tokio::spawn(ws.receive_until(receiver(&Counters::default()), stop_rx));
        server
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        let rx = ended(reader).await;
        assert_eq!(rx.stamped, 1, "what came before the garbage still counts");
        let closed = rx.closed.unwrap_or_default();
        assert!(
            closed.starts_with("connection error: frame with reserved bits set"),
            "{closed}"
        );
    }

    #[tokio::test]
    async fn setup_reads_answer_pings_and_send_masked_text() {
        let mut bytes = server_frame(true, PING, b"hi");
        bytes.extend(server_frame(true, TEXT, br#"{"event":"welcome"}"#));
        let (mut ws, mut server) = pair(&bytes).await;
        match ws.next_incoming().await {
            Incoming::Text(t) => assert_eq!(t, r#"{"event":"welcome"}"#),
            other => panic!("expected the welcome, got {other:?}"),
        }
        assert_eq!(client_frame_from(&mut server).await, (PONG, b"hi".to_vec()));
        ws.send_text(r#"{"type":"join_room","room":"r"}"#.into())
            .await
            .unwrap();
        assert_eq!(
            client_frame_from(&mut server).await,
            (TEXT, br#"{"type":"join_room","room":"r"}"#.to_vec())
        );
        server
            .write_all(&server_frame(true, CLOSE, b""))
            .await
            .unwrap();
        assert!(matches!(ws.next_incoming().await, Incoming::Close(None)));
    }
}
