//! Server side of HTTP/1: the request head, parsed with `httparse` (hyper's own parser) under
//! the limits hyper applies: a size limit (431 past it) and at most [`MAX_HEADERS`] headers from
//! a client; a node allows a little more ([`HeadLimits::NODE`]) for what a gateway adds to the
//! heads it forwards.
//!
//! Pure: [`parse_request`] is a function of the bytes read so far; the sibling `http1_io` reads.

use http::header::{HeaderName, HeaderValue};
use http::{Request, Version};

/// Most request headers a client may send, to a gateway or a node (hyper's limit).
pub const MAX_HEADERS: usize = 100;

/// Largest request head a client may send, to a gateway or a node (a gateway's
/// `--max-header-bytes` is at most this).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Headers a node accepts beyond [`MAX_HEADERS`]: room for what a gateway adds to the heads it
/// forwards (`X-Forwarded-For`, `Via`), so a head a gateway accepts is one its node accepts.
pub const FORWARDING_HEADERS: usize = 4;

/// Bytes a node accepts beyond [`MAX_HEAD_BYTES`], for the same reason (a gateway adds under
/// 100 bytes).
pub const FORWARDING_BYTES: usize = 1024;

/// The limits one request head is read under (431 past either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes, request line to blank line.
    pub bytes: usize,
    /// Most header lines.
    pub headers: usize,
}

impl HeadLimits {
    /// What a node accepts: a client's limits plus the room a gateway needs to forward them.
    pub const NODE: HeadLimits = HeadLimits {
        bytes: MAX_HEAD_BYTES + FORWARDING_BYTES,
        headers: MAX_HEADERS + FORWARDING_HEADERS,
    };

    /// A client's head at a gateway: at most `bytes` (itself at most [`MAX_HEAD_BYTES`]) and
    /// [`MAX_HEADERS`] headers.
    pub fn client(bytes: usize) -> Self {
        HeadLimits {
            bytes: bytes.min(MAX_HEAD_BYTES),
            headers: MAX_HEADERS,
        }
    }
}

/// Header slots on the stack: the most any [`HeadLimits`] allows.
const SLOTS: usize = MAX_HEADERS + FORWARDING_HEADERS;

/// Why no request head came.
#[derive(Debug, PartialEq)]
pub enum HeadError {
    /// The client closed (or the connection failed) first.
    Closed,
    /// Past the header size limit.
    TooLarge,
    /// Not an HTTP/1.x request head.
    Invalid(&'static str),
}

/// The request head at the start of `buf`, with its length; `None` while it is incomplete.
/// [`HeadError::TooLarge`] once the head is past `limits`, whether it has ended or not (so a
/// caller that reads until this says something never holds more than `limits.bytes`); it
/// allocates only for the head it returns, never for the bytes that follow it.
pub fn parse_request(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(Request<()>, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; SLOTS];
    let mut parsed = httparse::Request::new(&mut slots[..limits.headers.min(SLOTS)]);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        // Not ended within the limit: it would end past it.
        Ok(httparse::Status::Partial) if buf.len() >= limits.bytes => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid("malformed request head")),
    };
    if len > limits.bytes {
        return Err(HeadError::TooLarge);
    }
    let mut req = Request::new(());
    *req.method_mut() = parsed
        .method
        .and_then(|m| m.parse().ok())
        .ok_or(HeadError::Invalid("malformed method"))?;
    *req.uri_mut() = parsed
        .path
        .and_then(|p| p.parse().ok())
        .ok_or(HeadError::Invalid("malformed request target"))?;
    *req.version_mut() = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let headers = req.headers_mut();
    headers.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Invalid("malformed header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HeadError::Invalid("malformed header value"))?;
        headers.append(name, value);
    }
    Ok(Some((req, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    use crate::http1::client::push_request_head;

    /// A header value without leading or trailing whitespace, which `httparse` keeps as is.
    fn value() -> impl Strategy<Value = String> {
        "([!-~\\x80-\\u{ff}]{1,12}([ \t][!-~]{1,12}){0,3})?"
    }

    /// A request head written by the client side's writer, with what went into it.
    fn written_request() -> impl Strategy<Value = (Vec<u8>, String, String, Vec<(String, String)>)>
    {
        (
            prop_oneof![
                Just("GET".to_owned()),
                Just("POST".to_owned()),
                "[A-Z]{1,10}",
            ],
            "/[a-zA-Z0-9._~%!$&'()*+,;=:@/-]{0,40}(\\?[a-zA-Z0-9._~%!$&'()*+,;=:@/?-]{0,40})?",
            proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9-]{0,15}", value()), 0..MAX_HEADERS),
        )
            .prop_map(|(method, target, headers)| {
                let mut out = Vec::new();
                let (path, query) = match target.split_once('?') {
                    Some((path, query)) => (path, Some(query)),
                    None => (target.as_str(), None),
                };
                push_request_head(
                    &mut out,
                    &method,
                    path,
                    query,
                    headers.iter().map(|(n, v)| (n, v)),
                )
                .expect("a method token, an origin-form target, token names, plain values");
                (out, method, target, headers)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_written_request_head_reads_back_as_written(
            (bytes, method, target, headers) in written_request(),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let len = bytes.len();
            let mut bytes = bytes;
            bytes.extend_from_slice(&after);
            let (req, read) = parse_request(&bytes, HeadLimits::NODE).unwrap().unwrap();
            prop_assert_eq!(read, len);
            prop_assert_eq!(req.method().as_str(), method.as_str());
            prop_assert_eq!(req.uri().to_string(), target);
            prop_assert_eq!(req.version(), Version::HTTP_11);
            // Names come back lowercase and grouped by name, in the order each came first.
            let mut expected = http::HeaderMap::new();
            for (n, v) in &headers {
                expected.append(
                    HeaderName::from_bytes(n.as_bytes()).expect("a token"),
                    HeaderValue::from_bytes(v.as_bytes()).expect("a field value"),
                );
            }
            prop_assert_eq!(req.headers(), &expected);
            // Every proper prefix is an incomplete head, never an error.
            for cut in 0..len {
                prop_assert!(matches!(parse_request(&bytes[..cut], HeadLimits::NODE), Ok(None)), "cut at {}", cut);
            }
        }

        #[test]
        fn an_oversized_request_head_is_too_large_complete_or_growing(
            (bytes, ..) in written_request(),
            limit in 64usize..=MAX_HEAD_BYTES,
            over in 1usize..4096,
        ) {
            let limits = HeadLimits::client(limit);
            // The head with a filler header after its request line, `over` bytes past the limit.
            let line = bytes.iter().position(|&b| b == b'\n').expect("a request line") + 1;
            let mut long = bytes[..line].to_vec();
            long.extend_from_slice(b"x-filler: ");
            let filler = (limit + over).saturating_sub(bytes.len() + "x-filler: \r\n".len()).max(1);
            long.resize(long.len() + filler, b'a');
            long.extend_from_slice(b"\r\n");
            long.extend_from_slice(&bytes[line..]);
            prop_assert!(long.len() > limit);
            prop_assert_eq!(parse_request(&long, limits).err(), Some(HeadError::TooLarge));
            // Still growing: too large once it holds the limit without an end.
            prop_assert_eq!(parse_request(&long[..limit], limits).err(), Some(HeadError::TooLarge));
        }

        #[test]
        fn random_bytes_never_panic(
            start in prop_oneof![Just(&b"GET /ws HTTP/1.1\r\n"[..]), Just(&b""[..])],
            bytes in proptest::collection::vec(any::<u8>(), 0..2 * MAX_HEAD_BYTES),
        ) {
            let mut buf = start.to_vec();
            buf.extend_from_slice(&bytes);
            for limits in [HeadLimits::NODE, HeadLimits::client(100)] {
                if let Ok(Some((req, len))) = parse_request(&buf, limits) {
                    prop_assert!(len <= buf.len() && len <= limits.bytes);
                    prop_assert!(req.headers().len() <= limits.headers);
                }
            }
        }
    }

    #[test]
    fn a_head_parses_into_a_request_and_keeps_its_length() {
        let raw = b"GET /ws?client_id=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        let (req, len) = parse_request(raw, HeadLimits::NODE).unwrap().unwrap();
        assert_eq!(req.uri().query(), Some("client_id=a"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(&raw[len..], b"\x81\x00");
        assert!(parse_request(&raw[..20], HeadLimits::NODE)
            .unwrap()
            .is_none());
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        assert_eq!(
            parse_request(b"GET /ws HTTP/9\r\n\r\n", HeadLimits::NODE).unwrap_err(),
            HeadError::Invalid("malformed request head")
        );
        let long = format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(
            parse_request(long.as_bytes(), HeadLimits::client(64)).unwrap_err(),
            HeadError::TooLarge
        );
    }
}
