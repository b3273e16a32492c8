//! The per-address connection cap at the gateway (`--max-connections-per-ip`): an address at
//! its cap gets 429 before any node is contacted, while another address is still admitted and
//! a freed slot lets the first one back in. Clients connect from different 127.0.0.x source
//! addresses (all of 127/8 is loopback on Linux).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::auth::{token_for, AuthStack};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `gw` from source address `ip` as `sub`: the stream after its
/// `welcome`, or the HTTP status and body of the refusal.
async fn connect_from(ip: &str, gw: SocketAddr, sub: &str) -> Result<Ws, (u16, Value)> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{ip}:0").parse().expect("source address"))
        .expect("bind a 127.0.0.x source address");
    let stream = socket
        .connect(gw)
        .await
        .expect("TCP connect to the gateway");
    let url = format!("ws://{gw}/ws?token={}", token_for(sub));
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((mut ws, _)) => {
            let welcome = next_json(&mut ws).await;
            assert_eq!(welcome["event"], "welcome");
            assert_eq!(welcome["client_id"], sub);
            Ok(ws)
        }
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON frame");
        }
    }
}

async fn still_served(ws: &mut Ws) {
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send ping");
    loop {
        if next_json(ws).await["event"] == "pong" {
            return;
        }
    }
}

#[tokio::test]
async fn an_address_at_its_cap_gets_429_while_another_address_is_admitted() {
    let s = AuthStack::start(&["--max-connections-per-ip", "2"]).await;
    let gw = s.gw.addr;
    let mut legit = connect_from("127.0.0.4", gw, "legit").await.expect("legit");
    let mut first = connect_from("127.0.0.2", gw, "crowd-1")
        .await
        .expect("first");
    let _second = connect_from("127.0.0.2", gw, "crowd-2")
        .await
        .expect("second");

    let before = s.traffic().await;
    let Err((status, body)) = connect_from("127.0.0.2", gw, "crowd-3").await else {
        panic!("a third connection from 127.0.0.2 got past a cap of 2")
    };
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "too_many_connections_from_ip");
    assert_eq!(s.traffic().await, before, "the refusal reached a node");
    assert_eq!(s.edge_refusals("too_many_connections_from_ip").await, 1.0);

    // Another address is still admitted, and the open connections keep working.
    let mut other = connect_from("127.0.0.3", gw, "elsewhere")
        .await
        .expect("another address");
    still_served(&mut other).await;
    still_served(&mut first).await;
    still_served(&mut legit).await;

    // Closing one of 127.0.0.2's connections frees its slot.
    first.close(None).await.expect("close");
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut back = loop {
        match connect_from("127.0.0.2", gw, "crowd-3").await {
            Ok(ws) => break ws,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((status, body)) => panic!("slot not freed: {status} {body}"),
        }
    };
    still_served(&mut back).await;
    still_served(&mut legit).await;
}
