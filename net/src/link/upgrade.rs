//! The link's upgrade tokens and their negotiation: which version a `GET /link` request
//! offers, and the token list a refusal names.
//!
//! Pure: it reads headers and returns a verdict; the node writes the answer (see the `link`
//! module's documentation for the whole exchange).

use http::header::{self, HeaderMap};

/// The `Upgrade` token of the current link protocol.
pub const PROTOCOL: &str = "ringcast-link/1";

/// The unversioned token of the release before versioning. Nodes still accept it for one
/// release, so that gateways and nodes can be upgraded in either order; gateways fall back to
/// it when a node does not know [`PROTOCOL`].
pub const LEGACY_PROTOCOL: &str = "ringcast-link";

/// What a node lists in the `Upgrade` header of a 426: every token it speaks, newest first.
pub const SPOKEN: &str = "ringcast-link/1, ringcast-link";

/// The family every link token belongs to: `ringcast-link/<version>`.
const FAMILY: &str = "ringcast-link/";

/// A version of the link protocol this build speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `ringcast-link/1`: the frames of [`Version::Legacy`] plus `GOAWAY`.
    V1,
    /// `ringcast-link`: the release before versioning; no `GOAWAY`.
    Legacy,
}

impl Version {
    /// Its `Upgrade` token.
    pub fn token(self) -> &'static str {
        match self {
            Version::V1 => PROTOCOL,
            Version::Legacy => LEGACY_PROTOCOL,
        }
    }

    /// Whether the peer understands a `GOAWAY` frame (an older peer would break the link on
    /// an unknown kind).
    pub fn has_goaway(self) -> bool {
        self == Version::V1
    }
}

/// What a link request's `Upgrade` header offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A version this end speaks: the newest one offered.
    Link(Version),
    /// Only `ringcast-link/<n>` tokens of versions this end does not speak: answered 426 with
    /// [`SPOKEN`], so that the peer can ask again with one of them.
    UnknownVersion,
    /// No link token at all: not a link request (400).
    NotALink,
}

/// What `headers` offer: every comma-separated token of every `Upgrade` header is looked at
/// (case-insensitively), and the newest version this end speaks wins, whatever the order.
pub fn offered(headers: &HeaderMap) -> Offer {
    let mut best: Option<Version> = None;
    let mut unknown = false;
    let tokens = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in tokens {
        if token.eq_ignore_ascii_case(PROTOCOL) {
            best = Some(Version::V1);
        } else if token.eq_ignore_ascii_case(LEGACY_PROTOCOL) {
            best = best.or(Some(Version::Legacy));
        } else if token
            .get(..FAMILY.len())
            .is_some_and(|f| f.eq_ignore_ascii_case(FAMILY))
        {
            unknown = true;
        }
    }
    match (best, unknown) {
        (Some(version), _) => Offer::Link(version),
        (None, true) => Offer::UnknownVersion,
        (None, false) => Offer::NotALink,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn offer(values: &[&str]) -> Offer {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::UPGRADE, HeaderValue::from_str(v).unwrap());
        }
        offered(&h)
    }

    #[test]
    fn the_newest_spoken_version_wins_and_unknown_ones_are_told_apart() {
        assert_eq!(offer(&["ringcast-link/1"]), Offer::Link(Version::V1));
        assert_eq!(offer(&["Ringcast-Link/1"]), Offer::Link(Version::V1));
        assert_eq!(offer(&["ringcast-link"]), Offer::Link(Version::Legacy));
        assert_eq!(
            offer(&["ringcast-link, ringcast-link/1"]),
            Offer::Link(Version::V1)
        );
        assert_eq!(
            offer(&["ringcast-link/7", "ringcast-link"]),
            Offer::Link(Version::Legacy)
        );
        assert_eq!(offer(&["ringcast-link/7"]), Offer::UnknownVersion);
        assert_eq!(offer(&["ringcast-link/"]), Offer::UnknownVersion);
        assert_eq!(offer(&["websocket"]), Offer::NotALink);
        assert_eq!(offer(&["ringcast-linker"]), Offer::NotALink);
        assert_eq!(offer(&[]), Offer::NotALink);
        // Every token a 426 names is one that gets a link.
        for token in SPOKEN.split(',') {
            assert!(matches!(offer(&[token.trim()]), Offer::Link(_)), "{token}");
        }
    }
}
