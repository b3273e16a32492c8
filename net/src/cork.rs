//! Holding a WebSocket upgrade's `101` back until the first frames follow it, so the answer and
//! the `welcome` leave in one TCP segment.
//!
//! A connect costs every hop a send, a receive and a wake-up per segment, and on a busy host
//! that kernel work is most of what a connect costs. The node answers an upgrade with a `101`
//! at once but can send `welcome` only once the client's bus channel is subscribed; sent apart,
//! the two are two segments to the gateway, two reads there, two writes on to the client and
//! two reads in the client. So a connection that opens with `GET /ws` is corked (`TCP_CORK`)
//! before its 101 is written (by `serve_upgrade` in `http.rs`), and uncorked right after the
//! first frames are written: the kernel then sends everything in one segment. The gateway
//! relays the two together in one write (`ringcast_gateway::direct`).
//!
//! Every other answer on a corked connection ends it (refusals carry `Connection: close`), and
//! closing a socket sends what the cork held. Should anything still be held, the kernel sends
//! it after 200 ms on its own: a cork can delay bytes, never lose them.

use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::net::TcpStream;

/// Holds back partial segments on `stream` until [`Uncork::uncork`].
pub fn cork(stream: &TcpStream) {
    // Best effort: without the cork the bytes only travel in more segments.
    let _ = SockRef::from(stream).set_tcp_cork(true);
}

/// A connection whose held-back bytes can be let go.
pub trait Uncork {
    /// Sends whatever the cork held and stops holding.
    fn uncork(&self);

    /// Holds small writes back until [`Uncork::uncork`] (see [`cork`]); nothing on a stream
    /// that is not a TCP connection.
    fn cork(&self) {}
}

impl Uncork for TcpStream {
    fn uncork(&self) {
        let _ = SockRef::from(self).set_tcp_cork(false);
    }

    fn cork(&self) {
        cork(self);
    }
}

/// TLS records travel on the TCP connection underneath: it is the one corked.
impl Uncork for tokio_rustls::server::TlsStream<TcpStream> {
    fn uncork(&self) {
        self.get_ref().0.uncork();
    }

    fn cork(&self) {
        cork(self.get_ref().0);
    }
}

/// hyper's boxed IO (only seen should a listener ever hand over something other than TCP) was
/// never corked.
impl<T> Uncork for TokioIo<T> {
    fn uncork(&self) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

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
