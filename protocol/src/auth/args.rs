//! The authentication flags both binaries take, and their defaults.
//!
//! One clap definition, flattened into the node's and the gateway's `Config`, so a flag is
//! spelled, documented and defaulted once.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Largest `--jwt-leeway-secs`: clock skew beyond a day is a broken clock, not skew.
pub const MAX_LEEWAY_SECS: u64 = 86_400;

/// Default of `--jwt-leeway-secs`.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// Default of `--jwt-max-lifetime-secs`: 30 days.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 30 * 86_400;

/// Access when a token has no claim about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Access {
    /// Allowed.
    Allow,
    /// Forbidden.
    Deny,
}

/// Authentication flags, shared by `ringcast-node` and `ringcast-gateway`.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HS256 shared secret. Setting it (or --jwt-public-key) makes a valid token mandatory.
    #[arg(long, env = "RINGCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file: an RSA key selects RS256, an EC P-256 key ES256.
    #[arg(long, env = "RINGCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `aud` claim.
    #[arg(long, env = "RINGCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim.
    #[arg(long, env = "RINGCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Seconds of clock skew tolerated on `exp` and `nbf` (at most one day).
    #[arg(long, env = "RINGCAST_JWT_LEEWAY_SECS", default_value_t = DEFAULT_LEEWAY_SECS)]
    pub jwt_leeway_secs: u64,

    /// Longest lifetime accepted: a token whose `exp` lies further ahead than this is refused
    /// (401 `invalid_token`), so a leaked token cannot be valid for years.
    #[arg(
        long,
        env = "RINGCAST_JWT_MAX_LIFETIME_SECS",
        default_value_t = DEFAULT_MAX_LIFETIME_SECS
    )]
    pub jwt_max_lifetime_secs: u64,

    /// Room access for tokens without a `rooms` claim.
    #[arg(
        long,
        env = "RINGCAST_DEFAULT_ROOM_ACCESS",
        value_enum,
        default_value = "allow"
    )]
    pub default_room_access: Option<Access>,

    /// Global `chat` access for tokens without a `chat` claim.
    #[arg(
        long,
        env = "RINGCAST_DEFAULT_CHAT_ACCESS",
        value_enum,
        default_value = "allow"
    )]
    pub default_chat_access: Option<Access>,
}

impl Default for AuthArgs {
    /// Authentication off, every other setting at its flag's default.
    fn default() -> Self {
        AuthArgs {
            jwt_secret: None,
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway_secs: DEFAULT_LEEWAY_SECS,
            jwt_max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
            default_room_access: None,
            default_chat_access: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags as a binary's `Config` carries them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        auth: AuthArgs,
    }

    #[test]
    fn the_default_arguments_are_the_flags_defaults() {
        let parsed = Flags::parse_from(["x"]).auth;
        let default = AuthArgs::default();
        assert_eq!(parsed.jwt_leeway_secs, default.jwt_leeway_secs);
        assert_eq!(parsed.jwt_leeway_secs, DEFAULT_LEEWAY_SECS);
        assert_eq!(parsed.jwt_max_lifetime_secs, default.jwt_max_lifetime_secs);
    }
}
