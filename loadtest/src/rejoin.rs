//! What a recovering client reads and writes to rejoin a room: the `join_room` request with
//! `since`, and the few events recovery needs (chat offsets, its own join ack with `recovered`,
//! publish acks, `history_reset`, error codes and the message id they name) picked out of a
//! frame without the I/O around it.

use std::borrow::Cow;

use serde::Deserialize;

/// Where a client's copy of the room ends: the `since` of its next rejoin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The last offset it has.
    pub offset: u64,
    /// The epoch of that offset.
    pub epoch: String,
}

/// What recovery needs to know about one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A room message of this room, with its offset.
    Chat(Position),
    /// This client's own `user_joined` in this room: `recovered` (only after a join with
    /// `since`) and where the server says the client now is.
    Ack {
        /// Whether everything after `since` was replayed.
        recovered: Option<bool>,
        /// The offset and epoch the ack carries.
        at: Option<Position>,
    },
    /// A publish `ack` for the sender's message `id` in this room, with where it was stored.
    Published {
        /// The message id the sender chose.
        id: String,
        /// Its offset and epoch (absent when the room keeps no history).
        at: Option<Position>,
    },
    /// The room's history was lost.
    HistoryReset,
    /// An `error` event, with its code and the id of the message that caused it, if it had one.
    Error {
        /// The error code.
        code: String,
        /// The message id the error names.
        id: Option<String>,
    },
    /// Anything else.
    Other,
}

/// The fields of an event recovery looks at; serde skips the rest.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    offset: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    recovered: Option<bool>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// Classifies one text frame for client `me` in `room`; anything unparsable is [`Event::Other`].
pub fn classify(frame: &[u8], me: &str, room: &str) -> Event {
    let Ok(h) = serde_json::from_slice::<Head<'_>>(frame) else {
        return Event::Other;
    };
    let in_room = h.room.as_deref() == Some(room);
    let at = match (h.offset, h.epoch) {
        (Some(offset), Some(epoch)) => Some(Position {
            offset,
            epoch: epoch.into_owned(),
        }),
        _ => None,
    };
    match h.event.as_deref() {
        Some("chat") if in_room => at.map_or(Event::Other, Event::Chat),
        Some("user_joined") if in_room && h.user_id.as_deref() == Some(me) => Event::Ack {
            recovered: h.recovered,
            at,
        },
        Some("ack") if in_room => match h.id {
            Some(id) => Event::Published {
                id: id.into_owned(),
                at,
            },
            None => Event::Other,
        },
        Some("history_reset") if in_room => Event::HistoryReset,
        Some("error") => Event::Error {
            code: h.code.map(Cow::into_owned).unwrap_or_default(),
            id: h.id.map(Cow::into_owned),
        },
        _ => Event::Other,
    }
}

/// The `join_room` request, with `since` when the client has a position.
pub fn join_frame(room: &str, since: Option<&Position>) -> String {
    let mut join = serde_json::json!({"type": "join_room", "room": room});
    if let Some(p) = since {
        join["since"] = serde_json::json!({"offset": p.offset, "epoch": p.epoch});
    }
    join.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn classifies_what_recovery_needs() {
        let c = |f: &str| classify(f.as_bytes(), "me", "r");
        assert_eq!(
            c(
                r#"{"event":"chat","from":"p","room":"r","content":"lt1 0 1 2","offset":7,"epoch":"E"}"#
            ),
            Event::Chat(pos(7, "E"))
        );
        // Another room's message, or one without an offset, moves nothing.
        assert_eq!(
            c(r#"{"event":"chat","room":"x","content":"a","offset":7,"epoch":"E"}"#),
            Event::Other
        );
        assert_eq!(
            c(r#"{"event":"chat","room":"r","content":"a"}"#),
            Event::Other
        );
        assert_eq!(
            c(
                r#"{"event":"user_joined","user_id":"me","room":"r","recovered":false,"offset":3,"epoch":"F"}"#
            ),
            Event::Ack {
                recovered: Some(false),
                at: Some(pos(3, "F"))
            }
        );
        assert_eq!(
            c(r#"{"event":"user_joined","user_id":"me","room":"r","offset":0,"epoch":"F"}"#),
            Event::Ack {
                recovered: None,
                at: Some(pos(0, "F"))
            }
        );
        // Someone else's join is not an ack.
        assert_eq!(
            c(r#"{"event":"user_joined","user_id":"you","room":"r","recovered":true}"#),
            Event::Other
        );
        assert_eq!(
            c(r#"{"event":"history_reset","room":"r","epoch":"G"}"#),
            Event::HistoryReset
        );
        assert_eq!(
            c(r#"{"event":"error","code":"bus_unavailable","message":"x"}"#),
            Event::Error {
                code: "bus_unavailable".into(),
                id: None
            }
        );
        assert_eq!(
            c(r#"{"event":"error","code":"rate_limited","message":"x","id":"m7"}"#),
            Event::Error {
                code: "rate_limited".into(),
                id: Some("m7".into())
            }
        );
        assert_eq!(
            c(r#"{"event":"ack","id":"m7","room":"r","offset":9,"epoch":"E"}"#),
            Event::Published {
                id: "m7".into(),
                at: Some(pos(9, "E"))
            }
        );
        assert_eq!(
            c(r#"{"event":"ack","id":"m7","room":"r"}"#),
            Event::Published {
                id: "m7".into(),
                at: None
            }
        );
        // Another room's ack, or one without an id, is not ours.
        assert_eq!(
            c(r#"{"event":"ack","id":"m7","room":"x","offset":9,"epoch":"E"}"#),
            Event::Other
        );
        assert_eq!(
            c(r#"{"event":"ack","room":"r","offset":9,"epoch":"E"}"#),
            Event::Other
        );
        for junk in [
            "",
            "{",
            "[1]",
            r#"{"event":5}"#,
            r#"{"event":"chat","offset":-1}"#,
        ] {
            assert_eq!(c(junk), Event::Other, "{junk}");
        }
    }

    #[test]
    fn join_carries_since_only_with_a_position() {
        let v: serde_json::Value = serde_json::from_str(&join_frame("r", None)).unwrap();
        assert_eq!(v, serde_json::json!({"type":"join_room","room":"r"}));
        let v: serde_json::Value =
            serde_json::from_str(&join_frame("r", Some(&pos(9, "E")))).unwrap();
        assert_eq!(v["since"], serde_json::json!({"offset":9,"epoch":"E"}));
    }
}
