//! Whether the Redis subscriber's subscriptions are live, judged by connection generation.
//!
//! Reports arrive out of order: the disconnect of connection G is pushed by G's own reader and
//! can come while G is still being set up (before it is reported restored), and reports about a
//! connection already replaced can come late. The flag therefore remembers the generation it
//! speaks for and the highest generation reported lost: a restore is believed only for a
//! generation newer than every loss, and a loss counts only for the live generation or a newer
//! one.

/// The state behind the bus's `subscriptions_live` flag (plain data, updated by the bus under
/// its watch channel's lock).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Liveness {
    live: bool,
    /// The generation `live` speaks for.
    live_generation: u64,
    /// The highest generation reported lost.
    lost_generation: u64,
}

impl Liveness {
    /// Whether the subscriptions are live.
    pub(super) fn is_live(&self) -> bool {
        self.live
    }

    /// The subscriber of `generation` has every wanted channel subscribed; returns whether the
    /// flag changed. Ignored when that generation was already reported lost: its subscriptions
    /// are gone, whatever the setup saw.
    pub(super) fn restored(&mut self, generation: u64) -> bool {
        if generation <= self.lost_generation {
            return false;
        }
        let changed = !self.live;
        self.live = true;
        self.live_generation = generation;
        changed
    }

    /// The subscriber of `generation` is lost; returns whether the flag changed. A loss of a
    /// replaced (older) generation changes nothing.
    pub(super) fn lost(&mut self, generation: u64) -> bool {
        self.lost_generation = self.lost_generation.max(generation);
        let current = self.live && generation >= self.live_generation;
        if current {
            self.live = false;
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_after_its_own_loss_is_not_believed() {
        let mut l = Liveness::default();
        assert!(l.restored(1));
        assert!(l.lost(1));
        // Connection 2's disconnect is pushed while connection 2 is still subscribing...
        assert!(!l.lost(2));
        // ...so its setup finishing must not make the flag speak for a dead connection.
        assert!(!l.restored(2));
        assert!(!l.is_live());
        assert!(l.restored(3), "a newer connection is believed");
        assert!(l.is_live());
    }

    #[test]
    fn a_late_loss_of_a_replaced_connection_changes_nothing() {
        let mut l = Liveness::default();
        assert!(l.restored(1));
        assert!(l.lost(1));
        assert!(l.restored(2));
        assert!(!l.lost(1), "generation 1 was replaced");
        assert!(l.is_live());
        assert!(l.lost(2));
        assert!(!l.is_live());
    }
}
