//! What a session does with each client message (chat, rooms, direct messages, pings, token
//! refresh, which may revoke rooms) and, when the connection ends, leaving its rooms and
//! unregistering.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::{ClientMessage, ErrorCode, RevokeReason, ServerEvent, Target};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{reply, reply_error, Session};
use crate::bus::Channel;
use crate::room_options::Post;
use crate::state::Shared;

/// A text frame that makes the session panic, in the node's own unit tests only (the drop
/// guard's tests inject a panic with it).
#[cfg(test)]
pub(super) const PANIC_FRAME: &str = "{\"type\":\"ping\",\"panic\":\"injected by a test\"}";

impl Session {
    async fn publish(&self, channel: Channel, target: Target, frame: &Bytes) -> Option<usize> {
        match self.shared.publisher.publish(channel, target, frame).await {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    ErrorCode::BusUnavailable,
                    "message bus unavailable; not delivered",
                );
                None
            }
        }
    }

    /// Queues a message and returns at once (no bus round trip per message); the client gets
    /// `bus_unavailable` if publishing it fails later and, for a direct message (`direct`),
    /// `target_offline` when no node had the target.
    async fn publish_queued(&self, channel: Channel, target: Target, frame: &Bytes, direct: bool) {
        let (shared, out) = (self.shared.clone(), self.out.clone());
        let then = Box::new(
            move |result: &Result<usize, crate::bus::BusError>| match result {
                Err(_) => reply_error(
                    &shared,
                    &out,
                    ErrorCode::BusUnavailable,
                    "message bus unavailable; not delivered",
                ),
                Ok(0) if direct => reply_error(
                    &shared,
                    &out,
                    ErrorCode::TargetOffline,
                    "the target is not connected",
                ),
                Ok(_) => {}
            },
        );
        self.shared
            .publisher
            .publish_queued(channel, target, frame, then)
            .await;
    }

    pub(super) async fn handle(&mut self, frame: Utf8Bytes) {
        #[cfg(test)]
        if frame.as_str() == PANIC_FRAME {
            panic!("a panic injected by a test");
        }
        let msg = match ClientMessage::parse(frame.as_str()) {
            Ok(m) => m,
            Err(e) => {
                self.shared
                    .metrics
                    .messages_in
                    .with_label_values(&["invalid"])
                    .inc();
                return self.error(e.code(), &e.to_string());
            }
        };
        self.shared
            .metrics
            .messages_in
            .with_label_values(&[msg.kind()])
            .inc();
        let me = self.out.client_id.clone();
        match msg {
            ClientMessage::Chat { content } => {
                if self.identity.as_ref().is_some_and(|i| !i.may_chat()) {
                    return self.error(ErrorCode::Forbidden, "your token does not allow chat");
                }
                let frame = ServerEvent::Chat {
                    from: &me,
                    room: None,
                    content,
                }
                .encode();
                self.publish_queued(
                    Channel::Broadcast,
                    Target::AllExcept(Some(me.to_string())),
                    &frame,
                    false,
                )
                .await;
            }
            ClientMessage::JoinRoom { room } => self.join(&room).await,
            ClientMessage::LeaveRoom { room } => self.leave(&room).await,
            ClientMessage::RoomMessage { room, content } => {
                if !self.may_use_room(&room) {
                    return self.error(ErrorCode::Forbidden, "your token does not allow this room");
                }
                if !self.rooms.contains(room.as_ref())
                    && self.shared.room_options.resolve(&room).settings.post != Post::Anyone
                {
                    return self.error(ErrorCode::NotInRoom, "join the room before posting to it");
                }
                let frame = ServerEvent::Chat {
                    from: &me,
                    room: Some(&room),
                    content,
                }
                .encode();
                self.publish_queued(
                    Channel::Room(room.to_string()),
                    Target::Room(room.into_owned()),
                    &frame,
                    false,
                )
                .await;
            }
            ClientMessage::DirectMessage { target, content } => {
                let frame = ServerEvent::DirectMessage { from: &me, content }.encode();
                let channel = Channel::Client(target.to_string());
                self.publish_queued(channel, Target::Client(target.into_owned()), &frame, true)
                    .await;
            }
            ClientMessage::Ping => reply(&self.shared, &self.out, ServerEvent::Pong.encode()),
            ClientMessage::Pong => {}
            ClientMessage::Refresh { token } => self.refresh(&token).await,
        }
    }

    fn may_use_room(&self, room: &str) -> bool {
        self.identity.as_ref().is_none_or(|i| i.may_use_room(room))
    }

    /// Replaces the connection's token with a fresh one for the same subject. Its permissions
    /// replace the old ones at once: rooms it no longer allows are left first (`room_revoked`),
    /// then `token_refreshed` confirms; `chat` is checked against the newest token on each send.
    async fn refresh(&mut self, token: &str) {
        let Some(auth) = &self.shared.auth else {
            return self.error(
                ErrorCode::InvalidToken,
                "authentication is not enabled here",
            );
        };
        match auth.validate(token) {
            Ok(identity) if identity.sub == *self.out.client_id => {
                let expires_at = identity.expires_at;
                self.identity = Some(Box::new(identity));
                self.revoke_rooms().await;
                reply(
                    &self.shared,
                    &self.out,
                    ServerEvent::TokenRefreshed { expires_at }.encode(),
                );
            }
            Ok(_) => self.error(
                ErrorCode::Forbidden,
                "a refreshed token must have the same subject",
            ),
            Err(e) => self.error(ErrorCode::InvalidToken, &e.to_string()),
        }
    }

    /// Leaves every joined room the current token does not allow: the client gets
    /// `room_revoked`, the room's other members `user_left`.
    async fn revoke_rooms(&mut self) {
        let revoked: HashSet<String> = self
            .rooms
            .iter()
            .filter(|room| !self.may_use_room(room))
            .cloned()
            .collect();
        if revoked.is_empty() {
            return;
        }
        for room in &revoked {
            self.rooms.remove(room);
            // Out of the room before the client is told: nothing of the room follows the event.
            self.shared.hub.leave(room, self.out.id);
            let event = ServerEvent::RoomRevoked {
                room,
                reason: RevokeReason::Token,
            };
            reply(&self.shared, &self.out, event.encode());
        }
        // The other members learn it as for any leave; the connection itself stays.
        let (shared, me) = (self.shared.clone(), self.out.client_id.clone());
        Box::pin(announce_gone(shared, me, revoked, false)).await;
    }

    async fn join(&mut self, room: &str) {
        let me = self.out.client_id.clone();
        let joined = ServerEvent::UserJoined { user_id: &me, room }.encode();
        if self.rooms.contains(room) {
            // Already a member: acknowledge again, to this connection only.
            return reply(&self.shared, &self.out, joined);
        }
        if !self.may_use_room(room) {
            return self.error(ErrorCode::Forbidden, "your token does not allow this room");
        }
        if self.rooms.len() >= self.shared.config.max_rooms_per_connection {
            return self.error(
                ErrorCode::TooManyRooms,
                "rooms-per-connection limit reached",
            );
        }
        let settings = self.shared.room_options.resolve(room).settings;
        let hub = &self.shared.hub;
        let max_members = settings.max_members.map(|n| n as usize);
        let Ok(ready) = hub.join(room, &self.out, max_members) else {
            return self.error(ErrorCode::RoomFull, "the room has all the members it takes");
        };
        if let Some(ready) = ready {
            if !matches!(
                timeout(self.shared.config.bus_timeout(), ready).await,
                Ok(Ok(()))
            ) {
                hub.leave(room, self.out.id);
                return self.error(ErrorCode::BusUnavailable, "could not join: bus unavailable");
            }
        }
        // The room's channel is active: everything published from now on reaches this client,
        // so its own user_joined doubles as "ready". The joiner gets it queued directly; the bus
        // echo skips it, since a pipelined leave may have removed it before the echo arrives.
        self.rooms.insert(room.to_owned());
        if !settings.announce {
            // Nobody else is told; the joiner's ack alone.
            return reply(&self.shared, &self.out, joined);
        }
        let target = Target::RoomExcept {
            room: room.to_owned(),
            conn: self.out.id,
        };
        match self
            .publish(Channel::Room(room.to_owned()), target, &joined)
            .await
        {
            Some(_) => reply(&self.shared, &self.out, joined),
            None => {
                self.rooms.remove(room);
                hub.leave(room, self.out.id);
            }
        }
    }

    async fn leave(&mut self, room: &str) {
        if !self.rooms.remove(room) {
            return self.error(ErrorCode::NotInRoom, "not a member of that room");
        }
        self.shared.hub.leave(room, self.out.id);
        let me = self.out.client_id.clone();
        let left = ServerEvent::UserLeft { user_id: &me, room }.encode();
        // The leaver is no longer routed to: tell it directly, and the remaining members via the bus.
        reply(&self.shared, &self.out, left.clone());
        if !self.shared.room_options.resolve(room).settings.announce {
            return;
        }
        let _ = self
            .shared
            .publisher
            .publish(
                Channel::Room(room.to_owned()),
                Target::Room(room.to_owned()),
                &left,
            )
            .await;
    }

    /// Leaves every room and unregisters the connection, then tells the rooms' members and,
    /// for the client's last connection here, everyone.
    pub(super) async fn cleanup(&mut self) {
        let (rooms, last) = self.withdraw();
        // Boxed: most connections end without any publish (see `finish`).
        Box::pin(announce_gone(
            self.shared.clone(),
            self.out.client_id.clone(),
            rooms,
            last,
        ))
        .await;
    }

    /// Takes the connection out of the hub: out of its rooms, then unregistered, all at once
    /// (nothing here awaits, so no cancellation can stop half-way). Returns the rooms it was in
    /// and whether it was its client id's last connection here. Called once: by `cleanup`, or
    /// by the drop guard when the session never got there.
    pub(super) fn withdraw(&mut self) -> (HashSet<String>, bool) {
        let rooms = std::mem::take(&mut self.rooms);
        for room in &rooms {
            self.shared.hub.leave(room, self.out.id);
        }
        let last = self.shared.hub.unregister(&self.out);
        self.registered = false;
        (rooms, last)
    }
}

/// Publishes `user_left` to each of `rooms` that announces (room options) and, when `last`, `user_disconnected` (with
/// `--announce-connections`): `me` is gone from this node.
pub(super) async fn announce_gone(
    shared: Arc<Shared>,
    me: Arc<str>,
    rooms: HashSet<String>,
    last: bool,
) {
    for room in rooms {
        if !shared.room_options.resolve(&room).settings.announce {
            continue;
        }
        let left = ServerEvent::UserLeft {
            user_id: &me,
            room: &room,
        }
        .encode();
        let _ = Box::pin(shared.publisher.publish(
            Channel::Room(room.clone()),
            Target::Room(room),
            &left,
        ))
        .await;
    }
    if last && shared.config.announce_connections {
        let frame = ServerEvent::UserDisconnected { user_id: &me }.encode();
        let _ = Box::pin(shared.publisher.publish(
            Channel::Broadcast,
            Target::AllExcept(Some(me.to_string())),
            &frame,
        ))
        .await;
    }
}
