//! Authentication and authorization: the token rules the gateway and the nodes both apply.
//!
//! Both binaries take the same flags ([`AuthArgs`]) and judge a token with the same
//! [`Authenticator`], so the gateway refuses bad tokens before it opens any connection to a node,
//! and a node reached directly lets nobody in without one. The algorithm is fixed by the
//! configured key (HS256 for a secret, RS256 or ES256 for a PEM public key); `alg: none` and
//! algorithm confusion are refused.
//!
//! - `args`: the flags and their defaults.
//! - `claims`: what a token says, and minting development tokens.
//! - `request`: where an upgrade request carries its token.
//! - `verify`: checking a token, and what a valid one grants.

mod args;
mod claims;
mod request;
mod verify;

pub use args::{Access, AuthArgs, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_LIFETIME_SECS, MAX_LEEWAY_SECS};
pub use claims::{mint_hs256, now_secs, Audience, Claims};
pub use request::{offered_subprotocols, token_from_request, BEARER_PREFIX, SUBPROTOCOL};
pub use verify::{glob_match, AuthError, Authenticator, Identity};
