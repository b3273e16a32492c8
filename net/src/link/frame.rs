//! The link's wire format apart from its I/O: a [`Frame`], [`encode`], and a [`decode`] that
//! reads one frame from the front of a buffer.
//!
//! A frame is a 9-byte header, `kind: u8`, `stream: u32` and `len: u32` (big-endian), then `len`
//! payload bytes for `OPEN` and `DATA` (for `CREDIT`, `len` is the grant; for `CLOSE`, a
//! [`CloseReason`]; for `GOAWAY`, a [`GoAwayReason`]; the other kinds carry no payload and ignore
//! it). The whole protocol is specified in the `link` module's documentation. [`decode`] is a pure function
//! over the bytes received so far: it never panics and never allocates — a frame's payload is a
//! slice of the input, and a header announcing more than [`MAX_PAYLOAD`] is an error before a
//! byte of it is awaited, so the reader's buffer never has to grow past one frame of that size.

use thiserror::Error;

/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 9;

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// Opens a stream; the payload is its first bytes.
pub const OPEN: u8 = 1;
/// Bytes on a stream.
pub const DATA: u8 = 2;
/// The sender writes no more on the stream.
pub const FIN: u8 = 3;
/// The sender dropped the stream; `len` is a [`CloseReason`].
pub const CLOSE: u8 = 4;
/// Grants `len` more bytes on the stream.
pub const CREDIT: u8 = 5;
/// Asks for a [`PONG`].
pub const PING: u8 = 6;
/// Answers a [`PING`].
pub const PONG: u8 = 7;
/// The sender takes no new streams on this link; `stream` is the last stream it took and `len`
/// a [`GoAwayReason`]. Only the accepting end sends it, and only on a `ringcast-link/1` link.
pub const GOAWAY: u8 = 8;

/// Why a stream was closed, carried in a `CLOSE` frame's `len` (the receiving end reads the end
/// of the stream either way; a refused one has had its answer, such as a 503, first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its owner let it go (or an unknown reason from a newer peer).
    Dropped,
    /// The accepting end refused to open it: it is at its connection limit.
    Full,
}

impl CloseReason {
    /// The value in a `CLOSE` frame's `len`.
    pub fn code(self) -> u32 {
        match self {
            CloseReason::Dropped => 0,
            CloseReason::Full => 1,
        }
    }

    /// The reason a `CLOSE` frame's `len` names.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => CloseReason::Full,
            _ => CloseReason::Dropped,
        }
    }
}

/// Why the accepting end sent a [`GOAWAY`], carried in its `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAwayReason {
    /// The node is draining: a new link to it would be refused too, so new clients go to
    /// another node.
    Draining,
    /// Any other reason (or one from a newer peer): new streams go on a new link to the same
    /// node.
    Other,
}

impl GoAwayReason {
    /// The value in a `GOAWAY` frame's `len`.
    pub fn code(self) -> u32 {
        match self {
            GoAwayReason::Draining => 1,
            GoAwayReason::Other => 0,
        }
    }

    /// The reason a `GOAWAY` frame's `len` names.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => GoAwayReason::Draining,
            _ => GoAwayReason::Other,
        }
    }
}

/// One frame, its payload borrowed from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// One of [`OPEN`], [`DATA`], [`FIN`], [`CLOSE`], [`CREDIT`], [`PING`], [`PONG`],
    /// [`GOAWAY`].
    pub kind: u8,
    /// The stream it is about (0 for [`PING`] and [`PONG`]; the last stream taken for
    /// [`GOAWAY`]).
    pub stream: u32,
    /// The header's `len`: the payload length, a grant, a close reason or a go-away reason.
    pub len: u32,
    /// The payload (empty for the kinds without one).
    pub payload: &'a [u8],
}

/// A frame that cannot be read: the link is broken and must be closed with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The kind byte names no frame.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The header announces a payload larger than [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u32),
}

/// The frame at the front of `buf` and the bytes it takes, `None` while it is incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let kind = header[0];
    let stream = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let payload_len = match kind {
        OPEN | DATA => {
            if len as usize > MAX_PAYLOAD {
                return Err(FrameError::TooLarge(len));
            }
            len as usize
        }
        FIN | CLOSE | CREDIT | PING | PONG | GOAWAY => 0,
        other => return Err(FrameError::UnknownKind(other)),
    };
    let end = HEADER_LEN + payload_len;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    Ok(Some((
        Frame {
            kind,
            stream,
            len,
            payload,
        },
        end,
    )))
}

/// Appends a frame to `out`: its header, then `payload` (which must be `len` bytes for `OPEN`
/// and `DATA`, and empty otherwise).
pub fn encode(out: &mut Vec<u8>, kind: u8, stream: u32, len: u32, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame, owned: kind, stream, len, payload.
    type Owned = (u8, u32, u32, Vec<u8>);

    /// Decodes every whole frame at the front of `buf`; the frames and the bytes used.
    fn decode_all(buf: &[u8]) -> Result<(Vec<Owned>, usize), FrameError> {
        let mut at = 0;
        let mut frames = Vec::new();
        while let Some((f, n)) = decode(&buf[at..])? {
            assert!((HEADER_LEN..=HEADER_LEN + MAX_PAYLOAD).contains(&n));
            assert!(at + n <= buf.len());
            frames.push((f.kind, f.stream, f.len, f.payload.to_vec()));
            at += n;
        }
        Ok((frames, at))
    }

    #[test]
    fn a_frame_round_trips_and_a_short_buffer_waits() {
        let mut out = Vec::new();
        encode(&mut out, DATA, 7, 3, b"abc");
        encode(&mut out, CREDIT, 7, 4096, &[]);
        let (f, n) = decode(&out).unwrap().unwrap();
        assert_eq!((f.kind, f.stream, f.payload, n), (DATA, 7, &b"abc"[..], 12));
        let (f, m) = decode(&out[n..]).unwrap().unwrap();
        assert_eq!((f.kind, f.len, m), (CREDIT, 4096, HEADER_LEN));
        for cut in 0..n {
            assert_eq!(decode(&out[..cut]), Ok(None), "cut at {cut}");
        }
    }

    /// Every kind, with the fields it carries.
    const EVERY_KIND: [(u8, u32, u32, &[u8]); 8] = [
        (OPEN, 1, 18, b"GET /ws HTTP/1.1\r\n"),
        (DATA, u32::MAX, 3, b"abc"),
        (FIN, 9, 0, b""),
        (CLOSE, 9, 1, b""),
        (CREDIT, 9, WINDOW_GRANT, b""),
        (PING, 0, 0, b""),
        (PONG, 0, 0, b""),
        (GOAWAY, 41, 1, b""),
    ];

    /// A grant as a reader makes them.
    const WINDOW_GRANT: u32 = 16 * 1024;

    #[test]
    fn every_kind_round_trips_and_waits_for_its_last_byte() {
        for (kind, stream, len, payload) in EVERY_KIND {
            let mut out = Vec::new();
            encode(&mut out, kind, stream, len, payload);
            assert_eq!(out.len(), HEADER_LEN + payload.len(), "kind {kind}");
            let want = Frame {
                kind,
                stream,
                len,
                payload,
            };
            assert_eq!(decode(&out), Ok(Some((want, out.len()))), "kind {kind}");
            for cut in 0..out.len() {
                assert_eq!(decode(&out[..cut]), Ok(None), "kind {kind} cut at {cut}");
            }
            // Whatever follows is the next frame's, not this one's.
            out.extend_from_slice(&[PING, 0, 0]);
            assert_eq!(decode(&out), Ok(Some((want, HEADER_LEN + payload.len()))));
        }
        assert_eq!(
            GoAwayReason::from_code(GoAwayReason::Draining.code()),
            GoAwayReason::Draining
        );
        assert_eq!(GoAwayReason::from_code(77), GoAwayReason::Other);
        assert_eq!(CloseReason::from_code(77), CloseReason::Dropped);
    }

    #[test]
    fn an_oversized_or_unknown_frame_is_an_error_before_its_payload_arrives() {
        let mut out = Vec::new();
        encode(&mut out, OPEN, 1, u32::MAX, &[]);
        assert_eq!(decode(&out), Err(FrameError::TooLarge(u32::MAX)));
        let mut out = Vec::new();
        encode(&mut out, 99, 1, 0, &[]);
        assert_eq!(decode(&out), Err(FrameError::UnknownKind(99)));
        for kind in [0, GOAWAY + 1, u8::MAX] {
            assert_eq!(
                decode(&[kind, 0, 0, 0, 1, 0, 0, 0, 0]),
                Err(FrameError::UnknownKind(kind))
            );
        }
        // The largest payload is fine; one byte more is not.
        let mut out = Vec::new();
        encode(&mut out, DATA, 1, MAX_PAYLOAD as u32, &[7; MAX_PAYLOAD]);
        assert_eq!(decode(&out).unwrap().unwrap().1, HEADER_LEN + MAX_PAYLOAD);
        let over = MAX_PAYLOAD as u32 + 1;
        let mut out = Vec::new();
        encode(&mut out, OPEN, 1, over, &[]);
        assert_eq!(decode(&out), Err(FrameError::TooLarge(over)));
        // A CLOSE's len is its reason, not a payload.
        let mut out = Vec::new();
        encode(&mut out, CLOSE, 1, CloseReason::Full.code(), &[]);
        let (f, n) = decode(&out).unwrap().unwrap();
        assert_eq!((CloseReason::from_code(f.len), n), (CloseReason::Full, 9));
    }

    fn arb_frame() -> impl Strategy<Value = Owned> {
        (
            1u8..=GOAWAY,
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(kind, stream, len, payload)| match kind {
                OPEN | DATA => (kind, stream, payload.len() as u32, payload),
                _ => (kind, stream, len, Vec::new()),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes at all: no panic, and whatever is decoded lies within the input and the
        /// payload bound.
        #[test]
        fn arbitrary_bytes_never_panic_or_overreach(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_all(&bytes);
        }

        /// Encoded frames come back the same, whichever way the bytes are cut on the way.
        #[test]
        fn frames_survive_any_split(
            frames in prop::collection::vec(arb_frame(), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for (kind, stream, len, payload) in &frames {
                encode(&mut wire, *kind, *stream, *len, payload);
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            // A reader that receives the wire in these pieces.
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                buf.extend_from_slice(&wire[from..cut]);
                from = cut;
                let (mut decoded, used) = decode_all(&buf).unwrap();
                got.append(&mut decoded);
                buf.drain(..used);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, frames);
        }

        /// A header that announces a payload past the limit is refused at once, whatever follows.
        #[test]
        fn an_announced_oversize_is_refused_without_waiting(
            kind in prop::sample::select(vec![OPEN, DATA]),
            len in (MAX_PAYLOAD as u32 + 1)..,
            tail in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut wire = Vec::new();
            encode(&mut wire, kind, 1, len, &tail);
            prop_assert_eq!(decode(&wire), Err(FrameError::TooLarge(len)));
        }
    }
}
