//! Per-sender sequence tracking at one receiver: distinct messages, duplicates, reordering.
//!
//! A 128-message window behind the highest sequence number seen tells a duplicate from a late
//! (reordered) message without remembering every sequence number.

/// What one receiver saw of one sender's sequence.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqTracker {
    highest: Option<u64>,
    window: u128,
    /// Distinct sequence numbers received.
    pub distinct: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages that arrived after a higher sequence number.
    pub reordered: u64,
}

impl SeqTracker {
    /// Records sequence number `seq`.
    pub fn record(&mut self, seq: u64) {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.window = 1;
            self.distinct = 1;
            return;
        };
        if seq > highest {
            let shift = seq - highest;
            self.window = if shift >= 128 {
                0
            } else {
                self.window << shift
            };
            self.window |= 1;
            self.highest = Some(seq);
            self.distinct += 1;
        } else {
            let behind = highest - seq;
            if behind >= 128 {
                // Too far back to tell; count it as late rather than lost.
                self.reordered += 1;
                self.distinct += 1;
            } else if self.window & (1u128 << behind) != 0 {
                self.duplicates += 1;
            } else {
                self.window |= 1u128 << behind;
                self.reordered += 1;
                self.distinct += 1;
            }
        }
    }

    /// Adds another tracker's counts (for totals).
    pub fn add_counts(&mut self, other: &SeqTracker) {
        self.distinct += other.distinct;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_gaps_duplicates_and_late() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 4, 4, 3, 3, 200, 5] {
            t.record(s);
        }
        assert_eq!(t.distinct, 7);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.reordered, 2);
    }
}
