//! Checking a token with the configured key, and what a valid one grants.

use http::header::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::args::{Access, AuthArgs, MAX_LEEWAY_SECS};
use crate::auth::claims::{now_secs, Claims};
use crate::auth::request::token_from_request;
use crate::ids::validate_client_id;
use crate::query::query_param;

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    rooms: Option<Vec<String>>,
    default_rooms: Access,
    chat: bool,
}

impl Identity {
    /// Whether the holder may join and post to `room`.
    pub fn may_use_room(&self, room: &str) -> bool {
        match &self.rooms {
            Some(patterns) => patterns.iter().any(|p| glob_match(p, room)),
            None => self.default_rooms == Access::Allow,
        }
    }

    /// Whether the holder may send global chat.
    pub fn may_chat(&self) -> bool {
        self.chat
    }
}

/// Why a connection was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token anywhere in the request.
    #[error("a token is required (Authorization: Bearer, ?token=, or subprotocol bearer.<jwt>)")]
    Missing,
    /// The token is malformed, badly signed, or has wrong claims.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The token expired (or is not valid yet).
    #[error("token expired or not yet valid")]
    Expired,
    /// The `client_id` query parameter names someone else than the token's `sub`.
    #[error("client_id does not match the token's subject")]
    SubjectMismatch,
}

impl AuthError {
    /// HTTP status: 401, or 403 for a spoofed client id.
    pub fn status(self) -> u16 {
        match self {
            AuthError::SubjectMismatch => 403,
            _ => 401,
        }
    }

    /// Every [`AuthError::code`], for metrics whose labels exist before the first refusal.
    pub const CODES: [&'static str; 4] = [
        "missing_token",
        "invalid_token",
        "token_expired",
        "client_id_mismatch",
    ];

    /// Stable reason code for JSON bodies and metrics labels.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::SubjectMismatch => "client_id_mismatch",
        }
    }
}

/// Validates tokens with one configured key.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    max_lifetime_secs: u64,
    default_rooms: Access,
    default_chat: Access,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `Ok(None)` when no key is configured (authentication off).
    pub fn from_args(args: &AuthArgs) -> Result<Option<Self>, String> {
        let (key, algorithm) = match (&args.jwt_secret, &args.jwt_public_key) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("set either --jwt-secret or --jwt-public-key, not both".into())
            }
            (Some(secret), None) => {
                if secret.len() < 16 {
                    return Err("--jwt-secret must be at least 16 bytes".into());
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    (k, Algorithm::ES256)
                } else {
                    return Err(format!(
                        "{} is not an RSA or EC public key in PEM form",
                        path.display()
                    ));
                }
            }
        };
        if args.jwt_leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!(
                "--jwt-leeway-secs must be at most {MAX_LEEWAY_SECS} (one day)"
            ));
        }
        if args.jwt_max_lifetime_secs == 0 {
            return Err("--jwt-max-lifetime-secs must be at least 1".into());
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = args.jwt_leeway_secs;
        validation.validate_nbf = true;
        // A configured audience or issuer is required: the library checks these claims only
        // when a token carries them.
        let mut required = vec!["exp", "sub"];
        match &args.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &args.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Authenticator {
            key,
            validation,
            max_lifetime_secs: args.jwt_max_lifetime_secs,
            default_rooms: args.default_room_access.unwrap_or(Access::Allow),
            default_chat: args.default_chat_access.unwrap_or(Access::Allow),
        }))
    }

    /// Validates a token and returns what it grants.
    pub fn validate(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::Invalid("algorithm not accepted")
                }
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
                ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing claim"),
                _ => AuthError::Invalid("malformed token"),
            },
        )?;
        let claims = data.claims;
        // Past this, the token is refused: a leaked token must not stay valid for years, and
        // no deadline computed from `exp` can be out of range.
        let latest = now_secs()
            .saturating_add(self.max_lifetime_secs)
            .saturating_add(self.validation.leeway);
        if claims.exp > latest {
            return Err(AuthError::Invalid(
                "exp is further ahead than the longest lifetime",
            ));
        }
        if validate_client_id(&claims.sub).is_err() {
            return Err(AuthError::Invalid("sub is not a valid client id"));
        }
        Ok(Identity {
            sub: claims.sub,
            expires_at: claims.exp,
            rooms: claims.rooms,
            default_rooms: self.default_rooms,
            chat: claims.chat.unwrap_or(self.default_chat == Access::Allow),
        })
    }

    /// Seconds of tolerated clock skew.
    pub fn leeway_secs(&self) -> u64 {
        self.validation.leeway
    }

    /// Authenticates an upgrade request: finds the token, validates it, and checks that a
    /// `client_id` query parameter, when present, names the token's subject.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let token = token_from_request(headers, query).ok_or(AuthError::Missing)?;
        let identity = self.validate(&token)?;
        if let Some(Ok(id)) = query_param(query, "client_id") {
            if id != identity.sub {
                return Err(AuthError::SubjectMismatch);
            }
        }
        Ok(identity)
    }
}

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_lists_every_auth_error_once() {
        use super::AuthError::*;
        let codes: Vec<&str> = [Missing, Invalid("x"), Expired, SubjectMismatch]
            .iter()
            .map(|e| e.code())
            .collect();
        assert_eq!(codes, super::AuthError::CODES);
    }

    use super::*;
    use crate::auth::claims::mint_hs256;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        Authenticator::from_args(&AuthArgs {
            jwt_secret: Some(SECRET.into()),
            jwt_audience: Some("ringcast".into()),
            ..AuthArgs::default()
        })
        .unwrap()
        .unwrap()
    }

    fn claims(sub: &str, ttl: i64) -> Claims {
        Claims {
            sub: sub.into(),
            exp: (now_secs() as i64 + ttl) as u64,
            nbf: None,
            aud: Some("ringcast".into()),
            iss: None,
            rooms: Some(vec!["support-*".into(), "team-42".into()]),
            chat: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("support-*", "support-7"));
        assert!(glob_match("support-*", "support-"));
        assert!(!glob_match("support-*", "supporters"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-x-*", "a-x-b-x-c"));
        assert!(!glob_match("team-42", "team-421"));
    }

    #[test]
    fn valid_token_grants_its_rooms() {
        let token = mint_hs256(SECRET, &claims("alice", 60)).unwrap();
        let id = auth().validate(&token).unwrap();
        assert_eq!(id.sub, "alice");
        assert!(id.may_use_room("support-1"));
        assert!(id.may_use_room("team-42"));
        assert!(!id.may_use_room("team-43"));
        assert!(id.may_chat());
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = auth();
        let expired = mint_hs256(SECRET, &claims("alice", -60)).unwrap();
        assert_eq!(a.validate(&expired), Err(AuthError::Expired));
        let other = mint_hs256("another-secret-of-32-bytes-.....", &claims("alice", 60)).unwrap();
        assert_eq!(a.validate(&other), Err(AuthError::Invalid("bad signature")));
        let mut wrong_aud = claims("alice", 60);
        wrong_aud.aud = Some("elsewhere".into());
        let t = mint_hs256(SECRET, &wrong_aud).unwrap();
        assert_eq!(a.validate(&t), Err(AuthError::Invalid("wrong audience")));
        // alg: none, hand-made: header {"alg":"none","typ":"JWT"}.
        let body = mint_hs256(SECRET, &claims("alice", 60)).unwrap();
        let payload = body.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(matches!(a.validate(&none), Err(AuthError::Invalid(_))));
        assert!(matches!(a.validate("garbage"), Err(AuthError::Invalid(_))));
        let bad_sub = mint_hs256(SECRET, &claims("no spaces", 60)).unwrap();
        assert!(matches!(a.validate(&bad_sub), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn spoofed_client_id_is_forbidden() {
        let token = mint_hs256(SECRET, &claims("alice", 60)).unwrap();
        let q = format!("client_id=mallory&token={token}");
        assert_eq!(
            auth().authenticate(&HeaderMap::new(), Some(&q)),
            Err(AuthError::SubjectMismatch)
        );
        let q = format!("client_id=alice&token={token}");
        assert!(auth().authenticate(&HeaderMap::new(), Some(&q)).is_ok());
    }

    #[test]
    fn configuration_errors_are_clear() {
        assert!(Authenticator::from_args(&AuthArgs::default())
            .unwrap()
            .is_none());
        let short = AuthArgs {
            jwt_secret: Some("short".into()),
            ..AuthArgs::default()
        };
        assert!(Authenticator::from_args(&short).is_err());
        let missing = AuthArgs {
            jwt_public_key: Some("/nonexistent.pem".into()),
            ..AuthArgs::default()
        };
        assert!(Authenticator::from_args(&missing)
            .unwrap_err()
            .contains("cannot read"));
    }
}
