//! One connection's outbound side as the rest of the node sees it: a bounded queue and a close
//! signal.
//!
//! Fan-out never waits on a client: [`Outbound::push`] either queues the frame at once or reports
//! that the queue is full, and the caller then closes the slow client. The queue is bounded both in
//! frames and in bytes, so one stalled client holds at most `send_queue_bytes` of memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Process-unique id of one WebSocket connection.
pub type ConnId = u64;

/// Why the server closes a connection, and the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The client sent a close frame or vanished: reply and stop.
    Peer,
    /// The server closes with this code and reason.
    Server {
        /// WebSocket close code.
        code: u16,
        /// Short reason text sent with it.
        reason: &'static str,
        /// Write what is already queued first (false when the client is not reading anyway).
        drain: bool,
    },
}

/// The client stopped reading and its send queue filled.
pub const SLOW_CONSUMER: Closing = Closing::Server {
    code: 1013,
    reason: "slow consumer: send queue full",
    drain: false,
};
/// The node is shutting down; reconnect elsewhere.
pub const SERVICE_RESTART: Closing = Closing::Server {
    code: 1012,
    reason: "node shutting down",
    drain: true,
};
/// A frame or message over the size limit.
pub const TOO_BIG: Closing = Closing::Server {
    code: 1009,
    reason: "message too big",
    drain: true,
};
/// Sustained sending over the rate limit.
pub const FLOOD: Closing = Closing::Server {
    code: 1008,
    reason: "rate limit exceeded repeatedly",
    drain: true,
};
/// No frame from the client within the idle timeout.
pub const IDLE: Closing = Closing::Server {
    code: 1001,
    reason: "idle timeout",
    drain: false,
};
/// A WebSocket protocol violation by the client.
pub const PROTOCOL_ERROR: Closing = Closing::Server {
    code: 1002,
    reason: "protocol error",
    drain: false,
};
/// The connection's token expired without a `refresh`.
pub const TOKEN_EXPIRED: Closing = Closing::Server {
    code: 4001,
    reason: "token expired",
    drain: true,
};
/// The bus could not set up this connection's subscriptions.
pub const BUS_DOWN: Closing = Closing::Server {
    code: 1011,
    reason: "message bus unavailable",
    drain: true,
};

/// Outcome of [`Outbound::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for writing.
    Queued,
    /// The queue is full (frames or bytes): the client is too slow.
    Full,
    /// The connection is closing; the frame was dropped.
    Closed,
}

/// The sending half of one connection's outbound queue.
pub struct Outbound {
    /// Connection id.
    pub id: ConnId,
    /// The client id the connection speaks as.
    pub client_id: Arc<str>,
    /// Frames waiting for the writer. A `VecDeque` allocates nothing until the first frame and
    /// little for an idle connection (a channel would pre-allocate a block of slots for each).
    queue: Mutex<VecDeque<Utf8Bytes>>,
    /// Wakes the writer; a notification sent while it is busy is kept as a permit.
    ready: Notify,
    max_frames: usize,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    closing: AtomicBool,
    /// The writer is gone: further frames have nowhere to go.
    writer_gone: AtomicBool,
    close_tx: watch::Sender<Option<Closing>>,
}

/// The receiving half, owned by the connection's writer.
pub struct OutboundRx {
    /// Frames to write.
    pub frames: Frames,
    /// Set once when the connection must close.
    pub close: watch::Receiver<Option<Closing>>,
}

/// The writer's end of the frame queue.
pub struct Frames {
    handle: Arc<Outbound>,
}

/// A capacity above which an emptied queue gives its memory back (a burst passed).
const SHRINK_ABOVE: usize = 256;

impl Frames {
    /// The next frame, waiting for one.
    pub async fn recv(&mut self) -> Utf8Bytes {
        loop {
            if let Ok(frame) = self.try_recv() {
                return frame;
            }
            self.handle.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Utf8Bytes, Empty> {
        let mut queue = self.handle.queue.lock().unwrap_or_else(|e| e.into_inner());
        let frame = queue.pop_front().ok_or(Empty)?;
        if queue.is_empty() && queue.capacity() > SHRINK_ABOVE {
            queue.shrink_to(8);
        }
        Ok(frame)
    }
}

/// No frame is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

impl Drop for Frames {
    fn drop(&mut self) {
        self.handle.writer_gone.store(true, Ordering::Release);
        let mut queue = self.handle.queue.lock().unwrap_or_else(|e| e.into_inner());
        *queue = VecDeque::new();
    }
}

impl Outbound {
    /// A queue of at most `max_frames` frames and `max_bytes` bytes.
    pub fn new(
        id: ConnId,
        client_id: Arc<str>,
        max_frames: usize,
        max_bytes: usize,
    ) -> (Arc<Self>, OutboundRx) {
        let (close_tx, close) = watch::channel(None);
        let handle = Arc::new(Outbound {
            id,
            client_id,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            max_frames: max_frames.max(1),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            closing: AtomicBool::new(false),
            writer_gone: AtomicBool::new(false),
            close_tx,
        });
        let rx = OutboundRx {
            frames: Frames {
                handle: handle.clone(),
            },
            close,
        };
        (handle, rx)
    }

    /// Queues a frame without waiting. The frame's bytes are shared, not copied.
    pub fn push(&self, frame: &Utf8Bytes) -> Push {
        if self.closing.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Push::Full;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = if self.writer_gone.load(Ordering::Acquire) {
            Push::Closed
        } else if queue.len() >= self.max_frames {
            Push::Full
        } else {
            queue.push_back(frame.clone());
            Push::Queued
        };
        drop(queue);
        if outcome == Push::Queued {
            self.ready.notify_one();
        } else {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        outcome
    }

    /// Asks the writer to close the connection. The first call wins; returns whether it was it.
    pub fn close(&self, closing: Closing) -> bool {
        if self.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.close_tx.send_replace(Some(closing));
        true
    }

    /// Whether a close has been requested.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A receiver that sees the close request (for the connection's reader).
    pub fn close_signal(&self) -> watch::Receiver<Option<Closing>> {
        self.close_tx.subscribe()
    }
}

impl OutboundRx {
    /// Records that `len` queued bytes were written to the socket.
    pub fn written(&self, len: usize) {
        self.frames
            .handle
            .queued_bytes
            .fetch_sub(len, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_frames_and_bytes() {
        let (out, mut rx) = Outbound::new(1, "a".into(), 3, 10);
        let f = Utf8Bytes::from_static("1234");
        assert_eq!(out.push(&f), Push::Queued);
        assert_eq!(out.push(&f), Push::Queued);
        assert_eq!(out.push(&f), Push::Full, "12 bytes > 10");
        let got = rx.frames.try_recv().unwrap();
        rx.written(got.len());
        assert_eq!(out.push(&Utf8Bytes::from_static("12")), Push::Queued);
        assert_eq!(out.push(&Utf8Bytes::from_static("1")), Push::Queued);
        assert_eq!(
            out.push(&Utf8Bytes::from_static("1")),
            Push::Full,
            "3 frames"
        );
        assert!(out.close(SLOW_CONSUMER));
        assert!(!out.close(FLOOD), "first close wins");
        assert_eq!(*rx.close.borrow(), Some(SLOW_CONSUMER));
        assert_eq!(out.push(&f), Push::Closed);
    }

    #[test]
    fn one_oversized_frame_fits_an_empty_queue() {
        let (out, _rx) = Outbound::new(1, "a".into(), 3, 2);
        assert_eq!(out.push(&Utf8Bytes::from_static("12345")), Push::Queued);
        assert_eq!(out.push(&Utf8Bytes::from_static("1")), Push::Full);
    }
}
