//! The load generator's one HTTP/1 response-head reader, on `httparse`: the WebSocket upgrade
//! answer and the `/stats` answer are both read with [`parse_response_head`].
//!
//! It is a pure function of the bytes read so far, with no I/O: the caller reads, calls it
//! again with the longer buffer while it returns `Ok(None)`, and keeps what follows the head.
//! It never reads past the head, never allocates for more than [`MAX_HEADERS`] headers, and
//! refuses a head longer than [`MAX_HEAD_BYTES`], whether complete or still growing.

/// The longest response head accepted; a longer one is not a WebSocket server's answer.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Response headers parsed at most; a WebSocket server sends a handful.
pub const MAX_HEADERS: usize = 32;

/// A parsed response head; names and values borrow the buffer it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    /// The status code (`101`, `200`, …).
    pub status: u16,
    /// The headers in the order they came, as name and raw value (leading and trailing
    /// whitespace removed).
    pub headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Head<'a> {
    /// The value of the first header called `name` (in any case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// The values of every header called `name` (in any case), in order.
    pub fn values<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'a [u8]> + 'h {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

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
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
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
    let head = Head {
        // A complete response always has its code; 0 would only ever read as "not 101".
        status: response.code.unwrap_or_default(),
        headers: response.headers.iter().map(|h| (h.name, h.value)).collect(),
    };
    Ok(Some((head, len)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SWITCHING: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    #[test]
    fn a_typical_upgrade_answer_is_read_and_what_follows_is_left() {
        let mut bytes = SWITCHING.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x02hi");
        let (head, len) = parse_response_head(&bytes).unwrap().unwrap();
        assert_eq!(len, SWITCHING.len());
        assert_eq!(&bytes[len..], b"\x81\x02hi");
        assert_eq!(head.status, 101);
        assert_eq!(head.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(head.header("CONNECTION"), Some(&b"keep-alive, Upgrade"[..]));
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..])
        );
        assert_eq!(head.header("content-length"), None);
    }

    #[test]
    fn repeated_headers_are_all_kept_in_order() {
        let text =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n";
        let (head, _) = parse_response_head(text.as_bytes()).unwrap().unwrap();
        assert_eq!(head.status, 200);
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

    /// A header value without leading or trailing whitespace, which `httparse` keeps as is.
    fn value() -> impl Strategy<Value = String> {
        "([!-~]{1,12}( [!-~]{1,12}){0,3})?"
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
        fn a_written_head_reads_back_as_written(
            status in 100u16..1000,
            headers in proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9-]{0,15}", value()), 0..MAX_HEADERS),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut text = format!("HTTP/1.1 {status} Whatever\r\n");
            for (name, value) in &headers {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            let mut bytes = text.clone().into_bytes();
            bytes.extend_from_slice(&after);
            let (head, len) = parse_response_head(&bytes).unwrap().unwrap();
            prop_assert_eq!(len, text.len());
            prop_assert_eq!(head.status, status);
            let read: Vec<(&str, &[u8])> = head.headers.clone();
            let written: Vec<(&str, &[u8])> =
                headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
            prop_assert_eq!(read, written);
            for cut in [0, 1, len / 2, len - 1] {
                prop_assert_eq!(parse_response_head(&bytes[..cut]), Ok(None));
            }
        }
    }
}
