//! Many client connections over one TCP connection between the gateway and a node: a link.
//!
//! Proxied one TCP connection per client, every connect costs the gateway a `connect()` (on
//! loopback the whole handshake runs in its softirq), the node an `accept()`, a socket and an
//! epoll registration on both sides, and every message to a room costs the node one write and the
//! gateway one read per member. Over a link a client is a *stream*: its bytes travel in frames
//! on the link's one socket, a read there picks up frames for many clients at once, and a write
//! carries whatever every stream queued since the last one. The streams carry exactly the bytes
//! a client connection would (the upgrade head, the 101, WebSocket frames), so the node serves a
//! stream like an accepted socket and the gateway copies it like one.
//!
//! What follows is the protocol, as a peer written from scratch would need it. The gateway is
//! the *opening end* (it opens streams), the node the *accepting end*.
//!
//! # 1. The upgrade
//!
//! The opening end connects and sends one HTTP/1.1 request ([`upgrade`] holds the tokens):
//!
//! ```text
//! GET /link HTTP/1.1
//! Host: <node address>
//! Upgrade: ringcast-link/1
//! Connection: Upgrade
//! Authorization: Bearer <link secret>        (when one is configured)
//! ```
//!
//! The secret and who may present it are described in [`secret`]. The `Upgrade` header may
//! list several tokens; the node takes the newest version it speaks
//! among them, whatever their order. Versions:
//!
//! | token             | frames                                  |
//! |-------------------|-----------------------------------------|
//! | `ringcast-link/1` | all below, `GOAWAY` included            |
//! | `ringcast-link`   | the release before versioning: no `GOAWAY`; still accepted for one release |
//!
//! The node checks, in this order, and answers the first that fails with a JSON body
//! `{"error": <code>, "message": <text>}` and `Connection: close`:
//!
//! | status | `error`                    | when |
//! |--------|----------------------------|------|
//! | 431    | `headers_too_large`        | the head is over the node's head limit |
//! | 400    | `bad_request`              | not `GET /link HTTP/1.1` with a link token in `Upgrade` |
//! | 426    | `link_version_unsupported` | only `ringcast-link/<n>` tokens of unknown versions; the answer carries `Upgrade: ringcast-link/1, ringcast-link` (what it speaks, newest first) and `Connection: Upgrade, close` |
//! | 401    | `link_unauthorized`        | a secret is configured and not presented |
//! | 403    | `link_forbidden`           | no secret is configured and the peer is not loopback, or came through a proxy |
//! | 503    | `draining`                 | the node is shutting down |
//!
//! Otherwise it answers `101 Switching Protocols` with `Upgrade: <the token it chose>` and
//! `Connection: Upgrade`. From the byte after each side's head (the request's and the 101's),
//! the connection carries frames only, in both directions.
//!
//! **Falling back.** The release before versioning answers `ringcast-link/1` with its `400
//! bad_request`. On that 400 or on a 426, a gateway asks again at once, on a new connection,
//! with `ringcast-link`, and keeps asking that node with it for a minute before it tries the
//! newest version again (so a node upgraded meanwhile is found out). Any other 4xx, or an
//! answer that is not HTTP, means no link: the gateway reaches that node with one TCP
//! connection per client and asks again after a minute. A 5xx declines this attempt only (the
//! upgrade moves on to the next node). A connection that ends before any answer says nothing
//! about links: that upgrade goes direct, and a link is asked for again after a second,
//! doubling while it keeps happening.
//!
//! # 2. Frames
//!
//! Every frame is a 9-byte header, then a payload ([`frame`] is the codec):
//!
//! ```text
//! +--------+----------------+----------------+=================+
//! | kind:8 | stream:32 (BE) | len:32 (BE)    | payload (len B) |  payload only for OPEN and DATA
//! +--------+----------------+----------------+=================+
//! ```
//!
//! | kind | name     | stream            | len                     | payload | sent by | meaning |
//! |------|----------|-------------------|-------------------------|---------|---------|---------|
//! | 1    | `OPEN`   | new id            | payload length          | first bytes (may be empty) | opener | opens a stream |
//! | 2    | `DATA`   | id                | payload length          | bytes   | both    | bytes on the stream |
//! | 3    | `FIN`    | id                | 0                       | —       | both    | the sender writes no more on the stream (half-close) |
//! | 4    | `CLOSE`  | id                | close reason            | —       | both    | the sender dropped the stream: its reads and writes are over |
//! | 5    | `CREDIT` | id                | bytes granted           | —       | both    | the receiver read that many bytes: the sender may send that many more |
//! | 6    | `PING`   | 0                 | 0                       | —       | both    | asks for a `PONG` |
//! | 7    | `PONG`   | 0                 | 0                       | —       | both    | answers a `PING` |
//! | 8    | `GOAWAY` | last stream taken | go-away reason          | —       | acceptor, `/1` only | no new streams on this link (§5) |
//!
//! Close reasons ([`frame::CloseReason`]): `0` dropped (its owner let it go; also any unknown
//! value), `1` full (the accepting end refused to open it: it is at its connection limit; the
//! stream's only bytes before the `CLOSE` are the node's `503 too_many_connections` answer).
//! Go-away reasons ([`frame::GoAwayReason`]): `1` draining (the node is shutting down), `0`
//! other (also any unknown value).
//!
//! Stream ids are chosen by the opening end: 1, 2, 3, … never reused; a stream lives from its
//! `OPEN` until both ends dropped it (a `CLOSE` each way, or one `CLOSE` and the link's end).
//! Frames for a stream the receiver already dropped are ignored. It is a protocol error, on
//! which the receiver closes the whole link, to send: an unknown kind, an `OPEN`/`DATA` payload
//! over [`MAX_PAYLOAD`] (16 KiB; refused from the header, before the payload arrives), an `OPEN`
//! from the accepting end or of an id already open, a `GOAWAY` from the opening end, `DATA`
//! beyond the stream's window, or a `CREDIT` that lifts it above [`WINDOW`]. Because an unknown
//! kind is an error, a new kind needs a new version token.
//!
//! # 3. Flow control
//!
//! Each stream has a window of [`WINDOW`] (64 KiB) unread bytes per direction. A sender starts
//! with that much credit, spends one byte per payload byte of `OPEN`/`DATA`, and sends nothing
//! on a stream whose credit is spent; the receiver grants bytes back with `CREDIT` as the
//! stream's owner reads them (in grants of at least a quarter window). So the link's reader
//! never waits for a stream, a stream nobody reads stalls only its own writer (on the node, the
//! slow-client path: its queue fills and the node closes it), and one client cannot hold up the
//! others. Writes that find [`OUT_CAP`] (1 MiB) already waiting for the socket wait for it to
//! drain.
//!
//! Every reply the accepting end makes (`PONG`, `CREDIT`, a refusal) goes into the same bounded
//! outgoing buffer as the streams' bytes: while [`OUT_CAP`] bytes wait for the socket, the
//! accepting end stops reading the link, so a peer cannot make the node hold more than about
//! twice [`OUT_CAP`] (one batch being written while the next fills).
//!
//! # 4. Keepalive and bounds
//!
//! A link on which nothing has been received for [`KEEPALIVE`] (5 s) gets a `PING`; one silent
//! for three times that (15 s) is dead, even if TCP never says so, and is closed — as is a link
//! the accepting end has not read for that long because the peer does not read its replies.
//! At most [`MAX_STREAMS`] streams are open on a link; the node also counts every stream
//! against `--max-connections` from its `OPEN` on (one past it gets `503
//! too_many_connections` and `CLOSE` reason full). The decoder never allocates: a frame's
//! payload is a slice of the read buffer, which never grows past one largest frame.
//!
//! # 5. GOAWAY
//!
//! When a node begins to drain it sends one `GOAWAY` (reason draining) on every
//! `ringcast-link/1` link, `stream` set to the highest id it has seen opened. From then on:
//! - the receiver opens no new stream on that link;
//! - streams already open run to their end (on a drain: until the node closes its clients
//!   with 1012 after `--drain-delay-secs`);
//! - an `OPEN` that crossed the `GOAWAY` on the wire is still served (a draining node answers
//!   its upgrade with `503 draining`), never dropped unanswered;
//! - new clients get another node (reason draining: a new link to this node would be refused
//!   too) or a new link to the same node (reason other);
//! - once the node has drained it ends the link: it writes what its sessions wrote last, shuts
//!   its side, and reads until the gateway closes; that end is no failure.
//!
//! A link of the legacy token never gets a `GOAWAY` (its peer would close the link on an
//! unknown kind): its peer learns of a drain from the `503 draining` answers and `/healthz`.

pub mod frame;
pub mod secret;
mod stream;
pub mod upgrade;

use std::collections::HashMap;
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use frame::{
    decode, GoAwayReason, CLOSE, CREDIT, DATA, FIN, GOAWAY, HEADER_LEN, MAX_PAYLOAD, OPEN, PING,
    PONG,
};
pub use secret::LinkSecret;
pub use stream::{LinkHalf, LinkSender, LinkStream};

/// The request path that turns a connection into a link.
pub const PATH: &str = "/link";

/// Unread bytes a stream may have in flight in one direction.
pub const WINDOW: usize = 64 * 1024;

/// Pending outgoing bytes past which stream writes wait for the socket.
pub const OUT_CAP: usize = 1024 * 1024;

/// Most streams open at once on one link.
pub const MAX_STREAMS: usize = 1 << 16;

/// Silence after which a link is pinged; three times it and the link is dead.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// First capacity of a stream's receive buffer: a fan-out round's frames for one client fit.
const RX_BUF: usize = 1024;

/// Emptied receive buffers kept for reuse, at most this many per link...
const SPARE_MAX: usize = 512;

/// ...and none larger than this.
const SPARE_CAP_MAX: usize = 8 * 1024;

/// Bytes read since the last grant, past which the reader grants them back.
const GRANT_AT: usize = WINDOW / 4;

/// Most streams the reader opens before it hands them on and looks at the outgoing buffer
/// again (each may queue a refusal).
const OPENS_PER_ROUND: usize = 64;

/// Which end of the link this is: the gateway opens streams, the node accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (the gateway).
    Opener,
    /// Accepts streams (the node).
    Acceptor,
}

/// One end of a link. Clones share it; the link lives until its socket fails or closes, or
/// [`Link::close`].
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

/// The link's state, behind one lock that is never held across an `.await`.
struct Shared {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Frames waiting for the socket.
    out: Vec<u8>,
    /// The writer task, when it waits for frames.
    writer: Option<Waker>,
    /// Streams whose writers wait for `out` to drain below [`OUT_CAP`] (each once, in order;
    /// their wakers are their `tx_waker`s).
    waiting: Vec<u32>,
    /// Most streams open at once.
    max_streams: usize,
    streams: HashMap<u32, Slot, BuildHasherDefault<IdHasher>>,
    /// Emptied receive buffers, handed to the next stream that receives bytes (see
    /// [`Inner::recycle`]).
    spare: Vec<BytesMut>,
    next_id: u32,
    /// The socket failed or closed, or [`Link::close`]: nothing more moves.
    dead: bool,
    /// [`Link::finish`]: the writer ends the link once what is waiting is written.
    finishing: bool,
    /// When the reader last took bytes in. A reader that waits for `out` to drain takes none,
    /// so a peer that stops reading the link's replies falls silent here too.
    last_rx: Option<Instant>,
    /// The reader, when it waits for `out` to drain below [`OUT_CAP`] (accepting end only).
    reader: Option<Waker>,
    /// What a stream opened past `max_streams` gets before its `CLOSE` (see
    /// [`Link::set_full_reply`]).
    full_reply: Vec<u8>,
    /// The highest stream id the peer opened (accepting end): a `GOAWAY`'s last stream.
    last_opened: u32,
    /// This end sent its `GOAWAY` (accepting end).
    goaway_sent: bool,
    /// The peer's `GOAWAY` (opening end): no new streams on this link.
    goaway: Option<GoAwayReason>,
    /// The task waiting in [`Link::goaway`].
    goaway_waker: Option<Waker>,
}

/// One stream's state on this end.
#[derive(Default)]
struct Slot {
    /// Received, not yet read.
    rx: BytesMut,
    rx_waker: Option<Waker>,
    /// The peer will send nothing more.
    rx_fin: bool,
    /// Read since the last grant.
    unacked: usize,
    /// Bytes this end may still send.
    credit: usize,
    tx_waker: Option<Waker>,
    /// The peer dropped the stream: writes fail.
    peer_closed: bool,
    /// This end sent its `FIN`.
    fin_sent: bool,
    /// Listed in [`Inner::waiting`].
    waiting: bool,
}

impl Slot {
    fn new() -> Self {
        Slot {
            credit: WINDOW,
            ..Slot::default()
        }
    }
}

impl Inner {
    /// Keeps an emptied receive buffer for the next stream that receives bytes.
    ///
    /// A busy link empties and fills one buffer per stream per fan-out round. The reader fills
    /// them and the streams' owners empty them, on other threads: allocated and freed each
    /// time, they cost the allocator its cross-thread path on every round. Idle streams still
    /// hold no buffer; a link holds at most [`SPARE_MAX`] of [`SPARE_CAP_MAX`] bytes.
    fn recycle(&mut self, mut buf: BytesMut) {
        if !buf.is_empty() || self.spare.len() >= SPARE_MAX {
            return;
        }
        // A buffer that was read from shows only the room behind what was read; asking for
        // more than that takes the room in front back (no allocation), so that `capacity` is
        // the whole buffer. (Receive buffers are never split, so nothing else shares them.)
        let _ = buf.try_reclaim(buf.capacity() + 1);
        if (RX_BUF..=SPARE_CAP_MAX).contains(&buf.capacity()) {
            self.spare.push(buf);
        }
    }

    fn push_frame(&mut self, kind: u8, id: u32, len: u32, payload: &[u8]) {
        push_frame(&mut self.out, &mut self.writer, kind, id, len, payload);
    }

    /// [`Link::finish`] was called and every stream is gone: once `out` is written, the link
    /// ends.
    fn finished(&self) -> bool {
        self.finishing && self.streams.is_empty()
    }

    /// Marks the link dead and collects every waker, to be woken once the lock is released.
    fn kill(&mut self, wake: &mut Vec<Waker>) {
        self.dead = true;
        wake.extend(self.writer.take());
        wake.extend(self.reader.take());
        wake.extend(self.goaway_waker.take());
        self.waiting.clear();
        for slot in self.streams.values_mut() {
            wake.extend(slot.rx_waker.take());
            wake.extend(slot.tx_waker.take());
        }
    }

    /// Applies one received frame; a stream the peer opened is returned.
    fn receive(
        &mut self,
        role: Role,
        kind: u8,
        id: u32,
        len: u32,
        payload: &[u8],
        wake: &mut Vec<Waker>,
    ) -> io::Result<Option<u32>> {
        match kind {
            OPEN => {
                if role != Role::Acceptor {
                    return Err(invalid("OPEN from the accepting end"));
                }
                if self.streams.contains_key(&id) {
                    return Err(invalid("OPEN of an open stream"));
                }
                if self.streams.len() >= self.max_streams {
                    // Refused, as a stream at the connection limit is: its opener reads the
                    // reply (a 503), then the stream's end.
                    let reply = &self.full_reply;
                    if !reply.is_empty() {
                        let len = reply.len() as u32;
                        push_frame(&mut self.out, &mut self.writer, DATA, id, len, reply);
                    }
                    self.push_frame(CLOSE, id, frame::CloseReason::Full.code(), &[]);
                    return Ok(None);
                }
                let mut slot = Slot::new();
                slot.rx.extend_from_slice(payload);
                self.streams.insert(id, slot);
                self.last_opened = self.last_opened.max(id);
                Ok(Some(id))
            }
            DATA => {
                // Frames for a stream this end already dropped are let go.
                if let Some(slot) = self.streams.get_mut(&id) {
                    if slot.rx.len() + payload.len() > WINDOW {
                        return Err(invalid("DATA beyond the stream's window"));
                    }
                    if slot.rx.capacity() == 0 {
                        slot.rx = self
                            .spare
                            .pop()
                            .unwrap_or_else(|| BytesMut::with_capacity(RX_BUF));
                    }
                    slot.rx.extend_from_slice(payload);
                    wake.extend(slot.rx_waker.take());
                }
                Ok(None)
            }
            FIN | CLOSE => {
                if let Some(slot) = self.streams.get_mut(&id) {
                    slot.rx_fin = true;
                    wake.extend(slot.rx_waker.take());
                    if kind == CLOSE {
                        slot.peer_closed = true;
                        wake.extend(slot.tx_waker.take());
                    }
                }
                Ok(None)
            }
            CREDIT => {
                if let Some(slot) = self.streams.get_mut(&id) {
                    slot.credit = slot.credit.saturating_add(len as usize);
                    if slot.credit > WINDOW {
                        return Err(invalid("CREDIT beyond the window"));
                    }
                    wake.extend(slot.tx_waker.take());
                }
                Ok(None)
            }
            PING => {
                self.push_frame(PONG, 0, 0, &[]);
                Ok(None)
            }
            PONG => Ok(None),
            GOAWAY => {
                if role != Role::Opener {
                    return Err(invalid("GOAWAY from the opening end"));
                }
                // The first one stands; a repeat changes nothing.
                if self.goaway.is_none() {
                    self.goaway = Some(GoAwayReason::from_code(len));
                    wake.extend(self.goaway_waker.take());
                }
                Ok(None)
            }
            _ => Err(invalid("unknown frame kind")),
        }
    }
}

/// Queues one frame, waking the writer if it waits.
fn push_frame(
    out: &mut Vec<u8>,
    writer: &mut Option<Waker>,
    kind: u8,
    id: u32,
    len: u32,
    payload: &[u8],
) {
    if out.is_empty() {
        if let Some(w) = writer.take() {
            w.wake();
        }
    }
    frame::encode(out, kind, id, len, payload);
}

/// Hashes the link's stream ids. They are small integers one end hands out in sequence, so
/// one multiplication spreads them across the table; SipHash's resistance to chosen keys buys
/// nothing against the peer at the other end of our own link.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A broken link protocol: the link closes with `why`.
fn invalid(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Link {
    /// A link over the TCP connection `socket`, and the future that moves its bytes: spawn it
    /// (it ends when the link dies). `early` holds bytes already read from the socket. On the
    /// accepting end, `on_open` gets each stream the peer opens, from the link's reader: it must
    /// not block. At most `max_streams` (capped at [`MAX_STREAMS`]) are open at once; the peer's
    /// streams past that are closed at once.
    pub fn new<F>(
        socket: tokio::net::TcpStream,
        early: Bytes,
        role: Role,
        max_streams: usize,
        on_open: F,
    ) -> (
        Link,
        impl std::future::Future<Output = io::Result<()>> + Send,
    )
    where
        F: FnMut(LinkStream) + Send + 'static,
    {
        let (rd, wr) = socket.into_split();
        Link::over(rd, wr, early, role, max_streams, on_open)
    }

    /// A link over a connection taken apart into `rd` and `wr` (a TLS connection's halves, say),
    /// as [`Link::new`] makes one over TCP.
    pub fn over<R, W, F>(
        rd: R,
        wr: W,
        early: Bytes,
        role: Role,
        max_streams: usize,
        on_open: F,
    ) -> (
        Link,
        impl std::future::Future<Output = io::Result<()>> + Send,
    )
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
        F: FnMut(LinkStream) + Send + 'static,
    {
        let link = Link {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    next_id: 1,
                    last_rx: Some(Instant::now()),
                    max_streams: max_streams.clamp(1, MAX_STREAMS),
                    ..Inner::default()
                }),
            }),
        };
        let shared = link.shared.clone();
        let driver = async move {
            let mut reading = std::pin::pin!(read_loop(&shared, rd, early, role, on_open));
            let (mut result, wrote_all) = tokio::select! {
                r = &mut reading => (r, false),
                r = write_loop(&shared, wr) => (r, true),
                r = keepalive(&shared) => (r, false),
            };
            if wrote_all && result.is_ok() && shared.lock().finishing {
                // Finished (see `Link::finish`): read until the peer closes its side.
                result = reading.await;
            }
            let mut wake = Vec::new();
            shared.lock().kill(&mut wake);
            wake.into_iter().for_each(Waker::wake);
            result
        };
        (link, driver)
    }

    /// Sets what a stream the peer opens past `max_streams` gets as its only bytes before its
    /// `CLOSE` (accepting end; say, an HTTP 503, so that the peer tells a full node from a
    /// broken one). At most [`MAX_PAYLOAD`] bytes; a longer reply is not sent. Set it before
    /// the driver runs.
    pub fn set_full_reply(&self, reply: &[u8]) {
        if reply.len() <= MAX_PAYLOAD {
            self.shared.lock().full_reply = reply.to_vec();
        }
    }

    /// Opens a stream (opening end only).
    pub fn open(&self) -> io::Result<LinkStream> {
        let mut inner = self.shared.lock();
        if inner.dead {
            return Err(io::ErrorKind::NotConnected.into());
        }
        if inner.goaway.is_some() {
            return Err(io::Error::other("the peer sent GOAWAY: no new streams"));
        }
        if inner.streams.len() >= inner.max_streams || inner.next_id == u32::MAX {
            return Err(io::Error::other("the link has no stream left"));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.streams.insert(id, Slot::new());
        inner.push_frame(OPEN, id, 0, &[]);
        drop(inner);
        Ok(LinkStream::new(self.shared.clone(), id))
    }

    /// Whether a stream can still be opened: the link is alive, has ids left and the peer has
    /// not sent `GOAWAY`.
    pub fn is_usable(&self) -> bool {
        let inner = self.shared.lock();
        !inner.dead
            && inner.goaway.is_none()
            && inner.next_id < u32::MAX
            && inner.streams.len() < inner.max_streams
    }

    /// Tells the peer that this end takes no new streams on the link (accepting end, on a
    /// link whose version has `GOAWAY`; see [`upgrade::Version::has_goaway`]). Streams already
    /// open run on, and an `OPEN` that crossed the `GOAWAY` on the wire is still served. Sent
    /// once; later calls do nothing.
    pub fn go_away(&self, reason: GoAwayReason) {
        let mut inner = self.shared.lock();
        if inner.dead || inner.goaway_sent {
            return;
        }
        inner.goaway_sent = true;
        let last = inner.last_opened;
        inner.push_frame(GOAWAY, last, reason.code(), &[]);
    }

    /// The peer's `GOAWAY`, if it sent one (opening end).
    pub fn going_away(&self) -> Option<GoAwayReason> {
        self.shared.lock().goaway
    }

    /// Resolves with the peer's `GOAWAY` once it arrives, or `None` once the link is dead
    /// without one.
    pub async fn goaway(&self) -> Option<GoAwayReason> {
        poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if let Some(reason) = inner.goaway {
                return Poll::Ready(Some(reason));
            }
            if inner.dead {
                return Poll::Ready(None);
            }
            inner.goaway_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Whether the link still moves bytes.
    pub fn is_alive(&self) -> bool {
        !self.shared.lock().dead
    }

    /// Streams open on this end.
    pub fn streams(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// Ends the link once every stream on it is gone and what they wrote is written (their last
    /// frames, such as a closing handshake, reach the peer): our side of the socket is shut,
    /// the peer's bytes are read until it closes its side too (so that nothing left unread
    /// turns the close into a reset), and the driver returns. Bound the wait, and
    /// [`Link::close`] a link that does not get there.
    pub fn finish(&self) {
        let mut inner = self.shared.lock();
        inner.finishing = true;
        if let Some(w) = inner.writer.take() {
            w.wake();
        }
    }

    /// Ends the link at once: its driver returns and every stream fails; frames still waiting
    /// are dropped.
    pub fn close(&self) {
        let mut wake = Vec::new();
        self.shared.lock().kill(&mut wake);
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under this lock leaves no half-made change worth refusing to read.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads frames and hands them to their streams until EOF, an error or a protocol violation.
///
/// On the accepting end, the reader waits while [`OUT_CAP`] bytes wait for the socket: what it
/// reads may make the link reply, and a peer that does not read those replies must not make
/// them pile up. (The opening end always reads, so the acceptor's wait always ends with a
/// peer that follows the protocol.)
async fn read_loop<R, F>(
    shared: &Arc<Shared>,
    mut rd: R,
    early: Bytes,
    role: Role,
    mut on_open: F,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    F: FnMut(LinkStream),
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    buf.extend_from_slice(&early);
    let mut wake = Vec::new();
    let mut opened = Vec::new();
    loop {
        if role == Role::Acceptor {
            replies_drained(shared).await;
        }
        // Whether frames may be left in `buf` that are complete: stopped early to hand on
        // opened streams or to let the replies drain.
        let mut stopped_early = false;
        {
            let mut inner = shared.lock();
            if inner.dead {
                return Ok(());
            }
            inner.last_rx = Some(Instant::now());
            loop {
                if role == Role::Acceptor
                    && (inner.out.len() >= OUT_CAP || opened.len() >= OPENS_PER_ROUND)
                {
                    stopped_early = true;
                    break;
                }
                let Some((f, n)) = decode(&buf).map_err(invalid)? else {
                    break;
                };
                if let Some(id) =
                    inner.receive(role, f.kind, f.stream, f.len, f.payload, &mut wake)?
                {
                    opened.push(id);
                }
                buf.advance(n);
            }
        }
        wake.drain(..).for_each(Waker::wake);
        for id in opened.drain(..) {
            on_open(LinkStream::new(shared.clone(), id));
        }
        if stopped_early {
            continue;
        }
        if buf.capacity() - buf.len() < MAX_PAYLOAD + HEADER_LEN {
            buf.reserve(64 * 1024);
        }
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Ready once fewer than [`OUT_CAP`] bytes wait for the socket (or the link died).
async fn replies_drained(shared: &Arc<Shared>) {
    poll_fn(|cx| {
        let mut inner = shared.lock();
        if inner.dead || inner.out.len() < OUT_CAP {
            return Poll::Ready(());
        }
        inner.reader = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Pings a quiet link; fails once it has been silent for three [`KEEPALIVE`]s.
async fn keepalive(shared: &Arc<Shared>) -> io::Result<()> {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut inner = shared.lock();
        let quiet = inner.last_rx.map_or(Duration::ZERO, |t| t.elapsed());
        if quiet >= 3 * KEEPALIVE {
            // The reader is held back while replies wait for a peer that does not read them:
            // the same silence, seen from this end.
            let why = if inner.reader.is_some() && inner.out.len() >= OUT_CAP {
                "the peer stopped reading the link"
            } else {
                "the link went silent"
            };
            return Err(io::Error::new(io::ErrorKind::TimedOut, why));
        }
        if quiet >= KEEPALIVE {
            inner.push_frame(PING, 0, 0, &[]);
        }
    }
}

/// Writes whatever frames are waiting, in one write per batch, until the link dies.
async fn write_loop<W: AsyncWrite + Unpin>(shared: &Arc<Shared>, mut wr: W) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut wake = Vec::new();
    loop {
        let ready = poll_fn(|cx| {
            let mut inner = shared.lock();
            if !inner.dead && inner.out.is_empty() && !inner.finished() {
                inner.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(())
        });
        ready.await;
        // Let the tasks that are ready to run now (a fan-out's writers, typically) queue their
        // frames first, so that one write carries them all.
        tokio::task::yield_now().await;
        let more = poll_fn(|_| {
            let mut inner = shared.lock();
            if inner.dead || (inner.finished() && inner.out.is_empty()) {
                return Poll::Ready(false);
            }
            std::mem::swap(&mut inner.out, &mut batch);
            wake.extend(inner.reader.take());
            let Inner {
                waiting, streams, ..
            } = &mut *inner;
            for id in waiting.drain(..) {
                if let Some(slot) = streams.get_mut(&id) {
                    slot.waiting = false;
                    wake.extend(slot.tx_waker.take());
                }
            }
            drop(inner);
            wake.drain(..).for_each(Waker::wake);
            Poll::Ready(true)
        })
        .await;
        if !more {
            let _ = wr.shutdown().await;
            return Ok(());
        }
        wr.write_all(&batch).await?;
        // A TLS connection may keep the last records until flushed (TCP has nothing to flush).
        wr.flush().await?;
        batch.clear();
        if batch.capacity() > 2 * OUT_CAP {
            batch = Vec::new();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
