//! The client side of HTTP/1 on `httparse`: the request heads a gateway, its health checks and
//! the load generator write ([`push_request_head`]), and the response heads they read back
//! ([`parse_response_head`]).
//!
//! Both are pure functions of bytes, with no I/O (the sibling `http1_io` drives them on a
//! socket). The reader is called again with the longer buffer while it returns `Ok(None)`; it
//! never reads past the head, never allocates (the headers stay in the buffer and in a fixed
//! array of [`MAX_HEADERS`] slots), and refuses a head longer than [`MAX_HEAD_BYTES`], whether
//! complete or still growing. The writer refuses what cannot stand in a request line or a
//! header line, so what it writes is what a server on this crate reads back.

use std::fmt;

/// The longest response head accepted; a node's or a WebSocket server's is a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Response headers parsed at most; a WebSocket server sends a handful.
pub const MAX_HEADERS: usize = 32;

/// A parsed response head; names and values borrow the buffer it was read from.
#[derive(Clone, Copy)]
pub struct Head<'a> {
    /// The status code (`101`, `200`, …).
    pub status: u16,
    /// The minor HTTP version: `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    headers: [(&'a str, &'a [u8]); MAX_HEADERS],
    count: usize,
}

impl<'a> Head<'a> {
    /// The headers in the order they came, as name and raw value (leading and trailing
    /// whitespace removed).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers[..self.count].iter().copied()
    }

    /// The value of the first header called `name` (in any case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// The values of every header called `name` (in any case), in order.
    pub fn values<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'a [u8]> + 'h {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for Head<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers()
            .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned()))
            .collect();
        f.debug_struct("Head")
            .field("status", &self.status)
            .field("version", &self.version)
            .field("headers", &headers)
            .finish()
    }
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.version == other.version
            && self.headers().eq(other.headers())
    }
}

impl Eq for Head<'_> {}

/// Why the bytes at the start of a buffer are not an acceptable response head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an HTTP/1 response head (or one with more than [`MAX_HEADERS`] headers).
    #[error("unreadable HTTP response ({reason}), starting {start}")]
    Malformed {
        /// What `httparse` found wrong.
        reason: httparse::Error,
        /// The first bytes of the buffer, quoted, for the message.
        start: String,
    },
    /// A complete head longer than [`MAX_HEAD_BYTES`]; carries its length.
    #[error("response head of {0} bytes, more than {MAX_HEAD_BYTES}")]
    TooLong(usize),
    /// [`MAX_HEAD_BYTES`] or more bytes and the head has not ended yet.
    #[error("no end of the response head within {MAX_HEAD_BYTES} bytes")]
    Unterminated,
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete (read
/// more and call again), else the head and its length in bytes (what follows it is the body,
/// or the WebSocket byte stream).
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(Head<'_>, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::Unterminated)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(reason) => {
            return Err(HeadError::Malformed {
                reason,
                start: format!("{:?}", String::from_utf8_lossy(&buf[..buf.len().min(60)])),
            })
        }
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLong(len));
    }
    let mut head = Head {
        // A complete response always has its code and version; 0 would only ever read as
        // "not 101" and "not HTTP/1.1".
        status: response.code.unwrap_or_default(),
        version: response.version.unwrap_or_default(),
        headers: [("", &[]); MAX_HEADERS],
        count: response.headers.len(),
    };
    for (slot, h) in head.headers.iter_mut().zip(response.headers.iter()) {
        *slot = (h.name, h.value);
    }
    Ok(Some((head, len)))
}

/// Why a request head cannot be written: a part that cannot stand where it would go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestHeadError {
    /// The method is empty or not a token.
    #[error("the method is not an HTTP token")]
    Method,
    /// The target is not an origin-form path and query (`/path?query`, no fragment, no space
    /// or control characters, nothing a URI parser refuses).
    #[error("the request target cannot stand in a request line")]
    Target,
    /// The header at this index has an empty or non-token name.
    #[error("header {0} has a name that is not an HTTP token")]
    HeaderName(usize),
    /// The header at this index has a value with a control character, or leading or trailing
    /// whitespace (which a reader would drop).
    #[error("header {0} has a value that cannot stand in a header line")]
    HeaderValue(usize),
}

/// Appends a whole request head to `out`: `METHOD path?query HTTP/1.1` (no `?` without a
/// query), one line per header in the order given, and the blank line that ends the head. On an
/// error nothing is appended. The path and the query come apart so that a caller that adds one
/// to the other (the gateway's `/ws` and a client's query) need not allocate to join them.
pub fn push_request_head<N, V>(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: impl IntoIterator<Item = (N, V)>,
) -> Result<(), RequestHeadError>
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let start = out.len();
    let written = write_request_head(out, method, path, query, headers);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

fn write_request_head<N, V>(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: impl IntoIterator<Item = (N, V)>,
) -> Result<(), RequestHeadError>
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    if !is_token(method.as_bytes()) {
        return Err(RequestHeadError::Method);
    }
    if !is_origin_form(path.as_bytes(), query.map(str::as_bytes)) {
        return Err(RequestHeadError::Target);
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (i, (name, value)) in headers.into_iter().enumerate() {
        let (name, value) = (name.as_ref(), value.as_ref());
        if !is_token(name) {
            return Err(RequestHeadError::HeaderName(i));
        }
        if !is_field_value(value) {
            return Err(RequestHeadError::HeaderValue(i));
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// A token (RFC 9110 §5.6.2): one or more of letters, digits and ``!#$%&'*+-.^_`|~``.
fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A field value (RFC 9110 §5.5): visible characters, spaces and tabs between them, and bytes
/// past ASCII; no control characters, nothing a reader would trim.
fn is_field_value(bytes: &[u8]) -> bool {
    let edge = |b: Option<&u8>| !matches!(b, Some(b' ' | b'\t'));
    edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// An origin-form request target (RFC 9112 §3.2.1): a path that starts with `/`, of path
/// characters, and a query of query characters, with the bytes the `http` crate's URI parser
/// takes in each (so a server on this crate reads back exactly this target). A fragment is
/// never sent.
fn is_origin_form(path: &[u8], query: Option<&[u8]>) -> bool {
    let query = query.unwrap_or_default();
    // `http` refuses longer targets.
    path.len() + 1 + query.len() < usize::from(u16::MAX)
        && path.first() == Some(&b'/')
        && path.iter().all(|&b| is_path_byte(b))
        && query.iter().all(|&b| is_query_byte(b))
}

/// What may stand in a path unescaped: a URL path's characters (WHATWG URL, path state), the
/// `"`, `{` and `}` that clients send as they are, and bytes past ASCII (of UTF-8 text).
fn is_path_byte(b: u8) -> bool {
    matches!(b, b'!' | b'$'..=b';' | b'=' | b'@'..=b'_' | b'a'..=b'z' | b'|' | b'~')
        || matches!(b, b'"' | b'{' | b'}')
        || b >= 0x80
}

/// What may stand in a query unescaped (WHATWG URL, query state), and bytes past ASCII.
fn is_query_byte(b: u8) -> bool {
    matches!(b, b'!' | b'$'..=b';' | b'=' | b'?'..=b'~') || b >= 0x80
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use http::StatusCode;
    use proptest::prelude::*;

    use super::*;
    use crate::http1::response::push_response_head;

    const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    #[test]
    fn a_typical_upgrade_answer_is_read_and_what_follows_is_left() {
        let mut bytes = SWITCHING.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x02hi");
        let (head, len) = parse_response_head(&bytes).unwrap().unwrap();
        assert_eq!(len, SWITCHING.len());
        assert_eq!(&bytes[len..], b"\x81\x02hi");
        assert_eq!((head.status, head.version), (101, 1));
        assert_eq!(head.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(head.header("CONNECTION"), Some(&b"keep-alive, Upgrade"[..]));
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])
        );
        assert_eq!(head.header("content-length"), None);
        assert_eq!(head.headers().count(), 3);
    }

    #[test]
    fn repeated_headers_are_all_kept_in_order() {
        let text =
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n";
        let (head, _) = parse_response_head(text.as_bytes()).unwrap().unwrap();
        assert_eq!((head.status, head.version), (200, 0));
        let values: Vec<&[u8]> = head.values("Transfer-Encoding").collect();
        assert_eq!(values, [&b"gzip"[..], &b"chunked"[..]]);
        assert_eq!(head.header("transfer-encoding"), Some(&b"gzip"[..]));
    }

    #[test]
    fn every_truncation_asks_for_more() {
        for cut in 0..SWITCHING.len() {
            assert_eq!(
                parse_response_head(&SWITCHING.as_bytes()[..cut]),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut endless = b"HTTP/1.1 101 Switching Protocols\r\nx-filler: ".to_vec();
        endless.resize(MAX_HEAD_BYTES - 1, b'a');
        assert_eq!(parse_response_head(&endless), Ok(None));
        endless.push(b'a');
        assert_eq!(parse_response_head(&endless), Err(HeadError::Unterminated));

        let mut long = endless.clone();
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_response_head(&long),
            Err(HeadError::TooLong(long.len()))
        );

        let mut many = "HTTP/1.1 200 OK\r\n".to_owned();
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(
            parse_response_head(many.as_bytes()),
            Err(HeadError::Malformed {
                reason: httparse::Error::TooManyHeaders,
                ..
            })
        ));
    }

    #[test]
    fn other_protocols_are_malformed_with_their_start_quoted() {
        let err = parse_response_head(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap_err();
        assert!(matches!(err, HeadError::Malformed { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("unreadable HTTP response (") && message.contains("SSH-2.0"),
            "{message}"
        );
    }

    fn no_headers() -> [(&'static str, &'static str); 0] {
        []
    }

    #[test]
    fn a_request_head_is_request_line_headers_and_blank_line() {
        let mut out = b"kept".to_vec();
        push_request_head(
            &mut out,
            "GET",
            "/ws",
            Some("client_id=a"),
            [("Host", "gw:1"), ("Upgrade", "websocket"), ("x-empty", "")],
        )
        .unwrap();
        let mut bare = Vec::new();
        push_request_head(&mut bare, "GET", "/healthz", None, no_headers()).unwrap();
        assert_eq!(bare, b"GET /healthz HTTP/1.1\r\n\r\n");
        let mut empty_query = Vec::new();
        push_request_head(&mut empty_query, "GET", "/ws", Some(""), no_headers()).unwrap();
        assert_eq!(empty_query, b"GET /ws? HTTP/1.1\r\n\r\n");
        assert_eq!(
            out,
            b"keptGET /ws?client_id=a HTTP/1.1\r\nHost: gw:1\r\nUpgrade: websocket\r\nx-empty: \r\n\r\n"
        );
    }

    #[test]
    fn what_cannot_stand_in_a_request_head_is_refused_and_nothing_is_written() {
        for (method, path, query, err) in [
            ("", "/", None, RequestHeadError::Method),
            ("G T", "/", None, RequestHeadError::Method),
            ("GET", "", None, RequestHeadError::Target),
            ("GET", "ws", None, RequestHeadError::Target),
            ("GET", "/ws?a", None, RequestHeadError::Target),
            ("GET", "/ws", Some("a b"), RequestHeadError::Target),
            ("GET", "/ws\r\nX: y", None, RequestHeadError::Target),
            ("GET", "/ws#frag", None, RequestHeadError::Target),
            ("GET", "/ws", Some("a#frag"), RequestHeadError::Target),
            ("GET", "/w`s", None, RequestHeadError::Target),
            ("GET", "/ws", Some("a<b"), RequestHeadError::Target),
        ] {
            let mut out = b"kept".to_vec();
            assert_eq!(
                push_request_head(&mut out, method, path, query, no_headers()),
                Err(err),
                "{method:?} {path:?} {query:?}"
            );
            assert_eq!(out, b"kept");
        }
        for (header, err) in [
            (("", "x"), RequestHeadError::HeaderName(1)),
            (("a b", "x"), RequestHeadError::HeaderName(1)),
            (("a:", "x"), RequestHeadError::HeaderName(1)),
            (
                ("x", "a\r\nInjected: yes"),
                RequestHeadError::HeaderValue(1),
            ),
            (("x", "a\0"), RequestHeadError::HeaderValue(1)),
            (("x", " padded"), RequestHeadError::HeaderValue(1)),
            (("x", "padded\t"), RequestHeadError::HeaderValue(1)),
        ] {
            let mut out = b"kept".to_vec();
            assert_eq!(
                push_request_head(&mut out, "GET", "/", None, [("host", "h"), header]),
                Err(err),
                "{header:?}"
            );
            assert_eq!(out, b"kept");
        }
    }

    /// A header value without leading or trailing whitespace, which `httparse` keeps as is.
    fn value() -> impl Strategy<Value = String> {
        "([!-~]{1,12}( [!-~]{1,12}){0,3})?"
    }

    /// A response head as a server on this crate writes it, its status and its headers.
    fn written_head() -> impl Strategy<Value = (Vec<u8>, u16, Vec<(String, String)>)> {
        (
            100u16..1000,
            proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", value()), 0..MAX_HEADERS),
        )
            .prop_map(|(status, pairs)| {
                let mut headers = HeaderMap::new();
                for (name, value) in &pairs {
                    headers.append(
                        HeaderName::from_bytes(name.as_bytes()).expect("a token"),
                        HeaderValue::from_str(value).expect("visible ASCII"),
                    );
                }
                let status = StatusCode::from_u16(status).expect("three digits");
                let mut out = Vec::new();
                push_response_head(&mut out, status, &headers);
                // The map's order: values grouped under the name that came first.
                let written = headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().expect("ASCII").to_owned()))
                    .collect();
                (out, status.as_u16(), written)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2 * MAX_HEAD_BYTES)) {
            if let Ok(Some((_, len))) = parse_response_head(&bytes) {
                prop_assert!(len <= bytes.len() && len <= MAX_HEAD_BYTES);
            }
        }

        #[test]
        fn noise_after_a_status_line_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(Some((_, len))) = parse_response_head(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn a_written_response_head_reads_back_as_written(
            (bytes, status, written) in written_head(),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let len = bytes.len();
            let mut bytes = bytes;
            bytes.extend_from_slice(&after);
            let (head, read) = parse_response_head(&bytes).unwrap().unwrap();
            prop_assert_eq!(read, len);
            prop_assert_eq!((head.status, head.version), (status, 1));
            let read: Vec<(String, String)> = head
                .headers()
                .map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            prop_assert_eq!(read, written);
            // Every proper prefix is an incomplete head, never an error.
            for cut in 0..len {
                prop_assert_eq!(parse_response_head(&bytes[..cut]), Ok(None), "cut at {}", cut);
            }
        }

        #[test]
        fn a_target_is_written_exactly_when_a_uri_parser_reads_it_back_unchanged(
            start in prop_oneof![7 => Just("/"), 1 => Just(""), 1 => Just("?"), 1 => Just("*")],
            path in "[a-z0-9/%._~-]{0,8}",
            query in proptest::option::of("[a-z0-9=&/?]{0,8}"),
            odd in prop_oneof![
                "[\\x00-\\x7f\u{e9}\u{1f600}]",
                proptest::sample::select(
                    [" ", "#", "<", ">", "\"", "`", "{", "}", "|", "\\", "^", "[", "]", "'", "\x7f"]
                        .map(String::from).to_vec(),
                ),
            ],
            odd_at in any::<prop::sample::Index>(),
        ) {
            // A plain target with one character of any kind somewhere in its path or query.
            let mut target = format!("{start}{path}");
            if let Some(query) = query {
                target.push('?');
                target.push_str(&query);
            }
            let at = target
                .char_indices()
                .map(|(i, _)| i)
                .chain([target.len()])
                .nth(odd_at.index(target.chars().count() + 1))
                .unwrap_or(target.len());
            target.insert_str(at, &odd);
            let mut out = Vec::new();
            let (path, query) = match target.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (target.as_str(), None),
            };
            let written = push_request_head(&mut out, "GET", path, query, [("host", "h")]).is_ok();
            let read = target
                .parse::<http::uri::PathAndQuery>()
                .is_ok_and(|p| p.as_str() == target && target.starts_with('/'));
            prop_assert_eq!(written, read, "{:?}", target);
        }

        #[test]
        fn an_oversized_response_head_is_refused_complete_or_growing(
            (bytes, _, _) in written_head(),
            filler in (MAX_HEAD_BYTES..3 * MAX_HEAD_BYTES),
        ) {
            // The same head with a long header line after its status line.
            let line = bytes.iter().position(|&b| b == b'\n').expect("a status line") + 1;
            let mut long = bytes[..line].to_vec();
            long.extend_from_slice(b"x-filler: ");
            long.resize(long.len() + filler, b'a');
            long.extend_from_slice(b"\r\n");
            long.extend_from_slice(&bytes[line..]);
            prop_assert_eq!(parse_response_head(&long), Err(HeadError::TooLong(long.len())));
            // Still growing: refused as soon as the limit is reached, incomplete before.
            prop_assert_eq!(
                parse_response_head(&long[..MAX_HEAD_BYTES]),
                Err(HeadError::Unterminated)
            );
            prop_assert_eq!(parse_response_head(&long[..MAX_HEAD_BYTES - 1]), Ok(None));
        }
    }
}
