//! A room's local members together with where its numbered stream stands on this node: the
//! last offset and epoch delivered here, and the members still being brought up to date
//! (`join_room` with `since`), who must not see live messages until their replay is done.
//!
//! The stream state sits under its own small lock inside the room, so deliveries keep taking
//! the hub's lock for reading.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::outbound::{ConnId, Outbound};

/// A member whose replay is still running: no live message reaches it.
pub const PAUSED: u64 = u64::MAX;

/// What to do with a numbered message that arrived for a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next one (or the first seen here): deliver.
    Next,
    /// Already delivered here: drop.
    Duplicate,
    /// Deliver, but tell the members first (`history_reset`): the epoch changed, offsets went
    /// backwards, or some were skipped (`missed` of them) and could not be delivered.
    Reset {
        /// Offsets skipped, if that is why (0: epoch change or reissue).
        missed: u64,
    },
}

/// Where a room's numbered stream stands on this node.
#[derive(Debug, Default)]
pub struct Stream {
    /// The last offset delivered here and its epoch (`None`: nothing yet).
    pub last: Option<(u64, Arc<str>)>,
    /// Members being brought up to date: skip live messages up to this offset ([`PAUSED`]:
    /// all of them).
    pub recovering: HashMap<ConnId, u64>,
}

impl Stream {
    /// Judges message `offset` of `epoch` and records it as the last one when it is to be
    /// delivered.
    pub fn admit(&mut self, offset: u64, epoch: &str) -> Admit {
        let verdict = match &self.last {
            None => Admit::Next,
            Some((_, e)) if **e != *epoch => Admit::Reset { missed: 0 },
            Some((last, _)) if offset == *last => Admit::Duplicate,
            Some((last, _)) if offset < *last => Admit::Reset { missed: 0 },
            Some((last, _)) if offset == last + 1 => Admit::Next,
            Some((last, _)) => Admit::Reset {
                missed: offset - last - 1,
            },
        };
        if verdict != Admit::Duplicate {
            match &mut self.last {
                Some((o, e)) if **e == *epoch => *o = offset,
                last => *last = Some((offset, Arc::from(epoch))),
            }
        }
        verdict
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

    #[test]
    fn offsets_in_order_pass_repeats_drop_and_anything_else_resets() {
        let mut s = Stream::default();
        assert_eq!(s.admit(5, "A"), Admit::Next, "the first seen here");
        assert_eq!(s.admit(6, "A"), Admit::Next);
        assert_eq!(s.admit(6, "A"), Admit::Duplicate);
        assert_eq!(s.admit(9, "A"), Admit::Reset { missed: 2 });
        assert_eq!(s.admit(10, "A"), Admit::Next);
        assert_eq!(
            s.admit(3, "A"),
            Admit::Reset { missed: 0 },
            "backwards: reissued"
        );
        assert_eq!(s.admit(4, "A"), Admit::Next);
        assert_eq!(s.admit(1, "B"), Admit::Reset { missed: 0 }, "new epoch");
        assert_eq!(s.admit(2, "B"), Admit::Next);
        assert_eq!(s.last, Some((2, Arc::from("B"))));
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
