//! The hot paths shared by the message scenarios on tungstenite: a paced sender, the loop that
//! reads a stream into a [`Receiver`], and the wait for the last deliveries.
//!
//! Listen-only subscribers are read by [`crate::raw::RawWs::receive_until`] instead, into the
//! same [`Receiver`].

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::counters::Counters;
use crate::receiver::{close_reason, Receiver};
use crate::stamp::{now_micros, FrameBuilder};

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
