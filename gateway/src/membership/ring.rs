//! The hash ring: which node owns a client_id, and in which order the others take over.
//!
//! A [`Ring`] is an immutable snapshot of the members and their health; membership builds a new
//! one on every change and publishes it through a `watch` channel, so the upgrade path only
//! reads. Down nodes stay on the hash ring but are skipped: a client_id then routes to the first
//! healthy node in the ring's replica order — the same node a failed connect fails over to — and
//! returns to its owner once that is healthy again. Only ids of the down node move.
//!
//! The hash is FNV-1a plus a 64-bit finalizer ([`MixHasher`]), deterministic so every gateway
//! with the same members routes an id to the same node. Plain FNV (the crate's default) placed
//! similar ids (`user-1`, `user-2`, …) next to each other, so runs of sequential ids all landed
//! on one node.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use consistent_hash_ring::RingBuilder;

/// A node as the ring knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingNode {
    /// The node id.
    pub id: Arc<str>,
    /// Where to reach it (`host:port`).
    pub addr: Arc<str>,
    /// Relative share of the ring.
    pub weight: usize,
    /// Whether it is in service (health checks pass).
    pub healthy: bool,
}

/// FNV-1a with the murmur3 64-bit finalizer: cheap, deterministic across processes and
/// versions, and well mixed for short similar keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Builds [`MixHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct MixBuildHasher;

impl BuildHasher for MixBuildHasher {
    type Hasher = MixHasher;

    fn build_hasher(&self) -> MixHasher {
        MixHasher::default()
    }
}

/// An immutable snapshot of the ring.
pub struct Ring {
    ring: consistent_hash_ring::Ring<Arc<str>, MixBuildHasher>,
    nodes: HashMap<Arc<str>, RingNode>,
}

impl Ring {
    /// A ring over `nodes`, each with `vnodes × weight` virtual nodes.
    pub fn new(nodes: impl IntoIterator<Item = RingNode>, vnodes: usize) -> Self {
        let vnodes = vnodes.clamp(1, 4096);
        let mut ring = RingBuilder::new(MixBuildHasher).vnodes(vnodes).build();
        let mut by_id = HashMap::new();
        for node in nodes {
            ring.insert_weight(node.id.clone(), vnodes * node.weight.clamp(1, 100));
            by_id.insert(node.id.clone(), node);
        }
        Ring { ring, nodes: by_id }
    }

    /// An empty ring (nothing to route to).
    pub fn empty() -> Self {
        Ring::new([], 1)
    }

    /// Number of healthy nodes (the ones that take clients).
    pub fn len(&self) -> usize {
        self.nodes.values().filter(|n| n.healthy).count()
    }

    /// Whether no node is healthy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The healthy node that serves `client_id`: its owner, or the first healthy replica.
    pub fn owner<'a>(&'a self, client_id: &'a str) -> Option<&'a RingNode> {
        self.healthy_replicas(client_id).next()
    }

    /// Up to `max` healthy nodes for `client_id`: the owner first, then the ring's replica order.
    pub fn candidates(&self, client_id: &str, max: usize) -> Vec<RingNode> {
        self.healthy_replicas(client_id)
            .take(max)
            .cloned()
            .collect()
    }

    fn healthy_replicas<'a>(&'a self, client_id: &'a str) -> impl Iterator<Item = &'a RingNode> {
        self.ring
            .replicas(client_id)
            .filter_map(|id| self.nodes.get(id))
            .filter(|n| n.healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<RingNode> {
        (0..n)
            .map(|i| RingNode {
                id: format!("node-{i}").into(),
                addr: format!("127.0.0.1:{}", 9000 + i).into(),
                weight: 1,
                healthy: true,
            })
            .collect()
    }

    #[test]
    fn same_id_same_node_over_reconnects() {
        let ring = Ring::new(nodes(3), 256);
        let first = ring.owner("alice").map(|n| n.id.clone());
        assert!(first.is_some());
        for _ in 0..10 {
            // Each reconnect reads a freshly built ring, as after a membership refresh.
            let again = Ring::new(nodes(3), 256);
            assert_eq!(again.owner("alice").map(|n| n.id.clone()), first);
        }
    }

    #[test]
    fn ten_thousand_ids_spread_evenly_over_three_nodes() {
        let ring = Ring::new(nodes(3), 256);
        let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
        for i in 0..10_000 {
            let owner = ring.owner(&format!("client-{i}")).map(|n| n.id.clone());
            *counts.entry(owner.expect("owner")).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        let even = 10_000.0 / 3.0;
        for (node, n) in &counts {
            let off = (*n as f64 - even).abs() / even;
            assert!(off <= 0.25, "{node} has {n} of 10000 ids ({counts:?})");
        }
    }

    #[test]
    fn sequential_ids_do_not_cluster() {
        let ring = Ring::new(nodes(3), 256);
        let owners: std::collections::HashSet<Arc<str>> = (0..12)
            .filter_map(|i| ring.owner(&format!("user-{i}")).map(|n| n.id.clone()))
            .collect();
        assert_eq!(
            owners.len(),
            3,
            "12 sequential ids should touch all 3 nodes"
        );
    }

    #[test]
    fn adding_a_fourth_node_moves_about_a_quarter() {
        let three = Ring::new(nodes(3), 256);
        let four = Ring::new(nodes(4), 256);
        let total = 100_000;
        let moved = (0..total)
            .filter(|i| {
                let id = format!("client-{i}");
                three.owner(&id).map(|n| &n.id) != four.owner(&id).map(|n| &n.id)
            })
            .count();
        let n = 4.0;
        let share = moved as f64 / total as f64;
        assert!(
            (0.5 / n..=1.5 / n).contains(&share),
            "moved {moved} of {total}"
        );
        // Every moved id moved to the new node, never between old ones.
        for i in 0..1000 {
            let id = format!("client-{i}");
            let (a, b) = (three.owner(&id), four.owner(&id));
            if a.map(|n| &n.id) != b.map(|n| &n.id) {
                assert_eq!(b.map(|n| &*n.id), Some("node-3"));
            }
        }
    }

    #[test]
    fn a_double_weight_node_owns_about_twice_the_ids() {
        let mut ns = nodes(3);
        ns[0].weight = 2;
        let ring = Ring::new(ns, 256);
        let heavy = (0..20_000)
            .filter(|i| ring.owner(&format!("w-{i}")).map(|n| &*n.id) == Some("node-0"))
            .count();
        // Expected share 2/4 = 10 000 of 20 000.
        assert!((8_000..=12_000).contains(&heavy), "heavy node owns {heavy}");
    }

    #[test]
    fn candidates_start_with_owner_and_are_distinct() {
        let ring = Ring::new(nodes(3), 64);
        let c = ring.candidates("bob", 5);
        assert_eq!(c.len(), 3);
        assert_eq!(Some(&c[0]), ring.owner("bob"));
        assert!(c[0].id != c[1].id && c[1].id != c[2].id && c[0].id != c[2].id);
        assert!(Ring::empty().candidates("bob", 3).is_empty());
        assert!(Ring::empty().owner("bob").is_none());
    }

    #[test]
    fn a_down_owner_hands_only_its_ids_to_the_next_replica() {
        let all = Ring::new(nodes(3), 256);
        let mut down = nodes(3);
        down[0].healthy = false;
        let partial = Ring::new(down, 256);
        assert_eq!(partial.len(), 2);
        for i in 0..2000 {
            let id = format!("c{i}");
            let c = all.candidates(&id, 3);
            let now = partial.owner(&id).map(|n| n.id.clone());
            if &*c[0].id == "node-0" {
                assert_eq!(now, Some(c[1].id.clone()), "{id} goes to its next replica");
            } else {
                assert_eq!(now, Some(c[0].id.clone()), "{id} stays on its owner");
            }
        }
        let mut none = nodes(2);
        none.iter_mut().for_each(|n| n.healthy = false);
        assert!(Ring::new(none, 8).owner("x").is_none());
    }
}
