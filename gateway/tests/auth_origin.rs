//! The `Origin` allow-list at the gateway: foreign origins and suffix tricks get 403 before any
//! node is contacted; listed origins (exact or `*.` subdomains) and clients that send no
//! `Origin` at all (non-browsers) are admitted. A legitimate client keeps working throughout.

mod support;

use ringcast_testkit::Client;
use support::auth::{still_served, token_for, AuthStack};

const ORIGINS: &[&str] = &[
    "--allowed-origin",
    "https://app.example.com",
    "--allowed-origin",
    "https://*.example.com",
];

/// Connects as `sub` with a valid token and `origin`; returns the welcomed client.
async fn connect_from(s: &AuthStack, sub: &str, origin: &str) -> Client {
    let url = s.url(&format!("token={}", token_for(sub)));
    let (mut c, _) = Client::try_connect_with(&url, &[("origin", origin)])
        .await
        .unwrap_or_else(|e| panic!("{origin} was refused: {e}"));
    assert_eq!(c.recv_event("welcome").await["client_id"], sub);
    c
}

#[tokio::test]
async fn a_foreign_origin_gets_403_even_with_a_valid_token() {
    let s = AuthStack::start(ORIGINS).await;
    let mut ok = s.legit().await;
    let t = token_for("alice");
    let url = s.url(&format!("token={t}"));
    for foreign in [
        "https://evil.io",
        "http://app.example.com",
        "https://app.example.com:8443",
        "null",
    ] {
        s.assert_refused_at_edge(&url, &[("origin", foreign)], 403, "origin_not_allowed", &t)
            .await;
        still_served(&mut ok).await;
    }
}

#[tokio::test]
async fn a_suffix_trick_origin_gets_403() {
    let s = AuthStack::start(ORIGINS).await;
    let mut ok = s.legit().await;
    let t = token_for("alice");
    let url = s.url(&format!("token={t}"));
    for trick in [
        "https://example.com.evil.io",
        "https://app.example.com.evil.io",
        "https://evilexample.com",
        "https://www.evilexample.com",
    ] {
        s.assert_refused_at_edge(&url, &[("origin", trick)], 403, "origin_not_allowed", &t)
            .await;
        still_served(&mut ok).await;
    }
}

#[tokio::test]
async fn listed_origins_and_subdomains_are_admitted() {
    let s = AuthStack::start(ORIGINS).await;
    let mut ok = s.legit().await;
    let mut exact = connect_from(&s, "alice", "https://app.example.com").await;
    let mut sub = connect_from(&s, "bob", "https://chat.eu.example.com").await;
    still_served(&mut exact).await;
    still_served(&mut sub).await;
    still_served(&mut ok).await;
}

#[tokio::test]
async fn no_origin_header_is_admitted_since_only_browsers_send_one() {
    let s = AuthStack::start(ORIGINS).await;
    // `legit` connects without an Origin header (tungstenite sends none), token in the query.
    let mut ok = s.legit().await;
    still_served(&mut ok).await;
    // Without a token, a missing Origin does not help: the token still decides.
    s.assert_refused_at_edge(&s.url(""), &[], 401, "missing_token", "")
        .await;
    still_served(&mut ok).await;
}
