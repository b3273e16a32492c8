//! Server-to-client WebSocket frames, encoded once and written as they are.
//!
//! A message to a room is the same frame for every member: the server never masks (RFC 6455
//! §5.1), so header and payload are identical bytes on every connection. The hub encodes each
//! message into one [`Bytes`] and every member's queue holds a reference to it; each writer hands
//! those bytes to its socket without re-framing or copying them into a buffer of its own.

use bytes::{BufMut, Bytes, BytesMut};

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// One unfragmented frame with this opcode and payload.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(FIN | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame carrying `payload`, which is UTF-8 (a `str` proves it).
pub fn text(payload: &str) -> Bytes {
    frame(TEXT, payload.as_bytes())
}

/// A text frame carrying an encoded server event (serde_json writes only UTF-8; anything else
/// becomes `{}` rather than an invalid frame).
pub fn event(event: &[u8]) -> Bytes {
    text(std::str::from_utf8(event).unwrap_or("{}"))
}

/// A ping with no payload.
pub fn ping() -> Bytes {
    Bytes::from_static(&[FIN | PING, 0])
}

/// The answer to a client's ping: a pong with the same payload (at most
/// [`MAX_CONTROL_PAYLOAD`] bytes; anything longer is cut).
pub fn pong(payload: &[u8]) -> Bytes {
    frame(PONG, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
}

/// A close frame with `code` and `reason` (cut to fit a control frame, at a character
/// boundary); with no code, an empty close frame.
pub fn close(code: Option<u16>, reason: &str) -> Bytes {
    let Some(code) = code else {
        return frame(CLOSE, &[]);
    };
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::Message;

    /// Reads `bytes` as a client would, with tungstenite's own parser.
    fn parse(bytes: &[u8]) -> Vec<Message> {
        struct Wire(std::io::Cursor<Vec<u8>>);
        impl std::io::Read for Wire {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl std::io::Write for Wire {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_frame_size(Some(1 << 20))
            .max_message_size(Some(1 << 20));
        let mut ws = WebSocket::from_raw_socket(
            Wire(std::io::Cursor::new(bytes.to_vec())),
            Role::Client,
            Some(config),
        );
        let mut got = Vec::new();
        loop {
            match ws.read() {
                Ok(m) => got.push(m),
                Err(_) => return got,
            }
        }
    }

    #[test]
    fn text_frames_of_every_length_class_parse_back() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let payload = "x".repeat(len);
            let got = parse(&text(&payload));
            assert_eq!(got.len(), 1, "length {len}");
            assert_eq!(got[0], Message::text(payload.clone()), "length {len}");
        }
    }

    #[test]
    fn header_bytes_are_the_minimal_encoding() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        assert_eq!(&text(&"a".repeat(126))[..4], b"\x81\x7e\x00\x7e");
        assert_eq!(
            &text(&"a".repeat(65_536))[..10],
            b"\x81\x7f\0\0\0\0\0\x01\0\0"
        );
    }

    #[test]
    fn control_frames_parse_back() {
        let mut bytes = ping().to_vec();
        bytes.extend_from_slice(&pong(b"abc"));
        bytes.extend_from_slice(&close(Some(1013), "slow consumer"));
        let got = parse(&bytes);
        assert_eq!(got[0], Message::Ping(Bytes::new()));
        assert_eq!(got[1], Message::Pong(Bytes::from_static(b"abc")));
        match &got[2] {
            Message::Close(Some(f)) => {
                assert_eq!(f.code, CloseCode::from(1013));
                assert_eq!(f.reason.as_str(), "slow consumer");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_close_has_no_payload() {
        assert_eq!(&close(None, "ignored")[..], b"\x88\x00");
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(100); // 200 bytes, 2 per character
        let frame = close(Some(1000), &reason);
        let payload_len = usize::from(frame[1]);
        assert!(payload_len <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        match &parse(&frame)[0] {
            Message::Close(Some(f)) => assert_eq!(f.reason.len(), 122),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[test]
    fn a_long_pong_payload_is_cut_to_fit_a_control_frame() {
        assert_eq!(pong(&[7; 300]).len(), 2 + MAX_CONTROL_PAYLOAD);
    }
}
