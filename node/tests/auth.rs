//! Authentication on a node reached directly: every bad token is refused before the upgrade,
//! permissions come from the token, and an expired token closes a live connection with 4001
//! unless refreshed. A legitimate client beside each case keeps working.

use std::time::Duration;

use ringcast_node::auth::{mint_hs256, now_secs, Claims};
use ringcast_node::Config;
use ringcast_testkit::{Client, TestNode};
use serde_json::json;

const SECRET: &str = "test-secret-0123456789abcdef";

fn config() -> Config {
    let mut c = Config::for_tests();
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.jwt_audience = Some("ringcast".into());
    c.auth.jwt_leeway_secs = 0;
    c.announce_connections = false;
    c
}

fn claims(sub: &str, ttl_secs: i64) -> Claims {
    Claims {
        sub: sub.into(),
        exp: (now_secs() as i64 + ttl_secs) as u64,
        nbf: None,
        aud: Some("ringcast".into()),
        iss: None,
        rooms: None,
        chat: None,
    }
}

fn token(c: &Claims) -> String {
    mint_hs256(SECRET, c).expect("mint")
}

/// A legitimate client that must keep being served.
async fn legit(node: &TestNode) -> Client {
    let t = token(&claims("legit", 3600));
    let (c, _) = Client::connect_welcomed(&format!("ws://{}/ws?token={t}", node.addr)).await;
    c
}

async fn still_served(c: &mut Client) {
    c.send_json(json!({"type":"ping"})).await;
    assert_eq!(c.recv_event("pong").await["event"], "pong");
}

async fn refused(url: &str, headers: &[(&str, &str)]) -> u16 {
    match Client::try_connect_with(url, headers).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn bad_tokens_get_401_and_spoofing_403() {
    let node = TestNode::start(config()).await;
    let mut ok = legit(&node).await;
    let base = format!("ws://{}/ws", node.addr);
    let good = token(&claims("alice", 3600));
    let other_key = mint_hs256("some-other-secret-0123456789", &claims("alice", 3600)).unwrap();
    let expired = token(&claims("alice", -30));
    let mut aud = claims("alice", 3600);
    aud.aud = Some("someone-else".into());
    let wrong_aud = token(&aud);
    let payload = good.split('.').nth(1).unwrap();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    for (url, status) in [
        (base.clone(), 401),
        (format!("{base}?token={other_key}"), 401),
        (format!("{base}?token={alg_none}"), 401),
        (format!("{base}?token={expired}"), 401),
        (format!("{base}?token={wrong_aud}"), 401),
        (format!("{base}?token=not.a.jwt"), 401),
        (format!("{base}?client_id=mallory&token={good}"), 403),
    ] {
        assert_eq!(refused(&url, &[]).await, status, "{url}");
        still_served(&mut ok).await;
    }
    assert!(node.metric("ringcast_node_upgrades_refused_total").await >= 7.0);
}

#[tokio::test]
async fn token_in_header_query_or_subprotocol() {
    let node = TestNode::start(config()).await;
    let mut ok = legit(&node).await;
    let base = format!("ws://{}/ws", node.addr);
    let t = token(&claims("alice", 3600));

    let bearer = format!("Bearer {t}");
    let (mut c, _) = Client::try_connect_with(&base, &[("authorization", &bearer)])
        .await
        .expect("header token");
    assert_eq!(c.recv_event("welcome").await["client_id"], "alice");

    let (mut c, _) = Client::try_connect_with(&format!("{base}?client_id=alice&token={t}"), &[])
        .await
        .expect("query token");
    assert_eq!(c.recv_event("welcome").await["client_id"], "alice");

    let protocols = format!("ringcast.v1, bearer.{t}");
    let (mut c, headers) =
        Client::try_connect_with(&base, &[("sec-websocket-protocol", &protocols)])
            .await
            .expect("subprotocol token");
    assert_eq!(c.recv_event("welcome").await["client_id"], "alice");
    assert_eq!(
        headers
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("ringcast.v1"),
        "the server selects ringcast.v1 and never echoes the token"
    );
    still_served(&mut ok).await;
}

#[tokio::test]
async fn room_and_chat_permissions_come_from_the_token() {
    let mut cfg = config();
    cfg.auth.default_chat_access = Some(ringcast_node::auth::Access::Deny);
    let node = TestNode::start(cfg).await;
    let mut ok = legit(&node).await;
    let mut c = claims("agent", 3600);
    c.rooms = Some(vec!["support-*".into()]);
    let url = format!("ws://{}/ws?token={}", node.addr, token(&c));
    let (mut agent, _) = Client::connect_welcomed(&url).await;

    agent
        .send_json(json!({"type":"join_room","room":"support-7"}))
        .await;
    assert_eq!(agent.recv_event("user_joined").await["room"], "support-7");
    agent
        .send_json(json!({"type":"join_room","room":"billing"}))
        .await;
    assert_eq!(agent.recv_error_code().await, "forbidden");
    agent
        .send_json(json!({"type":"room_message","room":"billing","content":"x"}))
        .await;
    assert_eq!(agent.recv_error_code().await, "forbidden");
    agent
        .send_json(json!({"type":"chat","content":"hi all"}))
        .await;
    assert_eq!(
        agent.recv_error_code().await,
        "forbidden",
        "chat is denied by default here"
    );
    ok.expect_silence(Duration::from_millis(200)).await;
    still_served(&mut ok).await;

    let mut chatty = claims("chatty", 3600);
    chatty.chat = Some(true);
    let url = format!("ws://{}/ws?token={}", node.addr, token(&chatty));
    let (mut chatty, _) = Client::connect_welcomed(&url).await;
    chatty
        .send_json(json!({"type":"chat","content":"allowed"}))
        .await;
    assert_eq!(ok.recv_event("chat").await["content"], "allowed");
}

#[tokio::test]
async fn expiry_closes_with_4001_unless_refreshed() {
    let node = TestNode::start(config()).await;
    let mut ok = legit(&node).await;
    // Tokens of a few seconds: the refresh exchanges below fit in them on a slow machine.
    let short = token(&claims("alice", 4));
    let (mut expiring, _) =
        Client::connect_welcomed(&format!("ws://{}/ws?token={short}", node.addr)).await;
    let (mut refreshed, _) = Client::connect_welcomed(&format!(
        "ws://{}/ws?token={}",
        node.addr,
        token(&claims("bob", 4))
    ))
    .await;
    let bob_first_expiry = now_secs() + 4;

    // A refresh for another subject is refused and changes nothing.
    refreshed
        .send_json(json!({"type":"refresh","token": token(&claims("mallory", 3600))}))
        .await;
    assert_eq!(refreshed.recv_error_code().await, "forbidden");
    refreshed
        .send_json(json!({"type":"refresh","token":"garbage"}))
        .await;
    assert_eq!(refreshed.recv_error_code().await, "invalid_token");
    // A refresh for the same subject extends the connection.
    refreshed
        .send_json(json!({"type":"refresh","token": token(&claims("bob", 3600))}))
        .await;
    let ack = refreshed.recv_event("token_refreshed").await;
    assert!(ack["expires_at"].as_u64().unwrap() > now_secs() + 3000);

    assert_eq!(
        expiring.expect_close(Duration::from_secs(8)).await,
        Some(4001)
    );
    // bob outlives his first token.
    while now_secs() <= bob_first_expiry {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    still_served(&mut refreshed).await;
    still_served(&mut ok).await;
}
