//! Reading an HTTP/1.1 request head and writing an answer without hyper, for connections that
//! open with `GET /ws` and so make exactly one request (node: `http.rs`; gateway: `direct.rs`),
//! and telling those connections apart by their first bytes ([`peek_opening`]).
//!
//! The head is parsed with `httparse`, hyper's own parser, under the limits hyper applies: the
//! caller's timeout, a size limit (431 past it) and at most [`MAX_HEADERS`] headers. Every
//! answer written here ends the connection.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::Body;

/// Most request headers parsed (hyper's limit).
pub const MAX_HEADERS: usize = 100;

/// What a new connection opens with, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The HTTP/2 prior-knowledge preface, which an HTTP/1.1 server cannot serve.
    Http2Preface,
    /// `GET /ws`: most likely a WebSocket upgrade.
    WsUpgrade,
    /// `GET /link`: a gateway asking for a link (see `crate::link`).
    Link,
    /// Anything else.
    Other,
}

/// Peeks at the first bytes of `stream` (hyper still reads every one of them) and says what
/// the connection opens with; `None` if it closed or failed first. Waits while only a prefix
/// of the HTTP/2 preface has arrived, so callers bound it with a timeout.
pub async fn peek_opening(stream: &TcpStream) -> Option<Opening> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let seen = &buf[..n];
        if !PREFACE.starts_with(&seen[..n.min(PREFACE.len())]) {
            return Some(opening_of(seen));
        }
        if n >= PREFACE.len() {
            return Some(Opening::Http2Preface);
        }
        // A prefix of the preface arrived; wait for more (bounded by the caller's timeout).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What bytes that are not the HTTP/2 preface open: `GET /ws` followed by `?` or a space is an
/// upgrade attempt; fewer bytes than that, or anything else, is not.
fn opening_of(seen: &[u8]) -> Opening {
    match seen.get(..8) {
        Some(b"GET /ws?") | Some(b"GET /ws ") => Opening::WsUpgrade,
        _ if seen.starts_with(b"GET /link ") => Opening::Link,
        _ => Opening::Other,
    }
}

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
    limit: usize,
) -> Result<(Request<()>, Bytes), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return Err(HeadError::Closed),
        }
        if let Some((req, len)) = parse_head(&buf, limit)? {
            let rest = buf.split_off(len);
            return Ok((req, rest.freeze()));
        }
        if buf.len() >= limit {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The request head at the start of `buf`, with its length; `None` while it is incomplete.
fn parse_head(buf: &[u8], limit: usize) -> Result<Option<(Request<()>, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid("malformed request head")),
    };
    if len > limit {
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
    use tokio::net::TcpListener;

    #[test]
    fn only_get_ws_is_an_upgrade_attempt() {
        assert_eq!(opening_of(b"GET /ws?client_id=a"), Opening::WsUpgrade);
        assert_eq!(opening_of(b"GET /ws HTTP/1.1\r\n"), Opening::WsUpgrade);
        assert_eq!(opening_of(b"GET /wsx HTTP/1.1"), Opening::Other);
        assert_eq!(opening_of(b"GET /stats HTTP"), Opening::Other);
        assert_eq!(opening_of(b"POST /ws HTTP"), Opening::Other);
        assert_eq!(opening_of(b"GET /w"), Opening::Other);
        assert_eq!(opening_of(b"GET /link HTTP/1.1"), Opening::Link);
        assert_eq!(opening_of(b"GET /linkage HTTP"), Opening::Other);
    }

    #[tokio::test]
    async fn peek_leaves_the_bytes_and_spots_the_preface() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, want) in [
            (&b"GET /ws?client_id=a HTTP/1.1\r\n"[..], Opening::WsUpgrade),
            (b"GET /metrics HTTP/1.1\r\n", Opening::Other),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Opening::Http2Preface),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(sent).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            assert_eq!(peek_opening(&server).await, Some(want));
            let mut got = vec![0u8; sent.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent, "peeking consumed nothing");
        }
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        drop(client);
        assert_eq!(peek_opening(&server).await, None);
    }

    #[test]
    fn a_head_parses_into_a_request_and_keeps_its_length() {
        let raw = b"GET /ws?client_id=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        let (req, len) = parse_head(raw, 8192).unwrap().unwrap();
        assert_eq!(req.uri().query(), Some("client_id=a"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(&raw[len..], b"\x81\x00");
        assert!(parse_head(&raw[..20], 8192).unwrap().is_none());
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
            parse_head(b"GET /ws HTTP/9\r\n\r\n", 8192).unwrap_err(),
            HeadError::Invalid("malformed request head")
        );
        let long = format!("GET /ws HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(
            parse_head(long.as_bytes(), 64).unwrap_err(),
            HeadError::TooLarge
        );
    }
}
