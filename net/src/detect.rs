//! Telling connections apart by their first bytes ([`detect`]) and handing those bytes on
//! ([`Prefixed`]), for the node's port and the gateway's alike.
//!
//! Detection reads (it does not peek): each read waits for the socket to be readable, so a
//! client that sends one byte of a longer opening and then nothing costs no CPU and no wakeups
//! until it sends more, closes, or the caller's timeout fires. What was read is handed on —
//! as the start of the head buffer on the direct paths (`head::read_head_after`), or as a
//! [`Prefixed`] stream to hyper — so nothing is lost (linkerd's `detect` + `PrefixedIo`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a new connection opens with, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The HTTP/2 prior-knowledge preface, which an HTTP/1.1 server cannot serve.
    Http2Preface,
    /// `GET /ws ` or `GET /ws?`: a WebSocket upgrade, or a refusal from the handshake check;
    /// the only connections either binary upgrades.
    WsUpgrade,
    /// `GET /link`: a gateway asking for a link (see `crate::link`).
    Link,
    /// Anything else.
    Other,
}

/// The openings told apart, longest first (the preface, 14 bytes, bounds detection).
const OPENINGS: [(&[u8], Opening); 4] = [
    (b"PRI * HTTP/2.0", Opening::Http2Preface),
    (b"GET /link ", Opening::Link),
    (b"GET /ws?", Opening::WsUpgrade),
    (b"GET /ws ", Opening::WsUpgrade),
];

/// Bytes the first read may take: the start of a head, which the head reader goes on from.
const FIRST_READ: usize = 1024;

/// What `seen` opens with, or `None` while it is a proper prefix of an opening and more bytes
/// could still change the answer.
pub fn opening_of(seen: &[u8]) -> Option<Opening> {
    let mut undecided = false;
    for (pattern, opening) in OPENINGS {
        if seen.starts_with(pattern) {
            return Some(opening);
        }
        undecided |= pattern.starts_with(seen);
    }
    (!undecided).then_some(Opening::Other)
}

/// Reads the first bytes of `stream` until they tell what it opens with; returns that and every
/// byte read (at most [`FIRST_READ`], to be handed on). `None` if it closed or failed first.
/// Waits while only a prefix of an opening has arrived, so callers bound it with a timeout.
pub async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(Opening, Vec<u8>)> {
    let mut buf = Vec::with_capacity(FIRST_READ);
    loop {
        let room = FIRST_READ - buf.len();
        let n = stream.read_buf(&mut (&mut buf).limit(room)).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(opening) = opening_of(&buf) {
            return Some((opening, buf));
        }
        // Undecided means fewer than 14 bytes, so `room` never reaches 0 here.
    }
}

/// A stream whose first bytes were already read: they are read again first, then the stream.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, to be read as if `prefix` had not been taken out of it.
    pub fn new(prefix: impl Into<Bytes>, inner: S) -> Self {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn openings_are_told_apart_and_prefixes_wait() {
        assert_eq!(opening_of(b"GET /ws?client_id=a"), Some(Opening::WsUpgrade));
        assert_eq!(
            opening_of(b"GET /ws HTTP/1.1\r\n"),
            Some(Opening::WsUpgrade)
        );
        assert_eq!(opening_of(b"GET /wsx HTTP/1.1"), Some(Opening::Other));
        assert_eq!(opening_of(b"GET /stats HTTP"), Some(Opening::Other));
        assert_eq!(opening_of(b"POST /ws HTTP"), Some(Opening::Other));
        assert_eq!(opening_of(b"GET /link HTTP/1.1"), Some(Opening::Link));
        assert_eq!(opening_of(b"GET /linkage HTTP"), Some(Opening::Other));
        assert_eq!(
            opening_of(b"PRI * HTTP/2.0\r\n"),
            Some(Opening::Http2Preface)
        );
        for prefix in [&b"P"[..], b"PRI * HT", b"G", b"GET /w", b"GET /li"] {
            assert_eq!(opening_of(prefix), None, "{prefix:?}");
        }
        assert_eq!(opening_of(b"X"), Some(Opening::Other));
        assert_eq!(opening_of(b"PX"), Some(Opening::Other));
    }

    #[tokio::test]
    async fn detection_hands_on_every_byte_it_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, want) in [
            (&b"GET /ws?client_id=a HTTP/1.1\r\n"[..], Opening::WsUpgrade),
            (b"GET /metrics HTTP/1.1\r\n", Opening::Other),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Opening::Http2Preface),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            // In two segments, the first one undecided.
            client.write_all(&sent[..1]).await.unwrap();
            let reading = tokio::spawn(async move {
                let got = detect(&mut server).await;
                (got, server)
            });
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            client.write_all(&sent[1..]).await.unwrap();
            client.shutdown().await.unwrap();
            let (got, server) = reading.await.unwrap();
            let (opening, prefix) = got.unwrap();
            assert_eq!(opening, want);
            let mut again = Vec::new();
            Prefixed::new(prefix, server)
                .read_to_end(&mut again)
                .await
                .unwrap();
            assert_eq!(again, sent, "nothing lost, nothing doubled");
        }
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        drop(client);
        assert_eq!(detect(&mut server).await, None);
    }

    #[tokio::test]
    async fn a_prefixed_stream_reads_its_prefix_into_small_buffers() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut s = Prefixed::new(&b"hello"[..], a);
        let mut one = [0u8; 2];
        s.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"he");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"llo world");
    }

    mod fuzz {
        use super::super::*;
        use crate::testing::chunked::ChunkedReader;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn detection_takes_little_and_loses_nothing(
                bytes in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    "(PRI \\* HTTP/2.0|GET /ws[? ]|GET /link |GET /)?[ -~]{0,20}".prop_map(String::into_bytes),
                ],
                pieces in proptest::collection::vec(0usize..8, 0..8),
            ) {
                let mut reader = ChunkedReader::new(bytes.clone(), pieces);
                let got = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a current-thread runtime")
                    .block_on(detect(&mut reader));
                prop_assert!(reader.taken <= FIRST_READ);
                match got {
                    Some((opening, prefix)) => {
                        prop_assert_eq!(&prefix[..], &bytes[..reader.taken]);
                        prop_assert_eq!(Some(opening), opening_of(&prefix));
                    }
                    // Only when the bytes ran out before they could tell.
                    None => prop_assert!(opening_of(&bytes).is_none() || bytes.is_empty()),
                }
            }
        }
    }
}
