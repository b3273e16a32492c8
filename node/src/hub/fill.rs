//! The hub's side of gap fill: which rooms wait for one, where each reads from, and carrying
//! out what a page of history gives (see `stream.rs` for the rules, `gap_fill.rs` for the task
//! that reads history).

use std::sync::Arc;

use crate::bus::HistoryPage;

use super::stream::{Filled, Position, Step};
use super::{recover, Hub, SlowConsumers};

impl Hub {
    /// Queues a fill of `room` (at most once: a room is queued only when its fill starts).
    pub(super) fn request_fill(&self, room: &str) {
        self.fills
            .lock()
            .unwrap_or_else(recover)
            .push(room.to_owned());
        self.fill_notify.notify_one();
    }

    /// The bus has its subscriptions again after losing them: whatever was published meanwhile
    /// is only in history, so every numbered room with members here is filled.
    pub fn refill_all(&self) {
        let state = self.state.read().unwrap_or_else(recover);
        for (room, topic) in &state.rooms {
            if !topic.members.is_empty() && topic.members.stream().begin_fill() {
                self.request_fill(room);
            }
        }
    }

    /// Waits for rooms to fill and takes them.
    pub async fn fills_wanted(&self) -> Vec<String> {
        loop {
            let notified = self.fill_notify.notified();
            let rooms = std::mem::take(&mut *self.fills.lock().unwrap_or_else(recover));
            if !rooms.is_empty() {
                return rooms;
            }
            notified.await;
        }
    }

    /// Where `room`'s fill reads history from; `None` when it has none to run (any more): the
    /// room has no members here, so the fill is dropped.
    pub fn fill_position(&self, room: &str) -> Option<Position> {
        let state = self.state.read().unwrap_or_else(recover);
        let topic = state.rooms.get(room)?;
        let mut stream = topic.members.stream();
        if topic.members.is_empty() {
            stream.abandon_fill();
            return None;
        }
        stream.fill_from()
    }

    /// Delivers what a page of `room`'s history read after `asked` (at most `limit` messages)
    /// fills in, then what was held meanwhile; says whether the fill is over.
    pub fn fill_apply(
        &self,
        room: &str,
        asked: &Position,
        page: HistoryPage,
        limit: usize,
    ) -> Filled {
        let mut slow = SlowConsumers::default();
        let mut steps = Vec::new();
        let state = self.state.read().unwrap_or_else(recover);
        let Some(topic) = state.rooms.get(room) else {
            return Filled::Done;
        };
        let mut stream = topic.members.stream();
        let filled = stream.apply(asked, page, limit, &mut steps);
        let mut sent = 0;
        let mut from_history = 0;
        for step in &steps {
            match step {
                Step::Reset(epoch) => {
                    stream.forget_replays();
                    self.send_reset(room, &topic.members, epoch, &mut slow);
                }
                Step::Deliver(offset, frame) => {
                    from_history += 1;
                    sent +=
                        self.fan_out_stored(&topic.members, &mut stream, *offset, frame, &mut slow);
                }
            }
        }
        drop(stream);
        drop(state);
        self.metrics.gap_filled.inc_by(from_history);
        self.out_room.inc_by(sent);
        slow.log();
        filled
    }

    /// Records that a member of `room` was told it joined at `offset` of `epoch` (see
    /// [`super::stream::Stream::note_joined`]).
    pub fn note_joined(&self, room: &str, offset: u64, epoch: &Arc<str>) {
        let state = self.state.read().unwrap_or_else(recover);
        if let Some(topic) = state.rooms.get(room) {
            topic.members.stream().note_joined(offset, epoch);
        }
    }
}
