//! Counters spread over cache lines, so many connection tasks can add to one total without
//! contention; the progress bar and the drain logic read the sum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicU64);

/// Counters spread over cache lines so many tasks can add without contention.
#[derive(Clone)]
pub struct Counters {
    shards: Arc<[Padded]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            shards: (0..64).map(|_| Padded::default()).collect(),
        }
    }
}

impl Counters {
    /// Adds `n` on behalf of task `index`.
    #[inline]
    pub fn add(&self, index: usize, n: u64) {
        self.shards[index % self.shards.len()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over all shards.
    pub fn total(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}
