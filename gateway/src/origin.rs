//! The `Origin` allow-list: which web pages may open WebSockets through the gateway.
//!
//! Browsers attach `Origin` to every WebSocket handshake and page scripts cannot change it, so
//! the list stops a foreign page from using a visitor's browser (and its cookies or cached
//! credentials) against ringcast. Patterns are exact origins (`https://app.example.com`) or
//! subdomain wildcards (`https://*.example.com`): the scheme and port must be equal and the
//! host must end in `.example.com` on a label boundary, so `https://example.com.evil.io` and
//! `https://evilexample.com` never match. There is no substring matching.
//!
//! A request without `Origin` is allowed: only browsers send it, and anything that is not a
//! browser can write whatever `Origin` it likes, so refusing its absence would break command-line
//! and server-side clients without stopping anyone. Those clients are held back by the token.

use std::fmt;
use std::str::FromStr;

use hyper::header::{HeaderMap, ORIGIN};

/// One allowed origin: exact, or every subdomain of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    host: HostPattern,
    /// `None` for the scheme's default port (browsers omit it).
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// This host only.
    Exact(String),
    /// Any host ending in this suffix, which starts with a dot (`.example.com`).
    Subdomains(String),
}

/// An origin as a browser sends it: scheme, host, port (`None` = the scheme's default).
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A DNS name of non-empty labels of `[a-z0-9-]`, or a bracketed IPv6 literal.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Splits `scheme://host[:port]` (lowercased; one trailing `/` tolerated).
fn split_origin(s: &str) -> Result<(String, String, Option<u16>), String> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('/').unwrap_or(&lower);
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| format!("{s:?}: expected SCHEME://HOST[:PORT]"))?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
    {
        return Err(format!("{s:?}: bad scheme"));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{s:?}: an origin has no path, query or credentials"
        ));
    }
    let (host, port) = match rest.rfind(':') {
        // A colon after the closing bracket of an IPv6 literal, or in a name: a port.
        Some(i) if !rest.starts_with('[') || rest[..i].ends_with(']') => {
            let port = rest[i + 1..]
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port"))?;
            (&rest[..i], Some(port))
        }
        _ => (rest, None),
    };
    let port = port.filter(|p| Some(*p) != default_port(scheme));
    Ok((scheme.to_owned(), host.to_owned(), port))
}

impl FromStr for OriginPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, host, port) = split_origin(s)?;
        let host = match host.strip_prefix("*.") {
            Some(domain) if valid_host(domain) && !domain.starts_with('[') => {
                HostPattern::Subdomains(format!(".{domain}"))
            }
            Some(_) => return Err(format!("{s:?}: bad domain after `*.`")),
            None if valid_host(&host) => HostPattern::Exact(host),
            None => {
                return Err(format!(
                    "{s:?}: bad host (a wildcard may only be a leading `*.`)"
                ))
            }
        };
        Ok(OriginPattern { scheme, host, port })
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            HostPattern::Exact(h) => write!(f, "{h}")?,
            HostPattern::Subdomains(suffix) => write!(f, "*{suffix}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl Origin {
    fn parse(s: &str) -> Option<Self> {
        let (scheme, host, port) = split_origin(s).ok()?;
        valid_host(&host).then_some(Origin { scheme, host, port })
    }
}

impl OriginPattern {
    fn matches(&self, origin: &Origin) -> bool {
        if self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        match &self.host {
            HostPattern::Exact(h) => *h == origin.host,
            // The suffix starts with a dot and the host has no empty labels, so this is a
            // match on a label boundary with at least one label in front.
            HostPattern::Subdomains(suffix) => {
                origin.host.len() > suffix.len() && origin.host.ends_with(suffix.as_str())
            }
        }
    }
}

/// The configured allow-list; empty means every origin is allowed.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    patterns: Vec<OriginPattern>,
}

impl OriginPolicy {
    /// A policy allowing `patterns` (all origins when empty).
    pub fn new(patterns: Vec<OriginPattern>) -> Self {
        OriginPolicy { patterns }
    }

    /// Whether a request with these headers may pass: no list, no `Origin` header, or one
    /// `Origin` that a pattern matches. Several `Origin` headers, `null` or a malformed value
    /// are refused while a list is configured.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(value) = values.next() else {
            return true;
        };
        if values.next().is_some() {
            return false;
        }
        let Some(origin) = value.to_str().ok().and_then(Origin::parse) else {
            return false;
        };
        self.patterns.iter().any(|p| p.matches(&origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn policy(patterns: &[&str]) -> OriginPolicy {
        OriginPolicy::new(patterns.iter().map(|p| p.parse().unwrap()).collect())
    }

    fn allows(p: &OriginPolicy, origin: Option<&str>) -> bool {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        p.allows(&h)
    }

    #[test]
    fn exact_and_wildcard_origins() {
        let p = policy(&["https://app.example.com", "https://*.example.org"]);
        assert!(allows(&p, Some("https://app.example.com")));
        assert!(allows(&p, Some("https://APP.example.com")));
        assert!(allows(&p, Some("https://app.example.com:443")));
        assert!(!allows(&p, Some("http://app.example.com")), "scheme");
        assert!(!allows(&p, Some("https://app.example.com:8443")), "port");
        assert!(!allows(&p, Some("https://example.com")));
        assert!(allows(&p, Some("https://a.example.org")));
        assert!(allows(&p, Some("https://a.b.example.org")));
        assert!(!allows(&p, Some("https://example.org")), "bare domain");
        assert!(!allows(&p, Some("http://a.example.org")), "scheme");
    }

    #[test]
    fn no_substring_or_suffix_tricks() {
        let p = policy(&["https://example.com", "https://*.example.com"]);
        for evil in [
            "https://example.com.evil.io",
            "https://evilexample.com",
            "https://a.evilexample.com",
            "https://example.com@evil.io",
            "https://evil.io/https://example.com",
            "https://evil.io?x=.example.com",
            "https://.example.com",
            "null",
            "",
            "https://",
        ] {
            assert!(!allows(&p, Some(evil)), "{evil:?} was allowed");
        }
        assert!(allows(&p, Some("https://www.example.com")));
    }

    #[test]
    fn missing_origin_is_allowed_and_no_list_allows_all() {
        assert!(allows(&policy(&["https://a.io"]), None));
        assert!(allows(&OriginPolicy::default(), Some("https://evil.io")));
        let mut h = HeaderMap::new();
        h.append(ORIGIN, HeaderValue::from_static("https://a.io"));
        h.append(ORIGIN, HeaderValue::from_static("https://evil.io"));
        assert!(!policy(&["https://a.io"]).allows(&h), "two origins");
    }

    #[test]
    fn patterns_parse_strictly() {
        for bad in [
            "example.com",
            "https://ex*ample.com",
            "https://*example.com",
            "https://*.",
            "https://a.io/path",
            "https://a.io:99999",
            "*",
        ] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad:?} parsed");
        }
        let p: OriginPattern = "HTTPS://*.Example.com:443/".parse().unwrap();
        assert_eq!(p.to_string(), "https://*.example.com");
        let p: OriginPattern = "http://localhost:3000".parse().unwrap();
        assert_eq!(p.to_string(), "http://localhost:3000");
        let p: OriginPattern = "http://[::1]:8080".parse().unwrap();
        assert_eq!(p.to_string(), "http://[::1]:8080");
    }
}
