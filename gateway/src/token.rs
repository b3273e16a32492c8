//! `ringcast-gateway token`: mints an HS256 development token with the configured secret, so a
//! deployment can be tried end to end without an identity provider.
//!
//! Production tokens come from your own issuer (any HS256/RS256/ES256 signer); this command is
//! for development and tests. It prints the token alone on stdout, so `$(…)` captures it.

use clap::Args;
use ringcast_protocol::auth::{mint_hs256, now_secs, Audience, AuthArgs, Claims};
use ringcast_protocol::validate_client_id;

/// Longest lifetime the command signs (a development token should not live for years).
pub const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

/// Flags of `ringcast-gateway token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The token's subject: the client id its holder connects as.
    #[arg(long, env = "RINGCAST_TOKEN_SUB")]
    pub sub: String,

    /// Room patterns the holder may join and post to (`*`/`?` globs), repeatable or
    /// comma-separated. Without it the token has no `rooms` claim and the nodes'
    /// `--default-room-access` applies.
    #[arg(long, env = "RINGCAST_TOKEN_ROOMS", value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,

    /// Lifetime: `90s`, `15m`, `1h`, `7d`, or plain seconds.
    #[arg(long, env = "RINGCAST_TOKEN_TTL", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,

    /// The `chat` claim (`true` / `false`): may the holder send global chat. Without it the
    /// nodes' `--default-chat-access` applies.
    #[arg(long, env = "RINGCAST_TOKEN_CHAT")]
    pub chat: Option<bool>,

    /// The `aud` claim; defaults to the configured `--jwt-audience`.
    #[arg(long, env = "RINGCAST_JWT_AUDIENCE")]
    pub aud: Option<String>,

    /// The `iss` claim; defaults to the configured `--jwt-issuer`.
    #[arg(long, env = "RINGCAST_JWT_ISSUER")]
    pub iss: Option<String>,

    /// The HS256 secret (may also be given before `token`); prefer the environment variable,
    /// since command lines are visible to other local users.
    #[arg(long, env = "RINGCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// Parses `90s`, `15m`, `1h`, `7d` or plain seconds into seconds (1 s ..= [`MAX_TTL_SECS`]).
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d (e.g. 1h)"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(unit) {
        Some(secs) if (1..=MAX_TTL_SECS).contains(&secs) => Ok(secs),
        _ => Err(format!("{s:?}: the lifetime must be 1 s to 366 d")),
    }
}

/// Signs the token `args` describe. `auth` is the gateway's configuration (flags before
/// `token`, or environment): its `--jwt-secret` is used when `args` has none, its
/// `--jwt-audience` / `--jwt-issuer` when `args` names none, and a lifetime past its
/// `--jwt-max-lifetime-secs` is refused, since the stack would refuse such a token.
pub fn mint(args: &TokenArgs, auth: &AuthArgs) -> Result<String, String> {
    let secret = args
        .jwt_secret
        .as_deref()
        .or(auth.jwt_secret.as_deref())
        .ok_or("no secret: set RINGCAST_JWT_SECRET (or --jwt-secret); tokens are HS256")?;
    if secret.len() < 16 {
        return Err("the secret must be at least 16 bytes".into());
    }
    validate_client_id(&args.sub).map_err(|_| "--sub must be 1-64 of [A-Za-z0-9_.:@-]")?;
    if args.ttl > auth.jwt_max_lifetime_secs {
        return Err(format!(
            "--ttl {} s is longer than --jwt-max-lifetime-secs ({} s): the gateway and the \
             nodes would refuse the token",
            args.ttl, auth.jwt_max_lifetime_secs
        ));
    }
    let claims = Claims {
        sub: args.sub.clone(),
        exp: now_secs().saturating_add(args.ttl),
        nbf: None,
        aud: args
            .aud
            .clone()
            .or_else(|| auth.jwt_audience.clone())
            .map(Audience::One),
        iss: args.iss.clone().or_else(|| auth.jwt_issuer.clone()),
        rooms: args.rooms.clone(),
        chat: args.chat,
    };
    mint_hs256(secret, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::auth::Authenticator;

    const SECRET: &str = "token-cli-secret-0123456789";

    fn args(sub: &str) -> TokenArgs {
        TokenArgs {
            sub: sub.into(),
            rooms: Some(vec!["support-*".into()]),
            ttl: 3600,
            chat: Some(false),
            aud: None,
            iss: None,
            jwt_secret: None,
        }
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(7 * 86_400));
        assert_eq!(parse_ttl("120"), Ok(120));
        for bad in ["", "0", "1y", "h", "-1h", "400d", "99999999999999999999"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    fn configured(secret: Option<&str>, audience: Option<&str>) -> AuthArgs {
        AuthArgs {
            jwt_secret: secret.map(str::to_owned),
            jwt_audience: audience.map(str::to_owned),
            ..AuthArgs::default()
        }
    }

    #[test]
    fn minted_tokens_pass_the_configured_validation() {
        let token = mint(&args("alice"), &configured(Some(SECRET), Some("ringcast"))).unwrap();
        let auth = Authenticator::from_args(&AuthArgs {
            jwt_secret: Some(SECRET.into()),
            jwt_audience: Some("ringcast".into()),
            ..AuthArgs::default()
        })
        .unwrap()
        .unwrap();
        let id = auth.validate(&token).unwrap();
        assert_eq!(id.sub, "alice");
        assert!(id.may_use_room("support-9"));
        assert!(!id.may_use_room("billing"));
        assert!(!id.may_chat());
        assert!(id.expires_at >= now_secs() + 3590);
    }

    #[test]
    fn clear_errors() {
        assert!(mint(&args("alice"), &configured(None, None))
            .unwrap_err()
            .contains("RINGCAST_JWT_SECRET"));
        assert!(mint(&args("alice"), &configured(Some("short"), None)).is_err());
        assert!(mint(&args("no spaces"), &configured(Some(SECRET), None)).is_err());
    }

    #[test]
    fn a_lifetime_the_stack_would_refuse_is_not_signed() {
        let mut long = args("alice");
        long.ttl = 31 * 86_400;
        let err = mint(&long, &configured(Some(SECRET), None)).unwrap_err();
        assert!(err.contains("--jwt-max-lifetime-secs"), "{err}");
        let mut auth = configured(Some(SECRET), None);
        auth.jwt_max_lifetime_secs = 366 * 86_400;
        assert!(mint(&long, &auth).is_ok());
    }
}
