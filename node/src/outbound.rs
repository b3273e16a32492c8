//! One connection's outbound side as the rest of the node sees it: a bounded queue and a close
//! signal.
//!
//! Fan-out never waits on a client: [`Outbound::push`] either queues the frame at once or reports
//! that the queue is full, and the caller then closes the slow client. The queue is bounded both in
//! frames and in bytes, so one stalled client holds at most `send_queue_bytes` of memory.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
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
    tx: mpsc::Sender<Utf8Bytes>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    closing: AtomicBool,
    close_tx: watch::Sender<Option<Closing>>,
}

/// The receiving half, owned by the connection's writer.
pub struct OutboundRx {
    /// Frames to write.
    pub frames: mpsc::Receiver<Utf8Bytes>,
    /// Set once when the connection must close.
    pub close: watch::Receiver<Option<Closing>>,
    handle: Arc<Outbound>,
}

impl Outbound {
    /// A queue of at most `max_frames` frames and `max_bytes` bytes.
    pub fn new(
        id: ConnId,
        client_id: Arc<str>,
        max_frames: usize,
        max_bytes: usize,
    ) -> (Arc<Self>, OutboundRx) {
        let (tx, frames) = mpsc::channel(max_frames.max(1));
        let (close_tx, close) = watch::channel(None);
        let handle = Arc::new(Outbound {
            id,
            client_id,
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            closing: AtomicBool::new(false),
            close_tx,
        });
        let rx = OutboundRx {
            frames,
            close,
            handle: handle.clone(),
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
        match self.tx.try_send(frame.clone()) {
            Ok(()) => Push::Queued,
            Err(e) => {
                self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => Push::Full,
                    mpsc::error::TrySendError::Closed(_) => Push::Closed,
                }
            }
        }
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
        self.handle.queued_bytes.fetch_sub(len, Ordering::Relaxed);
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
