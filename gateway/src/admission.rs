//! Admission of a `/ws` upgrade before any node is picked, once the handshake check
//! (`ringcast_net::ws_handshake`, which also validates a requested `client_id`) has passed: the
//! `Origin` allow-list, then the token (when authentication is configured), then the client id
//! the ring routes on.
//!
//! Everything here runs on the request head alone, so a refused request never costs a
//! connection to a node. With authentication the routing key is the token's `sub`; the request
//! is forwarded as it came (token included) and the node validates it again with the same
//! settings, so a node reached around the gateway lets nobody in either.

use hyper::header::HeaderMap;
use hyper::StatusCode;
use ringcast_protocol::auth::{AuthError, Authenticator};
use ringcast_protocol::{generate_client_id, query_param};

use crate::origin::OriginPolicy;

/// What the gateway checks before routing.
#[derive(Debug, Default)]
pub struct Admission {
    /// Token validation; `None` when authentication is off.
    pub auth: Option<Authenticator>,
    /// Which browser origins may connect.
    pub origins: OriginPolicy,
}

/// An upgrade that may be routed.
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The routing key: the token's subject, else the requested or a generated client id.
    pub client_id: String,
    /// The query to forward; it names the client id so the gateway and the node agree on it.
    pub query: String,
}

/// A refused upgrade, answered with `status` and `{"error": code, "message": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable reason code, also the metrics label (always a fixed string).
    pub code: &'static str,
    /// Human-readable detail (never contains the token).
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::new(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            e.code(),
            e.to_string(),
        )
    }
}

impl Admission {
    /// Decides on an upgrade from its headers, its query and the client id the handshake check
    /// read from that query (`asked`, already validated).
    pub fn admit(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        asked: Option<String>,
    ) -> Result<Admitted, Refusal> {
        if !self.origins.allows(headers) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this Origin may not connect",
            ));
        }
        match &self.auth {
            Some(auth) => {
                let identity = auth.authenticate(headers, query)?;
                Ok(Admitted {
                    query: with_client_id(query, &identity.sub),
                    client_id: identity.sub,
                })
            }
            None => {
                let (client_id, query) = client_id_and_query(query, asked);
                Ok(Admitted { client_id, query })
            }
        }
    }
}

/// `query` with `client_id=ID` appended unless it already names one (an authenticated request
/// that names one names the token's subject: anything else was refused with 403).
fn with_client_id(query: Option<&str>, id: &str) -> String {
    let query = query.unwrap_or_default();
    if query_param(Some(query), "client_id").is_some() {
        query.to_owned()
    } else if query.is_empty() {
        format!("client_id={id}")
    } else {
        format!("{query}&client_id={id}")
    }
}

/// The client_id (the one `asked` for, or one generated when none was) and the query to
/// forward, which carries a generated id so the node and the gateway agree on it.
fn client_id_and_query(query: Option<&str>, asked: Option<String>) -> (String, String) {
    match asked {
        Some(id) => (id, query.unwrap_or_default().to_owned()),
        None => {
            let id = generate_client_id(rand::random::<u8>);
            let query = with_client_id(query, &id);
            (id, query)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, AUTHORIZATION, ORIGIN};
    use ringcast_protocol::auth::{mint_hs256, now_secs, AuthArgs, Claims};

    const SECRET: &str = "unit-test-secret-0123456789";

    fn with_auth() -> Admission {
        let args = AuthArgs {
            jwt_secret: Some(SECRET.into()),
            ..AuthArgs::default()
        };
        Admission {
            auth: Authenticator::from_args(&args).unwrap(),
            origins: OriginPolicy::new(vec!["https://app.example.com".parse().unwrap()]),
        }
    }

    fn token(sub: &str) -> String {
        let claims = Claims {
            sub: sub.into(),
            exp: now_secs() + 60,
            nbf: None,
            aud: None,
            iss: None,
            rooms: None,
            chat: None,
        };
        mint_hs256(SECRET, &claims).unwrap()
    }

    #[test]
    fn generated_ids_are_forwarded() {
        let (id, q) = client_id_and_query(None, None);
        assert_eq!(q, format!("client_id={id}"));
        assert!(id.starts_with("anon-"), "{id}");
        let (id, q) = client_id_and_query(Some("token=x"), None);
        assert_eq!(q, format!("token=x&client_id={id}"));
        let (id, q) = client_id_and_query(Some("client_id=a%40b"), Some("a@b".into()));
        assert_eq!((id.as_str(), q.as_str()), ("a@b", "client_id=a%40b"));
    }

    #[test]
    fn the_token_subject_is_the_routing_key() {
        let a = with_auth();
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", token("alice"))).unwrap(),
        );
        let ok = a.admit(&h, None, None).unwrap();
        assert_eq!(ok.client_id, "alice");
        assert_eq!(ok.query, "client_id=alice");
        let ok = a
            .admit(&h, Some("client_id=alice&x=1"), Some("alice".into()))
            .unwrap();
        assert_eq!(ok.query, "client_id=alice&x=1");
        let spoof = a
            .admit(&h, Some("client_id=mallory"), Some("mallory".into()))
            .unwrap_err();
        assert_eq!(
            (spoof.status.as_u16(), spoof.code),
            (403, "client_id_mismatch")
        );
        let none = a
            .admit(
                &HeaderMap::new(),
                Some("client_id=alice"),
                Some("alice".into()),
            )
            .unwrap_err();
        assert_eq!((none.status.as_u16(), none.code), (401, "missing_token"));
    }

    #[test]
    fn origin_is_checked_first_and_never_echoes_the_token() {
        let a = with_auth();
        let t = token("alice");
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.io"));
        let r = a.admit(&h, Some(&format!("token={t}")), None).unwrap_err();
        assert_eq!((r.status.as_u16(), r.code), (403, "origin_not_allowed"));
        let bad = format!("token={t}x");
        let r = a.admit(&HeaderMap::new(), Some(&bad), None).unwrap_err();
        assert_eq!(r.code, "invalid_token");
        assert!(!r.message.contains(&t));
    }
}
