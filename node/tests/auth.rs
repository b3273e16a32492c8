//! Authentication on a node reached directly: every bad token is refused before the upgrade,
//! permissions come from the token, and an expired token closes a live connection with 4001
//! unless refreshed. A legitimate client beside each case keeps working.

use std::time::Duration;

use ringcast_node::Config;
use ringcast_protocol::auth::{mint_hs256, now_secs, Claims};
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
    cfg.auth.default_chat_access = Some(ringcast_protocol::auth::Access::Deny);
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

/// Connects expecting an HTTP refusal; returns its status and the `error` code of its body.
async fn refusal(url: &str) -> (u16, String) {
    match Client::try_connect_with(url, &[]).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: serde_json::Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            let code = body["error"].as_str().unwrap_or_default().to_owned();
            (resp.status().as_u16(), code)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// `exp = 10^19` used to panic the session after its welcome (`Instant + Duration` overflow) and
/// leave a ghost connection in the hub. A token that lives longer than `--jwt-max-lifetime-secs`
/// (30 days by default) is refused at the upgrade, and as a refresh.
#[tokio::test]
async fn a_token_with_a_huge_or_too_long_exp_is_refused() {
    let node = TestNode::start(config()).await;
    let mut ok = legit(&node).await;
    let base = format!("ws://{}/ws", node.addr);
    let mut huge = claims("alice", 0);
    huge.exp = 10_000_000_000_000_000_000;
    let mut max = claims("alice", 0);
    max.exp = u64::MAX;
    let month = claims("alice", 31 * 86_400);
    for c in [&huge, &max, &month] {
        let url = format!("{base}?token={}", token(c));
        assert_eq!(
            refusal(&url).await,
            (401, "invalid_token".to_owned()),
            "exp {}",
            c.exp
        );
        still_served(&mut ok).await;
    }
    // Just inside the bound: accepted.
    let url = format!("{base}?token={}", token(&claims("bob", 29 * 86_400)));
    let (mut bob, _) = Client::connect_welcomed(&url).await;
    still_served(&mut bob).await;
    // A refresh to such a token is refused and changes nothing.
    bob.send_json(json!({"type":"refresh","token": token(&{ let mut c = huge.clone(); c.sub = "bob".into(); c })}))
        .await;
    assert_eq!(bob.recv_error_code().await, "invalid_token");
    still_served(&mut bob).await;
    assert_eq!(
        node.stats().await["local_connections"],
        2,
        "legit and bob only"
    );
    // A shorter bound is configurable.
    let mut cfg = config();
    cfg.auth.jwt_max_lifetime_secs = 3600;
    let strict = TestNode::start(cfg).await;
    let url = format!(
        "ws://{}/ws?token={}",
        strict.addr,
        token(&claims("carol", 7200))
    );
    assert_eq!(refusal(&url).await, (401, "invalid_token".to_owned()));
    let url = format!(
        "ws://{}/ws?token={}",
        strict.addr,
        token(&claims("carol", 1800))
    );
    Client::connect_welcomed(&url).await;
    still_served(&mut ok).await;
}

/// Joins `room` and waits for the acknowledgement.
async fn join(c: &mut Client, room: &str) {
    c.send_json(json!({"type":"join_room","room":room})).await;
    assert_eq!(c.recv_event("user_joined").await["room"], room);
}

/// A refresh re-checks every joined room: a room the new token no longer allows is left (its
/// members see `user_left`), the client is told with `room_revoked` and no longer receives the
/// room's traffic. The `chat` permission follows the newest token both ways.
#[tokio::test]
async fn a_refresh_revokes_rooms_and_chat_the_new_token_does_not_allow() {
    let node = TestNode::start(config()).await;
    let mut ok = legit(&node).await;
    let mut alice_claims = claims("alice", 3600);
    alice_claims.rooms = Some(vec!["secret".into(), "public".into()]);
    alice_claims.chat = Some(true);
    let url = format!("ws://{}/ws?token={}", node.addr, token(&alice_claims));
    let (mut alice, _) = Client::connect_welcomed(&url).await;
    let url = format!(
        "ws://{}/ws?token={}",
        node.addr,
        token(&claims("bob", 3600))
    );
    let (mut bob, _) = Client::connect_welcomed(&url).await;
    for room in ["secret", "public"] {
        join(&mut bob, room).await;
        join(&mut alice, room).await;
        assert_eq!(bob.recv_event("user_joined").await["user_id"], "alice");
    }

    let mut narrower = claims("alice", 3600);
    narrower.rooms = Some(vec!["public".into()]);
    narrower.chat = Some(false);
    alice
        .send_json(json!({"type":"refresh","token": token(&narrower)}))
        .await;
    let revoked = alice.recv().await;
    assert_eq!(
        revoked,
        json!({"event":"room_revoked","room":"secret","reason":"token"})
    );
    alice.recv_event("token_refreshed").await;
    let left = bob.recv_event("user_left").await;
    assert_eq!(
        (&left["user_id"], &left["room"]),
        (&json!("alice"), &json!("secret"))
    );

    // The secret room's traffic no longer reaches alice; the public room's still does.
    bob.send_json(json!({"type":"room_message","room":"secret","content":"s"}))
        .await;
    assert_eq!(bob.recv_event("chat").await["content"], "s");
    bob.send_json(json!({"type":"room_message","room":"public","content":"p"}))
        .await;
    assert_eq!(bob.recv_event("chat").await["content"], "p");
    let next = alice.recv_event("chat").await;
    assert_eq!(
        (&next["room"], &next["content"]),
        (&json!("public"), &json!("p"))
    );
    alice
        .send_json(json!({"type":"room_message","room":"secret","content":"x"}))
        .await;
    assert_eq!(alice.recv_error_code().await, "forbidden");
    alice.send_json(json!({"type":"chat","content":"hi"})).await;
    assert_eq!(
        alice.recv_error_code().await,
        "forbidden",
        "chat: false now"
    );
    alice
        .send_json(json!({"type":"join_room","room":"secret"}))
        .await;
    assert_eq!(alice.recv_error_code().await, "forbidden");

    // A token that allows chat again, and the secret room but not the public one.
    let mut swapped = claims("alice", 3600);
    swapped.rooms = Some(vec!["sec*".into()]);
    swapped.chat = Some(true);
    alice
        .send_json(json!({"type":"refresh","token": token(&swapped)}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"event":"room_revoked","room":"public","reason":"token"})
    );
    alice.recv_event("token_refreshed").await;
    assert_eq!(bob.recv_event("user_left").await["room"], "public");
    alice
        .send_json(json!({"type":"chat","content":"back"}))
        .await;
    assert_eq!(bob.recv_event("chat").await["content"], "back");
    join(&mut alice, "secret").await;
    assert_eq!(node.stats().await["rooms"], 2);
    still_served(&mut ok).await;
}

/// RFC 7519 allows `aud` as a string or a list. A list is accepted, with no audience
/// configured as well as with one (any element matching is enough); a list with no match is
/// refused.
#[tokio::test]
async fn a_list_audience_is_accepted() {
    let node = TestNode::start(config()).await;
    let mut open_cfg = config();
    open_cfg.auth.jwt_audience = None;
    let open = TestNode::start(open_cfg).await;
    let mut ok = legit(&node).await;
    let list = |sub: &str, aud: serde_json::Value| {
        let t = mint_hs256(
            SECRET,
            &json!({"sub": sub, "exp": now_secs() + 3600, "aud": aud}),
        )
        .expect("mint");
        format!("token={t}")
    };
    let matching = list("alice", json!(["account", "ringcast"]));
    let (_, id) = Client::connect_welcomed(&format!("ws://{}/ws?{matching}", node.addr)).await;
    assert_eq!(id, "alice");
    let (_, id) = Client::connect_welcomed(&format!("ws://{}/ws?{matching}", open.addr)).await;
    assert_eq!(id, "alice");
    let other = list("bob", json!(["account", "billing"]));
    let (_, id) = Client::connect_welcomed(&format!("ws://{}/ws?{other}", open.addr)).await;
    assert_eq!(id, "bob", "no audience configured: any aud is accepted");
    assert_eq!(
        refusal(&format!("ws://{}/ws?{other}", node.addr)).await,
        (401, "invalid_token".to_owned())
    );
    for bad in [json!([]), json!([7]), json!({"a": 1})] {
        let url = format!("ws://{}/ws?{}", node.addr, list("carol", bad.clone()));
        assert_eq!(refusal(&url).await.0, 401, "aud {bad}");
    }
    still_served(&mut ok).await;
}

/// With `--jwt-audience` / `--jwt-issuer` configured, a token without the claim is refused (the
/// flags say "required"; the JWT library only checks a claim that is present).
#[tokio::test]
async fn a_configured_audience_or_issuer_is_required() {
    let mut cfg = config();
    cfg.auth.jwt_issuer = Some("https://issuer.example".into());
    let node = TestNode::start(cfg).await;
    let base = format!("ws://{}/ws", node.addr);
    let mut c = claims("alice", 3600);
    c.iss = Some("https://issuer.example".into());
    Client::connect_welcomed(&format!("{base}?token={}", token(&c))).await;
    let mut no_aud = c.clone();
    no_aud.aud = None;
    let mut no_iss = c.clone();
    no_iss.iss = None;
    for bad in [no_aud, no_iss] {
        let url = format!("{base}?token={}", token(&bad));
        assert_eq!(refusal(&url).await, (401, "invalid_token".to_owned()));
    }
}

/// With authentication on, `welcome` says when the token runs out, so a client can refresh in
/// time without decoding the token; without authentication it says nothing of the sort.
#[tokio::test]
async fn the_welcome_carries_the_token_expiry() {
    let node = TestNode::start(config()).await;
    let c = claims("alice", 1800);
    let url = format!("ws://{}/ws?token={}", node.addr, token(&c));
    let (mut alice, _) = Client::try_connect_with(&url, &[]).await.expect("connect");
    let welcome = alice.recv_event("welcome").await;
    assert_eq!(welcome["expires_at"].as_u64(), Some(c.exp));

    let open = TestNode::start(Config::for_tests()).await;
    let url = format!("ws://{}/ws?client_id=bob", open.addr);
    let (mut bob, _) = Client::try_connect_with(&url, &[]).await.expect("connect");
    let welcome = bob.recv_event("welcome").await;
    assert!(welcome.get("expires_at").is_none(), "{welcome}");
}
