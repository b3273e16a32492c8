//! Where an upgrade request carries its token: `Authorization: Bearer`, `?token=`, or a
//! `bearer.<JWT>` subprotocol entry beside [`SUBPROTOCOL`].

use http::header::{HeaderMap, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};

use crate::query::query_param;

/// The subprotocol a browser offers, together with `bearer.<JWT>`, to send its token
/// (`new WebSocket(url, ["ringcast.v1", "bearer." + jwt])`). The server answers with this one,
/// never with the token.
pub const SUBPROTOCOL: &str = "ringcast.v1";
/// Prefix of the subprotocol entry that carries the token.
pub const BEARER_PREFIX: &str = "bearer.";

/// The token of an upgrade request: `Authorization: Bearer T`, else `?token=T`, else a
/// `Sec-WebSocket-Protocol` entry `bearer.T`.
pub fn token_from_request(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim().to_owned());
        }
    }
    if let Some(Ok(t)) = query_param(query, "token") {
        return Some(t.into_owned());
    }
    offered_subprotocols(headers).find_map(|p| p.strip_prefix(BEARER_PREFIX).map(str::to_owned))
}

/// The subprotocols a client offered.
pub fn offered_subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[test]
    fn finds_the_token_in_header_query_or_subprotocol() {
        let mut h = HeaderMap::new();
        assert_eq!(token_from_request(&h, Some("a=1")), None);
        assert_eq!(
            token_from_request(&h, Some("token=q1")).as_deref(),
            Some("q1")
        );
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("ringcast.v1, bearer.s1"),
        );
        assert_eq!(token_from_request(&h, None).as_deref(), Some("s1"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer h1"));
        assert_eq!(
            token_from_request(&h, Some("token=q1")).as_deref(),
            Some("h1")
        );
    }
}
