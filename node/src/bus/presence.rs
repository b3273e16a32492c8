//! Presence on the bus: which client ids have connections in a room, across every node, and the
//! node leases that let survivors remove a dead node's clients.
//!
//! Each node process counts under an *instance* id (its node id plus a random suffix, new after
//! it was swept), so what a node that froze and woke up writes never mixes with what was
//! already removed for it. A room's presence keeps, per client id, its connections in all and
//! per instance; adding the first connection anywhere and removing the last one anywhere are
//! what the node announces (`user_joined` / `user_left` per client id).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::BusError;

/// Who is in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceList {
    /// Client ids, at most the asked-for number, each once.
    pub members: Vec<String>,
    /// Client ids in all.
    pub clients: u64,
    /// Connections in all.
    pub connections: u64,
}

/// What renewing a node's lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was live and is renewed.
    Held,
    /// There was no lease (the first one, or Redis lost it): it is taken now, and what the node
    /// counts must be written again ([`Presence::resync`]).
    Taken,
    /// Another node swept this instance: its clients are no longer counted anywhere.
    Swept,
}

/// What writing an entry again changed for its client id in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It has no connection there anywhere now (announce `user_left`).
    Gone,
    /// It had none and has one now (announce `user_joined`).
    Appeared,
}

/// One (room, client id, connections) a node counts, for [`Presence::resync`].
pub type Entry = (String, Arc<str>, u32);

/// Presence storage. The in-memory bus keeps it in the process and has no leases (its nodes
/// share one process: none dies alone).
#[async_trait]
pub trait Presence: Send + Sync {
    /// One more connection of `client` in `room` on `instance`; true when it is the client's
    /// first connection there anywhere.
    async fn add(&self, room: &str, client: &str, instance: &str) -> Result<bool, BusError>;

    /// One connection fewer; true when it was the client's last one there anywhere. A removal
    /// for an instance that was swept meanwhile changes nothing and says false.
    async fn remove(&self, room: &str, client: &str, instance: &str) -> Result<bool, BusError>;

    /// Up to `max` members of `room`, with the totals.
    async fn list(&self, room: &str, max: usize) -> Result<PresenceList, BusError>;

    /// Rooms with presence on some live node, with their client ids counted: up to `max`, and
    /// whether more were left out.
    async fn rooms(&self, max: usize) -> Result<(Vec<(String, u64)>, bool), BusError>;

    /// Whether nodes hold leases that survivors sweep ([`Presence::renew`] and the rest work).
    fn has_leases(&self) -> bool {
        false
    }

    /// Renews `instance`'s lease for `ttl`, noting the node's `connections`.
    async fn renew(
        &self,
        _instance: &str,
        _ttl: Duration,
        _connections: usize,
    ) -> Result<Renewal, BusError> {
        Ok(Renewal::Held)
    }

    /// The live node instances and the connections each noted at its last renewal (none
    /// without leases).
    async fn nodes(&self) -> Result<Vec<(String, u64)>, BusError> {
        Ok(Vec::new())
    }

    /// Writes what `instance` counts again, as absolute numbers (after [`Renewal::Taken`], or
    /// for entries whose last write failed). Returns the indexes of the entries whose client
    /// this left with no connection anywhere, or gave its first one (to announce).
    async fn resync(
        &self,
        _instance: &str,
        _entries: &[Entry],
    ) -> Result<Vec<(usize, Change)>, BusError> {
        Ok(Vec::new())
    }

    /// Writes entries of rooms that do not announce as absolute numbers, as [`Presence::resync`]
    /// does, without finding out what to announce (so it can cost less per entry).
    async fn write_quiet(&self, instance: &str, entries: &[Entry]) -> Result<(), BusError> {
        self.resync(instance, entries).await.map(|_| ())
    }

    /// Forgets which rooms this node knows to be on its instance's room list, so the next
    /// joins list them again: called after each full pass over the list, so a room taken off
    /// it by anything the node did not see is listed again within a pass.
    fn relist(&self) {}

    /// A page of the rooms `instance` lists (`SSCAN` from `cursor`; 0 starts, a returned 0
    /// ends).
    async fn listed_rooms(
        &self,
        _instance: &str,
        _cursor: u64,
    ) -> Result<(u64, Vec<String>), BusError> {
        Ok((0, Vec::new()))
    }

    /// Takes `rooms` off `instance`'s list (it counts nothing there any more).
    async fn unlist_rooms(&self, _instance: &str, _rooms: &[String]) -> Result<(), BusError> {
        Ok(())
    }

    /// Removes every connection `instance` counted, in every room, without a claim (the node's
    /// own instance); `finished`: it is done with (swept), so its lease and index entry go too.
    /// Returns, per room, the client ids left with none.
    async fn purge(
        &self,
        _instance: &str,
        _finished: bool,
    ) -> Result<Vec<(String, Vec<String>)>, BusError> {
        Ok(Vec::new())
    }

    /// Of `ids`, those with no connection in `room` on any node now (a `user_left` noted a while
    /// ago is still true for them). Without leases nothing is noted, and all are.
    async fn absent(&self, _room: &str, ids: &[String]) -> Result<Vec<String>, BusError> {
        Ok(ids.to_vec())
    }

    /// Instances whose lease ran out, at most `limit`.
    async fn expired(&self, _limit: usize) -> Result<Vec<String>, BusError> {
        Ok(Vec::new())
    }

    /// Sweeps `dead` if this caller wins the claim (`by` names it): removes its connections from
    /// every room and returns, per room, the client ids left with no connection anywhere. `None`
    /// when the lease is live again or another node sweeps.
    async fn sweep(
        &self,
        _dead: &str,
        _by: &str,
    ) -> Result<Option<Vec<(String, Vec<String>)>>, BusError> {
        Ok(None)
    }
}

/// A node instance id: the node id and a random suffix, so a process that was swept (or a
/// restarted one) never counts under the name whose connections were removed.
pub fn new_instance(node_id: &str) -> Arc<str> {
    format!("{node_id}.{:08x}", rand::random::<u32>()).into()
}
