//! Room history for the in-memory bus: the same semantics as the Redis script (offsets, epoch,
//! a bounded log that expires after `ttl`, a counter and epoch that live `meta_ttl`) kept in
//! this process, for the embedded default and tests without Redis.
//!
//! A message with a dedupe key is remembered with its offset while it is in the log: a repeat
//! in that time is not stored again and gets the first one's offset.
//!
//! Each room has its own lock, held while a message is numbered *and* handed to the
//! subscribers, so delivery order is offset order as with Redis. The table of rooms is pruned of
//! expired rooms whenever it has doubled since the last pruning, so it stays bounded by the
//! rooms active within `meta_ttl`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcast_protocol::stored::{finish_chat, new_epoch};

use super::{HistoryPage, HistoryQuery, Keep};

/// A table shorter than this is never pruned.
const PRUNE_FROM: usize = 1024;

/// One kept message: offset, frame, dedupe key.
type Entry = (u64, Arc<str>, Option<Arc<str>>);

/// One room's log.
struct RoomLog {
    epoch: Arc<str>,
    top: u64,
    entries: VecDeque<Entry>,
    /// Dedupe key → offset, for the entries in the log that had one.
    ids: HashMap<Arc<str>, u64>,
    /// When the entries expire.
    expires: Instant,
    /// When the counter and epoch expire.
    meta_expires: Instant,
}

impl RoomLog {
    fn new(now: Instant, meta_ttl: Duration) -> Self {
        RoomLog {
            epoch: new_epoch(rand::random::<u8>).into(),
            top: 0,
            entries: VecDeque::new(),
            ids: HashMap::new(),
            expires: now,
            meta_expires: now + meta_ttl,
        }
    }

    /// Applies expiry as of `now`: a room whose counter lapsed starts a new epoch.
    fn refresh(&mut self, now: Instant, meta_ttl: Duration) {
        if self.meta_expires <= now {
            *self = RoomLog::new(now, meta_ttl);
        } else if self.expires <= now {
            self.entries.clear();
            self.ids.clear();
        }
    }
}

/// Every room's log, one lock per room.
#[derive(Default)]
pub(super) struct MemoryHistory {
    rooms: Mutex<HashMap<String, Arc<Mutex<RoomLog>>>>,
    pruned_len: Mutex<usize>,
}

fn unpoison<T>(e: std::sync::PoisonError<T>) -> T {
    // Every update leaves a log consistent (counter, entries and expiry written together).
    e.into_inner()
}

impl MemoryHistory {
    fn room(&self, room: &str, meta_ttl: Duration) -> Arc<Mutex<RoomLog>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(unpoison);
        if let Some(log) = rooms.get(room) {
            return log.clone();
        }
        let mut pruned = self.pruned_len.lock().unwrap_or_else(unpoison);
        if rooms.len() >= (2 * *pruned).max(PRUNE_FROM) {
            let now = Instant::now();
            rooms.retain(|_, log| {
                Arc::strong_count(log) > 1 || log.lock().unwrap_or_else(unpoison).meta_expires > now
            });
            *pruned = rooms.len();
        }
        let log = Arc::new(Mutex::new(RoomLog::new(Instant::now(), meta_ttl)));
        rooms.insert(room.to_owned(), log.clone());
        log
    }

    /// Numbers a message, keeps it and, still holding the room's lock, calls `deliver` with its
    /// offset, epoch and frame (so deliveries happen in offset order). Returns offset and epoch,
    /// and `None` instead of `deliver`'s result for a repeat of a kept message's `dedupe` key
    /// (then nothing is stored or delivered, and the offset is the first one's).
    pub(super) fn store<R>(
        &self,
        room: &str,
        head: &[u8],
        keep: Keep,
        dedupe: Option<&Arc<str>>,
        deliver: impl FnOnce(u64, &str, &str) -> R,
    ) -> (u64, Arc<str>, Option<R>) {
        let log = self.room(room, keep.meta_ttl);
        let mut log = log.lock().unwrap_or_else(unpoison);
        let now = Instant::now();
        log.refresh(now, keep.meta_ttl);
        if let Some(first) = dedupe.and_then(|key| log.ids.get(key)) {
            return (*first, log.epoch.clone(), None);
        }
        log.top += 1;
        let offset = log.top;
        let frame: Arc<str> = finish_chat(head, offset, &log.epoch).into();
        if let Some(key) = dedupe {
            log.ids.insert(key.clone(), offset);
        }
        log.entries
            .push_back((offset, frame.clone(), dedupe.cloned()));
        while log.entries.len() > keep.size as usize {
            if let Some((_, _, Some(key))) = log.entries.pop_front() {
                log.ids.remove(&key);
            }
        }
        log.expires = now + keep.ttl;
        log.meta_expires = now + keep.meta_ttl.max(keep.ttl);
        let epoch = log.epoch.clone();
        let delivered = deliver(offset, &epoch, &frame);
        (offset, epoch, Some(delivered))
    }

    /// Reads a page of a room's history.
    pub(super) fn read(
        &self,
        room: &str,
        query: HistoryQuery,
        limit: usize,
        meta_ttl: Duration,
    ) -> HistoryPage {
        let log = self.room(room, meta_ttl);
        let mut log = log.lock().unwrap_or_else(unpoison);
        log.refresh(Instant::now(), meta_ttl);
        let pick = |(o, f, _): &Entry| (*o, f.to_string());
        let messages: Vec<(u64, String)> = match query {
            HistoryQuery::After(after) => log
                .entries
                .iter()
                .filter(|(o, _, _)| *o > after)
                .take(limit)
                .map(pick)
                .collect(),
            HistoryQuery::Newest => {
                let skip = log.entries.len().saturating_sub(limit);
                log.entries.iter().skip(skip).map(pick).collect()
            }
        };
        HistoryPage {
            top: log.top,
            epoch: log.epoch.clone(),
            first: log.entries.front().map(|(o, _, _)| *o),
            messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Keep = Keep {
        size: 3,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(600),
    };

    #[test]
    fn offsets_count_up_the_log_is_trimmed_and_pages_read_in_order() {
        let h = MemoryHistory::default();
        let head = br#"{"event":"chat","from":"a","room":"r","content":1,"offset":"#;
        let mut epoch = None;
        for n in 1..=5 {
            let (offset, e, seen) = h.store("r", head, KEEP, None, |o, e, f| {
                (o, e.to_owned(), f.to_owned())
            });
            assert_eq!(offset, n);
            let seen = seen.expect("stored");
            assert_eq!(seen.0, n);
            assert!(seen
                .2
                .ends_with(&format!(r#""offset":{n},"epoch":"{e}"}}"#)));
            assert_eq!(*epoch.get_or_insert(e.clone()), e, "one epoch");
        }
        let page = h.read("r", HistoryQuery::After(0), 10, KEEP.meta_ttl);
        assert_eq!((page.top, page.first), (5, Some(3)));
        assert_eq!(
            page.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let page = h.read("r", HistoryQuery::After(3), 1, KEEP.meta_ttl);
        assert_eq!(page.messages.iter().map(|m| m.0).collect::<Vec<_>>(), [4]);
        let page = h.read("r", HistoryQuery::Newest, 2, KEEP.meta_ttl);
        assert_eq!(
            page.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            [4, 5]
        );
        let other = h.read("other", HistoryQuery::Newest, 2, KEEP.meta_ttl);
        assert_eq!((other.top, other.first), (0, None));
        assert_ne!(other.epoch, page.epoch);
    }

    #[test]
    fn expiry_empties_the_log_and_a_lapsed_counter_starts_a_new_epoch() {
        let h = MemoryHistory::default();
        let head = b"{\"offset\":";
        let short = Keep {
            size: 10,
            ttl: Duration::from_millis(20),
            meta_ttl: Duration::from_millis(500),
        };
        let (_, e1, _) = h.store("r", head, short, None, |_, _, _| ());
        std::thread::sleep(Duration::from_millis(50));
        let page = h.read("r", HistoryQuery::After(0), 10, short.meta_ttl);
        assert_eq!(
            (page.top, page.first, &*page.epoch),
            (1, None, &*e1),
            "log gone, counter kept"
        );
        std::thread::sleep(Duration::from_millis(500));
        let page = h.read("r", HistoryQuery::After(0), 10, short.meta_ttl);
        assert_eq!(page.top, 0);
        assert_ne!(page.epoch, e1, "a new epoch");
    }

    #[test]
    fn a_repeated_key_is_stored_once_while_its_first_is_kept() {
        let h = MemoryHistory::default();
        let head = b"{\"offset\":";
        let (a, b) = (
            super::super::dedupe_key("c1", "m1"),
            super::super::dedupe_key("c2", "m1"),
        );
        let (first, epoch, delivered) = h.store("r", head, KEEP, Some(&a), |o, _, _| o);
        assert_eq!((first, delivered), (1, Some(1)));
        let (again, e2, delivered) = h.store("r", head, KEEP, Some(&a), |o, _, _| o);
        assert_eq!(
            (again, &*e2, delivered),
            (1, &*epoch, None),
            "not stored twice"
        );
        let (other, _, delivered) = h.store("r", head, KEEP, Some(&b), |o, _, _| o);
        assert_eq!(
            (other, delivered),
            (2, Some(2)),
            "another sender's same id is its own"
        );
        let (other_room, _, _) = h.store("r2", head, KEEP, Some(&a), |o, _, _| o);
        assert_eq!(other_room, 1, "dedupe is per room");
        // Three more push the first out of the 3-message log: a repeat now is new.
        for _ in 0..3 {
            h.store("r", head, KEEP, None, |_, _, _| ());
        }
        let (late, _, delivered) = h.store("r", head, KEEP, Some(&a), |o, _, _| o);
        assert_eq!((late, delivered), (6, Some(6)));
        assert_eq!(
            h.read("r", HistoryQuery::After(0), 10, KEEP.meta_ttl)
                .messages
                .len(),
            3
        );
    }
}
