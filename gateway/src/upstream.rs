//! One upgrade forwarded to a node, spoken directly on the TCP stream: the request head in one
//! write, the answer head read by `ringcast_net::http1_io`, and the bytes read past it kept for
//! the tunnel. What is the gateway's own here is the policy: which headers go to the node, which
//! answers count, and how much of a refusal's body is relayed.
//!
//! An upgrade is one request and one answer on a fresh connection whose socket then belongs to
//! the tunnel. hyper's client spends a connection task, a dispatch channel, an upgrade hand-over
//! and a header map on that; in a connection storm this was an eighth of the gateway's CPU.

use bytes::{Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::StatusCode;
use ringcast_net::http1::client::{push_request_head, Head};
use ringcast_net::http1_io;
use tokio::io::AsyncReadExt;

use crate::node_io::NodeIo;

/// Largest error body relayed from a node that refused an upgrade.
pub const MAX_RELAYED_BODY: usize = 4 * 1024;

/// How long a refusal's body may take to arrive once its head has.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The header that names the addresses a request came through (not among `http`'s names).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The start of the received-by name in every ringcast gateway's `Via` entry.
const VIA_NAME: &str = "ringcast-gateway-";

/// This gateway's entry in the `Via` header of every upgrade and health check it sends to a
/// node (RFC 9110 §7.6.3): `1.1 ringcast-gateway-` and a name drawn at random per process.
pub fn own_via() -> HeaderValue {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let name = format!("1.1 {VIA_NAME}{:016x}", h.finish());
    HeaderValue::from_str(&name).expect("ASCII letters, digits, dots, dashes and a space")
}

/// Whether `headers` show that the request was sent by a ringcast gateway. A gateway only
/// sends to nodes, so a gateway that receives one has been given a gateway's address as a
/// node's — its own, or another's — and would forward the upgrade again, to itself in the worst
/// case until its file descriptors run out.
pub fn from_a_gateway(headers: &HeaderMap) -> bool {
    headers.get_all(header::VIA).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|entry| {
            entry
                .split(|b| b.is_ascii_whitespace())
                .filter(|part| !part.is_empty())
                .nth(1)
                .is_some_and(|by| by.starts_with(VIA_NAME.as_bytes()))
        })
    })
}

/// The request head forwarded to every candidate node: `GET /ws?query`, the client's headers
/// (without any body framing, whatever the client claimed, and with `X-Forwarded-For` replaced
/// by `forwarded`), and `via` appended to the client's `Via`. `None` if the query cannot stand
/// in a request line.
pub fn request_head(
    query: &str,
    headers: &HeaderMap,
    forwarded: &HeaderValue,
    via: &HeaderValue,
) -> Option<Vec<u8>> {
    // Body framing (the upgrade has none), what only this hop means, and the chain we replace.
    let forwarded_headers = headers.iter().filter(|(name, _)| {
        !(*name == header::CONTENT_LENGTH
            || *name == header::TRANSFER_ENCODING
            || *name == header::EXPECT
            || matches!(
                name.as_str(),
                "keep-alive" | "proxy-connection" | "x-forwarded-for"
            ))
    });
    let ours = [(&X_FORWARDED_FOR, forwarded), (&header::VIA, via)];
    let mut head = Vec::with_capacity(512);
    push_request_head(
        &mut head,
        "GET",
        "/ws",
        Some(query),
        forwarded_headers.chain(ours),
    )
    .ok()?;
    Some(head)
}

/// A node's answer to a forwarded upgrade.
#[derive(Debug)]
pub enum Answer {
    /// `101 Switching Protocols`.
    Switched(Switched),
    /// Any other answer.
    Other(Rejection),
}

/// A node's `101`: the socket is the node's end of the tunnel.
#[derive(Debug)]
pub struct Switched {
    /// The node's end.
    pub stream: NodeIo,
    /// The 101's headers, relayed to the client.
    pub headers: HeaderMap,
    /// What the node sent after the 101 (usually its `welcome`), for the client.
    pub early: Bytes,
}

/// Any other answer, with up to [`MAX_RELAYED_BODY`] bytes of its body.
#[derive(Debug)]
pub struct Rejection {
    /// Its status.
    pub status: StatusCode,
    /// Its `Content-Type`, if any.
    pub content_type: Option<HeaderValue>,
    /// Its body (cut at [`MAX_RELAYED_BODY`]).
    pub body: Bytes,
}

/// The `error` code of a JSON error body (`{"error": code, ...}`), if it is one.
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

/// Why an exchange brought no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The connection failed, or closed before a whole answer head arrived: nothing was said
    /// that tells what the server speaks (a node that crashed, a load balancer without a
    /// backend).
    #[error("{0}")]
    Broken(String),
    /// What came back is no HTTP/1.1 answer to an upgrade.
    #[error("{0}")]
    Invalid(String),
}

/// Sends `head` on `stream` and reads the node's answer; an error says what went wrong on the
/// way (the caller bounds the whole exchange in time).
pub async fn exchange(mut stream: NodeIo, head: &[u8]) -> Result<Answer, ExchangeError> {
    let mut buf = BytesMut::with_capacity(1024);
    let (read, len) = http1_io::exchange(&mut stream, head, &mut buf, answer_head)
        .await
        .map_err(|e| match e {
            http1_io::ExchangeError::Send(e) => {
                ExchangeError::Broken(format!("sending the upgrade: {e}"))
            }
            http1_io::ExchangeError::Receive(e) => {
                ExchangeError::Broken(format!("reading the answer: {e}"))
            }
            http1_io::ExchangeError::Closed(_) => {
                ExchangeError::Broken("the node closed the connection before answering".into())
            }
            http1_io::ExchangeError::Head(e) => {
                ExchangeError::Invalid(format!("the node's answer: {e}"))
            }
        })?;
    let (status, headers) = read.map_err(ExchangeError::Invalid)?;
    Ok(answer(
        stream,
        buf,
        AnswerHead {
            len,
            status,
            headers,
        },
    )
    .await)
}

/// A complete answer head.
struct AnswerHead {
    len: usize,
    status: StatusCode,
    headers: HeaderMap,
}

/// What a node's answer head says to an upgrade: its status and its headers (those `http`
/// takes, for relaying), or why it is no answer to an upgrade.
fn answer_head(head: &Head<'_>) -> Result<(StatusCode, HeaderMap), String> {
    if head.version != 1 {
        return Err("the node did not answer in HTTP/1.1".into());
    }
    let status = StatusCode::from_u16(head.status)
        .map_err(|_| "the node answered with an invalid status")?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("the node answered {status} to an upgrade"));
    }
    let mut headers = HeaderMap::with_capacity(head.headers().count());
    for (name, value) in head.headers() {
        let name = HeaderName::from_bytes(name.as_bytes());
        let value = HeaderValue::from_bytes(value);
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    Ok((status, headers))
}

async fn answer(mut stream: NodeIo, mut buf: BytesMut, head: AnswerHead) -> Answer {
    let rest = buf.split_off(head.len);
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return Answer::Switched(Switched {
            stream,
            headers: head.headers,
            early: rest.freeze(),
        });
    }
    // A refusal. A 4xx body is relayed whole (up to the limit, within `BODY_TIMEOUT`) or not
    // at all, never cut short. A 5xx only sends the client on to the next node, so its body is
    // not waited for (what arrived with the head is kept) — except a 503's: it tells a full
    // node from others, and the node may send it in a segment of its own.
    let announced = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = rest;
    let relay = (!head.status.is_server_error() || head.status == StatusCode::SERVICE_UNAVAILABLE)
        && announced <= MAX_RELAYED_BODY;
    let complete = relay
        && tokio::time::timeout(BODY_TIMEOUT, async {
            while body.len() < announced {
                match stream.read_buf(&mut body).await {
                    Ok(n) if n > 0 => {}
                    _ => return false,
                }
            }
            true
        })
        .await
        .unwrap_or(false);
    let arrived =
        head.status.is_server_error() && announced <= MAX_RELAYED_BODY && body.len() >= announced;
    body.truncate(if complete || arrived { announced } else { 0 });
    Answer::Other(Rejection {
        status: head.status,
        content_type: head.headers.get(header::CONTENT_TYPE).cloned(),
        body: body.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A node stand-in: answers the first request on one connection with `chunks`, written
    /// apart, and returns what it received.
    async fn node_answering(
        chunks: Vec<&'static [u8]>,
    ) -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short");
                got.extend_from_slice(&buf[..n]);
            }
            for chunk in chunks {
                s.write_all(chunk).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            got
        });
        (TcpStream::connect(addr).await.unwrap(), node)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_request_drops_body_framing_and_replaces_the_forwarded_chain() {
        let h = headers(&[
            ("host", "gw"),
            ("upgrade", "websocket"),
            ("content-length", "5"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let via = HeaderValue::from_static("1.1 gw");
        let head = request_head(
            "client_id=a",
            &h,
            &HeaderValue::from_static("10.0.0.1, 1.2.3.4"),
            &via,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /ws?client_id=a HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\n\
             x-forwarded-for: 10.0.0.1, 1.2.3.4\r\nvia: 1.1 gw\r\n\r\n"
        );
        assert!(request_head("a b", &h, &HeaderValue::from_static("x"), &via).is_none());
    }

    #[test]
    fn a_request_from_any_gateway_is_recognised_by_its_via_entry() {
        let own = own_via();
        assert_ne!(own, own_via(), "each process draws its own name");
        assert!(own.to_str().unwrap().starts_with("1.1 ringcast-gateway-"));
        let mut h = headers(&[("via", "1.0 corporate-proxy, HTTP/1.1 ringcast-gatewayx")]);
        assert!(!from_a_gateway(&h));
        // Listed after others, or in a header line of its own.
        let listed = format!("1.0 corporate-proxy,{}", own.to_str().unwrap());
        h.insert(header::VIA, HeaderValue::from_str(&listed).unwrap());
        assert!(from_a_gateway(&h));
        let mut h = headers(&[("via", "1.0 corporate-proxy")]);
        h.append(header::VIA, own_via());
        assert!(from_a_gateway(&h));
        // The name as a protocol, or alone, is not an entry of ours.
        let h = headers(&[("via", "ringcast-gateway-1"), ("user-agent", "x")]);
        assert!(!from_a_gateway(&h));
        assert!(!from_a_gateway(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_101_split_over_reads_keeps_what_follows_it() {
        let (stream, node) = node_answering(vec![
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n",
            b"sec-websocket-accept: abc\r\n\r\n\x81\x02hi",
        ])
        .await;
        let head = request_head(
            "client_id=a",
            &HeaderMap::new(),
            &HeaderValue::from_static("x"),
            &own_via(),
        )
        .unwrap();
        match exchange(NodeIo::Tcp(stream), &head).await.unwrap() {
            Answer::Switched(Switched { headers, early, .. }) => {
                assert_eq!(headers["sec-websocket-accept"], "abc");
                assert_eq!(&early[..], b"\x81\x02hi");
            }
            other => panic!("{other:?}"),
        }
        let sent = node.await.unwrap();
        assert!(sent.starts_with(b"GET /ws?client_id=a HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_refusal_comes_back_with_its_body() {
        let (stream, _node) = node_answering(vec![
            b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"error\":",
            b"\"x\"}",
        ])
        .await;
        match exchange(NodeIo::Tcp(stream), b"GET /ws HTTP/1.1\r\n\r\n")
            .await
            .unwrap()
        {
            Answer::Other(Rejection {
                status,
                content_type,
                body,
            }) => {
                assert_eq!(status, StatusCode::FORBIDDEN);
                assert_eq!(content_type.unwrap(), "application/json");
                assert_eq!(&body[..], b"{\"error\":\"x\"}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_503_whose_body_comes_in_a_later_segment_is_read_whole() {
        // A full node's refusal, its body behind the head in a segment of its own.
        let (stream, _node) = node_answering(vec![
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 32\r\n\r\n",
            b"{\"error\":\"too_many_connections\"}",
        ])
        .await;
        match exchange(NodeIo::Tcp(stream), b"GET /ws HTTP/1.1\r\n\r\n")
            .await
            .unwrap()
        {
            Answer::Other(r) => {
                assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(error_code(&r.body).as_deref(), Some("too_many_connections"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_oversized_refusal_body_is_dropped_and_a_100_is_an_error() {
        let (stream, _node) = node_answering(vec![
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 5000\r\n\r\n{\"error\":",
        ])
        .await;
        match exchange(NodeIo::Tcp(stream), b"GET /ws HTTP/1.1\r\n\r\n")
            .await
            .unwrap()
        {
            Answer::Other(r) => {
                assert_eq!(r.status, StatusCode::FORBIDDEN);
                assert!(r.body.is_empty(), "a cut body: {:?}", r.body);
            }
            other => panic!("{other:?}"),
        }
        let (stream, _node) = node_answering(vec![b"HTTP/1.1 100 Continue\r\n\r\n"]).await;
        let e = exchange(NodeIo::Tcp(stream), b"GET /ws HTTP/1.1\r\n\r\n")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("100"), "{e}");
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors() {
        let (stream, _node) = node_answering(vec![b"SSH-2.0-OpenSSH\r\n\r\n"]).await;
        let e = exchange(NodeIo::Tcp(stream), b"GET /ws HTTP/1.1\r\n\r\n")
            .await
            .unwrap_err();
        assert!(matches!(e, ExchangeError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("unreadable"), "{e}");
        let (stream, _node) = node_answering(vec![b"HTTP/1.1 101 Switching"]).await;
        let e = exchange(NodeIo::Tcp(stream), b"GET /ws HTTP/1.1\r\n\r\n")
            .await
            .unwrap_err();
        assert!(matches!(e, ExchangeError::Broken(_)), "{e}");
        assert!(e.to_string().contains("closed"), "{e}");
    }
}
