//! What the id publisher's acks say: the id it gives message n, and how an ack's position
//! compares with where the message was already known to be stored.
//!
//! An ack is a *repeat* (the server's dedupe answered) when its id was acknowledged before, or
//! when it answers a message sent again whose first copy the publisher had already seen stored
//! (its own echo, live or replayed on the rejoin) at that same offset. An ack that places a
//! message elsewhere than where it was seen stored, in the same epoch, is a *conflict*: the
//! message was stored twice. In another epoch nothing can be told: the first copy went with
//! the history it was in.

use crate::rejoin::Position;

/// The id of message `seq`: `m<seq>`.
pub fn message_id(seq: u64) -> String {
    format!("m{seq}")
}

/// The number in an id [`message_id`] made; `None` for anything else.
pub fn parse_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix('m')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How an ack's position compares with where the message was known to be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same offset and epoch: the server's dedupe answered.
    Same,
    /// Another offset of the same epoch: the message was stored twice.
    Moved,
    /// Nothing to compare (not known stored, no position, or another epoch).
    Unknown,
}

/// Compares an ack's position `at` with where the message was `known` to be stored.
pub fn judge(known: Option<&Position>, at: Option<&Position>) -> Verdict {
    match (known, at) {
        (Some(k), Some(a)) if k == a => Verdict::Same,
        (Some(k), Some(a)) if k.epoch == a.epoch => Verdict::Moved,
        _ => Verdict::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_foreign_ids_are_ignored() {
        assert_eq!(parse_id(&message_id(0)), Some(0));
        assert_eq!(parse_id(&message_id(u64::MAX)), Some(u64::MAX));
        let bad = [
            "",
            "m",
            "7",
            "m+1",
            "m-1",
            "x7",
            "m1a",
            "m99999999999999999999",
        ];
        for b in bad {
            assert_eq!(parse_id(b), None, "{b}");
        }
    }

    #[test]
    fn an_ack_is_judged_against_where_its_message_was_seen() {
        let pos = |offset, epoch: &str| Position {
            offset,
            epoch: epoch.into(),
        };
        let e7 = pos(7, "E");
        assert_eq!(judge(Some(&e7), Some(&pos(7, "E"))), Verdict::Same);
        assert_eq!(judge(Some(&e7), Some(&pos(8, "E"))), Verdict::Moved);
        // Another epoch: the first copy is gone with the history it was in.
        assert_eq!(judge(Some(&e7), Some(&pos(1, "F"))), Verdict::Unknown);
        assert_eq!(judge(None, Some(&e7)), Verdict::Unknown);
        assert_eq!(judge(Some(&e7), None), Verdict::Unknown);
    }
}
