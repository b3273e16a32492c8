//! Tokens at the gateway, in front of real nodes: every bad token is refused with 401 (a spoofed
//! client_id with 403) before any node is contacted, good tokens are accepted in the header,
//! the query or the subprotocol, and the token's subject is the routing key. A legitimate
//! client beside each case keeps working.

mod support;

use ringcast_protocol::auth::now_secs;
use ringcast_testkit::Client;
use serde_json::json;
use support::auth::{claims, still_served, token, token_for, AuthStack, AUDIENCE, SECRET};
use support::TestGateway;

#[tokio::test]
async fn no_token_gets_401_and_reaches_no_node() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    s.assert_refused_at_edge(&s.url(""), &[], 401, "missing_token", "")
        .await;
    s.assert_refused_at_edge(&s.url("client_id=alice"), &[], 401, "missing_token", "")
        .await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_bad_signature_gets_401() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let forged = ringcast_protocol::auth::mint_hs256(
        "another-secret-entirely-0123456789",
        &claims("alice", 3600),
    )
    .expect("mint");
    let url = s.url(&format!("token={forged}"));
    s.assert_refused_at_edge(&url, &[], 401, "invalid_token", &forged)
        .await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn alg_none_gets_401() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let good = token_for("alice");
    let payload = good.split('.').nth(1).expect("JWT payload");
    // Header {"alg":"none","typ":"JWT"}, the same claims, no signature.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let bearer = format!("Bearer {none}");
    s.assert_refused_at_edge(
        &s.url(""),
        &[("authorization", &bearer)],
        401,
        "invalid_token",
        &none,
    )
    .await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn an_expired_token_gets_401() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let expired = token(&claims("alice", -30));
    let url = s.url(&format!("token={expired}"));
    s.assert_refused_at_edge(&url, &[], 401, "token_expired", &expired)
        .await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_wrong_audience_gets_401() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let mut c = claims("alice", 3600);
    c.aud = Some("some-other-service".into());
    let t = token(&c);
    let url = s.url(&format!("token={t}"));
    s.assert_refused_at_edge(&url, &[], 401, "invalid_token", &t)
        .await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_spoofed_client_id_gets_403() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let t = token_for("mallory");
    // mallory's valid token, asking to be legit (and to read legit's direct messages).
    let url = s.url(&format!("client_id=legit&token={t}"));
    s.assert_refused_at_edge(&url, &[], 403, "client_id_mismatch", &t)
        .await;
    // The real legit client still gets its direct messages.
    let mut mallory = s.connect_as(&claims("mallory", 3600)).await;
    mallory
        .send_json(serde_json::json!({"type":"direct_message","target":"legit","content":"hi"}))
        .await;
    assert_eq!(ok.recv_event("direct_message").await["from"], "mallory");
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_token_in_the_authorization_header_is_accepted() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let bearer = format!("Bearer {}", token_for("alice"));
    let (mut c, _) = Client::try_connect_with(&s.url(""), &[("authorization", &bearer)])
        .await
        .expect("header token accepted");
    assert_eq!(c.recv_event("welcome").await["client_id"], "alice");
    still_served(&mut c).await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_token_in_the_query_is_accepted() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let t = token_for("alice");
    let (mut c, _) = Client::try_connect_with(&s.url(&format!("client_id=alice&token={t}")), &[])
        .await
        .expect("query token accepted");
    assert_eq!(c.recv_event("welcome").await["client_id"], "alice");
    still_served(&mut c).await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn a_token_in_the_subprotocol_is_accepted_and_never_echoed() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let t = token_for("alice");
    // What `new WebSocket(url, ["ringcast.v1", "bearer." + jwt])` sends.
    let offered = format!("ringcast.v1, bearer.{t}");
    let (mut c, headers) =
        Client::try_connect_with(&s.url(""), &[("sec-websocket-protocol", &offered)])
            .await
            .expect("subprotocol token accepted");
    assert_eq!(c.recv_event("welcome").await["client_id"], "alice");
    let selected: Vec<&str> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        selected,
        ["ringcast.v1"],
        "select ringcast.v1, never the token"
    );
    for (_, v) in &headers {
        assert!(!v.as_bytes().windows(t.len()).any(|w| w == t.as_bytes()));
    }
    still_served(&mut c).await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn the_token_subject_is_the_routing_key() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let mut nodes_used = std::collections::BTreeSet::new();
    for sub in ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"] {
        let t = token_for(sub);
        // No client_id in the request: the gateway routes on the token's sub, so the header
        // and the query placement land on the same node.
        let bearer = format!("Bearer {t}");
        let (mut by_header, _) =
            Client::try_connect_with(&s.url(""), &[("authorization", &bearer)])
                .await
                .expect("header token");
        let w1 = by_header.recv_event("welcome").await;
        let (mut by_query, _) = Client::try_connect_with(&s.url(&format!("token={t}")), &[])
            .await
            .expect("query token");
        let w2 = by_query.recv_event("welcome").await;
        assert_eq!(w1["client_id"], sub);
        assert_eq!(w1["node"], w2["node"], "{sub} routed to two nodes");
        nodes_used.insert(w1["node"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(nodes_used.len(), 2, "the subjects spread over both nodes");
    still_served(&mut ok).await;
}

#[tokio::test]
async fn the_embedded_node_validates_with_the_gateways_settings() {
    let flags = support::auth::gateway_auth_flags();
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gw = support::TestGateway::start(&args).await;
    let t = token_for("alice");
    let (mut c, id) = Client::connect_welcomed(&format!("ws://{}/ws?token={t}", gw.addr)).await;
    assert_eq!(id, "alice");
    // The embedded node, reached around the gateway, lets nobody in without a token.
    let nodes = gw.nodes().await;
    let addr = nodes["nodes"][0]["addr"]
        .as_str()
        .expect("embedded node addr");
    let (status, body) = support::auth::refused(&format!("ws://{addr}/ws"), &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = support::auth::refused(&format!("ws://{addr}/ws?client_id=alice"), &[]).await;
    assert_eq!(status, 401);
    still_served(&mut c).await;
}

#[tokio::test]
async fn a_huge_or_too_long_exp_gets_401() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let mut huge = claims("alice", 0);
    huge.exp = 10_000_000_000_000_000_000;
    // Past the default --jwt-max-lifetime-secs of 30 days.
    let month = claims("alice", 31 * 86_400);
    for c in [huge, month] {
        let t = token(&c);
        let url = s.url(&format!("token={t}"));
        s.assert_refused_at_edge(&url, &[], 401, "invalid_token", &t)
            .await;
        still_served(&mut ok).await;
    }
}

/// `aud` as a list (RFC 7519 allows it; many identity providers send one): any element matching
/// `--jwt-audience` is enough, and with no audience configured any list is accepted.
#[tokio::test]
async fn a_list_audience_is_accepted() {
    let s = AuthStack::start(&[]).await;
    let mut ok = s.legit().await;
    let matching = list_aud_token("alice", json!(["account", AUDIENCE]));
    let (_, id) = Client::connect_welcomed(&s.url(&format!("token={matching}"))).await;
    assert_eq!(id, "alice");
    let other = list_aud_token("bob", json!(["account", "billing"]));
    let url = s.url(&format!("token={other}"));
    s.assert_refused_at_edge(&url, &[], 401, "invalid_token", &other)
        .await;
    still_served(&mut ok).await;

    // No audience configured, on the gateway and its embedded node.
    let open = TestGateway::start(&["--jwt-secret", SECRET]).await;
    let url = format!("ws://{}/ws?token={other}", open.addr);
    let (_, id) = Client::connect_welcomed(&url).await;
    assert_eq!(id, "bob");
}

/// A one-hour token for `sub` whose `aud` is `aud` (hand-written JSON, as other issuers shape it).
fn list_aud_token(sub: &str, aud: serde_json::Value) -> String {
    let claims = json!({"sub": sub, "exp": now_secs() + 3600, "aud": aud});
    ringcast_protocol::auth::mint_hs256(SECRET, &claims).expect("mint")
}
