//! What clients receive: JSON events with an `"event"` field, and the stable error codes.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// A server-originated event. Encode it once with [`ServerEvent::encode`] and fan out the bytes.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerEvent<'a> {
    /// First frame on every connection.
    Welcome {
        /// The id this connection speaks as.
        client_id: &'a str,
        /// The node that holds the connection.
        node: &'a str,
        /// When authentication is on: when the connection's token expires (seconds since the
        /// Unix epoch), so a client knows when to `refresh` without decoding the token.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// A client id got its first connection.
    UserConnected {
        /// Who.
        user_id: &'a str,
    },
    /// A client id lost its last connection.
    UserDisconnected {
        /// Who.
        user_id: &'a str,
    },
    /// A broadcast chat (no `room`) or a room message (with `room`).
    Chat {
        /// The sender.
        from: &'a str,
        /// The room, for room messages.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        /// The sender's content, verbatim.
        content: &'a RawValue,
        /// The sender's message id, when it gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// Someone joined a room (the joiner receives it too: it is the join's acknowledgement,
    /// and for a room that keeps history it carries `recovered`, `offset` and `epoch`).
    UserJoined {
        /// Who.
        user_id: &'a str,
        /// Which room.
        room: &'a str,
        /// In the joiner's ack: whether everything after its `since` was replayed.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// In the joiner's ack: the last offset it has now been given (or the room's top).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// In the joiner's ack: the room's epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// The room's history may have been lost or its offsets reissued (or a gap could not be
    /// filled): what a member holds may not match the room's history any more.
    HistoryReset {
        /// Which room.
        room: &'a str,
        /// The room's epoch now.
        epoch: &'a str,
    },
    /// Someone left a room, or disconnected while in it.
    UserLeft {
        /// Who.
        user_id: &'a str,
        /// Which room.
        room: &'a str,
    },
    /// The connection was taken out of a room it no longer may use; the room's other members get
    /// `user_left` as for any leave.
    RoomRevoked {
        /// Which room.
        room: &'a str,
        /// Why.
        reason: RevokeReason,
    },
    /// A message addressed to one client id.
    DirectMessage {
        /// The sender.
        from: &'a str,
        /// The sender's content, verbatim.
        content: &'a RawValue,
    },
    /// Reply to `{"type":"presence"}`: the client ids in a room on every node.
    Presence {
        /// Which room.
        room: &'a str,
        /// Client ids, each once, at most the server's limit.
        members: Vec<&'a str>,
        /// Client ids in all.
        count: u64,
        /// Whether `members` stopped at the limit.
        truncated: bool,
    },
    /// Reply to `{"type":"presence_stats"}`.
    PresenceStats {
        /// Which room.
        room: &'a str,
        /// Client ids with a connection in the room.
        clients: u64,
        /// Their connections.
        connections: u64,
    },
    /// Reply to `{"type":"ping"}`.
    Pong,
    /// A `refresh` was accepted: the connection now lives until `expires_at`.
    TokenRefreshed {
        /// New expiry, seconds since the Unix epoch.
        expires_at: u64,
    },
    /// A room message with an `id` was stored (or, without history, published); a retry of a
    /// stored one gets the original's ack again.
    Ack {
        /// The sender's message id.
        id: &'a str,
        /// Which room.
        room: &'a str,
        /// Its offset, when the room keeps history.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The room's epoch, when the room keeps history.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// Something the client sent could not be served. The connection stays open.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
        /// The `id` of the message that caused it, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        /// The room a room request (`join_room`, `leave_room`, `history`, `presence`,
        /// `presence_stats`) was about, so a client can tell which of its requests failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
}

impl ServerEvent<'_> {
    /// Encodes the event as the bytes of one text frame.
    pub fn encode(&self) -> Bytes {
        let text = serde_json::to_vec(self)
            .expect("ServerEvent serialization cannot fail: every field is a string or raw JSON");
        Bytes::from(text)
    }
}

/// `{"event":"history","room":R,"messages":[…],"offset":TOP,"epoch":E,"complete":B}`, with
/// `messages` the stored chat frames as they are (each already a JSON object).
pub fn history_event(
    room: &str,
    messages: &[&str],
    top: u64,
    epoch: &str,
    complete: bool,
) -> Bytes {
    let len: usize = messages.iter().map(|m| m.len() + 1).sum();
    let mut out = Vec::with_capacity(len + room.len() + epoch.len() + 96);
    out.extend_from_slice(br#"{"event":"history","room":"#);
    serde_json::to_writer(&mut out, room).expect("writing to a Vec cannot fail");
    out.extend_from_slice(br#","messages":["#);
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.as_bytes());
    }
    out.extend_from_slice(br#"],"offset":"#);
    out.extend_from_slice(top.to_string().as_bytes());
    out.extend_from_slice(br#","epoch":"#);
    serde_json::to_writer(&mut out, epoch).expect("writing to a Vec cannot fail");
    out.extend_from_slice(br#","complete":"#);
    out.extend_from_slice(if complete { b"true}" } else { b"false}" });
    Bytes::from(out)
}

/// Why a connection was taken out of a room (`room_revoked`). New reasons may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// A `refresh` replaced the token with one whose `rooms` no longer allow the room.
    Token,
}

/// Stable error codes sent in `{"event":"error","code":…}`. Never renamed; new ones may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object or a field has the wrong type.
    BadJson,
    /// No `type`, or one the server does not know.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// The room name breaks the naming rules.
    InvalidRoom,
    /// The direct-message target is not a valid client id.
    InvalidTarget,
    /// Posting to or leaving a room the connection is not in.
    NotInRoom,
    /// The direct-message target is connected nowhere.
    TargetOffline,
    /// The connection sends faster than its rate limit; the message was dropped.
    RateLimited,
    /// Joining would exceed the rooms-per-connection limit.
    TooManyRooms,
    /// The room has its `max_members` (room options) already; the join was refused.
    RoomFull,
    /// Binary frames are not part of the protocol.
    BinaryUnsupported,
    /// The message bus (Redis) is unreachable; the message was not delivered to anyone.
    BusUnavailable,
    /// The connection's token does not allow this (room, chat, or a refresh for another subject).
    Forbidden,
    /// A `since` is malformed, or names an offset beyond the top of the room's epoch.
    InvalidSince,
    /// A `refresh` token is invalid or expired (or authentication is off).
    InvalidToken,
    /// A message `id` is not 1–64 characters of `[A-Za-z0-9_.:-]`.
    InvalidId,
    /// The room keeps no presence (`presence=off`).
    PresenceDisabled,
}

impl ErrorCode {
    /// Every code, for documentation and metrics.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidTarget,
        ErrorCode::NotInRoom,
        ErrorCode::TargetOffline,
        ErrorCode::RateLimited,
        ErrorCode::TooManyRooms,
        ErrorCode::RoomFull,
        ErrorCode::BinaryUnsupported,
        ErrorCode::BusUnavailable,
        ErrorCode::Forbidden,
        ErrorCode::InvalidSince,
        ErrorCode::InvalidToken,
        ErrorCode::InvalidId,
        ErrorCode::PresenceDisabled,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::TargetOffline => "target_offline",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::BusUnavailable => "bus_unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidSince => "invalid_since",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::PresenceDisabled => "presence_disabled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(e: &ServerEvent) -> String {
        String::from_utf8(e.encode().to_vec()).unwrap()
    }

    #[test]
    fn seed_compatible_shapes() {
        let content = RawValue::from_string(r#""hi""#.into()).unwrap();
        assert_eq!(
            text(&ServerEvent::Welcome {
                client_id: "a",
                node: "n1",
                expires_at: None,
            }),
            r#"{"event":"welcome","client_id":"a","node":"n1"}"#
        );
        assert_eq!(
            text(&ServerEvent::Welcome {
                client_id: "a",
                node: "n1",
                expires_at: Some(1_700_000_000),
            }),
            r#"{"event":"welcome","client_id":"a","node":"n1","expires_at":1700000000}"#
        );
        assert_eq!(
            text(&ServerEvent::Chat {
                from: "a",
                room: None,
                content: &content,
                id: None,
            }),
            r#"{"event":"chat","from":"a","content":"hi"}"#
        );
        assert_eq!(
            text(&ServerEvent::Chat {
                from: "a",
                room: Some("r"),
                content: &content,
                id: None,
            }),
            r#"{"event":"chat","from":"a","room":"r","content":"hi"}"#
        );
        assert_eq!(
            text(&ServerEvent::Chat {
                from: "a",
                room: Some("r"),
                content: &content,
                id: Some("m-1"),
            }),
            r#"{"event":"chat","from":"a","room":"r","content":"hi","id":"m-1"}"#
        );
        assert_eq!(
            text(&ServerEvent::UserJoined {
                user_id: "a",
                room: "r",
                recovered: None,
                offset: None,
                epoch: None,
            }),
            r#"{"event":"user_joined","user_id":"a","room":"r"}"#
        );
        assert_eq!(
            text(&ServerEvent::UserJoined {
                user_id: "a",
                room: "r",
                recovered: Some(true),
                offset: Some(7),
                epoch: Some("E"),
            }),
            r#"{"event":"user_joined","user_id":"a","room":"r","recovered":true,"offset":7,"epoch":"E"}"#
        );
        let h = history_event("r\"1", &[r#"{"a":1}"#, r#"{"b":2}"#], 9, "E", false);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&h).unwrap(),
            serde_json::json!({"event":"history","room":"r\"1","messages":[{"a":1},{"b":2}],
                               "offset":9,"epoch":"E","complete":false})
        );
        assert_eq!(
            &history_event("r", &[], 0, "E", true)[..],
            br#"{"event":"history","room":"r","messages":[],"offset":0,"epoch":"E","complete":true}"#
        );
        assert_eq!(text(&ServerEvent::Pong), r#"{"event":"pong"}"#);
        assert_eq!(
            text(&ServerEvent::Presence {
                room: "r",
                members: vec!["a", "b"],
                count: 3,
                truncated: true,
            }),
            r#"{"event":"presence","room":"r","members":["a","b"],"count":3,"truncated":true}"#
        );
        assert_eq!(
            text(&ServerEvent::PresenceStats {
                room: "r",
                clients: 2,
                connections: 5,
            }),
            r#"{"event":"presence_stats","room":"r","clients":2,"connections":5}"#
        );
        assert_eq!(
            text(&ServerEvent::RoomRevoked {
                room: "secret",
                reason: RevokeReason::Token
            }),
            r#"{"event":"room_revoked","room":"secret","reason":"token"}"#
        );
        assert_eq!(
            text(&ServerEvent::Error {
                code: ErrorCode::NotInRoom,
                message: "m\"x",
                id: None,
                room: None,
            }),
            r#"{"event":"error","code":"not_in_room","message":"m\"x"}"#
        );
        assert_eq!(
            text(&ServerEvent::Error {
                code: ErrorCode::BusUnavailable,
                message: "down",
                id: Some("m-1"),
                room: None,
            }),
            r#"{"event":"error","code":"bus_unavailable","message":"down","id":"m-1"}"#
        );
        assert_eq!(
            text(&ServerEvent::Error {
                code: ErrorCode::RoomFull,
                message: "full",
                id: None,
                room: Some("lobby"),
            }),
            r#"{"event":"error","code":"room_full","message":"full","room":"lobby"}"#
        );
        assert_eq!(
            text(&ServerEvent::Ack {
                id: "m-1",
                room: "r",
                offset: Some(7),
                epoch: Some("E"),
            }),
            r#"{"event":"ack","id":"m-1","room":"r","offset":7,"epoch":"E"}"#
        );
        assert_eq!(
            text(&ServerEvent::Ack {
                id: "m-1",
                room: "r",
                offset: None,
                epoch: None,
            }),
            r#"{"event":"ack","id":"m-1","room":"r"}"#
        );
    }

    #[test]
    fn codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}
