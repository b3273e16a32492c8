//! What a token says: the claims ringcast reads, and minting development tokens.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// The claims ringcast reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The client id the connection speaks as.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Audience: one string or a list of them (RFC 7519 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Room name patterns (`*` and `?` globs) the holder may join and post to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Whether the holder may send global `chat` broadcasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<bool>,
}

/// The `aud` claim: RFC 7519 allows a single string or a list. When `--jwt-audience` is set,
/// one matching element of a list is enough (the JWT library checks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "ringcast"`.
    One(String),
    /// `"aud": ["account", "ringcast"]`.
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Audience::One(aud.to_owned())
    }
}

impl From<String> for Audience {
    fn from(aud: String) -> Self {
        Audience::One(aud)
    }
}

impl From<Vec<String>> for Audience {
    fn from(aud: Vec<String>) -> Self {
        Audience::Many(aud)
    }
}

/// Signs an HS256 development token (for `ringcast-gateway token` and tests). `claims` is
/// usually [`Claims`]; tests also sign hand-written JSON, as other issuers shape it.
pub fn mint_hs256<C: Serialize>(secret: &str, claims: &C) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}
