//! The node's side of presence: what this node counts (room, client id → connections here),
//! under which instance, and the one place sessions add and remove themselves.
//!
//! The local table is the truth the node can vouch for: after Redis lost its data the node
//! writes it again, after a removal failed it reconciles that entry, and after the node was
//! swept (it froze and survivors removed its clients) it forgets everything and counts under
//! a new instance, so the old connections' removals change nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::bus::presence::{new_instance, Entry};
use crate::bus::{Bus, BusError};
use crate::metrics::Metrics;

/// Most entries waiting for a retry after a failed removal; beyond it they are left to the
/// lease (a node's entries all go when it is swept).
const MAX_DIRTY: usize = 65_536;

type Key = (String, Arc<str>);

struct State {
    instance: Arc<str>,
    local: HashMap<Key, u32>,
    /// Entries whose last write may not have reached the bus.
    dirty: HashSet<Key>,
}

/// What this node counts in presence.
pub struct Tracker {
    bus: Arc<dyn Bus>,
    node_id: Arc<str>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

fn unpoison<T>(e: std::sync::PoisonError<T>) -> T {
    // Each update is a few map operations with nothing that can panic between them.
    e.into_inner()
}

impl Tracker {
    /// A tracker for `node_id` on `bus`, under a fresh instance.
    pub fn new(bus: Arc<dyn Bus>, node_id: Arc<str>, metrics: Arc<Metrics>) -> Self {
        Tracker {
            bus,
            metrics,
            state: Mutex::new(State {
                instance: new_instance(&node_id),
                local: HashMap::new(),
                dirty: HashSet::new(),
            }),
            node_id,
        }
    }

    /// Whether the bus sweeps the presence of nodes that die (Redis: leases).
    pub fn has_leases(&self) -> bool {
        self.bus.presence().has_leases()
    }

    /// Up to `max` members of `room` on every node, with the totals.
    pub async fn list(
        &self,
        room: &str,
        max: usize,
    ) -> Result<crate::bus::presence::PresenceList, BusError> {
        self.bus.presence().list(room, max).await
    }

    /// The instance this node counts under now.
    pub fn instance(&self) -> Arc<str> {
        self.state.lock().unwrap_or_else(unpoison).instance.clone()
    }

    /// One more connection of `client` in `room`; true when it is the client's first there on
    /// any node (announce it).
    pub async fn add(&self, room: &str, client: &Arc<str>) -> Result<bool, BusError> {
        let key = (room.to_owned(), client.clone());
        let instance = {
            let mut state = self.state.lock().unwrap_or_else(unpoison);
            *state.local.entry(key.clone()).or_default() += 1;
            self.metrics.presence_entries.inc();
            state.instance.clone()
        };
        let added = self.bus.presence().add(room, client, &instance).await;
        if added.is_err() {
            // The caller undoes the join; the bus may or may not have counted it.
            let mut state = self.state.lock().unwrap_or_else(unpoison);
            if state.instance == instance {
                if decrement(&mut state.local, &key) {
                    self.metrics.presence_entries.dec();
                }
                mark(&mut state.dirty, key);
            }
        }
        added
    }

    /// One connection fewer; true when it was the client's last one there on any node
    /// (announce it). Nothing for a connection counted under an instance that was swept.
    pub async fn remove(&self, room: &str, client: &Arc<str>) -> Result<bool, BusError> {
        let key = (room.to_owned(), client.clone());
        let instance = {
            let mut state = self.state.lock().unwrap_or_else(unpoison);
            if !decrement(&mut state.local, &key) {
                return Ok(false);
            }
            self.metrics.presence_entries.dec();
            state.instance.clone()
        };
        let removed = self.bus.presence().remove(room, client, &instance).await;
        if removed.is_err() {
            let mut state = self.state.lock().unwrap_or_else(unpoison);
            if state.instance == instance {
                mark(&mut state.dirty, key);
            }
        }
        removed
    }

    /// Stops counting a connection here without telling the bus: a draining node's clients
    /// stay present until they reconnect elsewhere or the node's lease is swept.
    pub fn forget(&self, room: &str, client: &Arc<str>) {
        let key = (room.to_owned(), client.clone());
        if decrement(&mut self.state.lock().unwrap_or_else(unpoison).local, &key) {
            self.metrics.presence_entries.dec();
        }
    }

    /// Everything this node counts, under its instance (to write it again).
    pub fn entries(&self) -> (Arc<str>, Vec<Entry>) {
        let state = self.state.lock().unwrap_or_else(unpoison);
        let entries = state
            .local
            .iter()
            .map(|((room, client), n)| (room.clone(), client.clone(), *n))
            .collect();
        (state.instance.clone(), entries)
    }

    /// Takes the entries waiting for a retry, with what this node counts for each now.
    pub fn take_dirty(&self) -> (Arc<str>, Vec<Entry>) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        let dirty = std::mem::take(&mut state.dirty);
        let entries = dirty
            .into_iter()
            .map(|key| {
                let n = state.local.get(&key).copied().unwrap_or(0);
                (key.0, key.1, n)
            })
            .collect();
        (state.instance.clone(), entries)
    }

    /// Puts entries back for another retry.
    pub fn redirty(&self, instance: &str, entries: Vec<Entry>) {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        if *state.instance == *instance {
            for (room, client, _) in entries {
                mark(&mut state.dirty, (room, client));
            }
        }
    }

    /// This node was swept: forget everything and count under a new instance from now on.
    pub fn swept(&self) -> Arc<str> {
        let mut state = self.state.lock().unwrap_or_else(unpoison);
        state.local.clear();
        state.dirty.clear();
        self.metrics.presence_entries.set(0);
        state.instance = new_instance(&self.node_id);
        state.instance.clone()
    }

    /// Connections counted here.
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(unpoison);
        state.local.values().map(|n| *n as usize).sum()
    }

    /// Whether nothing is counted here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One fewer for `key`; false when there was none.
fn decrement(local: &mut HashMap<Key, u32>, key: &Key) -> bool {
    match local.get_mut(key) {
        None => false,
        Some(n) if *n <= 1 => {
            local.remove(key);
            true
        }
        Some(n) => {
            *n -= 1;
            true
        }
    }
}

fn mark(dirty: &mut HashSet<Key>, key: Key) {
    if dirty.len() < MAX_DIRTY {
        dirty.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBroker;

    #[tokio::test]
    async fn a_swept_node_counts_anew_and_old_removals_change_nothing() {
        let broker = MemoryBroker::new();
        let bus: Arc<dyn Bus> = Arc::new(broker.attach(Arc::new(|_| {})));
        let metrics = Arc::new(Metrics::new());
        let t = Tracker::new(bus.clone(), "n1".into(), metrics.clone());
        let a: Arc<str> = "a".into();
        assert!(t.add("r", &a).await.unwrap());
        assert!(!t.add("r", &a).await.unwrap(), "a second connection");
        assert_eq!(t.len(), 2);
        assert_eq!(metrics.presence_entries.get(), 2);
        let before = t.instance();
        assert_ne!(t.swept(), before);
        assert!(t.is_empty());
        assert!(
            !t.remove("r", &a).await.unwrap(),
            "counted under the swept instance"
        );
        t.forget("r", &a);
        assert!(t.entries().1.is_empty());
    }
}
