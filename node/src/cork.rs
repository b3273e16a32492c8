//! Holding a WebSocket upgrade's `101` back until the first frames follow it, so the answer and
//! the `welcome` leave in one TCP segment.
//!
//! A connect costs every hop a send, a receive and a wake-up per segment, and on a busy host
//! that kernel work is most of what a connect costs. The node answers an upgrade with a `101`
//! at once but can send `welcome` only once the client's bus channel is subscribed; sent apart,
//! the two are two segments to the gateway, two reads there, two writes on to the client and
//! two reads in the client. So a connection that opens with `GET /ws` is corked (`TCP_CORK`)
//! before hyper answers it, and uncorked right after the first frames are written: the kernel
//! then sends everything in one segment. The gateway relays the two together in one write
//! (`ringcast_gateway::direct`).
//!
//! Every other answer on a corked connection ends it (refusals carry `Connection: close`), and
//! closing a socket sends what the cork held. Should anything still be held, the kernel sends
//! it after 200 ms on its own: a cork can delay bytes, never lose them.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::net::TcpStream;

/// What a new connection opens with, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The HTTP/2 prior-knowledge preface, which an HTTP/1.1 server cannot serve.
    Http2Preface,
    /// `GET /ws`: most likely a WebSocket upgrade.
    WsUpgrade,
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
        _ => Opening::Other,
    }
}

/// Holds back partial segments on `stream` until [`Uncork::uncork`].
pub fn cork(stream: &TcpStream) {
    // Best effort: without the cork the bytes only travel in more segments.
    let _ = SockRef::from(stream).set_tcp_cork(true);
}

/// A connection whose held-back bytes can be let go.
pub trait Uncork {
    /// Sends whatever the cork held and stops holding.
    fn uncork(&self);
}

impl Uncork for TcpStream {
    fn uncork(&self) {
        let _ = SockRef::from(self).set_tcp_cork(false);
    }
}

/// hyper's boxed IO (only seen should a listener ever hand over something other than TCP) was
/// never corked.
impl<T> Uncork for TokioIo<T> {
    fn uncork(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn only_get_ws_is_an_upgrade_attempt() {
        assert_eq!(opening_of(b"GET /ws?client_id=a"), Opening::WsUpgrade);
        assert_eq!(opening_of(b"GET /ws HTTP/1.1\r\n"), Opening::WsUpgrade);
        assert_eq!(opening_of(b"GET /wsx HTTP/1.1"), Opening::Other);
        assert_eq!(opening_of(b"GET /stats HTTP"), Opening::Other);
        assert_eq!(opening_of(b"POST /ws HTTP"), Opening::Other);
        assert_eq!(opening_of(b"GET /w"), Opening::Other);
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

    #[tokio::test]
    async fn corked_bytes_leave_together_on_uncork() {
        use std::io::Read;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // A plain std client: its reads ask the kernel directly.
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        cork(&server);
        server.write_all(b"first;").await.unwrap();
        // Held: the client has nothing to read yet (a corked partial segment waits 200 ms;
        // uncorked, loopback would have delivered it during the write).
        client.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let early = client.read(&mut buf);
        assert!(
            matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{early:?}"
        );
        server.write_all(b"second").await.unwrap();
        server.uncork();
        client.set_nonblocking(false).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = client.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first;second", "one segment, one read");
    }
}
