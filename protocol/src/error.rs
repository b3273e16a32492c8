//! One error enum per failure kind, so callers can map each to what the peer should see.

use thiserror::Error;

use crate::event::ErrorCode;

/// Why a client frame could not be turned into a [`crate::ClientMessage`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The frame is not a JSON object, or a field has the wrong JSON type.
    #[error("invalid JSON: {0}")]
    BadJson(String),
    /// The object has no `type`, or a `type` this server does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A field the message type requires is absent.
    #[error("message type {kind:?} requires field {field:?}")]
    MissingField {
        /// The message `type`.
        kind: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A room name broke the naming rules.
    #[error(transparent)]
    InvalidRoom(IdError),
    /// A direct-message target is not a valid client id.
    #[error(transparent)]
    InvalidTarget(IdError),
    /// A message `id` broke its rules (1–64 characters of `[A-Za-z0-9_.:-]`).
    #[error(transparent)]
    InvalidId(IdError),
}

impl ParseError {
    /// The stable error code a client receives for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::BadJson(_) => ErrorCode::BadJson,
            ParseError::UnknownType(_) => ErrorCode::UnknownType,
            ParseError::MissingField { .. } => ErrorCode::MissingField,
            ParseError::InvalidRoom(_) => ErrorCode::InvalidRoom,
            ParseError::InvalidTarget(_) => ErrorCode::InvalidTarget,
            ParseError::InvalidId(_) => ErrorCode::InvalidId,
        }
    }
}

/// Why a client id or room name was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Empty string.
    #[error("{what} must not be empty")]
    Empty {
        /// "client_id", "room" or "id".
        what: &'static str,
    },
    /// Longer than the limit.
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// "client_id", "room" or "id".
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Contains a character outside the allowed set.
    #[error("{what} contains a character that is not allowed")]
    BadChar {
        /// "client_id", "room" or "id".
        what: &'static str,
    },
}

/// Why a bus envelope was rejected.
#[derive(Debug, Error)]
pub enum EnvelopeError {
    /// The buffer is empty: not even a version byte.
    #[error("empty envelope")]
    Empty,
    /// Another version of ringcast wrote this envelope.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// The bytes do not decode.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] bincode::error::DecodeError),
    /// The envelope could not be encoded (never expected for well-formed values).
    #[error("envelope encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The embedded client frame is not UTF-8 text.
    #[error("envelope frame is not UTF-8")]
    FrameNotUtf8,
}
