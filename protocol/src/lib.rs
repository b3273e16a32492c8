//! Types every ringcast component shares.
//!
//! Two protocols live here. The client protocol is JSON text frames, compatible with the FastAPI
//! tutorial ringcast grew out of: [`client`] parses what clients send, [`event`] encodes what they
//! receive. The node protocol is the bincode [`envelope`] nodes exchange over the bus; it carries
//! the client frame already encoded, so a message is serialized once where it enters the system
//! and the same bytes are fanned out to every recipient.
//!
//! The token rules live here too ([`auth`]): the gateway and the nodes take the same flags and
//! judge a token the same way, so neither binary's crate is the other's library for them.

pub mod auth;
pub mod client;
pub mod envelope;
pub mod error;
pub mod event;
pub mod ids;
pub mod query;
pub mod stored;

pub use client::{ClientMessage, Since};
pub use envelope::{ClientCommand, Envelope, Target, ENVELOPE_VERSION};
pub use error::{EnvelopeError, IdError, ParseError};
pub use event::{ErrorCode, RevokeReason, ServerEvent};
pub use ids::{generate_client_id, validate_client_id, validate_message_id, validate_room};
pub use query::query_param;
