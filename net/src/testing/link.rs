//! Link helpers for tests, here and in other crates' unit tests (feature `testing`): a link
//! over a real loopback connection, and a stream opened across it.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::link::{Link, LinkStream, Role, MAX_STREAMS};

/// Both ends of a loopback TCP connection: the connecting one, then the accepted one.
pub async fn sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (connected, accepted) = tokio::join!(connect, listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// A link over a real loopback connection: the opening end, and the streams the accepting end
/// receives.
pub async fn pair() -> (Link, Link, mpsc::UnboundedReceiver<LinkStream>) {
    let (opener_sock, accepted) = sockets().await;
    let (opened_tx, opened_rx) = mpsc::unbounded_channel();
    let (acceptor, driver) = Link::new(
        accepted,
        Bytes::new(),
        Role::Acceptor,
        MAX_STREAMS,
        move |s| {
            let _ = opened_tx.send(s);
        },
    );
    tokio::spawn(driver);
    let (opener, driver) = Link::new(opener_sock, Bytes::new(), Role::Opener, MAX_STREAMS, |_| {});
    tokio::spawn(driver);
    (opener, acceptor, opened_rx)
}

pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("timed out")
}

/// A stream opened on `opener` and its accepted end, after one byte went across (so both
/// ends are in place and nothing is left unread).
pub async fn open_stream(
    opener: &Link,
    opened: &mut mpsc::UnboundedReceiver<LinkStream>,
) -> (LinkStream, LinkStream) {
    let mut near = opener.open().unwrap();
    near.write_all(b"x").await.unwrap();
    let mut far = within(opened.recv()).await.unwrap();
    let mut x = [0u8; 1];
    within(far.read_exact(&mut x)).await.unwrap();
    (near, far)
}
