//! One connection's outbound side as the rest of the node sees it: a bounded queue and a close
//! signal.
//!
//! Fan-out never waits on a client: [`Outbound::push`] either queues the frame at once or reports
//! that the queue is full, and the caller then closes the slow client. The queue is bounded both in
//! frames and in bytes, so one stalled client holds at most `send_queue_bytes` of memory.
//!
//! A client reached over a gateway's link has no socket of its own to write: its frames go into
//! the link's outgoing buffer. For such a client, [`Outbound::push`] puts a frame there itself
//! when nothing is queued before it and the writer has nothing in flight, instead of queueing it
//! and waking the writer task: a message to a room then costs the node one task for the whole
//! room instead of one per member. Anything that cannot go that way at once (no credit on the
//! stream, a full link, a write in progress) is queued as before, so frames keep their order.
//!
//! An idle connection costs little here: the queue allocates nothing while empty, and the close
//! signal is a field under the queue's lock plus one waker each for the reader and the writer
//! (a `watch` channel would allocate its shared state for every connection).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use ringcast_net::link::LinkSender;
use ringcast_protocol::ClientCommand;

/// Process-unique id of one WebSocket connection.
pub type ConnId = u64;

/// Why the server closes a connection, and the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The client vanished, or its reading side ended: stop.
    Gone,
    /// The client sent a close frame: answer it, echoing its code (none if it sent none).
    Answer {
        /// The code to echo.
        code: Option<u16>,
    },
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
    state: Mutex<State>,
    /// Wakes the writer when a frame is queued or a close is requested. The writer checks the
    /// queue after registering, so a frame queued while it writes is not missed; a close asked
    /// for while a write (or a ping) is stuck wakes it too.
    writer_waker: AtomicWaker,
    /// Wakes the reader when a close is requested.
    reader_waker: AtomicWaker,
    max_frames: usize,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// A close was requested (the fast check; the reason is in `state`).
    closing: AtomicBool,
    /// The writer is gone: further frames have nowhere to go.
    writer_gone: AtomicBool,
    /// The link stream to hand frames to directly, for a client reached over a link.
    direct: OnceLock<LinkSender>,
}

/// What sits under the [`Outbound`] lock.
struct State {
    /// Frames waiting for the writer. A `VecDeque` allocates nothing until the first frame (a
    /// channel would pre-allocate a block of slots for each connection), and gives its buffer
    /// back whenever it empties.
    frames: VecDeque<Bytes>,
    /// Set once, by the first close request.
    closing: Option<Closing>,
    /// The writer took frames (or a ping) it may not have written whole yet: nothing may be
    /// handed to the link past it. Cleared when the writer finds the queue empty.
    writing: bool,
    /// What the server API asked the connection to do, for its reader (allocates nothing
    /// until the first one; at most [`MAX_COMMANDS`]).
    commands: VecDeque<ClientCommand>,
}

/// Most server API commands waiting for one connection's reader; past it they are refused.
pub const MAX_COMMANDS: usize = 32;

/// The receiving half, owned by the connection's writer.
pub struct OutboundRx {
    handle: Arc<Outbound>,
}

/// No frame is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.handle.writer_gone.store(true, Ordering::Release);
        self.handle.lock().frames = VecDeque::new();
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
        let handle = Arc::new(Outbound {
            id,
            client_id,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                commands: VecDeque::new(),
                closing: None,
                writing: false,
            }),
            writer_waker: AtomicWaker::new(),
            reader_waker: AtomicWaker::new(),
            max_frames: max_frames.max(1),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            closing: AtomicBool::new(false),
            writer_gone: AtomicBool::new(false),
            direct: OnceLock::new(),
        });
        let rx = OutboundRx {
            handle: handle.clone(),
        };
        (handle, rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, hands frames to `link` directly whenever nothing is queued or being written
    /// (see the module's comment). Set once, before the writer starts.
    pub fn send_directly(&self, link: LinkSender) {
        let _ = self.direct.set(link);
    }

    /// Queues a frame without waiting, or hands it to the client's link at once (both are
    /// [`Push::Queued`]). The frame's bytes are shared, not copied.
    pub fn push(&self, frame: &Bytes) -> Push {
        if self.closing.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Push::Full;
        }
        let mut state = self.lock();
        // Handed over under the lock, so the writer cannot take a frame queued meanwhile and
        // write it first; a close requested later is written after this frame.
        let handed = || {
            state.frames.is_empty()
                && !state.writing
                && state.closing.is_none()
                && self.direct.get().is_some_and(|link| link.try_send(frame))
        };
        let (outcome, queued) = if self.writer_gone.load(Ordering::Acquire) {
            (Push::Closed, false)
        } else if handed() {
            (Push::Queued, false)
        } else if state.frames.len() >= self.max_frames {
            (Push::Full, false)
        } else {
            state.frames.push_back(frame.clone());
            (Push::Queued, true)
        };
        drop(state);
        if queued {
            self.writer_waker.wake();
        } else {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        outcome
    }

    /// Whether `frames` more frames of `bytes` in all fit in the queue now (an empty queue
    /// takes anything, as [`Outbound::push`] does).
    pub fn has_room(&self, frames: usize, bytes: usize) -> bool {
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        let len = self.lock().frames.len();
        (queued == 0 || queued + bytes <= self.max_bytes) && len + frames <= self.max_frames
    }

    /// Asks the writer to close the connection. The first call wins; returns whether it was it.
    pub fn close(&self, closing: Closing) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() {
            return false;
        }
        state.closing = Some(closing);
        self.closing.store(true, Ordering::Release);
        drop(state);
        self.writer_waker.wake();
        self.reader_waker.wake();
        true
    }

    /// Whether a close has been requested.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The close request, if there is one.
    pub fn closing(&self) -> Option<Closing> {
        if !self.is_closing() {
            return None;
        }
        self.lock().closing
    }

    /// For the connection's reader: ready once a close has been requested.
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reader_waker.register(cx.waker());
        if self.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Hands a server API command to the connection's reader; false when too many wait.
    pub fn command(&self, command: ClientCommand) -> bool {
        {
            let mut state = self.lock();
            if state.commands.len() >= MAX_COMMANDS {
                return false;
            }
            state.commands.push_back(command);
        }
        self.reader_waker.wake();
        true
    }

    /// The next command for the reader, if any (after [`Outbound::poll_close`] registered it).
    pub fn next_command(&self) -> Option<ClientCommand> {
        let mut state = self.lock();
        let next = state.commands.pop_front();
        if state.commands.is_empty() {
            state.commands = VecDeque::new();
        }
        next
    }
}

/// What the writer is to do next.
#[derive(Debug)]
pub enum Next {
    /// Close the connection.
    Close(Closing),
    /// Write this frame (and whatever else is queued).
    Frame(Bytes),
}

impl OutboundRx {
    /// The next frame if one is queued. Until the writer next finds the queue empty
    /// ([`OutboundRx::poll_next`]), frames are no longer handed to the link directly.
    pub fn try_recv(&self) -> Result<Bytes, Empty> {
        Self::pop(&mut self.handle.lock())
    }

    fn pop(state: &mut State) -> Result<Bytes, Empty> {
        let frame = state.frames.pop_front().ok_or(Empty)?;
        state.writing = true;
        if state.frames.is_empty() {
            // Most connections are idle most of the time: keep no buffer while there is nothing
            // to hold. A busy writer pays one small allocation per batch for it.
            state.frames = VecDeque::new();
        }
        Ok(frame)
    }

    /// The writer is about to write something of its own (a ping): frames are not handed to the
    /// link directly until it next finds the queue empty.
    pub fn hold(&self) {
        self.handle.lock().writing = true;
    }

    /// The writer gives up on the connection: asks for it to close (unless a close was already
    /// asked for), which wakes the reader.
    pub fn abandon(&self) {
        self.handle.close(Closing::Gone);
    }

    /// Records that `len` queued bytes were written to the socket.
    pub fn written(&self, len: usize) {
        self.handle.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    /// The close request, if there is one.
    pub fn closing(&self) -> Option<Closing> {
        self.handle.closing()
    }

    /// A close request first, else the next frame; pending (with the task woken when either
    /// comes) when there is neither. Called only with everything taken before written whole:
    /// pending, it lets frames be handed to the link directly again.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        self.handle.writer_waker.register(cx.waker());
        let mut state = self.handle.lock();
        if let Some(closing) = state.closing {
            return Poll::Ready(Next::Close(closing));
        }
        match Self::pop(&mut state) {
            Ok(frame) => Poll::Ready(Next::Frame(frame)),
            Err(Empty) => {
                state.writing = false;
                Poll::Pending
            }
        }
    }

    /// Ready once a close has been requested (checked while a write is in progress, which the
    /// close then finishes before its close frame).
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<Closing> {
        self.handle.writer_waker.register(cx.waker());
        match self.closing() {
            Some(closing) => Poll::Ready(closing),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod direct_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_frames_and_bytes() {
        let (out, rx) = Outbound::new(1, "a".into(), 3, 10);
        let f = Bytes::from_static(b"1234");
        assert_eq!(out.push(&f), Push::Queued);
        assert_eq!(out.push(&f), Push::Queued);
        assert_eq!(out.push(&f), Push::Full, "12 bytes > 10");
        let got = rx.try_recv().unwrap();
        rx.written(got.len());
        assert_eq!(out.push(&Bytes::from_static(b"12")), Push::Queued);
        assert_eq!(out.push(&Bytes::from_static(b"1")), Push::Queued);
        assert_eq!(out.push(&Bytes::from_static(b"1")), Push::Full, "3 frames");
        assert!(out.close(SLOW_CONSUMER));
        assert!(!out.close(FLOOD), "first close wins");
        assert_eq!(rx.closing(), Some(SLOW_CONSUMER));
        assert_eq!(out.push(&f), Push::Closed);
    }

    #[test]
    fn one_oversized_frame_fits_an_empty_queue() {
        let (out, _rx) = Outbound::new(1, "a".into(), 3, 2);
        assert_eq!(out.push(&Bytes::from_static(b"12345")), Push::Queued);
        assert_eq!(out.push(&Bytes::from_static(b"1")), Push::Full);
    }
}
