//! What clients send: JSON objects with a `"type"` field, parsed without copying their content.
//!
//! The `content` of chat, room and direct messages is kept as raw JSON (any JSON value, as the
//! tutorial allowed) and spliced verbatim into the outgoing event, so the server never re-encodes
//! what a client wrote.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ParseError;
use crate::ids::{validate_client_id, validate_message_id, validate_room};

/// One parsed client message. Borrows from the frame it was parsed from.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    /// `{"type":"chat","content":…}`: to every other client on every node.
    Chat {
        /// Raw JSON content.
        content: &'a RawValue,
    },
    /// `{"type":"join_room","room":R,"since":{"offset":N,"epoch":"E"}?}`.
    JoinRoom {
        /// Validated room name.
        room: Cow<'a, str>,
        /// Where the client's copy ends, to replay from; `Err` when malformed.
        since: Option<Result<Since, String>>,
    },
    /// `{"type":"leave_room","room":R}`.
    LeaveRoom {
        /// Validated room name.
        room: Cow<'a, str>,
    },
    /// `{"type":"room_message","room":R,"content":…,"id":MSG_ID?}`: to every member of R; with
    /// an `id`, the sender gets an `ack` once it is stored, and a retry is stored once.
    RoomMessage {
        /// Validated room name.
        room: Cow<'a, str>,
        /// Raw JSON content.
        content: &'a RawValue,
        /// The sender's message id ([`validate_message_id`]), if it wants an ack.
        id: Option<Cow<'a, str>>,
    },
    /// `{"type":"direct_message","target":T,"content":…}` (`target_user` is an alias).
    DirectMessage {
        /// Validated target client id.
        target: Cow<'a, str>,
        /// Raw JSON content.
        content: &'a RawValue,
    },
    /// `{"type":"ping"}`: answered with `{"event":"pong"}`.
    Ping,
    /// `{"type":"pong"}`: the tutorial's heartbeat reply, accepted and ignored.
    Pong,
    /// `{"type":"refresh","token":T}`: replaces the connection's token before it expires.
    Refresh {
        /// The new token (never logged).
        token: Cow<'a, str>,
    },
    /// `{"type":"presence","room":R}`: the client ids in a room, on every node.
    Presence {
        /// Validated room name.
        room: Cow<'a, str>,
    },
    /// `{"type":"presence_stats","room":R}`: how many client ids and connections a room has.
    PresenceStats {
        /// Validated room name.
        room: Cow<'a, str>,
    },
    /// `{"type":"history","room":R,"since":{...}?,"limit":L?}`: stored messages of a room.
    History {
        /// Validated room name.
        room: Cow<'a, str>,
        /// Page from after this point; `None`: the newest messages; `Err` when malformed.
        since: Option<Result<Since, String>>,
        /// Messages wanted, within 1..=[`HISTORY_LIMIT_MAX`].
        limit: usize,
    },
}

/// Where a client's copy of a room ends: `{"offset":N,"epoch":"E"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// The last offset the client has.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: String,
}

/// Messages a `history` request returns when it names no `limit`.
pub const HISTORY_LIMIT_DEFAULT: usize = 100;
/// Most messages one `history` request returns.
pub const HISTORY_LIMIT_MAX: usize = 1000;

/// Reads a `since` leniently: its faults are the request's business (`invalid_since`), not a
/// reason to refuse the whole message.
fn since(raw: Option<&RawValue>) -> Option<Result<Since, String>> {
    let raw = raw?;
    if raw.get() == "null" {
        return None;
    }
    Some(
        serde_json::from_str::<Since>(raw.get())
            .map_err(|e| format!("since must be {{\"offset\":N,\"epoch\":\"E\"}}: {e}"))
            .and_then(|s| {
                if s.epoch.is_empty() || s.epoch.len() > 64 {
                    Err("since.epoch must be 1-64 characters".to_owned())
                } else {
                    Ok(s)
                }
            }),
    )
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target_user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(default)]
    limit: Option<u64>,
    /// Read as raw JSON: only a `room_message` gives `id` a meaning (other types ignore it,
    /// whatever its type, as they ignore any unknown field).
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// A `room_message`'s `id`: `None` when absent, else a string that passed the rules.
fn message_id<'a>(raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, ParseError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let id: Cow<'a, str> = serde_json::from_str(raw.get())
        .map_err(|_| ParseError::BadJson("id must be a string".to_owned()))?;
    validate_message_id(&id).map_err(ParseError::InvalidId)?;
    Ok(Some(id))
}

/// The valid `id` of a frame, if it has one, whatever else is wrong with it: an error caused by
/// a message with an id carries that id (a refused frame, a rate-limited one), so the sender
/// knows which of its messages failed.
pub fn frame_message_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.id?;
    validate_message_id(&id).ok()?;
    Some(id.into_owned())
}

/// The room a frame asks about, when it is a request about a room (`join_room`, `leave_room`,
/// `presence`, `presence_stats`, `history`) with a valid one, whatever else is wrong with it: a
/// dropped request is answered naming its room, so the sender knows which to send again.
pub fn frame_request_room(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct RoomOnly<'a> {
        #[serde(borrow, rename = "type")]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        room: Option<Cow<'a, str>>,
    }
    let frame = serde_json::from_str::<RoomOnly>(text).ok()?;
    let request = matches!(
        &*frame.kind,
        "join_room" | "leave_room" | "presence" | "presence_stats" | "history"
    );
    let room = frame.room.filter(|_| request)?;
    validate_room(&room).ok()?;
    Some(room.into_owned())
}

impl<'a> ClientMessage<'a> {
    /// Parses one text frame. Never panics, whatever the input.
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        let raw: RawMessage<'a> =
            serde_json::from_str(text).map_err(|e| ParseError::BadJson(e.to_string()))?;
        let kind = raw
            .kind
            .ok_or_else(|| ParseError::UnknownType(String::new()))?;
        let need_content = |kind: &'static str| {
            raw.content.ok_or(ParseError::MissingField {
                kind,
                field: "content",
            })
        };
        let need_room = |kind: &'static str, room: Option<Cow<'a, str>>| {
            let room = room.ok_or(ParseError::MissingField {
                kind,
                field: "room",
            })?;
            validate_room(&room).map_err(ParseError::InvalidRoom)?;
            Ok::<_, ParseError>(room)
        };
        match kind.as_ref() {
            "chat" => Ok(ClientMessage::Chat {
                content: need_content("chat")?,
            }),
            "join_room" => Ok(ClientMessage::JoinRoom {
                room: need_room("join_room", raw.room)?,
                since: since(raw.since),
            }),
            "history" => Ok(ClientMessage::History {
                room: need_room("history", raw.room)?,
                since: since(raw.since),
                limit: raw.limit.map_or(HISTORY_LIMIT_DEFAULT, |l| {
                    usize::try_from(l)
                        .unwrap_or(usize::MAX)
                        .clamp(1, HISTORY_LIMIT_MAX)
                }),
            }),
            "leave_room" => Ok(ClientMessage::LeaveRoom {
                room: need_room("leave_room", raw.room)?,
            }),
            "presence" => Ok(ClientMessage::Presence {
                room: need_room("presence", raw.room)?,
            }),
            "presence_stats" => Ok(ClientMessage::PresenceStats {
                room: need_room("presence_stats", raw.room)?,
            }),
            "room_message" => {
                let room = need_room("room_message", raw.room)?;
                Ok(ClientMessage::RoomMessage {
                    room,
                    content: need_content("room_message")?,
                    id: message_id(raw.id)?,
                })
            }
            "direct_message" => {
                let target = raw
                    .target
                    .or(raw.target_user)
                    .ok_or(ParseError::MissingField {
                        kind: "direct_message",
                        field: "target",
                    })?;
                validate_client_id(&target).map_err(ParseError::InvalidTarget)?;
                Ok(ClientMessage::DirectMessage {
                    target,
                    content: need_content("direct_message")?,
                })
            }
            "ping" => Ok(ClientMessage::Ping),
            "pong" => Ok(ClientMessage::Pong),
            "refresh" => Ok(ClientMessage::Refresh {
                token: raw.token.ok_or(ParseError::MissingField {
                    kind: "refresh",
                    field: "token",
                })?,
            }),
            other => Err(ParseError::UnknownType(other.to_owned())),
        }
    }

    /// The message's `type`, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::JoinRoom { .. } => "join_room",
            ClientMessage::LeaveRoom { .. } => "leave_room",
            ClientMessage::RoomMessage { .. } => "room_message",
            ClientMessage::DirectMessage { .. } => "direct_message",
            ClientMessage::Ping => "ping",
            ClientMessage::Pong => "pong",
            ClientMessage::Refresh { .. } => "refresh",
            ClientMessage::History { .. } => "history",
            ClientMessage::Presence { .. } => "presence",
            ClientMessage::PresenceStats { .. } => "presence_stats",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ErrorCode;
    use proptest::prelude::*;

    fn code(text: &str) -> ErrorCode {
        ClientMessage::parse(text).unwrap_err().code()
    }

    #[test]
    fn parses_every_type() {
        match ClientMessage::parse(r#"{"type":"chat","content":"hi"}"#).unwrap() {
            ClientMessage::Chat { content } => assert_eq!(content.get(), r#""hi""#),
            m => panic!("{m:?}"),
        }
        match ClientMessage::parse(r#"{"type":"join_room","room":"r1"}"#).unwrap() {
            ClientMessage::JoinRoom { room, since } => {
                assert_eq!(room, "r1");
                assert_eq!(since, None);
            }
            m => panic!("{m:?}"),
        }
        match ClientMessage::parse(r#"{"type":"leave_room","room":"r\u00e91"}"#).unwrap() {
            ClientMessage::LeaveRoom { room } => assert_eq!(room, "ré1"),
            m => panic!("{m:?}"),
        }
        match ClientMessage::parse(r#"{"type":"room_message","room":"r","content":{"a":[1,2]}}"#)
            .unwrap()
        {
            ClientMessage::RoomMessage { room, content, .. } => {
                assert_eq!(room, "r");
                assert_eq!(content.get(), r#"{"a":[1,2]}"#);
            }
            m => panic!("{m:?}"),
        }
        for text in [
            r#"{"type":"direct_message","target":"bob","content":"x"}"#,
            r#"{"type":"direct_message","target_user":"bob","content":"x"}"#,
        ] {
            match ClientMessage::parse(text).unwrap() {
                ClientMessage::DirectMessage { target, .. } => assert_eq!(target, "bob"),
                m => panic!("{m:?}"),
            }
        }
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping)
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"pong","extra":1}"#),
            Ok(ClientMessage::Pong)
        ));
    }

    #[test]
    fn a_room_message_id_is_checked_and_errors_can_name_it() {
        match ClientMessage::parse(
            r#"{"type":"room_message","room":"r","content":1,"id":"a.b:c-9_"}"#,
        )
        .unwrap()
        {
            ClientMessage::RoomMessage { id, .. } => assert_eq!(id.as_deref(), Some("a.b:c-9_")),
            m => panic!("{m:?}"),
        }
        let too_long = format!(
            r#"{{"type":"room_message","room":"r","content":1,"id":"{}"}}"#,
            "x".repeat(65)
        );
        for bad in [
            r#"{"type":"room_message","room":"r","content":1,"id":""}"#,
            r#"{"type":"room_message","room":"r","content":1,"id":"a b"}"#,
            r#"{"type":"room_message","room":"r","content":1,"id":"a@b"}"#,
            &too_long,
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidId, "{bad}");
            assert_eq!(frame_message_id(bad), None, "{bad}");
        }
        assert_eq!(
            code(r#"{"type":"room_message","room":"r","content":1,"id":7}"#),
            ErrorCode::BadJson
        );
        // A frame refused for another reason still names its valid id.
        assert_eq!(
            frame_message_id(r#"{"type":"room_message","room":"a b","content":1,"id":"m1"}"#),
            Some("m1".to_owned())
        );
        assert_eq!(
            frame_message_id(r#"{"type":"room_message","id":"m2"}"#),
            Some("m2".into())
        );
        assert_eq!(frame_message_id("not json"), None);
        // Other types ignore an id of any type, as they ignore unknown fields.
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"ping","id":1}"#),
            Ok(ClientMessage::Ping)
        ));
        assert!(ClientMessage::parse(r#"{"type":"join_room","room":"r","id":{"x":1}}"#).is_ok());
        assert_eq!(frame_message_id(r#"{"type":"ping"}"#), None);
    }

    #[test]
    fn a_request_about_a_room_names_it() {
        for kind in [
            "join_room",
            "leave_room",
            "presence",
            "presence_stats",
            "history",
        ] {
            let frame = format!(r#"{{"type":"{kind}","room":"r1","since":"bad"}}"#);
            assert_eq!(frame_request_room(&frame), Some("r1".to_owned()), "{frame}");
        }
        for frame in [
            r#"{"type":"room_message","room":"r1","content":1}"#,
            r#"{"type":"join_room","room":"a b"}"#,
            r#"{"type":"join_room","room":7}"#,
            r#"{"type":"join_room"}"#,
            r#"{"room":"r1"}"#,
            "not json",
        ] {
            assert_eq!(frame_request_room(frame), None, "{frame}");
        }
    }

    #[test]
    fn errors_have_stable_codes() {
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"join_room","room":7}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"room":"r"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"chat"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":"refresh"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":"join_room"}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"type":"room_message","room":"r"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"direct_message","content":"x"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"join_room","room":"a b"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"join_room","room":""}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"direct_message","target":"a/b","content":1}"#),
            ErrorCode::InvalidTarget
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = ClientMessage::parse(&s);
        }

        #[test]
        fn json_like_text_never_panics(s in r#"\{("[a-z_]{0,12}":("[^"]{0,20}"|[0-9]{1,3}|\{\}|null|\[\]),?){0,5}\}"#) {
            let _ = ClientMessage::parse(&s);
        }
    }
}
