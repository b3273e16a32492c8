//! The hot paths shared by the message scenarios: a paced sender and a stamp-reading receiver,
//! plus sharded counters the progress bar and the drain logic read.
//!
//! The receiver touches each frame once: one substring search for the stamp, a few integer
//! parses, a tracker update, a buffered latency sample and an uncontended atomic add. It is fed
//! by [`receive_until`] from a tungstenite stream (connections that also send) or by
//! [`crate::raw::RawWs::receive_until`] (subscribers, which only listen).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use memchr::memmem::Finder;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::latency::Recorder;
use crate::stamp::{now_micros, FrameBuilder, StampFinder};
use crate::tracker::SeqTracker;

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
        } else if self.error_finder.find(frame).is_some() {
            // Rare: classify the error code the slow way.
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

/// Reads `stream` into `rx` until `stop` turns true or the connection ends.
pub async fn receive_until<S>(
    mut stream: S,
    mut rx: Receiver,
    mut stop: watch::Receiver<bool>,
) -> Receiver
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        tokio::select! {
            biased;
            next = stream.next() => match next {
                Some(Ok(Message::Text(t))) => rx.on_text(t.as_bytes(), now_micros()),
                Some(Ok(Message::Close(frame))) => {
                    rx.closed = Some(close_reason(frame));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    rx.closed = Some(format!("connection error: {e}"));
                    break;
                }
                None => {
                    rx.closed = Some("connection ended".into());
                    break;
                }
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    rx.flush_latency();
    rx
}

/// Sends stamped frames from `builder` for `duration` from `start`: `rate` per second on a
/// schedule, or as fast as the connection takes when `rate` is 0. Returns the count sent, and
/// the error that stopped it early, if any.
pub async fn send_paced<S>(
    sink: &mut S,
    builder: &FrameBuilder,
    rate: f64,
    duration: Duration,
    sent_counter: &Counters,
    index: usize,
) -> (u64, Option<String>)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let start = Instant::now();
    let end = start + duration;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = if rate > 0.0 {
            ((now - start).as_secs_f64() * rate) as u64 + 1
        } else {
            sent + 64
        };
        let batch = due.saturating_sub(sent).min(4096);
        for _ in 0..batch {
            if let Err(e) = sink.feed(Message::text(builder.frame(sent))).await {
                return (sent, Some(format!("send failed: {e}")));
            }
            sent += 1;
        }
        if let Err(e) = sink.flush().await {
            return (sent, Some(format!("send failed: {e}")));
        }
        sent_counter.add(index, batch);
        if rate > 0.0 {
            let next = start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(next.min(end)).await;
        }
    }
    (sent, None)
}

/// Waits after sending stopped until `received` reaches `expected` or stops moving for
/// `stall`; returns when the last progress was seen.
pub async fn drain(received: &Counters, expected: u64, stall: Duration) -> Instant {
    let mut last = received.total();
    let mut last_change = Instant::now();
    loop {
        if last >= expected {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received.total();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            return last_change;
        }
    }
}
