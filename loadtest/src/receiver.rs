//! The stamp-reading receiver: what one receiving connection saw, whichever reader feeds it
//! (tungstenite's stream in the message scenarios' shared loop, or the hand reader of the
//! listen-only subscribers), and how a close by the server is reported.
//!
//! It touches each frame once: one substring search for the stamp, a few integer parses, a
//! tracker update, a buffered latency sample and an uncontended atomic add.

use memchr::memmem::Finder;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::ack_reader::AckReader;
use crate::counters::Counters;
use crate::latency::Recorder;
use crate::stamp::StampFinder;
use crate::tracker::SeqTracker;

/// What one receiving connection saw.
pub struct Receiver {
    index: usize,
    finder: StampFinder,
    error_finder: Finder<'static>,
    /// One tracker per sender index.
    pub trackers: Vec<SeqTracker>,
    latency: Option<Recorder>,
    counter: Counters,
    /// Stamped frames received (duplicates included).
    pub stamped: u64,
    /// Stamped frames from a sender index outside the run.
    pub foreign: u64,
    /// `rate_limited` errors received.
    pub rate_limited: u64,
    /// `target_offline` errors received.
    pub target_offline: u64,
    /// Other error events received.
    pub other_errors: u64,
    /// Why the connection ended before the run did, if it did.
    pub closed: Option<String>,
    /// A publisher that sends ids (`fanout --ids`): what it heard back.
    pub acks: Option<AckReader>,
}

impl Receiver {
    /// A receiver for connection `index` that expects stamps from `senders` senders; records
    /// latency when `latency` is given; counts stamped frames into `counter`.
    pub fn new(index: usize, senders: usize, latency: Option<Recorder>, counter: Counters) -> Self {
        Receiver {
            index,
            finder: StampFinder::default(),
            error_finder: Finder::new(b"\"error\""),
            trackers: vec![SeqTracker::default(); senders],
            latency,
            counter,
            stamped: 0,
            foreign: 0,
            rate_limited: 0,
            target_offline: 0,
            other_errors: 0,
            closed: None,
            acks: None,
        }
    }

    /// Handles one text frame, received at `received_micros` (Unix microseconds; one clock read
    /// can serve every frame of one socket read).
    #[inline]
    pub fn on_text(&mut self, frame: &[u8], received_micros: u64) {
        if let Some(stamp) = self.finder.find(frame) {
            let Some(tracker) = self.trackers.get_mut(stamp.sender as usize) else {
                self.foreign += 1;
                return;
            };
            tracker.record(stamp.seq);
            self.stamped += 1;
            self.counter.add(self.index, 1);
            if let Some(latency) = &mut self.latency {
                latency.record(received_micros.saturating_sub(stamp.sent_micros));
            }
        } else if self.acks.as_mut().is_some_and(|a| a.on_ack(frame)) {
            // One answer per message sent: counted by the ack reader.
        } else if self.error_finder.find(frame).is_some() {
            // Rare: classify the error code the slow way.
            if let Some(acks) = &mut self.acks {
                acks.on_error(frame);
            }
            if memchr::memmem::find(frame, b"rate_limited").is_some() {
                self.rate_limited += 1;
            } else if memchr::memmem::find(frame, b"target_offline").is_some() {
                self.target_offline += 1;
            } else {
                self.other_errors += 1;
            }
        }
    }

    /// Distinct messages received from every sender.
    pub fn distinct(&self) -> u64 {
        self.trackers.iter().map(|t| t.distinct).sum()
    }

    /// Moves buffered latency samples into the shared histogram (done when reading ends).
    pub fn flush_latency(&mut self) {
        if let Some(latency) = &mut self.latency {
            latency.flush();
        }
    }
}

/// How a connection the server closed is reported.
pub fn close_reason(frame: Option<CloseFrame>) -> String {
    closed_by_server(
        frame
            .as_ref()
            .map(|f| (u16::from(f.code), f.reason.as_str())),
    )
}

/// How a connection the server closed is reported, from the close frame's status code and
/// reason if it carried them.
pub fn closed_by_server(frame: Option<(u16, &str)>) -> String {
    match frame {
        Some((code, reason)) => format!("closed by server: {code} {reason}"),
        None => "closed by server".into(),
    }
}
