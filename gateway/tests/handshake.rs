//! One table of upgrade answers: for every kind of bad upgrade request, a node asked directly
//! and the gateway in front of it answer with the same status, the same JSON error code and the
//! same RFC headers (README, "Upgrade answers"); the requests that used to reach hyper's
//! upgrade path (another method, an absolute-form target, a second request on a kept-alive
//! connection) get theirs; and two clients in a room, one on each, are served throughout.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use ringcast_net::http1::client::parse_response_head;
use ringcast_node::Config as NodeConfig;
use ringcast_testkit::{Client, TestNode};
use serde_json::json;
use support::TestGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One response as a client reads it.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// The JSON body's `error` (none for an answer to `HEAD`, which has no body).
    code: Option<String>,
    /// The header the case names, if it was sent.
    header: Option<String>,
}

/// Sends `request` on a connection of its own and reads every response until the server
/// closes; returns them in order, with `header`'s value from each.
async fn ask(addr: SocketAddr, request: &str, header: Option<&str>, head: bool) -> Vec<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut bytes)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "{addr} kept the connection open after {request:?}: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let mut answers = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (parsed, len) = parse_response_head(rest)
            .expect("an HTTP/1 response")
            .unwrap_or_else(|| {
                panic!("a whole response head: {:?}", String::from_utf8_lossy(rest))
            });
        let length: usize = parsed
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        // No body follows the head of an answer to HEAD, whatever its Content-Length says.
        let body_len = if head { 0 } else { length };
        let body = &rest[len..len + body_len];
        let code = (!head).then(|| {
            let v: serde_json::Value = serde_json::from_slice(body)
                .unwrap_or_else(|_| panic!("a JSON body: {:?}", String::from_utf8_lossy(body)));
            v["error"].as_str().unwrap_or_default().to_owned()
        });
        let header = header
            .and_then(|h| parsed.header(h))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        answers.push(Answer {
            status: parsed.status,
            code,
            header,
        });
        rest = &rest[len + body_len..];
    }
    answers
}

fn upgrade(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A bad request, and the answer README's table gives it: status, code, and a header with
/// the value it must have.
struct Case {
    what: &'static str,
    request: String,
    status: u16,
    code: Option<&'static str>,
    header: Option<(&'static str, &'static str)>,
}

fn case(what: &'static str, request: String, status: u16, code: &'static str) -> Case {
    Case {
        what,
        request,
        status,
        code: Some(code),
        header: None,
    }
}

fn cases() -> Vec<Case> {
    let good = upgrade("/ws?client_id=x");
    let mut two_keys = good.replace("\r\n\r\n", "\r\n");
    two_keys.push_str("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n");
    let with = |c: Case, header: (&'static str, &'static str)| Case {
        header: Some(header),
        ..c
    };
    vec![
        // The request head itself.
        case(
            "HTTP/9.9",
            good.replace("HTTP/1.1", "HTTP/9.9"),
            400,
            "bad_request",
        ),
        case(
            "oversized head",
            good.replace(
                "\r\n\r\n",
                &format!("\r\nX-Filler: {}\r\n\r\n", "a".repeat(20 * 1024)),
            ),
            431,
            "headers_too_large",
        ),
        case(
            "HTTP/2 preface",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
            400,
            "bad_http_version",
        ),
        case(
            "HTTP/1.0",
            good.replace("HTTP/1.1", "HTTP/1.0"),
            400,
            "bad_http_version",
        ),
        // The handshake, on the upgrade path.
        with(
            case(
                "no Upgrade",
                good.replace("Upgrade: websocket\r\n", ""),
                426,
                "upgrade_required",
            ),
            ("upgrade", "websocket"),
        ),
        with(
            case(
                "Connection: keep-alive",
                good.replace("Connection: Upgrade", "Connection: keep-alive"),
                426,
                "upgrade_required",
            ),
            ("connection", "Upgrade, close"),
        ),
        with(
            case(
                "version 8",
                good.replace("Version: 13", "Version: 8"),
                400,
                "bad_websocket_version",
            ),
            ("sec-websocket-version", "13"),
        ),
        case(
            "no key",
            good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
            "bad_websocket_key",
        ),
        // 24 bytes, so a node took it before the check was shared; not base64 of 16 bytes.
        case(
            "key not base64",
            good.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ!="),
            400,
            "bad_websocket_key",
        ),
        case("two keys", two_keys, 400, "bad_websocket_key"),
        case(
            "client_id with a space",
            upgrade("/ws?client_id=a%20b"),
            400,
            "invalid_client_id",
        ),
        case(
            "client_id bad escape",
            upgrade("/ws?client_id=%zz"),
            400,
            "invalid_client_id",
        ),
        // What used to reach hyper's upgrade path, now answered from the same table.
        with(
            case(
                "POST",
                good.replace("GET ", "POST "),
                405,
                "method_not_allowed",
            ),
            ("allow", "GET"),
        ),
        Case {
            what: "HEAD",
            request: good.replace("GET ", "HEAD "),
            status: 405,
            code: None,
            header: Some(("allow", "GET")),
        },
        case(
            "lower-case get",
            good.replace("GET ", "get "),
            405,
            "method_not_allowed",
        ),
        case(
            "absolute-form target",
            upgrade("http://x/ws?client_id=abs"),
            400,
            "unsupported_upgrade",
        ),
        with(
            case(
                "absolute-form target, no Upgrade",
                upgrade("http://x/ws").replace("Upgrade: websocket\r\n", ""),
                426,
                "upgrade_required",
            ),
            ("upgrade", "websocket"),
        ),
        case(
            "HTTP/1.0, absolute-form",
            upgrade("http://x/ws").replace("HTTP/1.1", "HTTP/1.0"),
            400,
            "bad_http_version",
        ),
        case(
            "upgrade after /healthz on a kept-alive connection",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{good}"),
            400,
            "unsupported_upgrade",
        ),
        // Not the WebSocket endpoint at all.
        case(
            "/ws/",
            upgrade("/ws/?client_id=x").replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
            404,
            "not_found",
        ),
    ]
}

#[tokio::test]
async fn node_and_gateway_answer_every_bad_upgrade_alike_and_keep_serving() {
    let mut config = NodeConfig::for_tests();
    config.node_id = Some("n1".into());
    let node = TestNode::start(config).await;
    let spec = format!("n1={}", node.addr);
    let gw = TestGateway::start(&["--node", &spec]).await;
    // Two clients in one room, one through the gateway and one on the node itself.
    let (mut far, _) = Client::connect_welcomed(&gw.ws_url("far")).await;
    let (mut near, _) = Client::connect_welcomed(&node.ws_url("near")).await;
    for c in [&mut far, &mut near] {
        c.send_json(json!({"type":"join_room","room":"r"})).await;
        c.recv_event("user_joined").await;
    }
    for (i, c) in cases().into_iter().enumerate() {
        let head = c.request.starts_with("HEAD ");
        let header = c.header.map(|(name, _)| name);
        let want = Answer {
            status: c.status,
            code: c.code.map(str::to_owned),
            header: c.header.map(|(_, value)| value.to_owned()),
        };
        for (server, addr) in [("node", node.addr), ("gateway", gw.addr)] {
            let answers = ask(addr, &c.request, header, head).await;
            let last = answers.last().expect("an answer");
            assert_eq!(last, &want, "{}: {server}", c.what);
        }
        // Both clients are served: each hears the other.
        let (from_far, from_near) = (format!("far {i}"), format!("near {i}"));
        far.send_json(json!({"type":"room_message","room":"r","content":from_far}))
            .await;
        hear(&mut near, &from_far).await;
        near.send_json(json!({"type":"room_message","room":"r","content":from_near}))
            .await;
        hear(&mut far, &from_near).await;
    }
}

/// Waits for the room chat `content` (passing over the client's own, which it hears too).
async fn hear(client: &mut Client, content: &str) {
    while client.recv_event("chat").await["content"] != content {}
}
