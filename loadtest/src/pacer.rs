//! What a recovering publisher sends and when: numbered room messages at a fixed rate, on a
//! schedule that starts over on every connection (no catching up on what it could not send
//! while it was away), and — with an [`Outbox`] — message ids, resends and rechecks.
//!
//! The connection loop (`recover.rs`, `stay`) asks [`Pacer::due`] when to wake, takes the
//! frame from [`Pacer::take`] and reports it sent with [`Pacer::sent`]; the pacer owns no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::acks::message_id;
use crate::outbox::{Gate, Next, Outbox};
use crate::stamp::FrameBuilder;

/// What a publisher is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Not yet.
    Wait,
    /// Send at the rate.
    Send,
    /// Stop sending new messages (reading, and sending unacknowledged ones again, goes on
    /// until the run stops).
    Halt,
}

/// Numbered room messages one recovering client sends: `rate` a second while `pace_rx` says
/// [`Pace::Send`]. After a reconnect it goes on from the next number at the rate, without
/// catching up on what it could not send while it was away.
pub struct Pacer {
    /// The frames.
    pub builder: FrameBuilder,
    /// Messages per second (positive).
    pub rate: f64,
    /// When to send.
    pub pace_rx: watch::Receiver<Pace>,
    /// The next sequence number, i.e. messages sent so far; read by the run to cut phases.
    pub next_seq: Arc<AtomicU64>,
    /// Told the count sent when sending halts.
    pub done_tx: Option<oneshot::Sender<u64>>,
    /// With an outbox, every message carries an id, and what is not acknowledged is sent again
    /// (sharing the rate with new messages, resends first).
    pub outbox: Option<Outbox>,
}

/// One frame to send, and what it is.
pub struct Outgoing {
    /// The frame text.
    pub text: String,
    /// New, resent or rechecked, with its number.
    pub next: Next,
}

/// The times one connection's frames are due: `rate` a second from the first one, started over
/// after a pause (a hold, a full window, nothing to send).
#[derive(Debug, Default)]
pub struct Schedule {
    from: Option<(Instant, u64)>,
    sent: u64,
}

impl Schedule {
    fn due(&mut self, rate: f64, now: Instant) -> Instant {
        let (t0, s0) = *self.from.get_or_insert((now, self.sent));
        t0 + Duration::from_secs_f64((self.sent - s0) as f64 / rate)
    }

    fn restart(&mut self) {
        self.from = None;
    }

    /// A frame went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.from.get_or_insert((now, self.sent));
        self.sent += 1;
    }
}

impl Pacer {
    /// Whether new messages are wanted now.
    fn sending(&self) -> bool {
        *self.pace_rx.borrow() == Pace::Send
    }

    /// When the next frame is due on this connection (`None`: nothing to send for now).
    pub fn due(&self, schedule: &mut Schedule, now: Instant) -> Option<Instant> {
        let gate = match &self.outbox {
            Some(o) => o.gate(now, self.sending()),
            None if self.sending() => Gate::Open,
            None => Gate::Closed,
        };
        match gate {
            Gate::Open => Some(schedule.due(self.rate, now)),
            Gate::Until(t) => {
                schedule.restart();
                Some(t)
            }
            Gate::Closed => {
                schedule.restart();
                None
            }
        }
    }

    /// The frame to send now, if any.
    pub fn take(&mut self, now: Instant) -> Option<Outgoing> {
        let new = self
            .sending()
            .then(|| self.next_seq.load(Ordering::Relaxed));
        match self.outbox.as_mut() {
            None => new.map(|seq| Outgoing {
                text: self.builder.frame(seq),
                next: Next::New(seq),
            }),
            Some(o) => {
                let next = o.next(now, new)?;
                let seq = next.seq();
                Some(Outgoing {
                    text: self.builder.frame_with_id(seq, &message_id(seq)),
                    next,
                })
            }
        }
    }

    /// `next` went out, in `phase`.
    pub fn sent(&mut self, next: Next, phase: usize) {
        if let Next::New(seq) = next {
            self.next_seq.store(seq + 1, Ordering::Relaxed);
        }
        if let Some(o) = self.outbox.as_mut() {
            o.sent(next, phase);
        }
    }

    /// Tells `done_tx` (once) how many new messages were sent.
    pub fn report_done(&mut self) {
        if let Some(tx) = self.done_tx.take() {
            let _ = tx.send(self.next_seq.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_paces_and_starts_over_after_a_pause() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert_eq!(s.due(100.0, t0), t0);
        s.sent(t0);
        assert_eq!(s.due(100.0, t0), t0 + Duration::from_millis(10));
        s.sent(t0 + Duration::from_millis(10));
        assert_eq!(s.due(100.0, t0), t0 + Duration::from_millis(20));
        // A pause: no catching up afterwards.
        s.restart();
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(s.due(100.0, t1), t1);
        // A frame sent without asking first (after a hold) starts the schedule too.
        s.restart();
        s.sent(t1);
        assert_eq!(s.due(100.0, t1), t1 + Duration::from_millis(10));
    }

    #[test]
    fn with_an_outbox_frames_carry_ids_and_halt_stops_only_new_ones() {
        let (pace_tx, pace_rx) = watch::channel(Pace::Send);
        let mut p = Pacer {
            builder: FrameBuilder::room_message("r", 0, 0),
            rate: 10.0,
            pace_rx,
            next_seq: Arc::new(AtomicU64::new(0)),
            done_tx: None,
            outbox: Some(Outbox::new(0, 100, 0, 1)),
        };
        let now = Instant::now();
        let out = p.take(now).expect("a new message");
        assert_eq!(out.next, Next::New(0));
        let v: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        assert_eq!(v["id"], "m0");
        p.sent(out.next, 0);
        assert_eq!(p.next_seq.load(Ordering::Relaxed), 1);
        let _ = pace_tx.send(Pace::Halt);
        let mut s = Schedule::default();
        assert_eq!(p.due(&mut s, now), None);
        // A reconnect queues m0 again: due although halted.
        let rejoin = crate::rejoin::Event::Ack {
            recovered: None,
            at: None,
        };
        if let Some(o) = p.outbox.as_mut() {
            o.on_event(b"", &rejoin, 0, now);
        }
        assert_eq!(p.due(&mut s, now), Some(now));
        assert_eq!(p.take(now).map(|o| o.next), Some(Next::Resend(0)));
    }
}
