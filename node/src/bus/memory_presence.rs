//! Presence for the in-memory bus: per room, per client id, its connections, in this process.
//!
//! Instances do not matter here (every node of the broker lives in this process and none dies
//! alone), so there are no leases and nothing to sweep; the counts are the same as on Redis.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::presence::{Presence, PresenceList};
use super::BusError;

/// Room → client id → connections.
#[derive(Default)]
pub(super) struct MemoryPresence {
    rooms: Mutex<HashMap<String, HashMap<String, u64>>>,
}

fn unpoison<T>(e: std::sync::PoisonError<T>) -> T {
    // Every update is one map operation: a panic elsewhere cannot leave one half done.
    e.into_inner()
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn add(&self, room: &str, client: &str, _instance: &str) -> Result<bool, BusError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(unpoison);
        let n = rooms
            .entry(room.to_owned())
            .or_default()
            .entry(client.to_owned())
            .or_default();
        *n += 1;
        Ok(*n == 1)
    }

    async fn remove(&self, room: &str, client: &str, _instance: &str) -> Result<bool, BusError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(unpoison);
        let Some(members) = rooms.get_mut(room) else {
            return Ok(false);
        };
        let Some(n) = members.get_mut(client) else {
            return Ok(false);
        };
        *n -= 1;
        if *n > 0 {
            return Ok(false);
        }
        members.remove(client);
        if members.is_empty() {
            rooms.remove(room);
        }
        Ok(true)
    }

    async fn rooms(&self, max: usize) -> Result<(Vec<(String, u64)>, bool), BusError> {
        let rooms = self.rooms.lock().unwrap_or_else(unpoison);
        let mut all: Vec<(String, u64)> = rooms
            .iter()
            .map(|(room, members)| (room.clone(), members.len() as u64))
            .collect();
        all.sort();
        let more = all.len() > max;
        all.truncate(max);
        Ok((all, more))
    }

    async fn list(&self, room: &str, max: usize) -> Result<PresenceList, BusError> {
        let rooms = self.rooms.lock().unwrap_or_else(unpoison);
        let Some(members) = rooms.get(room) else {
            return Ok(PresenceList {
                members: Vec::new(),
                clients: 0,
                connections: 0,
            });
        };
        Ok(PresenceList {
            members: members.keys().take(max).cloned().collect(),
            clients: members.len() as u64,
            connections: members.values().sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_and_last_connection_of_a_client_id() {
        let p = MemoryPresence::default();
        assert!(p.add("r", "a", "n1").await.unwrap());
        assert!(!p.add("r", "a", "n2").await.unwrap(), "a second tab");
        assert!(p.add("r", "b", "n1").await.unwrap());
        let list = p.list("r", 10).await.unwrap();
        assert_eq!((list.clients, list.connections), (2, 3));
        assert!(!p.remove("r", "a", "n1").await.unwrap());
        assert!(p.remove("r", "a", "n2").await.unwrap(), "its last one");
        assert!(
            !p.remove("r", "a", "n2").await.unwrap(),
            "nothing left to remove"
        );
        assert_eq!(p.list("r", 0).await.unwrap().members, Vec::<String>::new());
        assert!(p.remove("r", "b", "n1").await.unwrap());
        assert!(
            p.rooms.lock().unwrap().is_empty(),
            "nothing kept for empty rooms"
        );
    }
}
