//! A room's local members together with where its numbered stream stands on this node: the
//! last offset and epoch delivered here, the members still being brought up to date
//! (`join_room` with `since`), who must not see live messages until their replay is done, and
//! the gap fill that runs when the stream breaks.
//!
//! Redis pub/sub delivers a room's messages to a node in offset order, but not necessarily all
//! of them: whatever is published while the node's subscriber connection is being rebuilt never
//! arrives. A node that sees offset N+2 after N, or whose subscriptions were restored after an
//! outage, *fills the gap*: it holds live messages back, reads what it missed from history
//! (`gap_fill.rs`), delivers that, then the held ones, in offset order. Only what history no
//! longer has (trimmed, expired, lost with Redis) is announced as `history_reset`.
//!
//! The stream state sits under its own small lock inside the room, so deliveries keep taking
//! the hub's lock for reading. Everything here is synchronous and pure, so it is unit-tested
//! beside the code.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::bus::HistoryPage;
use crate::outbound::{ConnId, Outbound};
use crate::wire;

/// A member whose replay is still running: no live message reaches it.
pub const PAUSED: u64 = u64::MAX;

/// Live messages held back while a gap is filled; past it they are dropped and read from
/// history instead (they are there: every live message was stored first). Small, so finishing
/// a fill queues at most a page plus this many frames per member, well inside the default
/// 1 024-frame send queue: a fill must not close a busy room's members as slow consumers.
pub const MAX_HELD: usize = 256;

/// A position in a room's stream: an offset and its epoch.
pub type Position = (u64, Arc<str>);

/// What [`Stream::admit`] makes of a numbered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next one (or the first seen here): deliver.
    Next,
    /// Already delivered here: drop.
    Duplicate,
    /// Some offsets before it were not seen here: fill them first.
    Gap,
    /// The room's history was lost or its offsets reissued (another epoch, or an offset going
    /// backwards outside a fill's range): tell the members, then judge the message again.
    Reset,
}

/// What to do with a live message (see [`Stream::live`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// Tell the members `history_reset` (with the message's epoch) first.
    pub reset: bool,
    /// Then this.
    pub then: Then,
}

/// The second half of [`Live`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Deliver it now.
    Deliver,
    /// Drop it (a duplicate).
    Drop,
    /// It is held until a gap is filled; `start_fill`: this message opened the gap, so ask for
    /// a fill.
    Hold {
        /// Whether a fill must be requested.
        start_fill: bool,
    },
}

/// One step of a fill, for the hub to carry out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Tell the members `history_reset` with this epoch.
    Reset(Arc<str>),
    /// Deliver this frame (already a WebSocket frame) of this offset.
    Deliver(u64, Bytes),
}

/// Whether a fill is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// The stream is whole again: live delivery goes on.
    Done,
    /// Read history again from [`Stream::fill_from`].
    More,
}

/// Where a room's numbered stream stands on this node.
#[derive(Debug, Default)]
pub struct Stream {
    /// The last offset delivered here and its epoch (`None`: nothing yet).
    pub last: Option<Position>,
    /// The lowest position a member was told it joined at while nothing had been delivered
    /// here: where a fill after an outage starts when `last` is unset.
    pub floor: Option<Position>,
    /// Members being brought up to date: skip live messages up to this offset ([`PAUSED`]:
    /// all of them).
    pub recovering: HashMap<ConnId, u64>,
    /// Whether a gap is being filled (live messages are held meanwhile).
    filling: bool,
    /// Live messages that arrived while filling, in arrival order.
    held: Vec<(u64, Arc<str>, Bytes)>,
    /// Whether a live message was dropped because `held` was full.
    overflowed: bool,
    /// Offsets the last fill delivered from history (in `last`'s epoch): their live copies may
    /// still be on the way, and are duplicates, not a reissue.
    filled: Option<(u64, u64)>,
    /// The epoch this fill already announced with `history_reset`.
    told: Option<Arc<str>>,
    /// How many of `held` had arrived when the fill's current read was made: those are in
    /// history if history still has them.
    read_mark: usize,
    /// The bus lost its subscriptions again while a fill was reading: read once more before
    /// calling the stream whole.
    refill: bool,
}

impl Stream {
    /// Judges message `offset` of `epoch` and records it as the last one when it is to be
    /// delivered. On [`Admit::Reset`] it records the position just before the message in the
    /// new reckoning, so judging the message again gives `Next` or `Gap`.
    pub fn admit(&mut self, offset: u64, epoch: &str) -> Admit {
        let Some((last, known)) = &self.last else {
            // Nothing delivered here yet; a member told it joined at `floor` expects what
            // follows it.
            if let Some((floor, e)) = &self.floor {
                if **e == *epoch && offset > floor.saturating_add(1) {
                    self.last = self.floor.clone();
                    return Admit::Gap;
                }
            }
            self.last = Some((offset, Arc::from(epoch)));
            return Admit::Next;
        };
        let (last, known) = (*last, known.clone());
        if *known != *epoch {
            self.last = Some((0, Arc::from(epoch)));
            self.filled = None;
            return Admit::Reset;
        }
        if offset <= last {
            let refilled = self
                .filled
                .is_some_and(|(from, to)| offset > from && offset <= to);
            if offset == last || refilled {
                return Admit::Duplicate;
            }
            self.last = Some((offset.saturating_sub(1), known));
            self.filled = None;
            return Admit::Reset;
        }
        if offset > last.saturating_add(1) {
            return Admit::Gap;
        }
        // In channel order, nothing a fill delivered can come after this.
        self.filled = None;
        self.last = Some((offset, known));
        Admit::Next
    }

    /// Judges a live message: deliver it, drop it, or hold it while a gap is filled.
    pub fn live(&mut self, offset: u64, epoch: &str, frame: &Bytes) -> Live {
        if self.filling {
            self.hold(offset, epoch, frame);
            return Live {
                reset: false,
                then: Then::Hold { start_fill: false },
            };
        }
        let (reset, verdict) = self.judge(offset, epoch);
        let then = match verdict {
            Admit::Next | Admit::Reset => Then::Deliver,
            Admit::Duplicate => Then::Drop,
            Admit::Gap => {
                self.filling = true;
                self.hold(offset, epoch, frame);
                Then::Hold { start_fill: true }
            }
        };
        Live { reset, then }
    }

    /// [`Stream::admit`], judged once more after a reset (which re-bases the stream on this
    /// message): whether a reset came first, and the verdict on the message itself.
    fn judge(&mut self, offset: u64, epoch: &str) -> (bool, Admit) {
        match self.admit(offset, epoch) {
            // (A second reset cannot happen: the first re-based the stream on this message.)
            Admit::Reset => (true, self.admit(offset, epoch)),
            verdict => (false, verdict),
        }
    }

    fn hold(&mut self, offset: u64, epoch: &str, frame: &Bytes) {
        if self.held.len() >= MAX_HELD {
            self.overflowed = true;
            return;
        }
        let epoch = match self.held.last() {
            Some((_, e, _)) if **e == *epoch => e.clone(),
            _ => Arc::from(epoch),
        };
        self.held.push((offset, epoch, frame.clone()));
    }

    /// Records that a member was told it joined at `position` (a plain join's ack, the end of
    /// a replay): while nothing was delivered here yet, a fill after an outage starts there.
    pub fn note_joined(&mut self, offset: u64, epoch: &Arc<str>) {
        if self.last.is_some() {
            return;
        }
        match &self.floor {
            Some((o, e)) if **e == **epoch && *o <= offset => {}
            _ => self.floor = Some((offset, epoch.clone())),
        }
    }

    /// Starts a fill because the bus restored its subscriptions (what was published meanwhile
    /// is in history only). Returns whether a fill must be requested: there is a position to
    /// fill from and none is running yet.
    pub fn begin_fill(&mut self) -> bool {
        if self.filling {
            // Its read may predate the outage: read once more before finishing.
            self.refill = true;
            return false;
        }
        if self.last.is_none() {
            self.last = self.floor.clone();
        }
        self.filling = self.last.is_some();
        self.filling
    }

    /// Where a running fill reads history from (`None`: no fill is running). The read made
    /// from it sees every message held so far.
    pub fn fill_from(&mut self) -> Option<Position> {
        self.read_mark = self.held.len();
        self.refill = false;
        self.last.clone().filter(|_| self.filling)
    }

    /// A reset makes finished replays' thresholds meaningless (they counted in the old
    /// reckoning): those members take every message from here on.
    pub fn forget_replays(&mut self) {
        self.recovering.retain(|_, through| *through == PAUSED);
    }

    /// Ends a fill without finishing it (the room has no members left here).
    pub fn abandon_fill(&mut self) {
        self.filling = false;
        self.refill = false;
        self.told = None;
        self.overflowed = false;
        self.held = Vec::new();
    }

    /// Applies a page of history read after `asked` (at most `limit` messages): pushes the
    /// steps to carry out, in order, and says whether the fill is over.
    pub fn apply(
        &mut self,
        asked: &Position,
        page: HistoryPage,
        limit: usize,
        steps: &mut Vec<Step>,
    ) -> Filled {
        if !self.filling {
            return Filled::Done;
        }
        if self.last.as_ref() != Some(asked) {
            return Filled::More;
        }
        let (after, epoch) = asked.clone();
        if *page.epoch != *epoch {
            // The room's history was lost: its offsets start again in the page's epoch. What
            // is held of the old epoch came before all of the new one and is gone with it.
            self.held.retain(|(_, e, _)| **e != *epoch);
            self.read_mark = 0;
            self.reset(steps, &page.epoch);
            self.last = Some((0, page.epoch));
            self.filled = None;
            return Filled::More;
        }
        if page.top < after {
            // Offsets reissued in this epoch (Redis came back from an older copy).
            self.reset(steps, &epoch);
            self.last = Some((page.top, epoch));
            self.filled = None;
            return Filled::More;
        }
        let first = page
            .messages
            .first()
            .map_or(page.top.saturating_add(1), |(o, _)| *o);
        if first > after.saturating_add(1) {
            // Trimmed or expired before this node read them: lost here.
            self.reset(steps, &epoch);
        }
        let mut last = after;
        for (offset, frame) in &page.messages {
            if *offset > last {
                steps.push(Step::Deliver(*offset, wire::text(frame)));
                last = *offset;
            }
        }
        if page.messages.is_empty() {
            last = last.max(page.top);
        }
        if last > after {
            let from = self.filled.map_or(after, |(from, _)| from);
            self.filled = Some((from, last));
            self.last = Some((last, epoch));
        }
        if page.messages.len() >= limit {
            return Filled::More;
        }
        // History is read through its top as of the read: now what was held meanwhile. A held
        // message that arrived before the read and still does not follow on was lost from
        // history (or belongs to an epoch history no longer has): it is dropped, not waited for.
        let before_read = std::mem::take(&mut self.read_mark);
        let mut held = std::mem::take(&mut self.held).into_iter().enumerate();
        while let Some((i, (offset, e, frame))) = held.next() {
            let stale = i < before_read;
            if stale && self.last.as_ref().is_some_and(|(_, known)| **known != *e) {
                continue;
            }
            let (reset, verdict) = self.judge(offset, &e);
            if reset {
                self.reset(steps, &e);
            }
            match verdict {
                Admit::Next | Admit::Reset => steps.push(Step::Deliver(offset, frame)),
                Admit::Duplicate => {}
                // History, read after it arrived, does not lead up to it: dropped.
                Admit::Gap if stale => {}
                Admit::Gap => {
                    // Published after the read: read again, this one first.
                    self.held = std::iter::once((offset, e, frame))
                        .chain(held.map(|(_, h)| h))
                        .collect();
                    return Filled::More;
                }
            }
        }
        // Subscriptions lost again during the read, or live messages dropped from `held`: the
        // history they are in was not read yet.
        if std::mem::take(&mut self.refill) | std::mem::take(&mut self.overflowed) {
            return Filled::More;
        }
        self.filling = false;
        self.told = None;
        Filled::Done
    }

    /// Pushes a `history_reset` step, unless this fill told the members that epoch already.
    fn reset(&mut self, steps: &mut Vec<Step>, epoch: &Arc<str>) {
        if self.told.as_deref() != Some(&**epoch) {
            self.told = Some(epoch.clone());
            steps.push(Step::Reset(epoch.clone()));
        }
    }

    /// Whether member `id` gets live message `offset`; a member whose replay reached past it
    /// stops being filtered once a later message arrives.
    pub fn wants(&mut self, id: ConnId, offset: u64) -> bool {
        match self.recovering.get(&id) {
            None => true,
            Some(&through) if offset > through => {
                self.recovering.remove(&id);
                true
            }
            Some(_) => false,
        }
    }
}

/// A room's local members and its stream.
#[derive(Default)]
pub struct RoomMembers {
    conns: HashMap<ConnId, Arc<Outbound>>,
    stream: Mutex<Stream>,
}

impl RoomMembers {
    /// The stream, locked (a short, synchronous critical section).
    pub fn stream(&self) -> MutexGuard<'_, Stream> {
        // Every update leaves the stream consistent, so a poisoned lock is still usable.
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deref for RoomMembers {
    type Target = HashMap<ConnId, Arc<Outbound>>;

    fn deref(&self) -> &Self::Target {
        &self.conns
    }
}

impl DerefMut for RoomMembers {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    fn page(epoch: &str, top: u64, offsets: impl Iterator<Item = u64>) -> HistoryPage {
        let messages: Vec<(u64, String)> = offsets.map(|o| (o, format!("m{o}"))).collect();
        HistoryPage {
            top,
            epoch: Arc::from(epoch),
            first: messages.first().map(|(o, _)| *o),
            messages,
        }
    }

    fn delivered(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Deliver(o, _) => Some(*o),
                Step::Reset(_) => None,
            })
            .collect()
    }

    fn resets(steps: &[Step]) -> Vec<&str> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Reset(e) => Some(&**e),
                Step::Deliver(..) => None,
            })
            .collect()
    }

    #[test]
    fn offsets_in_order_pass_repeats_drop_gaps_fill_and_other_epochs_reset() {
        let mut s = Stream::default();
        assert_eq!(s.admit(5, "A"), Admit::Next, "the first seen here");
        assert_eq!(s.admit(6, "A"), Admit::Next);
        assert_eq!(s.admit(6, "A"), Admit::Duplicate);
        assert_eq!(s.admit(9, "A"), Admit::Gap);
        assert_eq!(s.last, Some((6, Arc::from("A"))), "a gap does not move on");
        assert_eq!(s.admit(7, "A"), Admit::Next);
        assert_eq!(s.admit(3, "A"), Admit::Reset, "backwards: reissued");
        assert_eq!(s.admit(3, "A"), Admit::Next, "judged again after the reset");
        assert_eq!(s.admit(1, "B"), Admit::Reset, "new epoch");
        assert_eq!(s.admit(1, "B"), Admit::Next);
        assert_eq!(s.admit(2, "B"), Admit::Next);
        assert_eq!(s.last, Some((2, Arc::from("B"))));
    }

    #[test]
    fn a_gap_holds_live_messages_until_history_fills_it_in_order() {
        let mut s = Stream::default();
        assert_eq!(s.live(1, "A", &frame(1)).then, Then::Deliver);
        let gap = s.live(4, "A", &frame(4));
        assert_eq!(
            gap,
            Live {
                reset: false,
                then: Then::Hold { start_fill: true }
            }
        );
        assert_eq!(
            s.live(5, "A", &frame(5)).then,
            Then::Hold { start_fill: false }
        );
        let from = s.fill_from().expect("filling");
        assert_eq!(from, (1, Arc::from("A")));
        // History has 2..=5 by now (it is read after 4 and 5 arrived).
        let mut steps = Vec::new();
        assert_eq!(
            s.apply(&from, page("A", 5, 2..=5), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(
            delivered(&steps),
            [2, 3, 4, 5],
            "the held 4 and 5 are duplicates"
        );
        assert!(resets(&steps).is_empty());
        // Their live copies may still arrive late: duplicates, not a reissue.
        assert_eq!(s.live(5, "A", &frame(5)).then, Then::Drop);
        assert_eq!(s.live(6, "A", &frame(6)).then, Then::Deliver);
        assert_eq!(
            s.live(4, "A", &frame(4)),
            Live {
                reset: true,
                then: Then::Deliver
            },
            "once live has moved past the fill, backwards is a reissue again"
        );
    }

    #[test]
    fn a_fill_pages_then_delivers_what_arrived_after_its_read() {
        let mut s = Stream::default();
        s.live(10, "A", &frame(10));
        s.live(20, "A", &frame(20));
        s.live(21, "A", &frame(21));
        let mut steps = Vec::new();
        let from = s.fill_from().unwrap();
        assert_eq!(
            s.apply(&from, page("A", 19, 11..=15), 5, &mut steps),
            Filled::More
        );
        let from = s.fill_from().unwrap();
        assert_eq!(from.0, 15);
        assert_eq!(
            s.apply(&from, page("A", 19, 16..=19), 5, &mut steps),
            Filled::Done
        );
        assert_eq!(delivered(&steps), (11..=21).collect::<Vec<_>>());
        // A held message past what the read saw sends it back for another page.
        s.live(25, "A", &frame(25));
        let from = s.fill_from().unwrap();
        let mut steps = Vec::new();
        s.live(26, "A", &frame(26));
        assert_eq!(
            s.apply(&from, page("A", 23, 22..=23), 5, &mut steps),
            Filled::More
        );
        assert_eq!(delivered(&steps), [22, 23]);
        let from = s.fill_from().unwrap();
        let mut steps = Vec::new();
        assert_eq!(
            s.apply(&from, page("A", 26, 24..=26), 5, &mut steps),
            Filled::Done
        );
        assert_eq!(delivered(&steps), [24, 25, 26]);
    }

    #[test]
    fn what_history_no_longer_has_is_announced_once_then_skipped() {
        let mut s = Stream::default();
        s.live(1, "A", &frame(1));
        s.live(9, "A", &frame(9));
        let mut steps = Vec::new();
        let from = s.fill_from().unwrap();
        // 2..=5 were trimmed.
        assert_eq!(
            s.apply(&from, page("A", 9, 6..=9), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(resets(&steps), ["A"]);
        assert_eq!(delivered(&steps), [6, 7, 8, 9]);
        assert!(matches!(steps[0], Step::Reset(_)), "told before the rest");
    }

    #[test]
    fn a_lost_history_resets_to_the_new_epoch_and_delivers_it_from_its_start() {
        let mut s = Stream::default();
        s.live(7, "A", &frame(7));
        assert!(s.begin_fill(), "the bus resubscribed");
        assert!(!s.begin_fill(), "one fill at a time");
        let from = s.fill_from().unwrap();
        let mut steps = Vec::new();
        assert_eq!(
            s.apply(&from, page("B", 2, 1..=2), 100, &mut steps),
            Filled::More
        );
        let from = s.fill_from().unwrap();
        assert_eq!(from, (0, Arc::from("B")));
        assert_eq!(
            s.apply(&from, page("B", 2, 1..=2), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(resets(&steps), ["B"]);
        assert_eq!(delivered(&steps), [1, 2]);
        // Reissued in the same epoch (an older copy of Redis): told, and what is new delivered.
        assert!(s.begin_fill());
        let from = s.fill_from().unwrap();
        let mut steps = Vec::new();
        assert_eq!(
            s.apply(&from, page("B", 1, 1..=1), 100, &mut steps),
            Filled::More
        );
        let from = s.fill_from().unwrap();
        assert_eq!(
            s.apply(&from, page("B", 1, std::iter::empty()), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(resets(&steps), ["B"]);
        assert!(delivered(&steps).is_empty());
    }

    #[test]
    fn after_an_outage_a_room_nothing_was_delivered_in_fills_from_its_members_join() {
        let mut s = Stream::default();
        assert!(!s.begin_fill(), "nowhere to start from");
        s.note_joined(5, &Arc::from("A"));
        s.note_joined(7, &Arc::from("A"));
        assert!(s.begin_fill());
        assert_eq!(s.fill_from(), Some((5, Arc::from("A"))), "the lowest join");
        s.abandon_fill();
        assert_eq!(s.fill_from(), None);
    }

    #[test]
    fn holding_is_bounded_and_what_overflowed_is_read_from_history() {
        let mut s = Stream::default();
        s.live(1, "A", &frame(1));
        for o in 3..(3 + MAX_HELD as u64 + 10) {
            s.live(o, "A", &frame(o));
        }
        assert_eq!(s.held.len(), MAX_HELD);
        let top = 2 + MAX_HELD as u64 + 10;
        let from = s.fill_from().unwrap();
        let mut steps = Vec::new();
        assert_eq!(
            s.apply(&from, page("A", 2, 2..=2), 100, &mut steps),
            Filled::More
        );
        let from = s.fill_from().unwrap();
        assert_eq!(from.0, MAX_HELD as u64 + 2, "every held one went out");
        assert_eq!(
            s.apply(&from, page("A", top, from.0 + 1..=top), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(delivered(&steps), (2..=top).collect::<Vec<_>>());
    }

    #[test]
    fn a_held_message_of_a_lost_epoch_ends_the_fill_instead_of_looping() {
        let mut s = Stream::default();
        s.live(5, "E", &frame(5));
        s.live(8, "E", &frame(8)); // a gap: held, fill starts
        let from = s.fill_from().unwrap();
        let mut steps = Vec::new();
        // Redis came back empty: epoch B has 1 and 2.
        assert_eq!(
            s.apply(&from, page("B", 2, 1..=2), 100, &mut steps),
            Filled::More
        );
        let from = s.fill_from().unwrap();
        assert_eq!(
            s.apply(&from, page("B", 2, 1..=2), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(resets(&steps), ["B"], "told once");
        assert_eq!(
            delivered(&steps),
            [1, 2],
            "the old epoch's 8 is gone with it"
        );
    }

    #[test]
    fn a_held_message_history_no_longer_leads_up_to_is_dropped_not_waited_for() {
        let mut s = Stream::default();
        s.live(100, "E", &frame(100));
        s.live(103, "E", &frame(103)); // before Redis rolled back to 97
        let from = s.fill_from().unwrap();
        let mut steps = Vec::new();
        assert_eq!(
            s.apply(&from, page("E", 97, std::iter::empty()), 100, &mut steps),
            Filled::More
        );
        let from = s.fill_from().unwrap();
        assert_eq!(from.0, 97);
        assert_eq!(
            s.apply(&from, page("E", 97, std::iter::empty()), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(resets(&steps), ["E"]);
        assert!(delivered(&steps).is_empty());
        // The reissued 98.. arrive live and are delivered.
        assert_eq!(s.live(98, "E", &frame(98)).then, Then::Deliver);
    }

    #[test]
    fn a_member_told_it_joined_at_a_floor_gets_what_followed_even_before_any_delivery() {
        let mut s = Stream::default();
        s.note_joined(5, &Arc::from("A"));
        // 6 and 7 were lost with the subscription; 8 arrives before the refill starts.
        assert_eq!(
            s.live(8, "A", &frame(8)).then,
            Then::Hold { start_fill: true }
        );
        assert_eq!(s.fill_from(), Some((5, Arc::from("A"))));
        // A member who joined later than the floor is still fine: 3 is at or below it.
        let mut t = Stream::default();
        t.note_joined(5, &Arc::from("A"));
        assert_eq!(t.live(3, "A", &frame(3)).then, Then::Deliver);
    }

    #[test]
    fn losing_the_subscriptions_again_during_a_fill_forces_one_more_read() {
        let mut s = Stream::default();
        s.live(1, "A", &frame(1));
        s.live(3, "A", &frame(3));
        let from = s.fill_from().unwrap();
        assert!(!s.begin_fill(), "already filling");
        let mut steps = Vec::new();
        assert_eq!(
            s.apply(&from, page("A", 3, 2..=3), 100, &mut steps),
            Filled::More
        );
        let from = s.fill_from().unwrap();
        assert_eq!(
            s.apply(&from, page("A", 5, 4..=5), 100, &mut steps),
            Filled::Done
        );
        assert_eq!(delivered(&steps), [2, 3, 4, 5]);
    }

    #[test]
    fn a_reset_lets_members_past_their_replay_take_everything_again() {
        let mut s = Stream::default();
        s.recovering.insert(1, 100);
        s.recovering.insert(2, PAUSED);
        s.forget_replays();
        assert!(s.wants(1, 1), "counted in the old reckoning: forgotten");
        assert!(!s.wants(2, 1), "still replaying");
    }

    #[test]
    fn a_recovering_member_is_skipped_until_past_its_replay() {
        let mut s = Stream::default();
        s.recovering.insert(1, PAUSED);
        assert!(!s.wants(1, 100));
        s.recovering.insert(1, 7);
        assert!(!s.wants(1, 7));
        assert!(s.wants(1, 8));
        assert!(s.recovering.is_empty());
        assert!(s.wants(2, 1), "others are never filtered");
    }
}
