//! Bad input gets the documented error or close, and a bystander keeps receiving room traffic.

use std::time::Duration;

use futures_util::StreamExt;
use ringcast_node::Config;
use ringcast_testkit::{http_raw, Client, TestNode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Two clients in room "watch": `speaker` posts numbered messages, `listener` must get each one.
struct Bystanders {
    speaker: Client,
    listener: Client,
    next: u64,
}

impl Bystanders {
    async fn new(node: &TestNode) -> Self {
        let (mut speaker, _) = Client::connect_welcomed(&node.ws_url("speaker")).await;
        let (mut listener, _) = Client::connect_welcomed(&node.ws_url("listener")).await;
        for c in [&mut speaker, &mut listener] {
            c.send_json(json!({"type":"join_room","room":"watch"}))
                .await;
        }
        speaker.recv_event("user_joined").await;
        // The listener sees its own ack and possibly the speaker's.
        let _ = listener.recv_event("user_joined").await;
        Bystanders {
            speaker,
            listener,
            next: 0,
        }
    }

    /// Posts one message and checks the listener receives exactly it next (room chat only).
    async fn still_served(&mut self) {
        self.next += 1;
        self.speaker
            .send_json(json!({"type":"room_message","room":"watch","content":self.next}))
            .await;
        loop {
            let v = self.listener.recv().await;
            if v["event"] == "chat" {
                assert_eq!(
                    v["content"], self.next,
                    "bystander lost or reordered a message"
                );
                return;
            }
            assert!(
                ["user_joined", "user_connected", "user_disconnected"]
                    .contains(&v["event"].as_str().unwrap_or_default()),
                "unexpected frame for the bystander: {v}"
            );
        }
    }
}

fn config() -> Config {
    let mut c = Config::for_tests();
    c.announce_connections = false;
    c
}

#[tokio::test]
async fn malformed_messages_get_error_events_and_keep_the_connection() {
    let node = TestNode::start(config()).await;
    let mut by = Bystanders::new(&node).await;
    let (mut bad, _) = Client::connect_welcomed(&node.ws_url("mallory")).await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "bad_json"),
        (Message::text("[1,2,3]"), "bad_json"),
        (Message::text(r#"{"type":42}"#), "bad_json"),
        (Message::text(r#"{"type":"teleport"}"#), "unknown_type"),
        (Message::text(r#"{"content":"no type"}"#), "unknown_type"),
        (Message::text(r#"{"type":"chat"}"#), "missing_field"),
        (Message::text(r#"{"type":"join_room"}"#), "missing_field"),
        (
            Message::text(r#"{"type":"room_message","room":"watch"}"#),
            "missing_field",
        ),
        (
            Message::text(r#"{"type":"direct_message","content":"x"}"#),
            "missing_field",
        ),
        (
            Message::text(r#"{"type":"join_room","room":"has space"}"#),
            "invalid_room",
        ),
        (
            Message::text(r#"{"type":"join_room","room":""}"#),
            "invalid_room",
        ),
        (
            Message::text(format!(
                r#"{{"type":"join_room","room":"{}"}}"#,
                "r".repeat(129)
            )),
            "invalid_room",
        ),
        (
            Message::text(r#"{"type":"leave_room","room":"never-joined"}"#),
            "not_in_room",
        ),
        (
            Message::text(r#"{"type":"direct_message","target":"bad/id","content":1}"#),
            "invalid_target",
        ),
        (Message::binary(vec![1u8, 2, 3]), "binary_unsupported"),
    ];
    for (frame, code) in cases {
        let shown = format!("{frame:?}");
        bad.send(frame).await;
        assert_eq!(bad.recv_error_code().await, code, "for {shown}");
        by.still_served().await;
    }
    // Still connected and served after all of it.
    bad.send_json(json!({"type":"ping"})).await;
    assert_eq!(bad.recv().await["event"], "pong");
}

#[tokio::test]
async fn too_many_rooms_is_refused_per_connection() {
    let mut c = config();
    c.max_rooms_per_connection = 3;
    let node = TestNode::start(c).await;
    let (mut a, _) = Client::connect_welcomed(&node.ws_url("a")).await;
    for i in 0..3 {
        a.send_json(json!({"type":"join_room","room":format!("r{i}")}))
            .await;
        a.recv_event("user_joined").await;
    }
    a.send_json(json!({"type":"join_room","room":"r3"})).await;
    assert_eq!(a.recv_error_code().await, "too_many_rooms");
    a.send_json(json!({"type":"leave_room","room":"r0"})).await;
    a.recv_event("user_left").await;
    a.send_json(json!({"type":"join_room","room":"r3"})).await;
    assert_eq!(a.recv_event("user_joined").await["room"], "r3");
}

#[tokio::test]
async fn a_one_mib_frame_closes_with_1009() {
    let node = TestNode::start(config()).await;
    let mut by = Bystanders::new(&node).await;
    let (mut big, _) = Client::connect_welcomed(&node.ws_url("big")).await;
    let payload = format!(r#"{{"type":"chat","content":"{}"}}"#, "x".repeat(1 << 20));
    let _ = big.feed(Message::text(payload)).await;
    let _ = big.flush().await;
    assert_eq!(big.expect_close(Duration::from_secs(5)).await, Some(1009));
    by.still_served().await;
    // A message just under the limit is fine.
    let (mut ok, _) = Client::connect_welcomed(&node.ws_url("ok")).await;
    ok.send_json(json!({"type":"ping","pad":"y".repeat(60_000)}))
        .await;
    assert_eq!(ok.recv().await["event"], "pong");
}

#[tokio::test]
async fn a_flood_gets_rate_limited_then_closed_with_1008() {
    let node = TestNode::start(config()).await;
    let mut by = Bystanders::new(&node).await;
    let (mut flooder, _) = Client::connect_welcomed(&node.ws_url("flooder")).await;
    for _ in 0..10_000 {
        if !flooder.feed(Message::text(r#"{"type":"ping"}"#)).await {
            break;
        }
    }
    let _ = flooder.flush().await;
    let mut saw_rate_limited = false;
    let code = loop {
        match flooder.next_json(Duration::from_secs(5)).await {
            Ok(v) if v["event"] == "error" => {
                assert_eq!(v["code"], "rate_limited");
                saw_rate_limited = true;
            }
            Ok(v) => assert_eq!(v["event"], "pong"),
            Err(e) => break e,
        }
    };
    assert!(saw_rate_limited, "no rate_limited error before the close");
    assert!(code.contains("Policy"), "expected close 1008, got {code}");
    for _ in 0..5 {
        by.still_served().await;
    }
}

/// A client that sends more joins than its burst allows (a reconnect rejoining every room, say)
/// hears, for each join dropped, a `rate_limited` error naming the room: it knows which to send
/// again, and a join sent again later is served.
#[tokio::test]
async fn each_dropped_join_is_answered_naming_its_room() {
    let mut c = config();
    c.rate_limit_burst = 5.0;
    c.rate_limit_per_sec = 2.0;
    let node = TestNode::start(c).await;
    let mut by = Bystanders::new(&node).await;
    let (mut eager, _) = Client::connect_welcomed(&node.ws_url("eager")).await;
    let rooms: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    for room in &rooms {
        eager
            .send_json(json!({"type":"join_room","room":room}))
            .await;
    }
    let (mut joined, mut dropped) = (Vec::new(), Vec::new());
    while joined.len() + dropped.len() < rooms.len() {
        let v = eager.recv().await;
        match v["event"].as_str() {
            Some("user_joined") => joined.push(v["room"].as_str().unwrap().to_owned()),
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                dropped.push(v["room"].as_str().expect("the room named").to_owned());
            }
            _ => {}
        }
    }
    assert!(!dropped.is_empty(), "nothing was rate limited");
    let mut all: Vec<String> = joined.iter().chain(&dropped).cloned().collect();
    all.sort_by_key(|r| r[1..].parse::<u32>().unwrap());
    assert_eq!(
        all, rooms,
        "each join answered once, by a join or by its room's error"
    );
    // Sent again once the bucket refilled, a dropped join is served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    eager
        .send_json(json!({"type":"join_room","room":dropped[0]}))
        .await;
    let v = eager.recv_event("user_joined").await;
    assert_eq!(v["room"], dropped[0].as_str());
    by.still_served().await;
}

#[tokio::test]
async fn a_ping_flood_is_rate_limited_like_messages() {
    let node = TestNode::start(config()).await;
    let mut by = Bystanders::new(&node).await;
    let (mut flooder, _) = Client::connect_welcomed(&node.ws_url("pinger")).await;
    for _ in 0..10_000 {
        if !flooder.feed(Message::Ping("x".into())).await {
            break;
        }
    }
    let _ = flooder.flush().await;
    let mut pongs = 0;
    let mut saw_rate_limited = false;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), flooder.inner().next()).await {
            Ok(Some(Ok(Message::Pong(_)))) => pongs += 1,
            Ok(Some(Ok(Message::Text(t)))) => {
                assert!(t.contains("rate_limited"), "unexpected event {t}");
                saw_rate_limited = true;
            }
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("the ping flood was not closed within 5 s"),
        }
    };
    assert!(pongs > 0, "pings within the limit are answered");
    assert!(pongs < 10_000, "every one of 10 000 pings was answered");
    assert!(saw_rate_limited, "no rate_limited error before the close");
    assert_eq!(code, Some(1008));
    for _ in 0..5 {
        by.still_served().await;
    }
}

#[tokio::test]
async fn bad_upgrades_get_http_errors() {
    let node = TestNode::start(config()).await;
    let mut by = Bystanders::new(&node).await;
    let upgrade = |path: &str, version: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    for (req, status, code) in [
        (
            upgrade("/ws?client_id=a%20b", "13"),
            400,
            "invalid_client_id",
        ),
        (upgrade("/ws?client_id=%ZZ", "13"), 400, "invalid_client_id"),
        (
            upgrade(&format!("/ws?client_id={}", "x".repeat(65)), "13"),
            400,
            "invalid_client_id",
        ),
        (
            upgrade("/ws?client_id=ok", "8"),
            400,
            "bad_websocket_version",
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            426,
            "upgrade_required",
        ),
    ] {
        let (got, body) = http_raw(node.addr, &req).await;
        assert_eq!(got, status, "{req:?} -> {body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["error"], code);
        by.still_served().await;
    }
    let (status, _) = node.get("/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn connection_limit_refuses_with_503() {
    let mut c = config();
    c.max_connections = 2;
    let node = TestNode::start(c).await;
    let (_a, _) = Client::connect_welcomed(&node.ws_url("a")).await;
    let (_b, _) = Client::connect_welcomed(&node.ws_url("b")).await;
    let err = Client::try_connect(&node.ws_url("c"))
        .await
        .err()
        .expect("third connection must be refused");
    assert!(err.to_string().contains("503"), "{err}");
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200, "HTTP keeps working at the session limit");
}

#[tokio::test]
async fn concurrent_upgrades_cannot_overshoot_the_connection_limit() {
    let mut c = config();
    c.max_connections = 10;
    let node = TestNode::start(c).await;
    let attempts = (0..30).map(|i| {
        let url = node.ws_url(&format!("c{i}"));
        tokio::spawn(async move { Client::try_connect(&url).await })
    });
    let mut open = Vec::new();
    for a in attempts {
        if let Ok(client) = a.await.expect("join") {
            open.push(client);
        }
    }
    assert_eq!(open.len(), 10, "exactly max_connections upgrades succeed");
    for c in &mut open {
        c.recv_event("welcome").await;
    }
    assert_eq!(node.stats().await["local_connections"], 10);
}

#[tokio::test]
async fn odd_upgrade_heads_are_answered_and_a_split_one_still_opens() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(config()).await;
    let mut by = Bystanders::new(&node).await;
    let big = format!(
        "GET /ws?client_id=big HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert_eq!(http_raw(node.addr, &big).await.0, 431);
    let (status, body) = http_raw(node.addr, "GET /ws?client_id=a HTTP/9.9\r\n\r\n").await;
    assert_eq!(status, 400, "{body}");
    let http10 = "GET /ws?client_id=old HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (status, body) = http_raw(node.addr, http10).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_http_version"), "{body}");
    by.still_served().await;
    // A first segment too short to recognise `GET /ws`: detection waits for the rest, and it
    // opens on the one upgrade path.
    let request = "GET /ws?client_id=split HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    s.write_all(&request.as_bytes()[..3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&request.as_bytes()[3..]).await.unwrap();
    upgraded_until(&mut s, r#""event":"welcome""#).await;
    by.still_served().await;
}

#[tokio::test]
async fn a_frame_sent_right_behind_the_upgrade_is_served() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(config()).await;
    let mut bytes = b"GET /ws?client_id=eager HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    // A masked text frame, as a client sends it, in the same write as the request.
    let payload = br#"{"type":"ping"}"#;
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    bytes.extend([0x81, 0x80 | payload.len() as u8]);
    bytes.extend(mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    upgraded_until(&mut s, r#"{"event":"pong"}"#).await;
}

/// Reads a raw upgraded connection until `needle` arrives (5 s at most); checks it opened
/// with a 101.
async fn upgraded_until(s: &mut tokio::net::TcpStream, needle: &str) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle} within 5 s"))
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        ringcast_testkit::answer_status(&got),
        Some(101),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// A configuration built in code (not parsed, so not range-checked) with a handshake timeout
/// past the clock's range still serves: the deadline each connection computes is clamped.
#[tokio::test]
async fn a_huge_handshake_timeout_in_code_does_not_break_connections() {
    let mut c = config();
    c.handshake_timeout_secs = u64::MAX;
    let node = TestNode::start(c).await;
    let (mut client, _) = Client::connect_welcomed(&node.ws_url("patient")).await;
    client.send_json(json!({"type":"ping"})).await;
    assert_eq!(client.recv().await["event"], "pong");
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
}
