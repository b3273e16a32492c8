//! Checking a WebSocket upgrade request before answering it (RFC 6455 §4.2.1).
//!
//! Everything a client can get wrong is answered with an HTTP status and a JSON body before any
//! WebSocket exists, so a bad handshake never costs a session.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use ringcast_protocol::{query_param, validate_client_id};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A refused upgrade: the status and a machine-readable reason for the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable reason code.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: &'static str,
}

impl Refusal {
    const fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Refusal {
            status,
            code,
            message,
        }
    }
}

/// An upgrade that may proceed.
#[derive(Debug)]
pub struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    pub accept_key: String,
    /// The client id from the query, if one was given.
    pub client_id: Option<String>,
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Validates the handshake and the `client_id` query parameter.
pub fn check<B>(req: &Request<B>) -> Result<Accepted, Refusal> {
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_http_version",
            "WebSocket upgrades need HTTP/1.1",
        ));
    }
    if req.method() != Method::GET {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "WebSocket upgrades use GET",
        ));
    }
    let headers = req.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket only (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_websocket_version",
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| k.len() == 24)
        .ok_or(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_websocket_key",
            "Sec-WebSocket-Key is missing or malformed",
        ))?;
    let client_id = match query_param(req.uri().query(), "client_id") {
        None => None,
        Some(Ok(id)) if validate_client_id(&id).is_ok() => Some(id.into_owned()),
        Some(_) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_client_id",
                "client_id must be 1-64 characters of [A-Za-z0-9_.:@-]",
            ))
        }
    };
    Ok(Accepted {
        accept_key: derive_accept_key(key.as_bytes()),
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> http::request::Builder {
        Request::builder()
            .uri(uri)
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn accepts_a_valid_upgrade() {
        let ok = check(&req("/ws?client_id=alice").body(()).unwrap()).unwrap();
        // The RFC 6455 example key and answer.
        assert_eq!(ok.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(ok.client_id.as_deref(), Some("alice"));
        assert!(check(&req("/ws").body(()).unwrap())
            .unwrap()
            .client_id
            .is_none());
    }

    #[test]
    fn refuses_bad_handshakes() {
        let code = |r: Request<()>| check(&r).unwrap_err().code;
        assert_eq!(
            code(req("/ws?client_id=a%20b").body(()).unwrap()),
            "invalid_client_id"
        );
        assert_eq!(
            code(req("/ws?client_id=").body(()).unwrap()),
            "invalid_client_id"
        );
        assert_eq!(
            code(req("/ws").method("POST").body(()).unwrap()),
            "method_not_allowed"
        );
        assert_eq!(
            code(Request::get("/ws").body(()).unwrap()),
            "upgrade_required"
        );
        let mut r = req("/ws").body(()).unwrap();
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(code(r), "bad_websocket_version");
        let mut r = req("/ws").body(()).unwrap();
        r.headers_mut().remove("sec-websocket-key");
        assert_eq!(code(r), "bad_websocket_key");
    }
}
