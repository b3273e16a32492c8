//! The node-to-node envelope: who a frame is for, and the frame, already encoded for clients.
//!
//! Nodes exchange envelopes over the bus (in memory or Redis) as bincode 2. The first byte is the
//! version; a node that reads a version it does not know rejects the envelope without decoding
//! the rest. Decoding is bounded, so a corrupt length prefix cannot make a node allocate gigabytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::EnvelopeError;

/// The envelope layout this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// Largest envelope a node will decode (client frames are far smaller; see the node's limits).
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// Who receives the frame, among the clients of the nodes the bus delivers it to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Every local client except every connection of one client id (`None`: everyone).
    AllExcept(Option<String>),
    /// Every local member of a room.
    Room(String),
    /// Every local member of a room except one connection of the origin node (a joiner, whose
    /// own acknowledgement was already queued locally: the echo could arrive after it left).
    RoomExcept {
        /// The room.
        room: String,
        /// A connection id, meaningful only on the node named by `origin`.
        conn: u64,
    },
    /// Every local connection of one client id.
    Client(String),
    /// Not a frame for clients: every local connection of `client` is to act on `command` (the
    /// server API's `subscribe`, `unsubscribe`, `disconnect`). The envelope's frame is empty.
    Command {
        /// The client id.
        client: String,
        /// What its connections do.
        command: ClientCommand,
    },
}

/// What the server API asks a client's connections to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientCommand {
    /// Join a room, as if the client had sent `join_room` (announcements and ack included).
    Subscribe(String),
    /// Leave a room, as if the client had sent `leave_room`.
    Unsubscribe(String),
    /// Close with this code (1000, 1012 or 4000–4999) and reason.
    Disconnect {
        /// The close code.
        code: u16,
        /// The close reason (at most 123 bytes).
        reason: String,
    },
}

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Layout version, always [`ENVELOPE_VERSION`] when written by this build.
    pub version: u8,
    /// Node id of the node that published it.
    pub origin: String,
    /// When it was published, in microseconds since the Unix epoch (for delivery latency).
    pub sent_at_micros: u64,
    /// Who receives it.
    pub target: Target,
    /// The client frame (UTF-8 JSON text), exactly as every recipient receives it.
    #[serde(with = "serde_bytes")]
    pub frame: Vec<u8>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENVELOPE_BYTES>()
}

impl Envelope {
    /// Builds a version-[`ENVELOPE_VERSION`] envelope.
    pub fn new(origin: &str, sent_at_micros: u64, target: Target, frame: &[u8]) -> Self {
        Envelope {
            version: ENVELOPE_VERSION,
            origin: origin.to_owned(),
            sent_at_micros,
            target,
            frame: frame.to_vec(),
        }
    }

    /// Encodes the envelope for the bus.
    pub fn encode(&self) -> Result<Bytes, EnvelopeError> {
        Ok(Bytes::from(bincode::serde::encode_to_vec(self, config())?))
    }

    /// Decodes an envelope, rejecting unknown versions, trailing garbage and non-UTF-8 frames.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let version = *bytes.first().ok_or(EnvelopeError::Empty)?;
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let (envelope, used): (Envelope, usize) =
            bincode::serde::decode_from_slice(bytes, config())?;
        if used != bytes.len() {
            return Err(EnvelopeError::Malformed(
                bincode::error::DecodeError::OtherString(format!(
                    "{} trailing bytes",
                    bytes.len() - used
                )),
            ));
        }
        if std::str::from_utf8(&envelope.frame).is_err() {
            return Err(EnvelopeError::FrameNotUtf8);
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(target: Target) -> Envelope {
        Envelope::new(
            "node-1",
            1_700_000_000_000_000,
            target,
            br#"{"event":"pong"}"#,
        )
    }

    #[test]
    fn round_trips_every_target() {
        for target in [
            Target::AllExcept(None),
            Target::AllExcept(Some("alice".into())),
            Target::Room("lobby".into()),
            Target::RoomExcept {
                room: "lobby".into(),
                conn: u64::MAX,
            },
            Target::Client("bob".into()),
        ] {
            let env = sample(target);
            let bytes = env.encode().unwrap();
            assert_eq!(bytes[0], ENVELOPE_VERSION);
            assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        }
    }

    #[test]
    fn rejects_other_versions() {
        let mut bytes = sample(Target::Room("r".into())).encode().unwrap().to_vec();
        bytes[0] = 2;
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
        assert!(matches!(Envelope::decode(&[]), Err(EnvelopeError::Empty)));
    }

    #[test]
    fn rejects_truncated_trailing_and_non_utf8() {
        let bytes = sample(Target::Room("r".into())).encode().unwrap().to_vec();
        for cut in 1..bytes.len() {
            assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Envelope::decode(&long).is_err());
        let bad = Envelope::new("n", 0, Target::Client("c".into()), &[0xff, 0xfe]);
        assert!(matches!(
            Envelope::decode(&bad.encode().unwrap()),
            Err(EnvelopeError::FrameNotUtf8)
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // version 1, then an origin string claiming u64::MAX bytes.
        let bytes = [1u8, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(Envelope::decode(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::decode(&bytes);
            if let Some(first) = bytes.first_mut() { *first = ENVELOPE_VERSION; }
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn round_trip_any(origin in ".{0,40}", id in "[a-z]{0,20}", frame in ".{0,300}", t in 0u64..u64::MAX, which in 0u8..4) {
            let target = match which {
                0 => Target::AllExcept(None),
                1 => Target::AllExcept(Some(id)),
                2 => Target::Room(id),
                _ => Target::Client(id),
            };
            let env = Envelope::new(&origin, t, target, frame.as_bytes());
            prop_assert_eq!(Envelope::decode(&env.encode().unwrap()).unwrap(), env);
        }
    }
}
