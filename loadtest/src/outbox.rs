//! The outbox of a publisher that gives its messages ids (issue 20): which of its numbered
//! messages are still unacknowledged, what to send again and when, and what the acks say.
//!
//! Message n carries `"id":"m<n>"`. Every message sent stays in a bounded map until its `ack`.
//! After a reconnect (on the rejoin's own `user_joined`) every unacknowledged one is queued to
//! be sent again, oldest first; so is one refused with a transient error (`bus_unavailable`,
//! `rate_limited`), after a backoff that holds all sending, so the publisher does not hammer a
//! bus that is down. Any other error naming a message gives it up: it stays unacknowledged,
//! which the run counts as lost. After a reconnect the last few acknowledged messages are sent
//! again too ("rechecks", as a client whose acks were lost in a failover would): the server
//! must answer each with its first offset and deliver none of them again. Whether an ack was a
//! repeat or a conflict is told in [`crate::acks`].
//!
//! Pure state, no I/O: the connection loop (`recover.rs`) feeds it events and asks it
//! what to send.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::acks::{judge, parse_id, Verdict};
use crate::backoff::Backoff;
use crate::rejoin::{Event, Position};
use crate::seqcounts::SeqCounts;
use crate::stamp::StampFinder;

/// Most messages sent and not yet acknowledged; while that many wait, new messages wait too
/// (sending them again does not).
pub const MAX_UNACKED: usize = 4096;

/// The hold after a transient error: from this, doubling while errors go on, reset by an ack.
const HOLD_FIRST: Duration = Duration::from_millis(100);

/// The longest hold after a transient error.
const HOLD_MAX: Duration = Duration::from_secs(1);

/// What to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A new message with this number.
    New(u64),
    /// An unacknowledged message, again.
    Resend(u64),
    /// An acknowledged message, again, to check the server answers with its first offset.
    Recheck(u64),
}

impl Next {
    /// The message's number.
    pub fn seq(self) -> u64 {
        match self {
            Next::New(s) | Next::Resend(s) | Next::Recheck(s) => s,
        }
    }
}

/// Whether the outbox has something to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Yes, at the pace.
    Open,
    /// Not before this (a hold after a transient error).
    Until(Instant),
    /// No: nothing to send again, and new messages are not wanted (or the window is full).
    Closed,
}

/// What the outbox saw in one phase of the run (counted when it happened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Unacknowledged messages sent again (after a reconnect or a transient error).
    pub resent: u64,
    /// Acknowledged messages sent again after a reconnect, to check the server's dedupe.
    pub rechecked: u64,
    /// Acks the server's dedupe gave: for an id acknowledged before, or with the offset its
    /// message was already seen stored at.
    pub repeat_acks: u64,
    /// Acks that placed a message at another offset than the one it was seen stored at.
    pub conflicts: u64,
    /// Messages given up on an error other than `bus_unavailable` or `rate_limited`.
    pub rejected: u64,
}

/// One message sent and not yet acknowledged.
#[derive(Debug, Default)]
struct Pending {
    /// In the queue to be sent again.
    queued: bool,
    /// Where its own echo showed it stored, if one came.
    echo: Option<Position>,
    /// Where it was known stored when it was last sent again.
    stored_at: Option<Position>,
}

/// Something queued to be sent again.
#[derive(Debug)]
enum Retry {
    Unacked(u64),
    Recheck(u64, Position),
}

/// One id publisher's outbox.
#[derive(Debug)]
pub struct Outbox {
    /// The sender number in its stamps (to know its own echoes).
    sender: u32,
    finder: StampFinder,
    /// Sent, not acknowledged; at most [`MAX_UNACKED`] (plus rechecks, which are not here).
    unacked: BTreeMap<u64, Pending>,
    /// To send again, in order; at most one entry per unacknowledged message and `recheck`.
    retry: VecDeque<Retry>,
    /// The last `recheck` messages acknowledged with a position.
    recent: VecDeque<(u64, Position)>,
    recheck: usize,
    /// Rechecks sent on this connection and not answered yet, with their first position.
    rechecking: HashMap<u64, Position>,
    /// Acks per message number, for numbers below the run's capacity.
    acks: SeqCounts,
    hold_until: Option<Instant>,
    backoff: Backoff,
    stats: Vec<OutboxStats>,
    /// `unacked.len()`, for the run to wait on.
    unacked_now: Arc<AtomicUsize>,
}

impl Outbox {
    /// An outbox for stamps of `sender`, counting acks of numbers below `capacity`, sending the
    /// last `recheck` acknowledged messages again after each reconnect, over `phases` phases.
    pub fn new(sender: u32, capacity: usize, recheck: usize, phases: usize) -> Self {
        Outbox {
            sender,
            finder: StampFinder::default(),
            unacked: BTreeMap::new(),
            retry: VecDeque::new(),
            recent: VecDeque::with_capacity(recheck),
            recheck,
            rechecking: HashMap::new(),
            acks: SeqCounts::with_capacity(capacity),
            hold_until: None,
            backoff: Backoff::new(HOLD_FIRST, HOLD_MAX),
            stats: vec![OutboxStats::default(); phases.max(1)],
            unacked_now: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many messages are unacknowledged right now, readable from another task.
    pub fn unacked_gauge(&self) -> Arc<AtomicUsize> {
        self.unacked_now.clone()
    }

    /// Whether there is something to send: `new` says whether new messages are wanted.
    pub fn gate(&self, now: Instant, new: bool) -> Gate {
        if let Some(t) = self.hold_until.filter(|t| *t > now) {
            return Gate::Until(t);
        }
        if !self.retry.is_empty() || (new && self.unacked.len() < MAX_UNACKED) {
            Gate::Open
        } else {
            Gate::Closed
        }
    }

    /// The next thing to send: what is queued to go again first, else new message `new` (when
    /// new ones are wanted and the window has room). Call [`Outbox::sent`] once it went out.
    pub fn next(&mut self, now: Instant, new: Option<u64>) -> Option<Next> {
        if self.hold_until.is_some_and(|t| t > now) {
            return None;
        }
        while let Some(r) = self.retry.pop_front() {
            match r {
                Retry::Unacked(seq) => {
                    if let Some(p) = self.unacked.get_mut(&seq).filter(|p| p.queued) {
                        p.queued = false;
                        return Some(Next::Resend(seq));
                    }
                }
                Retry::Recheck(seq, first) => {
                    self.rechecking.insert(seq, first);
                    return Some(Next::Recheck(seq));
                }
            }
        }
        new.filter(|_| self.unacked.len() < MAX_UNACKED)
            .map(Next::New)
    }

    /// `next` went out, in `phase`.
    pub fn sent(&mut self, next: Next, phase: usize) {
        let phase = phase.min(self.stats.len() - 1);
        match next {
            Next::New(seq) => {
                self.unacked.insert(seq, Pending::default());
            }
            Next::Resend(seq) => {
                if let Some(p) = self.unacked.get_mut(&seq) {
                    p.stored_at = p.echo.clone();
                }
                self.stats[phase].resent += 1;
            }
            Next::Recheck(_) => self.stats[phase].rechecked += 1,
        }
        self.unacked_now
            .store(self.unacked.len(), Ordering::Relaxed);
    }

    /// One received text frame (`frame`, classified as `event`), in `phase`, at `now`.
    pub fn on_event(&mut self, frame: &[u8], event: &Event, phase: usize, now: Instant) {
        let phase = phase.min(self.stats.len() - 1);
        match event {
            Event::Chat(at) => {
                let mine = self.finder.find(frame).filter(|s| s.sender == self.sender);
                if let Some(p) = mine.and_then(|s| self.unacked.get_mut(&s.seq)) {
                    p.echo = Some(at.clone());
                }
            }
            Event::Ack { at, .. } => self.rejoined(at.as_ref()),
            Event::Published { id, at } => {
                if let Some(seq) = parse_id(id) {
                    self.acked(seq, at.as_ref(), phase);
                }
            }
            Event::Error { code, id: Some(id) } => {
                if let Some(seq) = parse_id(id) {
                    self.refused(seq, code, phase, now);
                }
            }
            // What the publisher acknowledged before is no longer in the room's history.
            Event::HistoryReset => self.recent.clear(),
            Event::Error { id: None, .. } | Event::Other => {}
        }
        self.unacked_now
            .store(self.unacked.len(), Ordering::Relaxed);
    }

    /// Joined (again): queue the rechecks of this epoch, then every unacknowledged message.
    fn rejoined(&mut self, at: Option<&Position>) {
        self.retry.clear();
        self.rechecking.clear();
        if let Some(at) = at {
            for (seq, first) in self.recent.iter().filter(|(_, p)| p.epoch == at.epoch) {
                self.retry.push_back(Retry::Recheck(*seq, first.clone()));
            }
        }
        for (seq, p) in self.unacked.iter_mut() {
            p.queued = true;
            self.retry.push_back(Retry::Unacked(*seq));
        }
    }

    fn acked(&mut self, seq: u64, at: Option<&Position>, phase: usize) {
        let before = self.acks.get(seq);
        self.acks.record(seq);
        let known = if let Some(p) = self.unacked.remove(&seq) {
            self.backoff.reset();
            if let Some(at) = at.filter(|_| self.recheck > 0) {
                if self.recent.len() == self.recheck {
                    self.recent.pop_front();
                }
                self.recent.push_back((seq, at.clone()));
            }
            p.stored_at
        } else {
            self.rechecking.remove(&seq)
        };
        let stats = &mut self.stats[phase];
        match judge(known.as_ref(), at) {
            Verdict::Same => stats.repeat_acks += 1,
            Verdict::Moved => stats.conflicts += 1,
            Verdict::Unknown if before > 0 => stats.repeat_acks += 1,
            Verdict::Unknown => {}
        }
    }

    fn refused(&mut self, seq: u64, code: &str, phase: usize, now: Instant) {
        self.rechecking.remove(&seq);
        let transient = matches!(code, "bus_unavailable" | "rate_limited");
        if transient && self.hold_until.is_none_or(|t| t <= now) {
            self.hold_until = Some(now + self.backoff.step());
        }
        match self.unacked.get_mut(&seq) {
            // Already queued: sent again once, not twice.
            Some(p) if transient && p.queued => {}
            Some(p) if transient => {
                p.queued = true;
                self.retry.push_back(Retry::Unacked(seq));
            }
            Some(_) => {
                self.unacked.remove(&seq);
                self.stats[phase].rejected += 1;
            }
            None => {}
        }
    }

    /// The first `limit` numbers in `range` never acknowledged.
    pub fn unacked_in(&self, range: Range<u64>, limit: usize) -> Vec<u64> {
        range
            .filter(|s| self.acks.get(*s) == 0)
            .take(limit)
            .collect()
    }

    /// How many of the messages numbered `range` were acknowledged.
    pub fn acked_in(&self, range: Range<u64>) -> u64 {
        range.filter(|s| self.acks.get(*s) > 0).count() as u64
    }

    /// The counts of `phase`.
    pub fn stats(&self, phase: usize) -> OutboxStats {
        self.stats.get(phase).copied().unwrap_or_default()
    }

    /// Messages sent and not acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acks::message_id;
    use crate::stamp::FrameBuilder;

    fn pos(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    /// `o` gets `event` at `now`.
    fn on(o: &mut Outbox, event: Event, now: Instant) {
        o.on_event(b"", &event, 0, now);
    }

    /// The ack of message `seq`, stored at `offset` of epoch E (`None`: without history).
    fn ack(seq: u64, offset: Option<u64>) -> Event {
        let at = offset.map(|o| pos(o, "E"));
        let id = message_id(seq);
        Event::Published { id, at }
    }

    fn error(seq: u64, code: &str) -> Event {
        let (code, id) = (code.into(), Some(message_id(seq)));
        Event::Error { code, id }
    }

    /// The publisher's own join ack, at `at`.
    fn rejoin(at: Option<Position>) -> Event {
        let recovered = at.as_ref().map(|p| p.epoch == "E");
        Event::Ack { recovered, at }
    }

    /// Sends everything the outbox wants to send at `now`, with new messages from `*next`
    /// while `new` (at most up to 50).
    fn drain(o: &mut Outbox, now: Instant, new: bool, next: &mut u64) -> Vec<Next> {
        let mut out = Vec::new();
        while let Some(n) = o.next(now, (new && *next < 50).then_some(*next)) {
            if let Next::New(s) = n {
                *next = s + 1;
            }
            o.sent(n, 0);
            out.push(n);
        }
        out
    }

    /// The publisher's own echo of message `seq`, stored at `at`.
    fn echo(o: &mut Outbox, seq: u64, at: Position) {
        let frame = FrameBuilder::room_message("r", 0, 0).frame_with_id(seq, &message_id(seq));
        let content = &serde_json::from_str::<serde_json::Value>(&frame).unwrap()["content"];
        let (offset, epoch) = (at.offset, &at.epoch);
        let event = format!(
            r#"{{"event":"chat","room":"r","content":{content},"offset":{offset},"epoch":"{epoch}"}}"#
        );
        o.on_event(event.as_bytes(), &Event::Chat(at), 0, Instant::now());
    }

    #[test]
    fn acks_retire_messages_and_count_per_number() {
        let now = Instant::now();
        let mut o = Outbox::new(0, 100, 2, 1);
        o.sent(Next::New(0), 0);
        o.sent(Next::New(1), 0);
        assert_eq!(o.unacked(), 2);
        on(&mut o, ack(0, Some(1)), now);
        on(&mut o, ack(1, Some(2)), now);
        assert_eq!(o.unacked(), 0);
        assert_eq!(o.unacked_gauge().load(Ordering::Relaxed), 0);
        assert_eq!(o.acked_in(0..3), 2);
        assert_eq!(o.unacked_in(0..3, 5), [2]);
        assert_eq!(o.stats(0), OutboxStats::default());
        // A second ack of an id is a repeat; someone else's id is nothing.
        on(&mut o, ack(1, Some(2)), now);
        let foreign = Event::Published {
            id: "x".into(),
            at: None,
        };
        on(&mut o, foreign, now);
        assert_eq!(o.stats(0).repeat_acks, 1);
        assert_eq!(o.acked_in(0..3), 2);
    }

    #[test]
    fn a_rejoin_resends_the_unacked_and_rechecks_the_last_acked() {
        let now = Instant::now();
        let mut o = Outbox::new(0, 100, 2, 1);
        let mut n = 0;
        assert_eq!(drain(&mut o, now, true, &mut n).len(), 50);
        for seq in 0..46 {
            on(&mut o, ack(seq, Some(seq + 1)), now);
        }
        // 46 was stored (its echo came, here on the rejoin's replay) but its ack was lost.
        echo(&mut o, 46, pos(47, "E"));
        on(&mut o, rejoin(Some(pos(47, "E"))), now);
        let sent = drain(&mut o, now, false, &mut n);
        use Next::{Recheck, Resend};
        let want = [Recheck(44), Recheck(45), Resend(46), Resend(47), Resend(48)];
        assert_eq!(sent[..5], want);
        assert_eq!(sent.len(), 6);
        // Dedupe answers 44, 45 and 46 with their first offsets; 47… are stored now.
        for seq in 44..50 {
            on(&mut o, ack(seq, Some(seq + 1)), now);
        }
        let s = o.stats(0);
        let counts = (s.resent, s.rechecked, s.repeat_acks, s.conflicts);
        assert_eq!(counts, (4, 2, 3, 0));
        assert_eq!((o.unacked(), o.acked_in(0..50)), (0, 50));
    }

    #[test]
    fn an_ack_at_another_offset_is_a_conflict() {
        let now = Instant::now();
        let mut o = Outbox::new(0, 100, 1, 1);
        o.sent(Next::New(0), 0);
        o.sent(Next::New(1), 0);
        on(&mut o, ack(0, Some(1)), now);
        echo(&mut o, 1, pos(2, "E"));
        on(&mut o, rejoin(Some(pos(2, "E"))), now);
        let mut n = 2;
        let sent = drain(&mut o, now, false, &mut n);
        assert_eq!(sent, [Next::Recheck(0), Next::Resend(1)]);
        // Both stored a second time.
        on(&mut o, ack(0, Some(3)), now);
        on(&mut o, ack(1, Some(4)), now);
        assert_eq!((o.stats(0).conflicts, o.stats(0).repeat_acks), (2, 0));
    }

    #[test]
    fn after_a_history_reset_nothing_is_rechecked() {
        let now = Instant::now();
        let mut o = Outbox::new(0, 100, 4, 1);
        o.sent(Next::New(0), 0);
        on(&mut o, ack(0, Some(1)), now);
        // A rejoin into another epoch: the first copy is gone.
        on(&mut o, rejoin(Some(pos(0, "F"))), now);
        let mut n = 1;
        assert_eq!(drain(&mut o, now, false, &mut n), []);
        on(&mut o, rejoin(Some(pos(1, "E"))), now);
        assert_eq!(drain(&mut o, now, false, &mut n), [Next::Recheck(0)]);
        on(&mut o, Event::HistoryReset, now);
        on(&mut o, rejoin(Some(pos(1, "E"))), now);
        assert_eq!(drain(&mut o, now, false, &mut n), []);
    }

    #[test]
    fn a_transient_error_holds_sending_and_resends_after_a_backoff() {
        let t0 = Instant::now();
        let mut o = Outbox::new(0, 100, 0, 1);
        o.sent(Next::New(0), 0);
        o.sent(Next::New(1), 0);
        on(&mut o, error(0, "bus_unavailable"), t0);
        // The second error comes during the hold: it does not lengthen it.
        on(&mut o, error(1, "bus_unavailable"), t0 + HOLD_FIRST / 2);
        let hold = t0 + HOLD_FIRST;
        assert_eq!(o.gate(t0, true), Gate::Until(hold));
        assert_eq!(o.next(t0, Some(2)), None);
        let mut n = 2;
        let sent = drain(&mut o, hold, false, &mut n);
        assert_eq!(sent, [Next::Resend(0), Next::Resend(1)]);
        assert_eq!(o.stats(0).resent, 2);
        // Refused again: a longer hold.
        on(&mut o, error(0, "bus_unavailable"), hold);
        assert_eq!(o.gate(hold, true), Gate::Until(hold + HOLD_FIRST * 2));
        // An ack resets the backoff (the next hold is the first again).
        on(&mut o, ack(1, Some(1)), hold);
        let later = hold + HOLD_MAX;
        assert_eq!(drain(&mut o, later, false, &mut n), [Next::Resend(0)]);
        on(&mut o, error(0, "rate_limited"), later);
        assert_eq!(o.gate(later, true), Gate::Until(later + HOLD_FIRST));
    }

    #[test]
    fn a_permanent_error_gives_the_message_up() {
        let now = Instant::now();
        let mut o = Outbox::new(0, 100, 0, 1);
        o.sent(Next::New(0), 0);
        on(&mut o, error(0, "not_in_room"), now);
        assert_eq!((o.unacked(), o.stats(0).rejected), (0, 1));
        assert_eq!(o.acked_in(0..1), 0);
        assert_eq!(o.gate(now, false), Gate::Closed);
        on(&mut o, rejoin(None), now);
        assert_eq!(o.next(now, None), None);
    }

    #[test]
    fn a_full_window_stops_new_messages_but_not_resends() {
        let now = Instant::now();
        let mut o = Outbox::new(0, 10, 0, 1);
        for s in 0..MAX_UNACKED as u64 {
            o.sent(Next::New(s), 0);
        }
        let next = MAX_UNACKED as u64;
        assert_eq!(o.gate(now, true), Gate::Closed);
        assert_eq!(o.next(now, Some(next)), None);
        on(&mut o, rejoin(None), now);
        assert_eq!(o.gate(now, true), Gate::Open);
        assert_eq!(o.next(now, Some(next)), Some(Next::Resend(0)));
        on(&mut o, ack(0, None), now);
        o.retry.clear();
        assert_eq!(o.next(now, Some(next)), Some(Next::New(next)));
    }
}
