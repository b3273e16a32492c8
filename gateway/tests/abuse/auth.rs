//! Attacks with tokens, against a `ringcast-node` process behind a `ringcast-gateway` process.
//!
//! - `exp = 10^19` passed validation and panicked the node's session after its welcome (the
//!   expiry deadline overflowed), leaving a ghost connection in the hub. A token living longer
//!   than `--jwt-max-lifetime-secs` is now refused at the upgrade, by the gateway and by a node
//!   reached around it.
//! - A list-valued `aud`, as many identity providers send it, was refused as "malformed token".

use ringcast_protocol::auth::now_secs;
use ringcast_testkit::{http_get, Client};
use serde_json::{json, Value};

use crate::support::auth::{
    claims, refused, still_served, token, token_for, AuthProcesses, AUDIENCE, SECRET,
};

/// `/stats` `local_connections` of the node process.
async fn node_connections(p: &AuthProcesses) -> Value {
    let (_, body) = http_get(p.node.addr, "/stats").await;
    serde_json::from_str::<Value>(&body).unwrap_or_default()["local_connections"].clone()
}

#[tokio::test]
async fn a_token_with_a_huge_exp_is_refused_by_the_gateway_and_the_node() {
    let p = AuthProcesses::start().await;
    let (mut ok, _) =
        Client::connect_welcomed(&p.gateway_url(&format!("token={}", token_for("legit")))).await;
    let mut huge = claims("mallory", 0);
    huge.exp = 10_000_000_000_000_000_000;
    let mut max = claims("mallory", 0);
    max.exp = u64::MAX;
    let month = claims("mallory", 31 * 86_400);
    for c in [huge, max, month] {
        let query = format!("token={}", token(&c));
        for url in [p.gateway_url(&query), p.node_url(&query)] {
            let (status, body) = refused(&url, &[]).await;
            assert_eq!(
                (status, &body["error"]),
                (401, &json!("invalid_token")),
                "exp {}: {url}",
                c.exp
            );
        }
        still_served(&mut ok).await;
    }
    assert_eq!(node_connections(&p).await, 1, "only the legitimate client");
}

#[tokio::test]
async fn a_list_audience_is_accepted_by_the_gateway_and_the_node() {
    let p = AuthProcesses::start().await;
    let (mut ok, _) =
        Client::connect_welcomed(&p.gateway_url(&format!("token={}", token_for("legit")))).await;
    let list = |sub: &str, aud: Value| {
        let claims = json!({"sub": sub, "exp": now_secs() + 3600, "aud": aud});
        let t = ringcast_protocol::auth::mint_hs256(SECRET, &claims).expect("mint");
        format!("token={t}")
    };
    let matching = list("alice", json!(["account", AUDIENCE]));
    for url in [p.gateway_url(&matching), p.node_url(&matching)] {
        let (mut c, id) = Client::connect_welcomed(&url).await;
        assert_eq!(id, "alice", "{url}");
        still_served(&mut c).await;
    }
    let other = list("bob", json!(["account", "billing"]));
    for url in [p.gateway_url(&other), p.node_url(&other)] {
        let (status, body) = refused(&url, &[]).await;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("invalid_token")),
            "{url}"
        );
    }
    still_served(&mut ok).await;
}
