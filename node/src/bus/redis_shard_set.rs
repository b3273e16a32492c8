//! What the subscribers on a Redis Cluster must follow: the wanted channels, the probe
//! channel of each shard, and the connection to each shard's primary.
//!
//! The state apart from the code that drives it (`redis_shards.rs`), which needs the bus's
//! connection state (`redis_conn.rs`) that in turn holds this.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use redis::aio::MultiplexedConnection;
use ringcast_net::redis_target::slot_of;
use tokio::sync::{watch, Mutex};

use super::redis_topology::Topology;

/// The per-shard subscribers and what they must follow.
pub(super) struct Shards {
    pub(super) state: Mutex<State>,
    /// The wanted channels, readable from the connections' push handlers (which cannot wait
    /// for `state`): a pushed `sunsubscribe` for one of these is a slot that moved.
    pub(super) wanted_now: std::sync::Mutex<HashSet<String>>,
    /// Highest failed generation.
    pub(super) failed_tx: watch::Sender<u64>,
    /// Probe channels of the current generation and the last token each gave back.
    pub(super) probes: std::sync::Mutex<HashMap<Vec<u8>, u64>>,
    /// Probe channels are `{BASE:K}` for a K that hashes into the shard's slots.
    pub(super) probe_base: String,
}

pub(super) struct State {
    /// Redis channel names to follow (bounded by the hub's rooms and clients).
    pub(super) wanted: BTreeSet<String>,
    /// The generation whose connections `conns` are, while `live`.
    pub(super) generation: u64,
    pub(super) live: bool,
    pub(super) topology: Topology,
    /// Connections by primary address.
    pub(super) conns: BTreeMap<String, MultiplexedConnection>,
}

pub(super) fn poisoned<T>(e: std::sync::PoisonError<T>) -> T {
    // Plain sets and maps, consistent after any panic.
    e.into_inner()
}

impl Shards {
    /// No connections yet; `wanted` starts with the channels the bus always follows.
    pub(super) fn new(wanted: BTreeSet<String>) -> Self {
        Shards {
            wanted_now: std::sync::Mutex::new(wanted.iter().cloned().collect()),
            state: Mutex::new(State {
                wanted,
                generation: 0,
                live: false,
                topology: Topology::default(),
                conns: BTreeMap::new(),
            }),
            failed_tx: watch::channel(0).0,
            probes: std::sync::Mutex::new(HashMap::new()),
            probe_base: String::new(),
        }
    }

    /// Names the probe channels after `base` (set once, before the supervisor starts).
    pub(super) fn with_probe_base(mut self, base: String) -> Self {
        self.probe_base = base;
        self
    }

    pub(super) fn is_wanted(&self, channel: &[u8]) -> bool {
        let wanted = self.wanted_now.lock().unwrap_or_else(poisoned);
        std::str::from_utf8(channel).is_ok_and(|c| wanted.contains(c))
    }

    /// A probe token came back on `channel`; returns the lowest token every probe channel has
    /// given back, when `channel` is one of them.
    pub(super) fn probe_echoed(&self, channel: &[u8], payload: &[u8]) -> Option<u64> {
        let token: u64 = std::str::from_utf8(payload).ok()?.parse().ok()?;
        let mut probes = self.probes.lock().unwrap_or_else(poisoned);
        let seen = probes.get_mut(channel)?;
        *seen = (*seen).max(token);
        probes.values().min().copied()
    }

    pub(super) fn is_probe(&self, channel: &[u8]) -> bool {
        self.probes
            .lock()
            .unwrap_or_else(poisoned)
            .contains_key(channel)
    }

    pub(super) fn probe_channels(&self) -> Vec<Vec<u8>> {
        self.probes
            .lock()
            .unwrap_or_else(poisoned)
            .keys()
            .cloned()
            .collect()
    }

    /// A channel name for `addr`'s probe: `{BASE:K}` for the first K whose slot it owns.
    pub(super) fn probe_channel(&self, topology: &Topology, addr: &str) -> Option<String> {
        (0..100_000u32)
            .map(|k| format!("{{{}:{k}}}", self.probe_base))
            .find(|name| topology.owner(slot_of(name.as_bytes())) == Some(addr))
    }
}
