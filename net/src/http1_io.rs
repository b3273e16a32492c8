//! The I/O half of [`crate::http1`] for connections that make exactly one request (those that
//! open with `GET /ws` or `GET /link`, told apart by [`crate::detect`]): read the request head
//! under a caller's timeout and limits, or write an answer that ends the connection.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    // A refusal that names other protocols (a 426's `Upgrade`) keeps its `Connection: Upgrade`,
    // as RFC 9110 §7.8 asks, and adds `close`.
    let connection = match headers.get(header::CONNECTION).map(HeaderValue::as_bytes) {
        Some(b"Upgrade") => HeaderValue::from_static("Upgrade, close"),
        _ => HeaderValue::from_static("close"),
    };
    headers.insert(header::CONNECTION, connection);
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
