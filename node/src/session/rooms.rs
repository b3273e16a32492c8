//! A session's rooms: joining (plainly, or from a point in the room's history, which is
//! replayed before the join is acknowledged), leaving, and reading history.
//!
//! A join with `since` puts the connection in the room paused (the hub delivers no live message
//! of the room to it), replays what history holds after `since` page by page, paced by the
//! connection's send queue, and then asks the hub to let it go live after the last offset it
//! was given. If the node delivered past that meanwhile, those are replayed too first, so the
//! seam between replay and live has no gap, no duplicate and no reordering.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringcast_protocol::{ErrorCode, ServerEvent, Since, Target};
use tokio::time::{timeout, Instant};

use super::{reply, text, Session};
use crate::bus::{Channel, HistoryPage, HistoryQuery, Keep};
use crate::history_request::HistoryError;
use crate::wire;

/// Messages fetched per history page while replaying.
const REPLAY_PAGE: usize = 256;
/// Longest wait for a client's send queue to take the next page of a replay.
const REPLAY_STALL: Duration = Duration::from_secs(10);

/// Why a join did not go through.
enum JoinFailed {
    /// The bus could not be reached.
    Bus,
    /// The client did not read its replay within [`REPLAY_STALL`].
    Stalled,
}

impl Session {
    pub(super) async fn join(&mut self, room: &str, since: Option<Result<Since, String>>) {
        self.join_with(room, since, false).await
    }

    /// A join the server API asked for: the backend is trusted past the token's room list.
    pub(super) async fn join_trusted(&mut self, room: &str) {
        self.join_with(room, None, true).await
    }

    async fn join_with(&mut self, room: &str, since: Option<Result<Since, String>>, trusted: bool) {
        if self.rooms.contains_key(room) {
            // Already a member: acknowledge again, to this connection only.
            let joined = self.joined(room, None, None);
            return reply(&self.shared, &self.out, joined);
        }
        if !trusted && !self.may_use_room(room) {
            return self.error_in(
                room,
                ErrorCode::Forbidden,
                "your token does not allow this room",
            );
        }
        if self.rooms.len() >= self.shared.config.max_rooms_per_connection {
            return self.error_in(
                room,
                ErrorCode::TooManyRooms,
                "rooms-per-connection limit reached",
            );
        }
        let since = match since {
            Some(Err(why)) => {
                self.error_in(room, ErrorCode::InvalidSince, &why);
                Some(None)
            }
            Some(Ok(s)) => Some(Some(s)),
            None => None,
        };
        let settings = self.shared.room_options.resolve(room).settings;
        let keep = self.shared.config.keep(&settings);
        let hub = &self.shared.hub;
        let max_members = settings.max_members.map(|n| n as usize);
        let paused = keep.is_some() && since.is_some();
        let joined = if paused {
            hub.join_paused(room, &self.out, max_members)
        } else {
            hub.join(room, &self.out, max_members)
        };
        let Ok(ready) = joined else {
            return self.error_in(
                room,
                ErrorCode::RoomFull,
                "the room has all the members it takes",
            );
        };
        if let Some(ready) = ready {
            if !matches!(
                timeout(self.shared.config.bus_timeout(), ready).await,
                Ok(Ok(()))
            ) {
                hub.leave(room, self.out.id);
                return self.error_in(
                    room,
                    ErrorCode::BusUnavailable,
                    "could not join: bus unavailable",
                );
            }
        }
        // The room's channel is active: everything published from now on reaches this client
        // (or, paused, is held back from it until its replay is done).
        self.rooms.insert(room.to_owned(), keep);
        // With presence, the others hear of a client id's first connection in the room only.
        // They are told through the bus; the joiner's own copy is its ack, queued directly (the
        // echo skips it: a pipelined leave could remove it before the echo).
        let presence = &self.shared.presence;
        let others = settings.announce.then(|| {
            let target = Target::RoomExcept {
                room: room.to_owned(),
                conn: self.out.id,
            };
            (target, self.joined(room, None, None))
        });
        let announce_here = if !self.shared.config.keeps_presence(&settings) {
            others
        } else if presence.writes_behind(settings.announce) {
            // Nobody is told of it: no need to wait for the bus (the module note of presence.rs).
            presence.add_quiet(room, &self.out.client_id);
            None
        } else {
            // The bus announces it with the change, when it was the first.
            let announce = others.as_ref().map(|(target, f)| (target.clone(), f));
            let added = presence.add(&self.shared.publisher, room, &self.out.client_id, announce);
            match timeout(self.shared.config.bus_timeout(), added).await {
                Ok(Ok(_)) => None,
                _ => return self.join_failed(room, JoinFailed::Bus).await,
            }
        };
        if let Some((target, others)) = announce_here {
            let published = self
                .shared
                .publisher
                .publish(Channel::Room(room.to_owned()), target, &others)
                .await;
            if published.is_err() {
                return self.join_failed(room, JoinFailed::Bus).await;
            }
        }
        let Some(keep) = keep else {
            let ack = self.joined(room, since.map(|_| false), None);
            return reply(&self.shared, &self.out, ack);
        };
        let done = match since {
            None => self.ack_plain(room, keep).await,
            Some(since) => self.recover(room, since, keep).await,
        };
        if let Err(why) = done {
            self.join_failed(room, why).await;
        }
    }

    /// A `user_joined` of this connection's client in `room` (the joiner's own copy is its
    /// ack), with where its stream stands when the room keeps history; encoded.
    fn joined(&self, room: &str, recovered: Option<bool>, at: Option<(u64, &str)>) -> Bytes {
        ServerEvent::UserJoined {
            user_id: &self.out.client_id,
            room,
            recovered,
            offset: at.map(|(offset, _)| offset),
            epoch: at.map(|(_, epoch)| epoch),
        }
        .encode()
    }

    /// Leaves a room the join could not complete in, and says why; presence is undone, and
    /// announced when it was the client id's only connection there.
    async fn join_failed(&mut self, room: &str, why: JoinFailed) {
        self.rooms.remove(room);
        self.shared.hub.leave(room, self.out.id);
        let settings = self.shared.room_options.resolve(room).settings;
        let presence = &self.shared.presence;
        let keeps = self.shared.config.keeps_presence(&settings);
        if keeps && presence.writes_behind(settings.announce) {
            presence.remove_quiet(room, &self.out.client_id);
        } else if keeps {
            // The others may have been told of the join: tell them it is undone.
            let me = self.out.client_id.clone();
            let left = ServerEvent::UserLeft { user_id: &me, room }.encode();
            let announce = settings
                .announce
                .then(|| (Target::Room(room.into()), &left));
            let removed = presence.remove(&self.shared.publisher, room, &me, announce);
            let _ = timeout(self.shared.config.bus_timeout(), removed).await;
        }
        match why {
            JoinFailed::Bus => self.error_in(
                room,
                ErrorCode::BusUnavailable,
                "could not join: bus unavailable",
            ),
            JoinFailed::Stalled => self.error_in(
                room,
                ErrorCode::BusUnavailable,
                "could not join: the replay was not read in time",
            ),
        }
    }

    async fn page(
        &self,
        room: &str,
        query: HistoryQuery,
        limit: usize,
    ) -> Result<HistoryPage, JoinFailed> {
        let read =
            self.shared
                .publisher
                .bus()
                .history(room, query, limit, self.shared.config.meta_ttl());
        match timeout(self.shared.config.bus_timeout(), read).await {
            Ok(Ok(page)) => Ok(page),
            _ => Err(JoinFailed::Bus),
        }
    }

    /// A plain join's ack: the room's current top and epoch. Anything numbered after that top
    /// was published after the subscription was active, so it arrives live.
    async fn ack_plain(&self, room: &str, _keep: Keep) -> Result<(), JoinFailed> {
        let page = self.page(room, HistoryQuery::Newest, 0).await?;
        self.shared.hub.note_joined(room, page.top, &page.epoch);
        let ack = self.joined(room, None, Some((page.top, &page.epoch)));
        reply(&self.shared, &self.out, ack);
        Ok(())
    }

    /// Replays history after `since` (when it still holds all of it), then goes live.
    async fn recover(
        &self,
        room: &str,
        since: Option<Since>,
        keep: Keep,
    ) -> Result<(), JoinFailed> {
        let metrics = &self.shared.metrics;
        let first_query = since
            .as_ref()
            .map_or(HistoryQuery::Newest, |s| HistoryQuery::After(s.offset));
        let mut page = self.page(room, first_query, REPLAY_PAGE).await?;
        let epoch: Arc<str> = page.epoch.clone();
        let recoverable = match &since {
            None => false,
            Some(s) if *s.epoch != *epoch => false,
            Some(s) if s.offset > page.top => {
                self.error_in(
                    room,
                    ErrorCode::InvalidSince,
                    "since.offset is beyond the room's last offset",
                );
                false
            }
            Some(s) if s.offset == page.top => true,
            // Everything after `since` must still be kept, and not more than the room keeps.
            Some(s) => {
                page.first.is_some_and(|f| f <= s.offset + 1)
                    && page.top - s.offset <= u64::from(keep.size)
            }
        };
        let mut recovered = recoverable;
        // The last offset this connection has been given.
        let mut cursor = match (&since, recoverable) {
            (Some(s), true) => s.offset,
            _ => page.top,
        };
        if !recoverable {
            page.messages.clear();
        }
        let stall_deadline = Instant::now() + REPLAY_STALL;
        loop {
            let full = page.messages.len() >= REPLAY_PAGE;
            if *page.epoch != *epoch {
                // The room's history was reset while replaying: what follows is live.
                break;
            }
            let mut frames: Vec<Bytes> = Vec::with_capacity(page.messages.len());
            for (offset, frame) in page.messages.drain(..) {
                if offset <= cursor {
                    continue;
                }
                if offset != cursor + 1 {
                    // Trimmed while we paged: some can no longer be replayed.
                    recovered = false;
                }
                frames.push(wire::text(&frame));
                cursor = offset;
            }
            if !frames.is_empty() {
                self.paced_push(&frames, stall_deadline).await?;
                metrics.replayed.inc_by(frames.len() as u64);
            }
            if !full {
                let ack = self.joined(room, Some(recovered), Some((cursor, &epoch)));
                let ack = [text(ack)];
                // Refused when this node delivered past `cursor` meanwhile: replay those too.
                if self
                    .shared
                    .hub
                    .caught_up(room, &self.out, cursor, &epoch, &ack)
                    .is_ok()
                {
                    self.shared.hub.note_joined(room, cursor, &epoch);
                    let outcome = if recovered {
                        "recovered"
                    } else {
                        "not_recovered"
                    };
                    metrics.recoveries.with_label_values(&[outcome]).inc();
                    return Ok(());
                }
            }
            page = self
                .page(room, HistoryQuery::After(cursor), REPLAY_PAGE)
                .await?;
            if page.messages.first().is_some_and(|(o, _)| *o != cursor + 1)
                || (page.messages.is_empty() && page.top > cursor && *page.epoch == *epoch)
            {
                recovered = false;
            }
        }
        // The epoch changed under the replay: go live from the new epoch's top, not recovered
        // (what the client holds is of the old one).
        let ack = self.joined(room, Some(false), Some((page.top, &page.epoch)));
        let ack = [text(ack)];
        let hub = &self.shared.hub;
        if let Err(delivered) = hub.caught_up(room, &self.out, page.top, &page.epoch, &ack) {
            // This node is past that top already; the client reloads anyway (recovered:false).
            let _ = hub.caught_up(room, &self.out, delivered, &page.epoch, &ack);
        }
        metrics
            .recoveries
            .with_label_values(&["not_recovered"])
            .inc();
        Ok(())
    }

    /// Queues `frames` as the client's queue makes room for them, waiting at most until
    /// `deadline` for it to: a replay never overflows the queue (which would close the
    /// connection as a slow consumer).
    async fn paced_push(&self, frames: &[Bytes], deadline: Instant) -> Result<(), JoinFailed> {
        for chunk in frames.chunks(32) {
            let bytes: usize = chunk.iter().map(Bytes::len).sum();
            while !self.out.has_room(chunk.len(), bytes) {
                if self.out.is_closing() || Instant::now() >= deadline {
                    return Err(JoinFailed::Stalled);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for frame in chunk {
                self.out.push(frame);
            }
        }
        Ok(())
    }

    pub(super) async fn leave(&mut self, room: &str) {
        if self.rooms.remove(room).is_none() {
            return self.error_in(room, ErrorCode::NotInRoom, "not a member of that room");
        }
        self.shared.hub.leave(room, self.out.id);
        let me = self.out.client_id.clone();
        let left = ServerEvent::UserLeft { user_id: &me, room }.encode();
        // The leaver is no longer routed to: tell it directly, and the remaining members via the
        // bus when this was the client id's last connection in the room.
        reply(&self.shared, &self.out, left.clone());
        super::handlers::leave_presence(&self.shared, room, &me, Some(left), false).await;
    }

    /// Whether `room` keeps presence (its options, else the node's default).
    pub(super) fn keeps_presence(&self, room: &str) -> bool {
        let settings = self.shared.room_options.resolve(room).settings;
        self.shared.config.keeps_presence(&settings)
    }

    /// `history`: members only; a page after `since`, or the newest messages.
    pub(super) async fn history(
        &mut self,
        room: &str,
        since: Option<Result<Since, String>>,
        limit: usize,
    ) {
        let Some(keep) = self.rooms.get(room).copied() else {
            return self.error_in(
                room,
                ErrorCode::NotInRoom,
                "join the room to read its history",
            );
        };
        let since = match since {
            Some(Err(why)) => return self.error_in(room, ErrorCode::InvalidSince, &why),
            Some(Ok(s)) => Some(s),
            None => None,
        };
        let config = &self.shared.config;
        let answer = crate::history_request::answer(
            self.shared.publisher.bus(),
            room,
            since.as_ref(),
            limit,
            keep.is_some(),
            config.meta_ttl(),
            config.bus_timeout(),
        )
        .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(HistoryError::Bus) => {
                return self.error_in(
                    room,
                    ErrorCode::BusUnavailable,
                    "history unavailable: bus down",
                )
            }
            Err(HistoryError::BeyondTop) => {
                return self.error_in(
                    room,
                    ErrorCode::InvalidSince,
                    "since.offset is beyond the room's last offset",
                )
            }
        };
        reply(&self.shared, &self.out, answer);
    }
}
