//! The client side of the WebSocket opening handshake (RFC 6455 §4.1), done by hand.
//!
//! tungstenite's client handshake builds an `http::Request`, parses the URL again, collects the
//! reply into an `http::Response`, and reads it into a 4 KiB buffer that then stays the
//! connection's read buffer whatever `WebSocketConfig::read_buffer_size` says. In a connection
//! storm that is a good part of the load generator's CPU and memory per connection. Here the
//! request is written once and sent in one write, the reply is read into a buffer of the
//! configured read-buffer size and parsed in place (both by `ringcast_net`'s HTTP/1 client
//! side), and whatever arrived after the head (often the server's first frame) is handed on with
//! the stream, so nothing is lost and the buffer is reused as the connection's read buffer
//! (tungstenite's, or the hand reader's in [`crate::raw`]). What is this file's own is the
//! WebSocket check of the 101.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::ConnectError;
use ringcast_net::http1::client::{push_request_head, Head};
use ringcast_net::http1_io::{self, ExchangeError};

/// Sends the upgrade request for `path` (path and query) with `Host: host` on `stream`, checks
/// the server's answer, and returns the stream with the bytes the server sent after the
/// response head (the start of the WebSocket byte stream), in a buffer with room for
/// `config.read_buffer_size` bytes. `addr` only labels errors.
pub async fn client_handshake<S>(
    mut stream: S,
    addr: SocketAddr,
    host: &str,
    path: &str,
    config: WebSocketConfig,
) -> Result<(S, Vec<u8>), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |detail: String| ConnectError::Handshake { addr, detail };
    let key = generate_key();
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let mut request = Vec::with_capacity(256);
    let headers = [
        ("Host", host),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key.as_str()),
    ];
    push_request_head(&mut request, "GET", path, query, headers)
        .map_err(|e| failed(format!("writing the upgrade request: {e}")))?;
    // Sized as the read buffer it becomes, so handing it over does not reallocate.
    let mut buf = Vec::with_capacity(config.read_buffer_size.max(256));
    let (checked, head_len) = http1_io::exchange(&mut stream, &request, &mut buf, |head| {
        check_head(head, &key)
    })
    .await
    .map_err(|e| match e {
        ExchangeError::Send(e) => failed(format!("sending the upgrade request: {e}")),
        ExchangeError::Receive(e) => failed(format!("reading the response: {e}")),
        ExchangeError::Closed(read) => failed(format!(
            "the server closed the connection after {read} bytes of the response head"
        )),
        ExchangeError::Head(e) => failed(e.to_string()),
    })?;
    match checked {
        Ok(()) => {}
        Err(Refusal::Status(status)) => return Err(ConnectError::NotUpgraded { addr, status }),
        Err(Refusal::Invalid(detail)) => return Err(failed(detail)),
    }
    buf.drain(..head_len);
    Ok((stream, buf))
}

/// Why a response head does not accept the upgrade.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// A complete HTTP response with a status other than 101.
    Status(u16),
    /// A 101 that breaks the WebSocket rules.
    Invalid(String),
}

/// Whether a complete response head accepts the upgrade requested with `key`.
fn check_head(head: &Head<'_>, key: &str) -> Result<(), Refusal> {
    if head.status != 101 {
        return Err(Refusal::Status(head.status));
    }
    let header = |name: &str| {
        head.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let invalid = |what: &str, got: Option<String>| {
        Refusal::Invalid(format!(
            "101 response with {what}: got {}",
            got.map_or_else(|| "none".to_owned(), |v| format!("{v:?}"))
        ))
    };
    let upgrade = header("upgrade");
    if !upgrade
        .as_deref()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
    {
        return Err(invalid("no `Upgrade: websocket`", upgrade));
    }
    let connection = header("connection");
    if !connection.as_deref().is_some_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    }) {
        return Err(invalid("no `Connection: Upgrade`", connection));
    }
    let accept = header("sec-websocket-accept");
    if accept.as_deref().map(str::trim) != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(invalid(
            "a Sec-WebSocket-Accept that does not match our Sec-WebSocket-Key",
            accept,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use ringcast_net::http1::client::{parse_response_head, MAX_HEAD_BYTES};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    /// A server that reads one upgrade request, then writes `reply(accept key)` in the given
    /// pieces, pausing between them so each arrives in its own read. Returns the address and
    /// the request the server received.
    async fn canned_server(
        reply: impl FnOnce(String) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                assert!(s.read_buf(&mut request).await.unwrap() > 0, "request cut");
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .to_owned();
            for piece in reply(derive_accept_key(key.as_bytes())) {
                s.write_all(&piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Keep the socket open a little so the client reads before it sees an end.
            tokio::time::sleep(Duration::from_millis(200)).await;
            request
        });
        (addr, server)
    }

    async fn handshake(addr: SocketAddr) -> Result<WebSocketStream<TcpStream>, ConnectError> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let config = WebSocketConfig::default().read_buffer_size(1024);
        let (stream, read) =
            client_handshake(stream, addr, "example:1", "/ws?client_id=a", config).await?;
        assert!(read.capacity() >= 1024, "the read buffer keeps its size");
        Ok(WebSocketStream::from_partially_read(stream, read, Role::Client, Some(config)).await)
    }

    fn switching(accept: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        )
    }

    /// An unmasked server text frame.
    fn text_frame(text: &str) -> Vec<u8> {
        let mut frame = vec![0x81, text.len() as u8];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    #[tokio::test]
    async fn head_split_over_reads_and_bytes_after_it_are_kept() {
        let (addr, server) = canned_server(|accept| {
            let head = switching(&accept).into_bytes();
            let (first, rest) = head.split_at(20);
            let mut rest = rest.to_vec();
            rest.extend(text_frame("welcome"));
            vec![first.to_vec(), rest, text_frame("second")]
        })
        .await;
        let mut ws = handshake(addr).await.expect("handshake");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /ws?client_id=a HTTP/1.1\r\nHost: example:1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Sec-WebSocket-Version: 13\r\n"),
            "{request}"
        );
        assert!(request.contains("Upgrade: websocket\r\n"), "{request}");
        for expected in ["welcome", "second"] {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), expected),
                other => panic!("expected text {expected:?}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn wrong_accept_key_is_a_handshake_error() {
        let (addr, _server) =
            canned_server(|_| vec![switching("dGhlIHNhbXBsZSBub25jZQ==").into_bytes()]).await;
        match handshake(addr).await {
            Err(ConnectError::Handshake { detail, .. }) => {
                assert!(detail.contains("Sec-WebSocket-Accept"), "{detail}")
            }
            other => panic!("expected a handshake error, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn refusal_reports_the_status() {
        let (addr, _server) = canned_server(|_| {
            vec![b"HTTP/1.1 403 Forbidden\r\ncontent-length: 3\r\n\r\nno\n".to_vec()]
        })
        .await;
        match handshake(addr).await {
            Err(ConnectError::NotUpgraded { status, .. }) => assert_eq!(status, 403),
            other => panic!("expected NotUpgraded 403, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn missing_upgrade_header_is_a_handshake_error() {
        let (addr, _server) = canned_server(|accept| {
            vec![format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            )
            .into_bytes()]
        })
        .await;
        match handshake(addr).await {
            Err(ConnectError::Handshake { detail, .. }) => {
                assert!(detail.contains("Upgrade: websocket"), "{detail}")
            }
            other => panic!("expected a handshake error, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn not_http_and_cut_and_endless_heads_are_handshake_errors() {
        let garbage = canned_server(|_| vec![b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()]).await;
        // The server ends the connection after part of a head.
        let cut = canned_server(|_| vec![b"HTTP/1.1 101 Switching".to_vec()]).await;
        let endless = canned_server(|_| {
            let mut head = b"HTTP/1.1 101 Switching Protocols\r\nx-filler: ".to_vec();
            head.resize(MAX_HEAD_BYTES + 100, b'a');
            vec![head]
        })
        .await;
        for (what, (addr, _server), expected) in [
            ("garbage", garbage, "unreadable HTTP response"),
            ("cut", cut, "closed the connection"),
            ("endless", endless, "no end of the response head"),
        ] {
            match handshake(addr).await {
                Err(ConnectError::Handshake { detail, .. }) => {
                    assert!(detail.contains(expected), "{what}: {detail}")
                }
                other => panic!(
                    "{what}: expected a handshake error, got {:?}",
                    other.map(|_| ())
                ),
            }
        }
    }

    #[test]
    fn a_complete_101_is_accepted_whatever_the_case_of_its_headers() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUPGRADE: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        let (parsed, len) = parse_response_head(head.as_bytes()).unwrap().unwrap();
        assert_eq!(len, head.len());
        assert_eq!(check_head(&parsed, key), Ok(()));
    }
}
