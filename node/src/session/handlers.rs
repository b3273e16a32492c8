//! What a session does with each client message (chat, rooms, direct messages, pings, token
//! refresh, which may revoke rooms) and, when the connection ends, leaving its rooms and
//! unregistering.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::client::frame_message_id;
use ringcast_protocol::{ClientMessage, ErrorCode, RevokeReason, ServerEvent, Target};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{reply, reply_error, reply_error_for, Session};
use crate::bus::{dedupe_key, Channel, Published};
use crate::room_options::Post;
use crate::state::Shared;
use ringcast_protocol::stored::chat_head;

/// A text frame that makes the session panic, in the node's own unit tests only (the drop
/// guard's tests inject a panic with it).
#[cfg(test)]
pub(super) const PANIC_FRAME: &str = "{\"type\":\"ping\",\"panic\":\"injected by a test\"}";

impl Session {
    /// Queues a message and returns at once (no bus round trip per message); the client gets
    /// `bus_unavailable` if publishing it fails later and, for a direct message (`direct`),
    /// `target_offline` when no node had the target. A room message with an `id` (`ack`: the
    /// id and room) is acknowledged once published, and its errors name the id.
    async fn publish_queued(
        &self,
        channel: Channel,
        target: Target,
        frame: &Bytes,
        direct: bool,
        ack: Option<(String, String)>,
    ) {
        let (shared, out) = (self.shared.clone(), self.out.clone());
        let then = Box::new(
            move |result: &Result<crate::bus::Published, crate::bus::BusError>| {
                let id = ack.as_ref().map(|(id, _)| id.as_str());
                match result {
                    Err(_) => reply_error_for(
                        &shared,
                        &out,
                        ErrorCode::BusUnavailable,
                        "message bus unavailable; not delivered",
                        id,
                    ),
                    Ok(p) if direct && p.subscribers() == 0 => reply_error(
                        &shared,
                        &out,
                        ErrorCode::TargetOffline,
                        "the target is not connected",
                    ),
                    Ok(_) => {
                        if let Some((id, room)) = &ack {
                            shared.metrics.acks.inc();
                            let event = ServerEvent::Ack {
                                id,
                                room,
                                offset: None,
                                epoch: None,
                            };
                            reply(&shared, &out, event.encode());
                        }
                    }
                }
            },
        );
        self.shared
            .publisher
            .publish_queued(channel, target, frame, then)
            .await;
    }

    /// A room message: checked against the token and the room's posting rights, then stored
    /// (history on) or published. With an `id`, the sender gets an `ack` or an error naming it;
    /// a repeat of a message still in history is acknowledged with the first one's offset and
    /// not stored or delivered again.
    async fn room_message(&self, room: &str, content: &RawValue, id: Option<&str>) {
        let me = self.out.client_id.clone();
        if !self.may_use_room(room) {
            return self.error_for(
                ErrorCode::Forbidden,
                "your token does not allow this room",
                id,
            );
        }
        // A member's room keeps what the join resolved; anyone else's is resolved now.
        let keep = match self.rooms.get(room) {
            Some(keep) => *keep,
            None => {
                let settings = self.shared.room_options.resolve(room).settings;
                if settings.post != Post::Anyone {
                    return self.error_for(
                        ErrorCode::NotInRoom,
                        "join the room before posting to it",
                        id,
                    );
                }
                self.shared.config.keep(&settings)
            }
        };
        let Some(keep) = keep else {
            let frame = ServerEvent::Chat {
                from: &me,
                room: Some(room),
                content,
                id,
            }
            .encode();
            let ack = id.map(|id| (id.to_owned(), room.to_owned()));
            let (channel, target) = (Channel::Room(room.into()), Target::Room(room.into()));
            return self
                .publish_queued(channel, target, &frame, false, ack)
                .await;
        };
        let head = chat_head(&me, room, content, id);
        let (shared, out) = (self.shared.clone(), self.out.clone());
        let ack = id.map(|id| (id.to_owned(), room.to_owned()));
        let then: crate::publisher::Then = Box::new(move |result| {
            let id = ack.as_ref().map(|(id, _)| id.as_str());
            match (result, &ack) {
                (Err(_), _) => reply_error_for(
                    &shared,
                    &out,
                    ErrorCode::BusUnavailable,
                    "message bus unavailable; not stored, not delivered",
                    id,
                ),
                (Ok(Published::Stored(stored)), Some((id, room))) => {
                    shared.metrics.acks.inc();
                    if stored.duplicate {
                        shared.metrics.deduped.inc();
                    }
                    let event = ServerEvent::Ack {
                        id,
                        room,
                        offset: Some(stored.offset),
                        epoch: Some(&stored.epoch),
                    };
                    reply(&shared, &out, event.encode());
                }
                (Ok(_), _) => {}
            }
        });
        let dedupe = id.map(|id| dedupe_key(&me, id));
        self.shared
            .publisher
            .publish_stored(room, head, keep, dedupe, then)
            .await
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
                let id = frame_message_id(frame.as_str());
                return self.error_for(e.code(), &e.to_string(), id.as_deref());
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
                    id: None,
                }
                .encode();
                self.publish_queued(
                    Channel::Broadcast,
                    Target::AllExcept(Some(me.to_string())),
                    &frame,
                    false,
                    None,
                )
                .await;
            }
            ClientMessage::JoinRoom { room, since } => self.join(&room, since).await,
            ClientMessage::History { room, since, limit } => {
                self.history(&room, since, limit).await
            }
            ClientMessage::LeaveRoom { room } => self.leave(&room).await,
            ClientMessage::Presence { room } => self.presence(&room, false).await,
            ClientMessage::PresenceStats { room } => self.presence(&room, true).await,
            ClientMessage::RoomMessage { room, content, id } => {
                self.room_message(&room, content, id.as_deref()).await
            }
            ClientMessage::DirectMessage { target, content } => {
                let frame = ServerEvent::DirectMessage { from: &me, content }.encode();
                let channel = Channel::Client(target.to_string());
                let target = Target::Client(target.into_owned());
                self.publish_queued(channel, target, &frame, true, None)
                    .await;
            }
            ClientMessage::Ping => reply(&self.shared, &self.out, ServerEvent::Pong.encode()),
            ClientMessage::Pong => {}
            ClientMessage::Refresh { token } => self.refresh(&token).await,
        }
    }

    pub(super) fn may_use_room(&self, room: &str) -> bool {
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
            .keys()
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
        let rooms: HashSet<String> = std::mem::take(&mut self.rooms).into_keys().collect();
        for room in &rooms {
            self.shared.hub.leave(room, self.out.id);
        }
        let last = self.shared.hub.unregister(&self.out);
        self.registered = false;
        (rooms, last)
    }
}

/// `me` has one connection fewer in `room` here: it leaves the room's presence, and the room
/// hears `user_left` when it announces — with presence when this was the client id's last
/// connection anywhere (the bus publishes it with the change; if the bus failed, the presence
/// retry does), without presence every time. `frame`: the `user_left` when the caller has it
/// encoded already. With `keep_for_sweep` (a draining node, presence with leases) the node
/// only stops counting it.
pub(super) async fn leave_presence(
    shared: &Shared,
    room: &str,
    me: &Arc<str>,
    frame: Option<Bytes>,
    keep_for_sweep: bool,
) {
    let settings = shared.room_options.resolve(room).settings;
    let left = || frame.unwrap_or_else(|| ServerEvent::UserLeft { user_id: me, room }.encode());
    let presence = &shared.presence;
    if shared.config.keeps_presence(&settings) {
        if keep_for_sweep {
            presence.forget(room, me);
        } else if presence.writes_behind(settings.announce) {
            presence.remove_quiet(room, me);
        } else {
            let left = settings.announce.then(left);
            let announce = left.as_ref().map(|f| (Target::Room(room.to_owned()), f));
            let _ = presence.remove(&shared.publisher, room, me, announce).await;
        }
        return;
    }
    if settings.announce {
        let (channel, target) = (
            Channel::Room(room.to_owned()),
            Target::Room(room.to_owned()),
        );
        let _ = shared.publisher.publish(channel, target, &left()).await;
    }
}

/// Takes `me` out of the presence of `rooms` and publishes `user_left` to each that announces
/// (room options) where this was its last connection anywhere (with presence; every time
/// without) and, when `last`, `user_disconnected` (with `--announce-connections`): `me` is gone
/// from this node. While the node drains, presence with leases keeps its clients: one that
/// reconnects elsewhere is never announced gone, and the others go when the lease is swept.
pub(super) async fn announce_gone(
    shared: Arc<Shared>,
    me: Arc<str>,
    rooms: HashSet<String>,
    last: bool,
) {
    let keep_for_sweep = shared.drain.is_draining() && shared.presence.has_leases();
    for room in rooms {
        Box::pin(leave_presence(&shared, &room, &me, None, keep_for_sweep)).await;
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
