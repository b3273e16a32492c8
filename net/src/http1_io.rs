//! The I/O half of [`crate::http1`] for connections that make exactly one request. Server
//! side (connections that open with `GET /ws` or `GET /link`, told apart by
//! [`crate::detect`]): read the request head under a caller's limits, or write an answer that
//! ends the connection. Client side (a gateway's upgrades and health checks, the load
//! generator's upgrades): send a request head and read the response head, under the client
//! side's limits.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http1::client::{self, parse_response_head, Head};
use crate::http1::request::{parse_request, HeadError, HeadLimits};
use crate::http1::response::{date, push_response_head, Body};

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
            if let Some((req, len)) = parse_request(&buf, limits)? {
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

/// Why a client exchange brought no response head.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing the request failed.
    #[error("sending the request: {0}")]
    Send(std::io::Error),
    /// Reading the answer failed.
    #[error("reading the response: {0}")]
    Receive(std::io::Error),
    /// The server closed the connection after this many bytes, before the head ended.
    #[error("the server closed the connection after {0} bytes of the response head")]
    Closed(usize),
    /// What came back is not an acceptable response head.
    #[error(transparent)]
    Head(#[from] client::HeadError),
}

/// Writes `request` (a whole request head, and a body if any) on `stream`, then reads the
/// response head as [`read_response_head`] does.
pub async fn exchange<S, B, T>(
    stream: &mut S,
    request: &[u8],
    buf: &mut B,
    read: impl FnOnce(&Head<'_>) -> T,
) -> Result<(T, usize), ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: BufMut + AsRef<[u8]>,
{
    stream
        .write_all(request)
        .await
        .map_err(ExchangeError::Send)?;
    read_response_head(stream, buf, read).await
}

/// Reads a response head into `buf` (empty, or holding what was read before) and hands it to
/// `read`; returns what `read` made of it and the head's length: `buf[len..]` is what was read
/// past it. `buf` never grows past [`client::MAX_HEAD_BYTES`] here, and the head is parsed in
/// place, so no allocation is made but the buffer's. The caller bounds the exchange in time
/// (each caller's deadline also covers its connect, or a body, or other attempts).
pub async fn read_response_head<S, B, T>(
    stream: &mut S,
    buf: &mut B,
    read: impl FnOnce(&Head<'_>) -> T,
) -> Result<(T, usize), ExchangeError>
where
    S: AsyncRead + Unpin,
    B: BufMut + AsRef<[u8]>,
{
    loop {
        if !buf.as_ref().is_empty() {
            if let Some((head, len)) = parse_response_head(buf.as_ref())? {
                return Ok((read(&head), len));
            }
        }
        // Below the limit here: a longer incomplete head is an error above.
        let room = client::MAX_HEAD_BYTES - buf.as_ref().len();
        let n = stream
            .read_buf(&mut (&mut *buf).limit(room))
            .await
            .map_err(ExchangeError::Receive)?;
        if n == 0 {
            return Err(ExchangeError::Closed(buf.as_ref().len()));
        }
    }
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
    // The answer ends the connection. A `Connection` that says so already stays as it is; one
    // that names only `Upgrade` (a 426 naming other protocols, RFC 9110 §7.8) keeps it and
    // adds `close`.
    let connection = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok());
    let says_close =
        connection.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    if !says_close {
        let value = if connection.is_some_and(|v| v.trim().eq_ignore_ascii_case("upgrade")) {
            HeaderValue::from_static("Upgrade, close")
        } else {
            HeaderValue::from_static("close")
        };
        headers.insert(header::CONNECTION, value);
    }
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
    mod client_side {
        use super::super::*;
        use crate::testing::chunked::ChunkedReader;
        use proptest::prelude::*;

        fn run<F: std::future::Future>(f: F) -> F::Output {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime")
                .block_on(f)
        }

        #[tokio::test]
        async fn a_request_goes_out_whole_and_the_answer_head_comes_back_with_what_follows() {
            let (mut client, mut server) = tokio::io::duplex(64);
            let answer =
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x02hi";
            let served = tokio::spawn(async move {
                let (req, _) = read_head(&mut server, HeadLimits::NODE).await.unwrap();
                for piece in answer.chunks(7) {
                    server.write_all(piece).await.unwrap();
                }
                req
            });
            let mut buf = Vec::new();
            let request = b"GET /ws?client_id=a HTTP/1.1\r\nhost: n\r\n\r\n";
            let (status, len) = exchange(&mut client, request, &mut buf, |h| {
                (h.status, h.header("upgrade").map(<[u8]>::to_vec))
            })
            .await
            .unwrap();
            assert_eq!(status, (101, Some(b"websocket".to_vec())));
            let req = served.await.unwrap();
            assert_eq!(req.uri(), "/ws?client_id=a");
            // What arrived past the head stays in the buffer, nothing more was read.
            assert_eq!(&buf[len..], b"\x81\x02hi");
        }

        #[tokio::test]
        async fn a_close_before_the_head_ends_and_garbage_are_errors() {
            let mut cut = ChunkedReader::new(b"HTTP/1.1 101 Switch".to_vec(), vec![5]);
            let got = read_response_head(&mut cut, &mut Vec::new(), |h| h.status).await;
            assert!(matches!(got, Err(ExchangeError::Closed(19))), "{got:?}");
            let mut ssh = ChunkedReader::new(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), vec![]);
            let got = read_response_head(&mut ssh, &mut Vec::new(), |h| h.status).await;
            let message = got.unwrap_err().to_string();
            assert!(message.contains("unreadable"), "{message}");
        }

        /// A status line now and then, then header-ish lines and noise.
        fn answer_bytes() -> impl Strategy<Value = Vec<u8>> {
            let line = prop_oneof![
                Just(b"upgrade: websocket\r\n".to_vec()),
                Just(b"content-length: 13\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                "[a-zA-Z-]{1,12}: [ -~]{0,40}\r\n".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..64),
            ];
            let start = prop_oneof![
                Just(b"HTTP/1.1 101 Switching Protocols\r\n".to_vec()),
                Just(b"HTTP/1.1 403 Forbidden\r\n".to_vec()),
                Just(b"HTTP/1.0 200 OK\r\n".to_vec()),
                Just(Vec::new()),
            ];
            // Now and then one long header line, so heads reach and pass the limit.
            let filler = prop_oneof![Just(0usize), 0usize..2 * client::MAX_HEAD_BYTES];
            (
                start,
                filler,
                proptest::collection::vec(line, 0..800),
                any::<bool>(),
            )
                .prop_map(|(mut head, filler, lines, end)| {
                    if filler > 0 {
                        head.extend_from_slice(b"x-filler: ");
                        head.resize(head.len() + filler, b'a');
                        head.extend_from_slice(b"\r\n");
                    }
                    for l in lines {
                        head.extend_from_slice(&l);
                    }
                    if end {
                        head.extend_from_slice(b"\r\n\r\n\x81\x02hi");
                    }
                    head
                })
        }

        /// The outcome without what was read past the head, which depends on the split.
        fn outcome(r: &Result<(String, usize), ExchangeError>) -> String {
            match r {
                Ok((head, len)) => format!("{head} {len}"),
                Err(ExchangeError::Closed(_)) => "closed".to_owned(),
                // The quoted start is whatever had been read, which depends on the split.
                Err(ExchangeError::Head(client::HeadError::Malformed { reason, .. })) => {
                    format!("malformed: {reason}")
                }
                Err(e) => e.to_string(),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_answer_in_any_split_stays_within_the_head_limit(
                bytes in answer_bytes(),
                pieces in proptest::collection::vec(0usize..3000, 0..12),
                capacity in 0usize..20_000,
            ) {
                let mut split = ChunkedReader::new(bytes.clone(), pieces);
                let mut buf = Vec::with_capacity(capacity);
                let got = run(read_response_head(&mut split, &mut buf, |h| format!("{h:?}")));
                prop_assert!(split.taken <= client::MAX_HEAD_BYTES);
                prop_assert!(buf.len() <= client::MAX_HEAD_BYTES);
                if let Ok((_, len)) = &got {
                    prop_assert!(*len <= buf.len());
                }
                // However it was split, the same bytes give the same answer.
                let mut whole = ChunkedReader::new(bytes, Vec::new());
                let once = run(read_response_head(&mut whole, &mut Vec::new(), |h| format!("{h:?}")));
                prop_assert_eq!(outcome(&got), outcome(&once));
            }
        }
    }

    mod fuzz {
        use super::super::*;
        use crate::testing::chunked::ChunkedReader;
        use proptest::prelude::*;

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
