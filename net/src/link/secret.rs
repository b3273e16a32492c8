//! The shared secret a gateway presents to open a link, and the node's check of it.
//!
//! A link carries many clients: whoever holds one opens streams that each take one of the
//! node's connection slots and reach its sessions as if from the gateway, so a node takes links
//! only from gateways that know the secret both are configured with (`--link-secret`). (The
//! node trusts nothing a link says about its clients' addresses: it reads no
//! `X-Forwarded-For`.) Without a secret, a node takes links from loopback peers only, the
//! gateway on the same host, and not through a proxy there. The secret travels as
//! `Authorization: Bearer <secret>`, in plaintext, in the `/link` upgrade and is compared in
//! constant time; it is never logged (its `Debug` is redacted, and a rejected value is never
//! printed).

use std::net::SocketAddr;

use http::header::{self, HeaderMap};

/// The secret that authenticates links; [`LinkSecret::MIN_LEN`] to [`LinkSecret::MAX_LEN`]
/// printable bytes.
///
/// Deliberately not `PartialEq`: an `==` on it would not be constant-time; compare with
/// [`LinkSecret::presented_in`].
#[derive(Clone)]
pub struct LinkSecret(String);

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(<redacted>)")
    }
}

/// Why a configured link secret cannot be used. Never contains the value: it is printed at
/// startup, into logs that many people read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Shorter than [`LinkSecret::MIN_LEN`].
    #[error("a link secret has at least {} bytes", LinkSecret::MIN_LEN)]
    TooShort,
    /// Longer than [`LinkSecret::MAX_LEN`].
    #[error("a link secret has at most {} bytes", LinkSecret::MAX_LEN)]
    TooLong,
    /// A space, a control character (a newline inside it) or a byte outside ASCII.
    #[error("a link secret is printable ASCII without spaces (one trailing newline is dropped)")]
    Unprintable,
    /// A placeholder from an example (`replace-me…`, `…change-me`): public, so no secret.
    #[error(
        "the link secret is still a placeholder from an example; set your own, e.g. \
         kubectl -n ringcast create secret generic ringcast-link \
         --from-literal=RINGCAST_LINK_SECRET=$(openssl rand -hex 32)"
    )]
    Placeholder,
}

/// Words of the placeholders that examples ship (`deploy/k8s/base/secret.yaml` has
/// `replace-me-with-openssl-rand-hex-32`): a secret that contains one is refused, so an example
/// applied as is does not authenticate links with a string anyone can read.
const PLACEHOLDERS: [&str; 2] = ["replace-me", "change-me"];

impl std::str::FromStr for LinkSecret {
    type Err = SecretError;

    /// See [`LinkSecret::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LinkSecret::parse(s)
    }
}

/// clap's parser of `--link-secret` / `RINGCAST_LINK_SECRET`. clap's usual error for a bad value
/// quotes the value (`invalid value '<VALUE>' for '--link-secret'`); this one says only what is
/// wrong with it, so a rejected secret never reaches a log.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = LinkSecret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<LinkSecret, clap::Error> {
        let parsed = value
            .to_str()
            .ok_or(SecretError::Unprintable)
            .and_then(LinkSecret::parse);
        parsed.map_err(|e| {
            let message = format!("invalid --link-secret (RINGCAST_LINK_SECRET): {e}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        })
    }
}

impl LinkSecret {
    /// Shortest secret accepted.
    pub const MIN_LEN: usize = 16;

    /// Longest secret accepted.
    pub const MAX_LEN: usize = 256;

    /// A secret as configured: one trailing newline (`\n` or `\r\n`) is dropped, as a Secret
    /// made from a file (`openssl rand -hex 32 > f`) ends in one; the rest must be
    /// [`LinkSecret::MIN_LEN`] to [`LinkSecret::MAX_LEN`] printable ASCII bytes.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let s = raw
            .strip_suffix("\r\n")
            .or_else(|| raw.strip_suffix('\n'))
            .unwrap_or(raw);
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::Unprintable);
        }
        if s.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort);
        }
        if s.len() > Self::MAX_LEN {
            return Err(SecretError::TooLong);
        }
        let lower = s.to_ascii_lowercase();
        if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
            return Err(SecretError::Placeholder);
        }
        Ok(LinkSecret(s.to_owned()))
    }

    /// The `Authorization` header value that presents it (`Bearer <secret>`).
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `headers` present this secret: `Authorization: Bearer <secret>`, the scheme in
    /// any case (RFC 9110 §11.1). Compared in a time that depends on neither the presented
    /// value nor the secret.
    pub fn presented_in(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, rest) = value.split_at(space);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return false;
        }
        let given = rest.trim_ascii_start();
        constant_time_eq(given, self.0.as_bytes())
    }
}

/// Whether `a` and `b` are equal, in a time that depends on neither: both are compared as
/// [`LinkSecret::MAX_LEN`] bytes (zero-padded), their lengths folded into the result. A value
/// longer than that is no secret of ours, whatever its bytes (that says nothing of the secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    const N: usize = LinkSecret::MAX_LEN;
    if a.len() > N || b.len() > N {
        return false;
    }
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..N {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Why a link request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A secret is configured and the request did not present it (401 `link_unauthorized`).
    Unauthorized,
    /// No secret is configured and the peer is not on loopback (403 `link_forbidden`).
    NotLoopback,
    /// No secret is configured and the request came through a proxy on this host, which makes
    /// every remote client a loopback peer (403 `link_forbidden`).
    Proxied,
}

impl Refusal {
    /// The reason's name in logs and in `ringcast_node_link_refusals_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::NotLoopback => "not_loopback",
            Refusal::Proxied => "proxied",
        }
    }
}

/// Whether `headers` show that a proxy forwarded the request: any of the headers proxies add
/// (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`, `Via`) or an Envoy / Istio (`x-envoy-*`) or
/// Linkerd (`l5d-*`) header. A gateway's own link request carries none of them.
fn proxied(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        matches!(name, "forwarded" | "x-forwarded-for" | "x-real-ip" | "via")
            || name.starts_with("x-envoy-")
            || name.starts_with("l5d-")
    })
}

/// Whether a link request from `peer` with `headers` may open, given the node's `secret`.
pub fn admit(
    secret: Option<&LinkSecret>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    match secret {
        Some(secret) if secret.presented_in(headers) => Ok(()),
        Some(_) => Err(Refusal::Unauthorized),
        None if !peer.ip().to_canonical().is_loopback() => Err(Refusal::NotLoopback),
        // A local proxy (a sidecar, an nginx in front of the node) makes every peer loopback.
        None if proxied(headers) => Err(Refusal::Proxied),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[test]
    fn equal_only_for_the_same_bytes_of_the_same_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(
            !constant_time_eq(b"abc", b"abc\0"),
            "padding is not a match"
        );
        assert!(!constant_time_eq(b"abc\0", b"abc"));
        let long = vec![b'a'; LinkSecret::MAX_LEN + 1];
        assert!(!constant_time_eq(&long, &long));
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_the_exact_secret_opens_a_link_and_none_means_loopback_only() {
        let secret: LinkSecret = "0123456789abcdef-secret".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let right = with_auth("Bearer 0123456789abcdef-secret");
        assert_eq!(admit(Some(&secret), &right, remote), Ok(()));
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let other_case = with_auth(&format!("{scheme} 0123456789abcdef-secret"));
            assert_eq!(
                admit(Some(&secret), &other_case, remote),
                Ok(()),
                "{scheme}"
            );
        }
        for wrong in [
            "Bearer 0123456789abcdef-secreT",
            "Bearer 0123456789abcdef-secret ",
            "Bearer 0123456789abcdef",
            "0123456789abcdef-secret",
            "Basic 0123456789abcdef-secret",
            "Bearer0123456789abcdef-secret",
            "Bearer 0123456789abcdef-secret0123456789abcdef-secret",
        ] {
            assert_eq!(
                admit(Some(&secret), &with_auth(wrong), local),
                Err(Refusal::Unauthorized),
                "{wrong}"
            );
        }
        assert_eq!(
            admit(Some(&secret), &HeaderMap::new(), local),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(admit(None, &HeaderMap::new(), local), Ok(()));
        assert_eq!(admit(None, &HeaderMap::new(), mapped), Ok(()));
        assert_eq!(
            admit(None, &right, remote),
            Err(Refusal::NotLoopback),
            "a secret nobody configured opens nothing"
        );
        // Through a proxy on this host, the peer is loopback but the client is not.
        for name in [
            "forwarded",
            "x-forwarded-for",
            "X-Real-IP",
            "via",
            "x-envoy-external-address",
            "l5d-client-id",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("10.1.2.3"),
            );
            assert_eq!(admit(None, &h, local), Err(Refusal::Proxied), "{name}");
            assert_eq!(admit(None, &h, mapped), Err(Refusal::Proxied), "{name}");
        }
    }

    #[test]
    fn a_short_or_unprintable_secret_is_refused_and_never_printed() {
        assert!("short".parse::<LinkSecret>().is_err());
        assert!("0123456789abcdef 0123".parse::<LinkSecret>().is_err());
        assert!("0123456789abcdef\n\n".parse::<LinkSecret>().is_err());
        assert!("0123456789abcdef\n0123".parse::<LinkSecret>().is_err());
        for placeholder in [
            "replace-me-with-openssl-rand-hex-32",
            "REPLACE-ME-0123456789",
            "compose-demo-link-secret-change-me",
        ] {
            let parsed = placeholder.parse::<LinkSecret>();
            assert!(
                matches!(parsed, Err(SecretError::Placeholder)),
                "{placeholder}"
            );
        }
        assert!("x"
            .repeat(LinkSecret::MAX_LEN + 1)
            .parse::<LinkSecret>()
            .is_err());
        let s: LinkSecret = "0123456789abcdef".parse().unwrap();
        assert!(!format!("{s:?}").contains("0123"));
        // A file's trailing newline is not part of the secret.
        for raw in ["0123456789abcdef\n", "0123456789abcdef\r\n"] {
            assert_eq!(
                raw.parse::<LinkSecret>().unwrap().authorization(),
                s.authorization()
            );
        }
    }
}
