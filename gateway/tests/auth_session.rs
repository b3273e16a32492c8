//! Live authenticated connections through the gateway: room permissions from the token's
//! `rooms` claim, expiry closing with 4001, in-band refresh, and a flood closed with 1008. The
//! nodes enforce these; the gateway must carry every frame and close code through unchanged.
//! A legitimate client beside each case keeps working.

mod support;

use std::time::Duration;

use ringcast_protocol::auth::now_secs;
use serde_json::json;
use support::auth::{claims, still_served, token, AuthStack};

#[tokio::test]
async fn joining_a_room_outside_the_token_is_forbidden() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let mut c = claims("agent", 3600);
    c.rooms = Some(vec!["support-*".into()]);
    let mut agent = s.connect_as(&c).await;
    agent
        .send_json(json!({"type":"join_room","room":"billing"}))
        .await;
    assert_eq!(agent.recv_error_code().await, "forbidden");
    agent
        .send_json(json!({"type":"join_room","room":"support-7"}))
        .await;
    assert_eq!(agent.recv_event("user_joined").await["room"], "support-7");
    still_served(&mut ok).await;
}

#[tokio::test]
async fn posting_to_a_room_outside_the_token_is_forbidden() {
    let s = AuthStack::start(&[]).await;
    // legit has no rooms claim (default access: allow) and sits in `billing`.
    let mut ok = s.legit().await;
    ok.send_json(json!({"type":"join_room","room":"billing"}))
        .await;
    ok.recv_event("user_joined").await;
    let mut c = claims("agent", 3600);
    c.rooms = Some(vec!["support-*".into()]);
    let mut agent = s.connect_as(&c).await;
    agent
        .send_json(json!({"type":"room_message","room":"billing","content":"let me in"}))
        .await;
    assert_eq!(agent.recv_error_code().await, "forbidden");
    ok.expect_silence(Duration::from_millis(200)).await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn an_expired_token_closes_the_live_connection_with_4001() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let mut expiring = s.connect_as(&claims("alice", 4)).await;
    still_served(&mut expiring).await;
    assert_eq!(
        expiring.expect_close(Duration::from_secs(8)).await,
        Some(4001),
        "expiry closes with 4001 through the gateway"
    );
    drop(expiring);
    still_served(&mut ok).await;
    // The expired connection's tunnel is released; legit's stays.
    ringcast_testkit::wait_until(
        Duration::from_secs(5),
        "expired tunnel released",
        || async { s.gw.metric("ringcast_gateway_open_connections").await == 1.0 },
    )
    .await;
}

#[tokio::test]
async fn a_refresh_extends_the_connection_past_its_first_token() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let mut bob = s.connect_as(&claims("bob", 4)).await;
    bob.send_json(json!({"type":"refresh","token": token(&claims("bob", 3600))}))
        .await;
    let ack = bob.recv_event("token_refreshed").await;
    assert!(ack["expires_at"].as_u64().unwrap_or(0) > now_secs() + 3000);
    // Past the first token's expiry bob is still connected and served.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    still_served(&mut bob).await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_refresh_with_another_subject_is_refused_and_expiry_still_applies() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let mut bob = s.connect_as(&claims("bob", 4)).await;
    bob.send_json(json!({"type":"refresh","token": token(&claims("mallory", 3600))}))
        .await;
    assert_eq!(bob.recv_error_code().await, "forbidden");
    bob.send_json(json!({"type":"refresh","token":"not-a-token"}))
        .await;
    assert_eq!(bob.recv_error_code().await, "invalid_token");
    // Neither refresh counted: the original token still runs out.
    assert_eq!(bob.expect_close(Duration::from_secs(8)).await, Some(4001));
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_flood_gets_rate_limited_then_closed_with_1008() {
    let s = AuthStack::start_with(
        |c| {
            c.rate_limit_per_sec = 5.0;
            c.rate_limit_burst = 5.0;
            c.flood_strikes = 10.0;
        },
        &[],
    )
    .await;
    let mut ok = s.legit().await;
    let mut flooder = s.connect_as(&claims("flooder", 3600)).await;
    for _ in 0..200 {
        flooder
            .feed(tokio_tungstenite::tungstenite::Message::text(
                r#"{"type":"ping"}"#,
            ))
            .await;
    }
    flooder.flush().await;
    assert_eq!(
        flooder.recv_error_code().await,
        "rate_limited",
        "told before being closed"
    );
    assert_eq!(
        flooder.expect_close(Duration::from_secs(5)).await,
        Some(1008)
    );
    still_served(&mut ok).await;
}
