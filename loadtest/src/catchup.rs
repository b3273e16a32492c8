//! Whether a rejoin caught a client up: the room messages it got between its `join_room` with
//! `since` and its own `user_joined` ack must be exactly the run's missed messages, in order,
//! each after `since`, and the ack must say `recovered:true`.
//!
//! Pure, so every way a replay can go wrong has a unit test; the `resume` scenario
//! (`resume.rs`) owns the connections and hands each client's record here.

use std::collections::HashSet;

use crate::rejoin::Position;

/// One room message received before the ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Where the server put it.
    pub at: Position,
    /// Its stamp's sender and sequence number, when it carries one (`lt1 SENDER SEQ …`).
    pub stamp: Option<(u32, u64)>,
}

/// Why a client did not catch up; [`Failure::name`] is its key in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The ack said `recovered:false`, or said nothing about recovery.
    NotRecovered(Option<bool>),
    /// A message came twice, or one the client already had (at or before `since`).
    Duplicate(String),
    /// Fewer of the missed messages than were published.
    Missing {
        /// Distinct missed messages received.
        got: u64,
        /// Missed messages published.
        want: u64,
    },
    /// A room message that is not one of the missed ones, or from another epoch.
    Unexpected(String),
    /// The missed messages arrived, but not in the order they were published.
    OutOfOrder(String),
    /// No ack within the time limit.
    Timeout(String),
    /// The connection or the join failed (refused, closed, an `error` event).
    Error(String),
}

impl Failure {
    /// The failure's kind, as counted in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Failure::NotRecovered(_) => "not_recovered",
            Failure::Duplicate(_) => "duplicate",
            Failure::Missing { .. } => "missing",
            Failure::Unexpected(_) => "unexpected",
            Failure::OutOfOrder(_) => "out_of_order",
            Failure::Timeout(_) => "timeout",
            Failure::Error(_) => "error",
        }
    }

    /// One line for the report.
    pub fn detail(&self) -> String {
        match self {
            Failure::NotRecovered(r) => format!("ack said recovered: {r:?}"),
            Failure::Missing { got, want } => format!("got {got} of {want} missed messages"),
            Failure::Duplicate(d)
            | Failure::Unexpected(d)
            | Failure::OutOfOrder(d)
            | Failure::Timeout(d)
            | Failure::Error(d) => d.clone(),
        }
    }
}

/// Checks one client's replay: `seen` are the room messages received before its ack, `since`
/// what it asked from, `sender` the stamp sender of its room's publisher, who published
/// sequence numbers `0..missed` after `since`.
pub fn check(
    since: &Position,
    seen: &[Seen],
    recovered: Option<bool>,
    sender: u32,
    missed: u64,
) -> Result<(), Failure> {
    if recovered != Some(true) {
        return Err(Failure::NotRecovered(recovered));
    }
    let mut had = HashSet::with_capacity(seen.len());
    let mut got = 0u64;
    let mut last: Option<(u64, u64)> = None;
    let mut disorder = None;
    for s in seen {
        if s.at.epoch != since.epoch {
            return Err(Failure::Unexpected(format!(
                "offset {} of epoch {:?}, asked since epoch {:?}",
                s.at.offset, s.at.epoch, since.epoch
            )));
        }
        if s.at.offset <= since.offset {
            return Err(Failure::Duplicate(format!(
                "offset {} at or before since {}",
                s.at.offset, since.offset
            )));
        }
        let seq = match s.stamp {
            Some((from, seq)) if from == sender && seq < missed => seq,
            _ => {
                return Err(Failure::Unexpected(format!(
                    "offset {} is not one of the {missed} missed messages (stamp {:?})",
                    s.at.offset, s.stamp
                )))
            }
        };
        if !had.insert(seq) {
            return Err(Failure::Duplicate(format!(
                "message {seq} twice (offset {})",
                s.at.offset
            )));
        }
        got += 1;
        if let Some((prev_seq, prev_offset)) = last {
            if disorder.is_none() && (seq <= prev_seq || s.at.offset <= prev_offset) {
                disorder = Some(format!(
                    "message {seq} (offset {}) after message {prev_seq} (offset {prev_offset})",
                    s.at.offset
                ));
            }
        }
        last = Some((seq, s.at.offset));
    }
    if got != missed {
        return Err(Failure::Missing { got, want: missed });
    }
    match disorder {
        Some(d) => Err(Failure::OutOfOrder(d)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since() -> Position {
        Position {
            offset: 10,
            epoch: "E".into(),
        }
    }

    fn seen(offset: u64, seq: u64) -> Seen {
        Seen {
            at: Position {
                offset,
                epoch: "E".into(),
            },
            stamp: Some((0, seq)),
        }
    }

    fn run(seen: &[Seen]) -> Result<(), Failure> {
        check(&since(), seen, Some(true), 0, 3)
    }

    #[test]
    fn exactly_the_missed_messages_in_order_catch_up() {
        assert_eq!(run(&[seen(11, 0), seen(12, 1), seen(13, 2)]), Ok(()));
        // Nothing missed, nothing replayed.
        assert_eq!(check(&since(), &[], Some(true), 0, 0), Ok(()));
    }

    #[test]
    fn a_replay_that_is_not_recovered_fails_whatever_came() {
        let all = [seen(11, 0), seen(12, 1), seen(13, 2)];
        for r in [Some(false), None] {
            assert_eq!(
                check(&since(), &all, r, 0, 3),
                Err(Failure::NotRecovered(r))
            );
        }
    }

    #[test]
    fn missing_duplicate_unexpected_and_reordered_messages_are_told_apart() {
        let name = |r: Result<(), Failure>| r.err().map(|f| f.name());
        assert_eq!(
            run(&[seen(11, 0), seen(13, 2)]),
            Err(Failure::Missing { got: 2, want: 3 })
        );
        assert_eq!(run(&[]), Err(Failure::Missing { got: 0, want: 3 }));
        assert_eq!(
            name(run(&[seen(11, 0), seen(12, 1), seen(12, 1), seen(13, 2)])),
            Some("duplicate")
        );
        // Something the client already had (the `since` message itself).
        assert_eq!(
            name(run(&[seen(10, 0), seen(12, 1), seen(13, 2)])),
            Some("duplicate")
        );
        assert_eq!(
            name(run(&[seen(11, 0), seen(12, 1), seen(13, 2), seen(14, 3)])),
            Some("unexpected")
        );
        let mut foreign = seen(12, 1);
        foreign.stamp = Some((1, 1));
        assert_eq!(
            name(run(&[seen(11, 0), foreign, seen(13, 2)])),
            Some("unexpected")
        );
        let mut unstamped = seen(12, 1);
        unstamped.stamp = None;
        assert_eq!(
            name(run(&[seen(11, 0), unstamped, seen(13, 2)])),
            Some("unexpected")
        );
        let mut other_epoch = seen(12, 1);
        other_epoch.at.epoch = "F".into();
        assert_eq!(
            name(run(&[seen(11, 0), other_epoch, seen(13, 2)])),
            Some("unexpected")
        );
        assert_eq!(
            name(run(&[seen(11, 0), seen(13, 2), seen(12, 1)])),
            Some("out_of_order")
        );
        // Right sequence, offsets going backwards.
        assert_eq!(
            name(run(&[seen(11, 0), seen(13, 1), seen(12, 2)])),
            Some("out_of_order")
        );
    }
}
