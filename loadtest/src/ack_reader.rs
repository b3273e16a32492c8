//! Publish acks (`fanout --ids`): what a publisher hears back for the room messages it sent
//! with an id, and the run's totals.
//!
//! Each message carries the id `SENDER.SEQ` ([`FrameBuilder::room_message_with_id`]); the server
//! answers it with `{"event":"ack","id":…}` once stored (or published, without history), or with
//! an error naming the id. A publisher's `Receiver` (receiver.rs) hands frames without a stamp
//! to its [`AckReader`], so its own echoes (nearly all it reads) cost nothing more: acks are tracked by
//! sequence number (a repeat shows as a duplicate), errors are counted by code, and each first
//! answer bumps a shared counter the run waits on before it reports the missing ones.
//!
//! [`FrameBuilder::room_message_with_id`]: crate::stamp::FrameBuilder::room_message_with_id

use std::borrow::Cow;
use std::collections::BTreeMap;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::counters::Counters;
use crate::stamp::number;
use crate::tracker::SeqTracker;

/// What one publisher heard back for its messages with ids.
pub struct AckReader {
    sender: u32,
    ack_finder: Finder<'static>,
    id_finder: Finder<'static>,
    /// Acks, by the sequence number in their id.
    pub acked: SeqTracker,
    /// Errors naming one of this publisher's ids, by sequence number.
    pub errored: SeqTracker,
    /// Those errors by code.
    pub errors: BTreeMap<String, u64>,
    /// Acks or errors naming an id this publisher did not send.
    pub foreign: u64,
    answers: Counters,
}

/// The parts of an error event that say which message failed and why.
#[derive(Deserialize)]
struct ErrorEvent<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

impl AckReader {
    /// A reader for publisher `sender`'s answers; each first answer to a message adds one to
    /// `answers`.
    pub fn new(sender: u32, answers: Counters) -> Self {
        AckReader {
            sender,
            ack_finder: Finder::new(b"\"event\":\"ack\""),
            id_finder: Finder::new(b"\"id\":\""),
            acked: SeqTracker::default(),
            errored: SeqTracker::default(),
            errors: BTreeMap::new(),
            foreign: 0,
            answers,
        }
    }

    /// Handles a frame without a stamp; returns whether it was an ack.
    #[inline]
    pub fn on_ack(&mut self, frame: &[u8]) -> bool {
        if self.ack_finder.find(frame).is_none() {
            return false;
        }
        let id = self
            .id_finder
            .find(frame)
            .and_then(|at| parse_id(&frame[at + 6..]));
        match id {
            Some((sender, seq)) if sender == self.sender => {
                let before = self.acked.distinct;
                self.acked.record(seq);
                if self.acked.distinct > before {
                    self.answers.add(self.sender as usize, 1);
                }
            }
            _ => self.foreign += 1,
        }
        true
    }

    /// Handles an error event: one that names an id is counted against that message.
    pub fn on_error(&mut self, frame: &[u8]) {
        let Ok(event) = serde_json::from_slice::<ErrorEvent>(frame) else {
            return;
        };
        let Some(id) = event.id else {
            return;
        };
        match parse_id(id.as_bytes()) {
            Some((sender, seq)) if sender == self.sender => {
                let code = event.code.as_deref().unwrap_or("(none)");
                *self.errors.entry(code.to_owned()).or_default() += 1;
                let before = self.errored.distinct;
                self.errored.record(seq);
                if self.errored.distinct > before {
                    self.answers.add(self.sender as usize, 1);
                }
            }
            _ => self.foreign += 1,
        }
    }
}

/// `SENDER.SEQ` at the start of `bytes`.
fn parse_id(bytes: &[u8]) -> Option<(u32, u64)> {
    let (sender, rest) = number(bytes)?;
    let (seq, _) = number(rest.strip_prefix(b".")?)?;
    Some((u32::try_from(sender).ok()?, seq))
}

/// Every publisher's answers added up, for the report.
#[derive(Debug, Default)]
pub struct AckTotals {
    sent: u64,
    acked: u64,
    duplicate_acks: u64,
    out_of_order: u64,
    errored: u64,
    errors: BTreeMap<String, u64>,
    unacked: u64,
    foreign: u64,
}

impl AckTotals {
    /// Adds one publisher that sent `sent` messages with ids.
    pub fn add(&mut self, sent: u64, reader: &AckReader) {
        self.sent += sent;
        self.acked += reader.acked.distinct;
        self.duplicate_acks += reader.acked.duplicates;
        self.out_of_order += reader.acked.reordered;
        self.errored += reader.errored.distinct;
        for (code, n) in &reader.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.unacked += sent.saturating_sub(reader.acked.distinct + reader.errored.distinct);
        self.foreign += reader.foreign;
    }

    /// Adds the `acks` object to `json`, a line to `human`, and what went wrong to `problems`.
    pub fn report(&self, json: &mut Value, human: &mut String, problems: &mut Vec<String>) {
        if let Some(o) = json.as_object_mut() {
            o.insert(
                "acks".into(),
                json!({
                    "sent_with_id": self.sent,
                    "acked": self.acked,
                    "errors": self.errors,
                    "unacked": self.unacked,
                    "duplicate_acks": self.duplicate_acks,
                    "acked_out_of_order": self.out_of_order,
                    "foreign": self.foreign,
                }),
            );
        }
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        human.push_str(&format!(
            "\nacks: {} of {} messages with ids acked, errors: {errors}, unacked {}, duplicate acks {}",
            self.acked, self.sent, self.unacked, self.duplicate_acks
        ));
        if self.unacked > 0 {
            problems.push(format!(
                "{} messages with ids got neither an ack nor an error",
                self.unacked
            ));
        }
        if self.errored > 0 {
            problems.push(format!(
                "{} messages with ids were answered with an error ({errors})",
                self.errored
            ));
        }
        if self.duplicate_acks > 0 {
            problems.push(format!("{} messages acked twice", self.duplicate_acks));
        }
        if self.foreign > 0 {
            problems.push(format!(
                "{} answers named an id the publisher did not send",
                self.foreign
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::FrameBuilder;

    fn reader() -> (AckReader, Counters) {
        let answers = Counters::default();
        (AckReader::new(3, answers.clone()), answers)
    }

    #[test]
    fn acks_and_errors_are_matched_to_the_ids_the_builder_wrote() {
        let sent = FrameBuilder::room_message_with_id("r", 3, 0).frame(17);
        let id = serde_json::from_str::<Value>(&sent).unwrap()["id"].clone();
        let (mut r, answers) = reader();
        let ack = json!({"event": "ack", "id": id, "room": "r", "offset": 5, "epoch": "E"});
        let ack = ack.to_string();
        assert!(r.on_ack(ack.as_bytes()));
        assert!(r.on_ack(ack.as_bytes()));
        assert!(!r.on_ack(br#"{"event":"error","code":"rate_limited","id":"3.18"}"#));
        r.on_error(br#"{"event":"error","code":"rate_limited","message":"m","id":"3.18"}"#);
        r.on_error(br#"{"event":"error","code":"bad_json","message":"no id"}"#);
        r.on_error(br#"{"event":"error","code":"bus_unavailable","id":"4.1"}"#);
        assert!(r.on_ack(br#"{"event":"ack","id":"9.1","room":"r"}"#));
        assert_eq!((r.acked.distinct, r.acked.duplicates), (1, 1));
        assert_eq!(r.errored.distinct, 1);
        assert_eq!(r.errors.get("rate_limited"), Some(&1));
        assert_eq!(r.foreign, 2);
        assert_eq!(answers.total(), 2);

        let mut totals = AckTotals::default();
        totals.add(3, &r);
        let (mut json, mut human, mut problems) = (json!({}), String::new(), Vec::new());
        totals.report(&mut json, &mut human, &mut problems);
        assert_eq!(json["acks"]["acked"], 1);
        assert_eq!(json["acks"]["unacked"], 1);
        assert_eq!(json["acks"]["errors"]["rate_limited"], 1);
        assert!(human.contains("1 of 3 messages with ids acked"), "{human}");
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
