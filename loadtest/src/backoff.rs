//! Exponential backoff between attempts, shared by the reconnecting client (`recover.rs`) and
//! the id publisher's pause after a refusal (`outbox.rs`).

use std::time::Duration;

/// Exponential backoff between reconnection attempts: from `first`, doubling, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `first` up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt; doubles the one after.
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Back to the first wait (after a successful rejoin).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}
