//! WebSocket frames (RFC 6455 §5) for a client that reads by hand: server frames parsed in
//! place from a read buffer, and the few masked frames such a client sends (join, pong, close).
//!
//! The parser never copies or validates an unfragmented message's payload: a text message is
//! handed over as the bytes it arrived in, not checked for UTF-8 (the receiver only searches it
//! for ASCII stamps). Only fragmented messages are reassembled, into a buffer the parser owns.
//! Everything a server must not send (masked frames, reserved bits, unknown opcodes, broken
//! fragmentation, oversized frames) is a [`FrameError`] that says what arrived.

/// The largest message accepted, reassembled or not (as tungstenite is configured elsewhere).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Opcode of a continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const PONG: u8 = 0xA;

/// Control frames carry at most this many payload bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A complete message from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message's bytes (not checked for UTF-8).
    Text(&'a [u8]),
    /// A binary message (its content is of no interest here).
    Binary,
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame: the status code and reason, if it carried any.
    Close(Option<(u16, &'a [u8])>),
}

/// What [`Parser::parse`] found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A complete message, and how many bytes of the buffer it took.
    Message(Message<'a>, usize),
    /// A non-final fragment of a message, which took this many bytes.
    Fragment(usize),
    /// The next frame is incomplete: it needs this many bytes counted from the start of the
    /// buffer (its full length once the header is in, else just the header's).
    Incomplete(usize),
}

/// Why the bytes from the server are not a valid frame sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1–3 set: no extension was negotiated, so the bytes are not a frame (or garbage).
    #[error("frame with reserved bits set (first byte {0:#04x}): not a WebSocket frame")]
    ReservedBits(u8),
    /// An opcode RFC 6455 does not define.
    #[error("frame with unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// Servers must not mask their frames.
    #[error("masked frame from the server")]
    Masked,
    /// A ping, pong or close that is fragmented or longer than 125 bytes.
    #[error("control frame (opcode {opcode:#x}) that is fragmented or {len} bytes long")]
    BadControl {
        /// The opcode.
        opcode: u8,
        /// Its payload length.
        len: u64,
    },
    /// A close frame whose payload is one byte, too short for a status code.
    #[error("close frame with a 1-byte payload")]
    BadClose,
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation frame without a message to continue")]
    StrayContinuation,
    /// A new text or binary frame while a fragmented message is unfinished.
    #[error("new data frame (opcode {0:#x}) inside an unfinished fragmented message")]
    Interleaved(u8),
    /// A frame or message over [`MAX_MESSAGE_BYTES`] (or a 64-bit length with its top bit set).
    #[error("message of {len} bytes, more than the {MAX_MESSAGE_BYTES} accepted")]
    TooLong {
        /// The length announced or reached.
        len: u64,
    },
}

/// A fragmented message being reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// No fragmented message in progress.
    None,
    /// A text message whose fragments so far are in `Parser::assembled`.
    Text,
    /// A binary message of this many bytes so far (not kept).
    Binary(u64),
}

/// Parses server frames one at a time from the start of a caller's buffer; holds only the
/// state of an unfinished fragmented message.
#[derive(Debug)]
pub struct Parser {
    pending: Pending,
    assembled: Vec<u8>,
    /// `assembled` was handed out as a message and is cleared on the next call.
    handed_out: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            pending: Pending::None,
            assembled: Vec::new(),
            handed_out: false,
        }
    }
}

impl Parser {
    /// Parses the frame at the start of `buf`.
    pub fn parse<'a>(&'a mut self, buf: &'a [u8]) -> Result<Parsed<'a>, FrameError> {
        if self.handed_out {
            self.handed_out = false;
            self.assembled.clear();
            if self.assembled.capacity() > 64 * 1024 {
                self.assembled = Vec::new();
            }
        }
        let [first, second, ..] = *buf else {
            return Ok(Parsed::Incomplete(2));
        };
        if first & 0x70 != 0 {
            return Err(FrameError::ReservedBits(first));
        }
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0F;
        if second & 0x80 != 0 {
            return Err(FrameError::Masked);
        }
        let (header, len) = match second & 0x7F {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (4, u64::from(u16::from_be_bytes([a, b]))),
                _ => return Ok(Parsed::Incomplete(4)),
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(bytes) => (10, u64::from_be_bytes(bytes)),
                None => return Ok(Parsed::Incomplete(10)),
            },
            short => (2, u64::from(short)),
        };
        match opcode {
            CONTINUATION | TEXT | BINARY => {}
            CLOSE | PING | PONG => {
                if !fin || len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(FrameError::BadControl { opcode, len });
                }
            }
            other => return Err(FrameError::UnknownOpcode(other)),
        }
        if len > MAX_MESSAGE_BYTES as u64 {
            return Err(FrameError::TooLong { len });
        }
        // Both at most MAX_MESSAGE_BYTES + 10 now, so no overflow.
        let total = header + len as usize;
        let Some(payload) = buf.get(header..total) else {
            return Ok(Parsed::Incomplete(total));
        };
        let message = match opcode {
            TEXT | BINARY if self.pending != Pending::None => {
                return Err(FrameError::Interleaved(opcode))
            }
            TEXT if fin => Message::Text(payload),
            BINARY if fin => Message::Binary,
            TEXT => {
                self.pending = Pending::Text;
                self.assembled.extend_from_slice(payload);
                return Ok(Parsed::Fragment(total));
            }
            BINARY => {
                self.pending = Pending::Binary(len);
                return Ok(Parsed::Fragment(total));
            }
            CONTINUATION => return self.continuation(payload, fin, total),
            PING => Message::Ping(payload),
            PONG => Message::Pong,
            // Only CLOSE is left after the opcode check above.
            _ => Message::Close(close_payload(payload)?),
        };
        Ok(Parsed::Message(message, total))
    }

    /// Adds a continuation frame to the message in progress.
    fn continuation<'a>(
        &'a mut self,
        payload: &[u8],
        fin: bool,
        total: usize,
    ) -> Result<Parsed<'a>, FrameError> {
        let so_far = match self.pending {
            Pending::None => return Err(FrameError::StrayContinuation),
            Pending::Text => self.assembled.len() as u64,
            Pending::Binary(n) => n,
        };
        let len = so_far + payload.len() as u64;
        if len > MAX_MESSAGE_BYTES as u64 {
            return Err(FrameError::TooLong { len });
        }
        match self.pending {
            Pending::Text => self.assembled.extend_from_slice(payload),
            _ => self.pending = Pending::Binary(len),
        }
        if !fin {
            return Ok(Parsed::Fragment(total));
        }
        let message = if self.pending == Pending::Text {
            self.handed_out = true;
            Message::Text(&self.assembled)
        } else {
            Message::Binary
        };
        self.pending = Pending::None;
        Ok(Parsed::Message(message, total))
    }
}

/// A close frame's status code and reason.
fn close_payload(payload: &[u8]) -> Result<Option<(u16, &[u8])>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::BadClose),
        [a, b, reason @ ..] => Ok(Some((u16::from_be_bytes([*a, *b]), reason))),
    }
}

/// A final client frame with `opcode` and `payload`, masked with `mask` as clients must.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// An unmasked server frame, as a server would send it (for tests here and in `raw`).
#[cfg(test)]
pub(crate) fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reader sees, one entry per message.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Text(Vec<u8>),
        Binary,
        Ping(Vec<u8>),
        Pong,
        Close(Option<(u16, Vec<u8>)>),
    }

    impl From<Message<'_>> for Seen {
        fn from(m: Message<'_>) -> Self {
            match m {
                Message::Text(t) => Seen::Text(t.to_vec()),
                Message::Binary => Seen::Binary,
                Message::Ping(p) => Seen::Ping(p.to_vec()),
                Message::Pong => Seen::Pong,
                Message::Close(c) => Seen::Close(c.map(|(code, r)| (code, r.to_vec()))),
            }
        }
    }

    /// Feeds `stream` to a parser in reads of at most `read` bytes into a buffer that starts
    /// with `capacity` bytes, managed the way the reader does it: consumed bytes are dropped
    /// from the front and the buffer grows only when one frame needs more than it has.
    fn read_in_pieces(
        stream: &[u8],
        read: usize,
        capacity: usize,
    ) -> Result<Vec<Seen>, FrameError> {
        let mut parser = Parser::default();
        let mut buf: Vec<u8> = Vec::with_capacity(capacity);
        let mut seen = Vec::new();
        let mut fed = 0;
        loop {
            let mut pos = 0;
            let need = loop {
                match parser.parse(&buf[pos..])? {
                    Parsed::Message(m, used) => {
                        seen.push(Seen::from(m));
                        pos += used;
                    }
                    Parsed::Fragment(used) => pos += used,
                    Parsed::Incomplete(need) => break need,
                }
            };
            buf.drain(..pos);
            if fed == stream.len() {
                assert!(buf.is_empty(), "{} bytes left over", buf.len());
                return Ok(seen);
            }
            if need > buf.capacity() {
                buf.reserve_exact(need - buf.len());
            }
            let room = buf.capacity() - buf.len();
            let n = read.min(room).min(stream.len() - fed);
            assert!(n > 0, "no room to read into");
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
        }
    }

    #[test]
    fn frames_split_across_reads_at_every_point() {
        let mut stream = server_frame(true, TEXT, b"{\"event\":\"a\"}");
        stream.extend(server_frame(true, TEXT, &[b'x'; 300]));
        stream.extend(server_frame(true, BINARY, b"\x00\x01"));
        stream.extend(server_frame(true, TEXT, b"last"));
        let expected = vec![
            Seen::Text(b"{\"event\":\"a\"}".to_vec()),
            Seen::Text(vec![b'x'; 300]),
            Seen::Binary,
            Seen::Text(b"last".to_vec()),
        ];
        for read in 1..=stream.len() {
            assert_eq!(
                read_in_pieces(&stream, read, 64),
                Ok(expected.clone()),
                "reads of {read}"
            );
        }
    }

    #[test]
    fn sixteen_and_sixty_four_bit_lengths() {
        let medium = vec![b'm'; 126];
        let large = vec![b'l'; 70_000];
        let mut stream = server_frame(true, TEXT, &medium);
        assert_eq!(stream[1], 126, "126 bytes take the 16-bit length");
        let sixty_four = server_frame(true, TEXT, &large);
        assert_eq!(sixty_four[1], 127, "70 000 bytes take the 64-bit length");
        stream.extend(sixty_four);
        assert_eq!(
            read_in_pieces(&stream, 4096, 4096),
            Ok(vec![Seen::Text(medium), Seen::Text(large)])
        );
        // The header alone is asked for before the length is known.
        let mut parser = Parser::default();
        assert_eq!(parser.parse(&stream[..3]), Ok(Parsed::Incomplete(4)));
        assert_eq!(parser.parse(&stream[..4]), Ok(Parsed::Incomplete(4 + 126)));
    }

    #[test]
    fn a_frame_larger_than_the_buffer_asks_for_its_full_length() {
        let big = vec![b'b'; 100_000];
        let frame = server_frame(true, TEXT, &big);
        let mut parser = Parser::default();
        assert_eq!(
            parser.parse(&frame[..1024]),
            Ok(Parsed::Incomplete(10 + 100_000))
        );
        // Read through a 1 KiB buffer, which has to grow for it, and then goes on as usual.
        let mut stream = frame.clone();
        stream.extend(server_frame(true, TEXT, b"after"));
        assert_eq!(
            read_in_pieces(&stream, 1024, 1024),
            Ok(vec![Seen::Text(big), Seen::Text(b"after".to_vec())])
        );
    }

    #[test]
    fn ping_between_messages_and_inside_a_fragmented_one() {
        let mut stream = server_frame(true, TEXT, b"one");
        stream.extend(server_frame(true, PING, b"p1"));
        stream.extend(server_frame(false, TEXT, b"frag"));
        stream.extend(server_frame(true, PING, b""));
        stream.extend(server_frame(true, PONG, b"x"));
        stream.extend(server_frame(false, CONTINUATION, b"men"));
        stream.extend(server_frame(true, CONTINUATION, b"ted"));
        stream.extend(server_frame(true, TEXT, b"two"));
        let expected = vec![
            Seen::Text(b"one".to_vec()),
            Seen::Ping(b"p1".to_vec()),
            Seen::Ping(Vec::new()),
            Seen::Pong,
            Seen::Text(b"fragmented".to_vec()),
            Seen::Text(b"two".to_vec()),
        ];
        for read in [1, 3, 7, stream.len()] {
            assert_eq!(
                read_in_pieces(&stream, read, 16),
                Ok(expected.clone()),
                "reads of {read}"
            );
        }
    }

    #[test]
    fn fragmented_binary_is_one_binary_message() {
        let mut stream = server_frame(false, BINARY, b"ab");
        stream.extend(server_frame(true, CONTINUATION, b"cd"));
        stream.extend(server_frame(true, TEXT, b"t"));
        assert_eq!(
            read_in_pieces(&stream, 64, 64),
            Ok(vec![Seen::Binary, Seen::Text(b"t".to_vec())])
        );
    }

    #[test]
    fn close_frames_with_and_without_a_status() {
        let mut payload = 1008u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"flood");
        let mut stream = server_frame(true, CLOSE, &payload);
        stream.extend(server_frame(true, CLOSE, b""));
        assert_eq!(
            read_in_pieces(&stream, 64, 64),
            Ok(vec![
                Seen::Close(Some((1008, b"flood".to_vec()))),
                Seen::Close(None)
            ])
        );
        let mut parser = Parser::default();
        assert_eq!(
            parser.parse(&server_frame(true, CLOSE, b"\x03")),
            Err(FrameError::BadClose)
        );
    }

    #[test]
    fn broken_frames_are_clear_errors() {
        let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
            (
                "an HTTP response where a frame belongs",
                b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
                FrameError::ReservedBits(b'H'),
            ),
            (
                "unknown opcode",
                vec![0x83, 0],
                FrameError::UnknownOpcode(3),
            ),
            (
                "masked",
                vec![0x81, 0x81, 1, 2, 3, 4, b'x'],
                FrameError::Masked,
            ),
            (
                "fragmented ping",
                server_frame(false, PING, b""),
                FrameError::BadControl {
                    opcode: PING,
                    len: 0,
                },
            ),
            (
                "long close",
                server_frame(true, CLOSE, &[0; 126]),
                FrameError::BadControl {
                    opcode: CLOSE,
                    len: 126,
                },
            ),
            (
                "stray continuation",
                server_frame(true, CONTINUATION, b"x"),
                FrameError::StrayContinuation,
            ),
            (
                "text inside a fragmented message",
                [
                    server_frame(false, TEXT, b"a"),
                    server_frame(true, TEXT, b"b"),
                ]
                .concat(),
                FrameError::Interleaved(TEXT),
            ),
            (
                "huge length",
                [vec![0x81, 127], (1u64 << 40).to_be_bytes().to_vec()].concat(),
                FrameError::TooLong { len: 1 << 40 },
            ),
            (
                "top bit of the 64-bit length",
                [vec![0x82, 127], u64::MAX.to_be_bytes().to_vec()].concat(),
                FrameError::TooLong { len: u64::MAX },
            ),
        ];
        for (what, stream, expected) in cases {
            assert_eq!(
                read_in_pieces(&stream, 64, 64),
                Err(expected.clone()),
                "{what}"
            );
        }
        // The messages say what arrived.
        let shown = FrameError::ReservedBits(b'H').to_string();
        assert!(
            shown.contains("0x48") && shown.contains("not a WebSocket frame"),
            "{shown}"
        );
    }

    #[test]
    fn fragments_past_the_limit_are_refused() {
        let mut parser = Parser::default();
        let chunk = vec![b'x'; MAX_MESSAGE_BYTES / 2 + 1];
        let first = server_frame(false, TEXT, &chunk);
        assert_eq!(parser.parse(&first), Ok(Parsed::Fragment(first.len())));
        let second = server_frame(true, CONTINUATION, &chunk);
        assert_eq!(
            parser.parse(&second),
            Err(FrameError::TooLong {
                len: 2 * chunk.len() as u64
            })
        );
    }

    #[test]
    fn client_frames_are_masked_and_decode_back() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        for len in [0, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = client_frame(TEXT, &payload, mask);
            assert_eq!(frame[0], 0x81, "FIN + text");
            assert_eq!(frame[1] & 0x80, 0x80, "mask bit");
            let (header, announced) = match frame[1] & 0x7F {
                126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(announced, len);
            assert_eq!(&frame[header..header + 4], &mask);
            let decoded: Vec<u8> = frame[header + 4..]
                .iter()
                .zip(mask.iter().cycle())
                .map(|(b, m)| b ^ m)
                .collect();
            assert_eq!(decoded, payload, "length {len}");
        }
    }
}
