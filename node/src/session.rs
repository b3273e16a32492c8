//! One client's connection: a reader that parses and serves its messages, and a writer that
//! drains its outbound queue in batches.
//!
//! The reader never writes to the socket and the writer never parses: the reader answers through
//! the connection's own [`Outbound`] queue like everyone else does, so a client that stops reading
//! fills only its own queue and is then closed, without slowing anyone down.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use ringcast_protocol::auth::{now_secs, Identity};
use ringcast_protocol::client::{frame_message_id, frame_request_room};
use ringcast_protocol::{ClientCommand, ErrorCode, ServerEvent, Target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

use crate::bus::{Channel, Keep};
use crate::hub::Ready;
use crate::outbound::{
    Closing, Outbound, OutboundRx, Push, BUS_DOWN, FLOOD, IDLE, PROTOCOL_ERROR, TOKEN_EXPIRED,
    TOO_BIG,
};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::state::Shared;
use crate::wire;
use crate::writer::{give_up, write_loop, write_queued, CLOSE_TIMEOUT};
use ringcast_net::cork::Uncork;
use ringcast_net::split::{ReadOnly, SplitIo};

mod commands;
mod guard;
mod handlers;
mod presence;
mod rooms;

/// What tungstenite reads the client's frames from.
type Reader<R> = WebSocketStream<ReadOnly<R>>;

/// Serves one upgraded connection until it closes; `early` holds bytes the client sent after its
/// request head, read along with it.
///
/// The returned future lives as long as the connection, mostly waiting in [`Session::read_loop`],
/// so it is kept small. It is a plain function returning an `async move` block because
/// everything an async body captures stays in it for good (and an `async fn` keeps a second copy
/// of its arguments): the socket is split and the session built before the block starts, and
/// the steps that run once (starting, finishing) or now and then (serving a message) are boxed,
/// so their state exists only while they run.
pub fn serve<S>(
    shared: Arc<Shared>,
    io: S,
    early: Bytes,
    client_id: Arc<str>,
    identity: Option<Identity>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Uncork + SplitIo + Unpin + Send + 'static,
{
    let (mut session, out_rx, subscribed) = Session::new(shared, identity.map(Box::new), client_id);
    let start = Box::pin(start(
        session.shared.clone(),
        session.out.clone(),
        (io, early),
        out_rx,
        subscribed,
    ));
    async move {
        let (writer, mut stream) = start.await;
        let end = session.read_loop(&mut stream).await;
        Box::pin(session.finish(stream, end, writer)).await;
    }
}

/// Waits until the connection's channel is subscribed, writes the welcome, starts the writer
/// and announces the connection; returns the writer and the reading half.
async fn start<S>(
    shared: Arc<Shared>,
    out: Arc<Outbound>,
    (mut io, early): (S, Bytes),
    out_rx: OutboundRx,
    (first, ready): (bool, Ready),
) -> (JoinHandle<()>, Reader<S::Read>)
where
    S: AsyncRead + AsyncWrite + Uncork + SplitIo + Unpin + Send + 'static,
{
    let config = &shared.config;
    // Direct messages must reach the client from its first frame on: start writing only once
    // its channel is subscribed.
    if let Some(ready) = ready {
        if !matches!(timeout(config.bus_timeout(), ready).await, Ok(Ok(()))) {
            reply_error(
                &shared,
                &out,
                ErrorCode::BusUnavailable,
                "could not subscribe",
            );
            out.close(BUS_DOWN);
        }
    }
    // The 101 is still held back (see `cork`): what is queued now, the welcome or why the
    // connection closes, leaves with it in one segment.
    let written = matches!(
        timeout(CLOSE_TIMEOUT, write_queued(&mut io, &out_rx)).await,
        Ok(Ok(_))
    );
    io.uncork();
    if let Some(link) = io.link_sender() {
        out.send_directly(link);
    }
    let (rd, wr) = io.split_io();
    let writer = if written {
        tokio::spawn(write_loop(wr, out_rx, config.ping_interval()))
    } else {
        // A frame may be cut off mid-way: nothing more can be written after it, not even a
        // close frame that was asked for meanwhile.
        tokio::spawn(give_up(wr, out_rx))
    };
    let stream = WebSocketStream::from_partially_read(
        ReadOnly(rd),
        early.to_vec(),
        Role::Server,
        Some(shared.ws_config),
    )
    .await;

    if first && config.announce_connections && !out.is_closing() {
        let frame = ServerEvent::UserConnected {
            user_id: &out.client_id,
        }
        .encode();
        let _ = shared
            .publisher
            .publish(
                Channel::Broadcast,
                Target::AllExcept(Some(out.client_id.to_string())),
                &frame,
            )
            .await;
    }
    (writer, stream)
}

/// `now + after`, saturating at `FAR` (about 30 years) ahead: a deadline fed by a token or the
/// configuration never overflows, and one out of range is far, never immediate.
fn deadline_after(now: Instant, after: Duration) -> Instant {
    /// Far enough to never fire, near enough that any clock can add it to `now`.
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    now + after.min(FAR)
}

/// The text frame of an encoded event.
fn text(event: Bytes) -> Bytes {
    wire::event(&event)
}

fn reply(shared: &Shared, out: &Outbound, event: Bytes) {
    push_or_drop(shared, out, text(event));
}

/// Queues a frame for the client, or closes it as a slow consumer when its queue is full.
fn push_or_drop(shared: &Shared, out: &Outbound, frame: Bytes) {
    if out.push(&frame) == Push::Full {
        shared.hub.slow_consumer(out);
    }
}

fn reply_error(shared: &Shared, out: &Outbound, code: ErrorCode, message: &str) {
    reply_error_for(shared, out, code, message, None);
}

/// Sends an error caused by the message with `id` (when it had one), naming it.
fn reply_error_for(
    shared: &Shared,
    out: &Outbound,
    code: ErrorCode,
    message: &str,
    id: Option<&str>,
) {
    send_error(
        shared,
        out,
        ServerEvent::Error {
            code,
            message,
            id,
            room: None,
        },
    );
}

/// Sends an `error` event (`ServerEvent::Error`) and counts it by code.
fn send_error(shared: &Shared, out: &Outbound, error: ServerEvent<'_>) {
    if let ServerEvent::Error { code, .. } = &error {
        shared
            .metrics
            .errors
            .with_label_values(&[code.as_str()])
            .inc();
    }
    reply(shared, out, error.encode());
}

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The client closed or vanished.
    Peer,
    /// The server asked to close (a close frame is on its way to the client).
    ServerClose,
}

/// After a server-initiated close, keeps reading (and discarding) until the client answers the
/// close frame or a short timeout passes. Closing the socket with unread input would make the
/// kernel send a reset, and the client would lose the close frame and the last events before it.
async fn linger<R>(stream: &mut Reader<R>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let _ = timeout(CLOSE_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(msg)) if msg.is_close() => return,
                Some(Ok(_)) => {}
                // Past a frame it could not take (too big, say) the reader finds no frames any
                // more (it ends): the bytes still coming, the rest of that frame, are discarded
                // raw until the client's end of the connection.
                None | Some(Err(_)) => break,
            }
        }
        let mut discard = [0u8; 4096];
        while matches!(stream.get_mut().read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// What woke the read loop.
enum Wake {
    Close,
    /// The server API asked something of this connection.
    Command(ClientCommand),
    Read(Option<Result<Message, WsError>>),
    Timer,
}

/// What the read loop does next.
enum Step {
    /// Serve this message.
    Serve(Utf8Bytes),
    /// Do what the server API asked.
    Command(ClientCommand),
    /// Read on.
    Next,
    /// Stop reading.
    End(ReadEnd),
}

struct Session {
    shared: Arc<Shared>,
    out: Arc<Outbound>,
    /// What the connection's token grants; `None` when authentication is off (boxed: it is
    /// held for the connection's whole life and is mostly absent).
    identity: Option<Box<Identity>>,
    /// The rooms it is in, and how each keeps its messages (resolved once, at the join).
    rooms: HashMap<String, Option<Keep>>,
    limiter: RateLimiter,
    /// Whether the connection is still in the hub: cleared by `withdraw`. While it is set, the
    /// drop guard (`guard.rs`) takes the connection out of the hub, however the session ends.
    registered: bool,
}

/// What a dropped frame is answered naming.
enum Dropped {
    /// Its message id.
    Id(String),
    /// The room it was a request about.
    Room(String),
}

impl Session {
    /// Registers a new connection with its welcome queued; returns the session, the writer's end
    /// of its queue, and whether it is the client's first connection here and when its channel
    /// is subscribed.
    fn new(
        shared: Arc<Shared>,
        identity: Option<Box<Identity>>,
        client_id: Arc<str>,
    ) -> (Self, OutboundRx, (bool, Ready)) {
        let config = &shared.config;
        let id = shared.hub.next_conn_id();
        let (out, out_rx) = Outbound::new(
            id,
            client_id.clone(),
            config.send_queue_frames,
            config.send_queue_bytes,
        );
        // The welcome is queued first, so it is the first frame the client reads.
        out.push(&text(
            ServerEvent::Welcome {
                client_id: &client_id,
                node: &shared.node_id,
                expires_at: identity.as_ref().map(|i| i.expires_at),
            }
            .encode(),
        ));
        let subscribed = shared.hub.register(out.clone());
        shared.metrics.connections_total.inc();
        debug!(client_id = %client_id, conn = id, "connected");
        let limiter = RateLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
            config.flood_strikes,
            Instant::now(),
        );
        let session = Session {
            shared,
            out,
            identity,
            rooms: HashMap::new(),
            limiter,
            registered: true,
        };
        (session, out_rx, subscribed)
    }

    /// Lingers if the server closed, leaves the rooms and waits for the writer to end.
    ///
    /// Its state is kept small too: every connection allocates it when it ends, and a peak of
    /// clients leaving at once should not cost more than holding them.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of its arguments"
    )]
    fn finish<R>(
        mut self,
        mut stream: Reader<R>,
        end: ReadEnd,
        writer: JoinHandle<()>,
    ) -> impl Future<Output = ()> + Send
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        async move {
            if end == ReadEnd::ServerClose {
                Box::pin(linger(&mut stream)).await;
            }
            self.cleanup().await;

            // Make sure the writer ends (a close asked for earlier, such as the answer to the
            // client's close frame, comes first).
            self.out.close(Closing::Gone);
            let abort = writer.abort_handle();
            if timeout(CLOSE_TIMEOUT * 2, writer).await.is_err() {
                abort.abort();
            }
            debug!(client_id = %self.out.client_id, conn = self.out.id, "disconnected");
        }
    }

    /// Reads and serves the client's messages until it leaves or the connection must close.
    /// (It returns an `async move` block rather than being an `async fn`, which would keep a
    /// second copy of its arguments.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of its arguments"
    )]
    fn read_loop<'a, R>(
        &'a mut self,
        stream: &'a mut Reader<R>,
    ) -> impl Future<Output = ReadEnd> + Send + 'a
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        async move {
            let mut idle_at = deadline_after(Instant::now(), self.shared.config.idle_timeout());
            // One timer for whichever comes first, the idle timeout or the token's expiry.
            let mut timer = pin!(sleep_until(idle_at));
            loop {
                let token_first = {
                    let expiry = self.token_deadline();
                    let wake_at = expiry.map_or(idle_at, |at| at.min(idle_at));
                    if timer.deadline() != wake_at {
                        timer.as_mut().reset(wake_at);
                    }
                    expiry.is_some_and(|at| at <= idle_at)
                };
                let wake = poll_fn(|cx| {
                    if self.out.poll_close(cx).is_ready() {
                        return Poll::Ready(Wake::Close);
                    }
                    if let Some(command) = self.out.next_command() {
                        return Poll::Ready(Wake::Command(command));
                    }
                    if let Poll::Ready(next) = stream.poll_next_unpin(cx) {
                        return Poll::Ready(Wake::Read(next));
                    }
                    timer.as_mut().poll(cx).map(|()| Wake::Timer)
                })
                .await;
                let now = Instant::now();
                if let Wake::Read(_) = wake {
                    idle_at = deadline_after(now, self.shared.config.idle_timeout());
                }
                let frame = match self.on_wake(wake, token_first, now) {
                    Step::Serve(frame) => frame,
                    Step::Command(command) => {
                        Box::pin(self.command(command)).await;
                        continue;
                    }
                    Step::Next => continue,
                    Step::End(end) => return end,
                };
                // Boxed: serving a message may wait on the bus, and that state is needed only
                // meanwhile, not for the connection's whole life.
                Box::pin(self.handle(frame)).await;
            }
        }
    }

    /// What to do about what woke the read loop. (A plain function, so the read result is not
    /// kept in the read loop's state.)
    fn on_wake(&mut self, wake: Wake, token_first: bool, now: Instant) -> Step {
        let next = match wake {
            Wake::Read(next) => next,
            Wake::Close => return Step::End(ReadEnd::ServerClose),
            Wake::Command(command) => return Step::Command(command),
            Wake::Timer if token_first => {
                self.server_close(TOKEN_EXPIRED, "token_expired");
                return Step::End(ReadEnd::ServerClose);
            }
            Wake::Timer => {
                // The client is unresponsive: no point waiting for its close reply.
                self.server_close(IDLE, "idle");
                return Step::End(ReadEnd::Peer);
            }
        };
        match next {
            None => Step::End(ReadEnd::Peer),
            Some(Ok(Message::Close(frame))) => {
                // tungstenite has checked the code (an invalid one reads as 1002).
                let code = frame.map(|f| u16::from(f.code));
                self.out.close(Closing::Answer { code });
                Step::End(ReadEnd::Peer)
            }
            Some(Ok(Message::Ping(payload))) => {
                // Pings count against the rate limit like messages: each answer is a frame
                // queued for the client.
                if self.admit(now) {
                    push_or_drop(&self.shared, &self.out, wire::pong(&payload));
                }
                Step::Next
            }
            Some(Ok(Message::Text(frame))) => {
                if self.admit_text(now, &frame) {
                    Step::Serve(frame)
                } else {
                    Step::Next
                }
            }
            Some(Ok(Message::Binary(_))) => {
                if self.admit(now) {
                    self.error(
                        ErrorCode::BinaryUnsupported,
                        "only JSON text frames are accepted",
                    );
                }
                Step::Next
            }
            Some(Ok(_)) => Step::Next, // pong, raw frame
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                self.server_close(TOO_BIG, "too_big");
                Step::End(ReadEnd::ServerClose)
            }
            Some(Err(WsError::Protocol(_) | WsError::Utf8(_))) => {
                self.server_close(PROTOCOL_ERROR, "protocol");
                Step::End(ReadEnd::Peer)
            }
            Some(Err(e)) => {
                debug!(error = %e, "read failed");
                Step::End(ReadEnd::Peer)
            }
        }
    }

    /// When the connection's token runs out (plus the configured leeway).
    fn token_deadline(&self) -> Option<Instant> {
        let identity = self.identity.as_ref()?;
        let leeway = self.shared.auth.as_ref().map_or(0, |a| a.leeway_secs());
        let left = identity
            .expires_at
            .saturating_add(leeway)
            .saturating_sub(now_secs());
        Some(deadline_after(Instant::now(), Duration::from_secs(left)))
    }

    fn server_close(&self, closing: Closing, reason: &str) {
        if self.out.close(closing) {
            self.shared
                .metrics
                .closes
                .with_label_values(&[reason])
                .inc();
        }
    }

    /// [`Session::admit`] for a text frame: a dropped message with an `id`, or a dropped
    /// request about a room (a join, say), is always answered with a `rate_limited` error
    /// naming the id or the room (its sender must know which ones to send again); a sustained
    /// flood still ends in 1008, which bounds those answers.
    fn admit_text(&mut self, now: Instant, frame: &str) -> bool {
        self.admit_with(now, || {
            frame_message_id(frame)
                .map(Dropped::Id)
                .or_else(|| frame_request_room(frame).map(Dropped::Room))
        })
    }

    /// Applies the rate limit; returns whether to serve the message.
    fn admit(&mut self, now: Instant) -> bool {
        self.admit_with(now, || None)
    }

    fn admit_with(&mut self, now: Instant, named: impl FnOnce() -> Option<Dropped>) -> bool {
        const SLOW_DOWN: &str = "too many messages; slow down";
        match self.limiter.check(now) {
            Verdict::Allow => true,
            Verdict::Limited { notify } => {
                match named() {
                    Some(Dropped::Id(id)) => {
                        self.error_for(ErrorCode::RateLimited, SLOW_DOWN, Some(&id))
                    }
                    Some(Dropped::Room(room)) => {
                        self.error_in(&room, ErrorCode::RateLimited, SLOW_DOWN)
                    }
                    None if notify => self.error(ErrorCode::RateLimited, SLOW_DOWN),
                    None => self
                        .shared
                        .metrics
                        .errors
                        .with_label_values(&[ErrorCode::RateLimited.as_str()])
                        .inc(),
                }
                false
            }
            Verdict::Flood => {
                info!(client_id = %self.out.client_id, "closing flooding client");
                self.server_close(FLOOD, "flood");
                false
            }
        }
    }

    fn error(&self, code: ErrorCode, message: &str) {
        reply_error(&self.shared, &self.out, code, message);
    }

    /// An error caused by the message with `id` (when it had one), naming it.
    fn error_for(&self, code: ErrorCode, message: &str, id: Option<&str>) {
        reply_error_for(&self.shared, &self.out, code, message, id);
    }

    /// An error answering a request about `room` (a join, leave, history or presence request),
    /// naming the room.
    fn error_in(&self, room: &str, code: ErrorCode, message: &str) {
        send_error(
            &self.shared,
            &self.out,
            ServerEvent::Error {
                code,
                message,
                id: None,
                room: Some(room),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_past_the_clock_s_range_is_far_not_now() {
        let now = Instant::now();
        let year = Duration::from_secs(365 * 86_400);
        assert_eq!(
            deadline_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        for after in [Duration::from_secs(u64::MAX), Duration::MAX] {
            assert!(deadline_after(now, after) > now + 20 * year, "{after:?}");
        }
    }
}
