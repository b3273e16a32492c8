//! Reading an HTTP/1.1 request head and writing an answer without hyper, for connections that
//! open with `GET /ws` and so make exactly one request (node: `http.rs`; gateway: `direct.rs`;
//! those connections are told apart by `crate::detect`).
//!
//! The head is parsed with `httparse`, hyper's own parser, under the limits hyper applies: the
//! caller's timeout, a size limit (431 past it) and at most [`MAX_HEADERS`] headers from a
//! client; a node allows a little more ([`HeadLimits::NODE`]) for what a gateway adds to the
//! heads it forwards. Every answer written here ends the connection.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::response::Body;

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

/// Reads the request head; returns it and the bytes read past it.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: HeadLimits,
) -> Result<(Request<()>, Bytes), HeadError> {
    read_head_after(stream, Vec::new(), limits).await
}

/// Reads the request head whose first bytes, `buf`, were already read (by `crate::detect`);
/// returns it and the bytes read past it. The buffer never holds more than `limits.bytes`: a
/// head that has not ended by then is [`HeadError::TooLarge`].
pub async fn read_head_after<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
    limits: HeadLimits,
) -> Result<(Request<()>, Bytes), HeadError> {
    let limit = limits.bytes.max(1);
    loop {
        if !buf.is_empty() {
            if let Some((req, len)) = parse_head(&buf, limits)? {
                let rest = Bytes::from(buf).slice(len..);
                return Ok((req, rest));
            }
            if buf.len() >= limit {
                return Err(HeadError::TooLarge);
            }
        }
        if buf.len() == buf.capacity() {
            // Doubling from 1 KiB, never past `limit` (so `want > len` here).
            let want = (buf.capacity() * 2).max(1024).min(limit);
            buf.reserve_exact(want - buf.len());
        }
        let room = buf.capacity().min(limit) - buf.len();
        match stream.read_buf(&mut (&mut buf).limit(room)).await {
            Ok(n) if n > 0 => {}
            _ => return Err(HeadError::Closed),
        }
    }
}

/// The request head at the start of `buf`, with its length; `None` while it is incomplete.
fn parse_head(buf: &[u8], limits: HeadLimits) -> Result<Option<(Request<()>, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; SLOTS];
    let mut parsed = httparse::Request::new(&mut slots[..limits.headers.min(SLOTS)]);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
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

/// Now, as an HTTP `Date` value (hyper added one to every answer; RFC 9110 asks for it).
pub fn date() -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// Appends one `name: value` line.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends an answer head: the status line, `headers` and the blank line that ends it.
pub fn push_response_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `resp` (a refusal) and ends the connection, within `timeout`.
pub async fn answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    resp: Response<Body>,
    timeout: Duration,
) {
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut headers = parts.headers;
    headers.insert(header::DATE, date());
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut out = Vec::with_capacity(256 + body.len());
    push_response_head(&mut out, parts.status, &headers);
    out.extend_from_slice(&body);
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_parses_into_a_request_and_keeps_its_length() {
        let raw = b"GET /ws?client_id=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        let (req, len) = parse_head(raw, HeadLimits::NODE).unwrap().unwrap();
        assert_eq!(req.uri().query(), Some("client_id=a"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(&raw[len..], b"\x81\x00");
        assert!(parse_head(&raw[..20], HeadLimits::NODE).unwrap().is_none());
    }

    #[test]
    fn an_answer_head_is_status_line_headers_and_blank_line() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut out = Vec::new();
        push_response_head(&mut out, StatusCode::SWITCHING_PROTOCOLS, &headers);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        assert_eq!(
            parse_head(b"GET /ws HTTP/9\r\n\r\n", HeadLimits::NODE).unwrap_err(),
            HeadError::Invalid("malformed request head")
        );
        let long = format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(
            parse_head(long.as_bytes(), HeadLimits::client(64)).unwrap_err(),
            HeadError::TooLarge
        );
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;
        use ringcast_testkit::ChunkedReader;

        /// Bytes that get past the request line now and then: a plausible head start, then
        /// anything (header-ish lines, CR/LF, NULs, high bytes), or nothing but noise.
        fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
            let line = prop_oneof![
                Just(b"Host: x\r\n".to_vec()),
                Just(b"Upgrade: websocket\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                "[a-zA-Z-]{1,12}: [ -~]{0,40}\r\n".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..64),
            ];
            let start = prop_oneof![
                Just(b"GET /ws?client_id=a HTTP/1.1\r\n".to_vec()),
                Just(b"GET /ws HTTP/1.0\r\n".to_vec()),
                Just(Vec::new()),
            ];
            (
                start,
                proptest::collection::vec(line, 0..400),
                any::<bool>(),
            )
                .prop_map(|(mut head, lines, end)| {
                    for l in lines {
                        head.extend_from_slice(&l);
                    }
                    if end {
                        head.extend_from_slice(b"\r\n\r\nearly");
                    }
                    head
                })
        }

        fn run<F: std::future::Future>(f: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime")
                .block_on(f)
        }

        /// The outcome without the bytes read past the head, which depend on the split.
        fn outcome(r: &Result<(Request<()>, Bytes), HeadError>) -> String {
            match r {
                Ok((req, _)) => format!("{} {} {:?}", req.method(), req.uri(), req.headers()),
                Err(e) => format!("{e:?}"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_bytes_in_any_split_stay_within_the_limits(
                bytes in head_bytes(),
                pieces in proptest::collection::vec(0usize..3000, 0..12),
                first in 0usize..32,
                limit in prop_oneof![Just(HeadLimits::NODE), (1usize..20_000).prop_map(HeadLimits::client)],
            ) {
                let first = first.min(bytes.len());
                let prefix = bytes[..first].to_vec();
                let mut split = ChunkedReader::new(bytes[first..].to_vec(), pieces);
                let got = run(read_head_after(&mut split, prefix, limit));
                // Never more taken in than the limit (the buffer holds everything taken).
                prop_assert!(first + split.taken <= limit.bytes.max(first));
                if let Ok((req, rest)) = &got {
                    prop_assert!(req.headers().len() <= limit.headers);
                    prop_assert!(first + split.taken - rest.len() <= limit.bytes);
                }
                // However it was split, the same bytes give the same answer.
                let mut whole = ChunkedReader::new(bytes.clone(), Vec::new());
                let once = run(read_head_after(&mut whole, Vec::new(), limit));
                prop_assert_eq!(outcome(&got), outcome(&once));
            }
        }
    }
}
