//! Exact delivery accounting for one numbered stream: a receive count per sequence number at
//! each receiver, and what a receiver missed, got twice, or got unconfirmed against the numbers
//! the sender saw stored. Pure, so the `faults` scenario's totals can be tested without a server.

use std::ops::Range;

/// Receive counts per sequence number, for numbers below a fixed capacity, and for each number
/// how often it came again in a later epoch of the room's history than its previous receipt.
#[derive(Debug, Clone, Default)]
pub struct SeqCounts {
    counts: Vec<u8>,
    /// The epoch generation (0, 1, 2… in the order a receiver saw epochs) of the last receipt.
    generations: Vec<u16>,
    /// Receipts in a later generation than the number's previous receipt.
    redelivered: Vec<u8>,
    capacity: usize,
    /// Numbers at or past the capacity (not counted one by one).
    pub beyond: u64,
}

impl SeqCounts {
    /// Counts for numbers `0..capacity`.
    pub fn with_capacity(capacity: usize) -> Self {
        SeqCounts {
            counts: Vec::new(),
            generations: Vec::new(),
            redelivered: Vec::new(),
            capacity,
            beyond: 0,
        }
    }

    /// Records one receipt of `seq` (all in one epoch).
    pub fn record(&mut self, seq: u64) {
        self.record_in(seq, 0);
    }

    /// Records one receipt of `seq` in epoch generation `generation`: a receipt in a later
    /// generation than the number's previous one is a redelivery after a history reset.
    pub fn record_in(&mut self, seq: u64, generation: u16) {
        match usize::try_from(seq).ok().filter(|s| *s < self.capacity) {
            Some(s) => {
                if s >= self.counts.len() {
                    self.counts.resize(s + 1, 0);
                    self.generations.resize(s + 1, 0);
                    self.redelivered.resize(s + 1, 0);
                }
                if self.counts[s] > 0 && generation > self.generations[s] {
                    self.redelivered[s] = self.redelivered[s].saturating_add(1);
                }
                self.counts[s] = self.counts[s].saturating_add(1);
                self.generations[s] = generation;
            }
            None => self.beyond += 1,
        }
    }

    /// How often `seq` came again in a later epoch than its previous receipt.
    fn redelivered(&self, seq: u64) -> u8 {
        usize::try_from(seq)
            .ok()
            .and_then(|s| self.redelivered.get(s).copied())
            .unwrap_or(0)
    }

    /// How often `seq` was received.
    pub fn get(&self, seq: u64) -> u8 {
        usize::try_from(seq)
            .ok()
            .and_then(|s| self.counts.get(s).copied())
            .unwrap_or(0)
    }
}

/// One subscriber's account of the numbers in `range`, against what was `stored`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Stored, never received.
    pub missing: u64,
    /// Extra receipts of a number already received in the same epoch.
    pub duplicated: u64,
    /// Extra receipts of a number in a later epoch than its previous receipt: the room's
    /// history was lost in between (the receiver got `history_reset`), and with it the dedupe
    /// record that would have stopped a resend of a message whose first store was never
    /// acknowledged.
    pub redelivered: u64,
    /// Received although the publisher never saw it stored.
    pub unconfirmed: u64,
}

/// Counts what `received` missed, got twice, or got without its being stored, in `range`.
pub fn tally(stored: &SeqCounts, received: &SeqCounts, range: Range<u64>) -> Tally {
    let mut t = Tally::default();
    for seq in range {
        let (s, r) = (stored.get(seq), u64::from(received.get(seq)));
        if s > 0 && r == 0 {
            t.missing += 1;
        }
        if s == 0 && r > 0 {
            t.unconfirmed += 1;
        }
        let again = u64::from(received.redelivered(seq));
        t.redelivered += again;
        t.duplicated += r.saturating_sub(1).saturating_sub(again);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(seqs: &[u64]) -> SeqCounts {
        let mut c = SeqCounts::with_capacity(100);
        for s in seqs {
            c.record(*s);
        }
        c
    }

    #[test]
    fn missing_duplicated_and_unconfirmed_within_a_range() {
        let stored = counts(&[0, 1, 2, 3, 5, 6]);
        let got = counts(&[0, 2, 2, 3, 4, 6, 6, 6]);
        assert_eq!(
            tally(&stored, &got, 0..7),
            Tally {
                missing: 2,     // 1 and 5
                duplicated: 3,  // 2 once more, 6 twice more
                unconfirmed: 1, // 4: never echoed to the publisher
                redelivered: 0,
            }
        );
        // Only the phase's own numbers count.
        assert_eq!(
            tally(&stored, &got, 3..6),
            Tally {
                missing: 1,
                duplicated: 0,
                unconfirmed: 1,
                redelivered: 0,
            }
        );
        assert_eq!(tally(&stored, &got, 7..7), Tally::default());
    }

    #[test]
    fn a_receipt_in_a_later_epoch_is_a_redelivery_not_a_duplicate() {
        let stored = counts(&[0, 1, 2]);
        let mut got = SeqCounts::with_capacity(100);
        // 0 and 1 in the first epoch, 1 twice there; the history is reset, then 1 and 2
        // arrive in the second epoch, 2 twice.
        for (seq, generation) in [(0, 0), (1, 0), (1, 0), (1, 1), (2, 1), (2, 1)] {
            got.record_in(seq, generation);
        }
        assert_eq!(
            tally(&stored, &got, 0..3),
            Tally {
                missing: 0,
                duplicated: 2, // 1 in the first epoch, 2 in the second
                unconfirmed: 0,
                redelivered: 1, // 1 again after the reset
            }
        );
    }

    #[test]
    fn counts_stay_within_their_capacity() {
        let mut c = SeqCounts::with_capacity(4);
        for s in [0, 3, 4, u64::MAX] {
            c.record(s);
        }
        assert_eq!((c.get(0), c.get(3), c.get(4), c.beyond), (1, 1, 0, 2));
        for _ in 0..300 {
            c.record(1);
        }
        assert_eq!(c.get(1), u8::MAX);
    }
}
