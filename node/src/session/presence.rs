//! A session's presence queries: who is in a room (`presence`) and how many (`presence_stats`),
//! across every node.

use ringcast_protocol::{ErrorCode, ServerEvent};
use tokio::time::timeout;

use super::{reply, Session};

impl Session {
    /// Answers `presence` (or `presence_stats` when `stats`) for a member of `room`.
    pub(super) async fn presence(&mut self, room: &str, stats: bool) {
        if !self.may_use_room(room) {
            return self.error_in(
                room,
                ErrorCode::Forbidden,
                "your token does not allow this room",
            );
        }
        if !self.rooms.contains_key(room) {
            return self.error_in(
                room,
                ErrorCode::NotInRoom,
                "join the room to ask who is in it",
            );
        }
        if !self.keeps_presence(room) {
            return self.error_in(
                room,
                ErrorCode::PresenceDisabled,
                "this room keeps no presence (presence=off)",
            );
        }
        let max = if stats {
            0
        } else {
            self.shared.config.presence_max_members as usize
        };
        let wait = self.shared.config.bus_timeout() / 2;
        let list = self.shared.presence.list(room, max, wait);
        let Ok(Ok(list)) = timeout(self.shared.config.bus_timeout(), list).await else {
            return self.error_in(
                room,
                ErrorCode::BusUnavailable,
                "presence unavailable: bus down",
            );
        };
        let event = if stats {
            ServerEvent::PresenceStats {
                room,
                clients: list.clients,
                connections: list.connections,
            }
        } else {
            ServerEvent::Presence {
                room,
                members: list.members.iter().map(String::as_str).collect(),
                count: list.clients,
                truncated: (list.members.len() as u64) < list.clients,
            }
        };
        reply(&self.shared, &self.out, event.encode());
    }
}
