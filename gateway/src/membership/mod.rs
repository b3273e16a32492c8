//! Who the nodes are and whether they are healthy; every change publishes a new [`Ring`].
//!
//! Members come from three sources — static flags, the Redis registry, the embedded node — and
//! carry a health state fed by active checks and passive marks. The table sits behind a std
//! mutex that is never held across `.await`; readers on the upgrade path only touch the
//! published `Arc<Ring>` in a `watch` channel.
//!
//! The folder holds everything that decides which nodes serve: this table, the [`ring`] it
//! publishes, and the two feeds that change it — active [`health`] checks and the Redis
//! [`registry`] of nodes that advertise themselves.

pub mod health;
pub mod registry;
pub mod ring;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::membership::ring::{Ring, RingNode};
use crate::metrics::Metrics;

/// Where a member came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A `--node` flag.
    Static,
    /// The Redis registry (a node's `--advertise` heartbeat).
    Redis,
    /// The gateway's own in-process node.
    Embedded,
}

/// One member as `/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Node id.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// Ring weight.
    pub weight: usize,
    /// Where it came from.
    pub source: Source,
    /// Whether it takes clients.
    pub healthy: bool,
    /// Consecutive failed checks.
    pub consecutive_failures: u32,
    /// Open tunnels to it.
    pub open_connections: i64,
    /// The hash of its room options, from its last passed health check.
    pub room_options: Option<String>,
}

#[derive(Debug, Clone)]
struct Member {
    addr: Arc<str>,
    weight: usize,
    source: Source,
    healthy: bool,
    passes: u32,
    failures: u32,
    room_options: Option<Arc<str>>,
}

/// Health thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Consecutive failures before a node is marked down.
    pub unhealthy: u32,
    /// Consecutive passes before a down node is marked up.
    pub healthy: u32,
}

/// The member table and the ring built from it.
pub struct Membership {
    members: Mutex<BTreeMap<Arc<str>, Member>>,
    ring_tx: watch::Sender<Arc<Ring>>,
    vnodes: usize,
    thresholds: Thresholds,
    metrics: Arc<Metrics>,
    /// Whether the healthy members disagree on their room options (last computed).
    options_mismatch: AtomicBool,
}

impl Membership {
    /// An empty membership.
    pub fn new(vnodes: usize, thresholds: Thresholds, metrics: Arc<Metrics>) -> Self {
        let (ring_tx, _) = watch::channel(Arc::new(Ring::empty()));
        Membership {
            members: Mutex::new(BTreeMap::new()),
            ring_tx,
            vnodes,
            thresholds,
            metrics,
            options_mismatch: AtomicBool::new(false),
        }
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring_tx.borrow().clone()
    }

    /// A receiver that sees every new ring.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Ring>> {
        self.ring_tx.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Member>> {
        // A panic while holding this lock leaves a consistent map (every update is one insert
        // or field write), so a poisoned lock is still safe to use.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (or updates the address of) one member; new members start healthy.
    pub fn upsert(&self, id: &str, addr: &str, weight: usize, source: Source) {
        let mut members = self.lock();
        upsert_locked(&mut members, id, addr, weight, source);
        self.publish(&members);
    }

    /// Makes the members of `source` exactly `wanted` (id, addr, weight): adds, updates, removes.
    /// Members of other sources are left alone (a static node is never replaced by Redis).
    pub fn sync_source(&self, source: Source, wanted: &[(String, String, usize)]) {
        let mut members = self.lock();
        // Entries shadowed by a member of another source are ignored outright.
        let wanted: Vec<&(String, String, usize)> = wanted
            .iter()
            .filter(|(id, _, _)| members.get(id.as_str()).is_none_or(|m| m.source == source))
            .collect();
        let before: Vec<(Arc<str>, Arc<str>)> = members
            .iter()
            .filter(|(_, m)| m.source == source)
            .map(|(id, m)| (id.clone(), m.addr.clone()))
            .collect();
        let unchanged = before.len() == wanted.len()
            && wanted.iter().all(|(id, addr, _)| {
                before
                    .iter()
                    .any(|(bid, baddr)| **bid == **id && **baddr == **addr)
            });
        if unchanged {
            return;
        }
        let mut left = false;
        for (id, _) in &before {
            if !wanted.iter().any(|(w, _, _)| **w == **id) {
                members.remove(id);
                left = true;
                info!(node = %id, ?source, "node left");
            }
        }
        for (id, addr, weight) in wanted {
            upsert_locked(&mut members, id, addr, *weight, source);
        }
        if left {
            // Under the lock, as every per-node series is written (see `report_check`), so a
            // check that ends now cannot bring a departed node's series back.
            self.metrics.forget_departed(|id| members.contains_key(id));
        }
        self.publish(&members);
    }

    /// Every member's id and address, for the health checker.
    pub fn targets(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.lock()
            .iter()
            .map(|(id, m)| (id.clone(), m.addr.clone()))
            .collect()
    }

    /// Records an active check's outcome (and counts it, for a node still a member); flips
    /// health past the thresholds.
    pub fn report_check(&self, id: &str, addr: &str, ok: bool) {
        let mut members = self.lock();
        let Some(m) = members.get_mut(id) else { return };
        if *m.addr != *addr {
            return; // the member moved while we checked its old address
        }
        self.metrics
            .health_checks
            .with_label_values(&[id, if ok { "ok" } else { "fail" }])
            .inc();
        let flipped = if ok {
            m.failures = 0;
            m.passes = m.passes.saturating_add(1);
            let up = !m.healthy && m.passes >= self.thresholds.healthy.max(1);
            if up {
                m.healthy = true;
                info!(node = %id, addr, "node healthy again: rejoins the ring");
            }
            up
        } else {
            m.passes = 0;
            m.failures = m.failures.saturating_add(1);
            let down = m.healthy && m.failures >= self.thresholds.unhealthy.max(1);
            if down {
                m.healthy = false;
                warn!(node = %id, addr, "node failed its health checks: leaves the ring");
            }
            down
        };
        if flipped {
            self.publish(&members);
        }
    }

    /// Records the room options hash a member's passed health check carried (`None`: it sent
    /// none, as a node before room options).
    pub fn report_room_options(&self, id: &str, addr: &str, hash: Option<String>) {
        let mut members = self.lock();
        let Some(m) = members.get_mut(id) else { return };
        if *m.addr != *addr || m.room_options.as_deref() == hash.as_deref() {
            return;
        }
        m.room_options = hash.map(Arc::from);
        self.check_options(&members);
    }

    /// Whether the healthy members report different room options.
    pub fn room_options_mismatch(&self) -> bool {
        self.options_mismatch.load(Ordering::Relaxed)
    }

    /// Recomputes the mismatch over the healthy members that reported a hash; logs a change.
    fn check_options(&self, members: &BTreeMap<Arc<str>, Member>) {
        let mut hashes = members
            .values()
            .filter(|m| m.healthy)
            .filter_map(|m| m.room_options.as_deref());
        let first = hashes.next();
        let mismatch = first.is_some_and(|f| hashes.any(|h| h != f));
        self.metrics.room_options_mismatch.set(i64::from(mismatch));
        if self.options_mismatch.swap(mismatch, Ordering::Relaxed) != mismatch {
            if mismatch {
                let by_node: Vec<String> = members
                    .iter()
                    .filter(|(_, m)| m.healthy)
                    .map(|(id, m)| format!("{id}={}", m.room_options.as_deref().unwrap_or("?")))
                    .collect();
                warn!(nodes = %by_node.join(","), "nodes run different room options: give every node the same --room-options");
            } else {
                info!("every node runs the same room options again");
            }
        }
    }

    /// Passive marking: nothing listens at the node's address, so take it out now; the active
    /// checks bring it back.
    pub fn mark_down(&self, id: &str) {
        let mut members = self.lock();
        let Some(m) = members.get_mut(id) else { return };
        m.passes = 0;
        if m.healthy {
            m.healthy = false;
            warn!(node = %id, "connect failed: node leaves the ring until its checks pass");
            self.publish(&members);
        }
    }

    /// The table as `/nodes` shows it.
    pub fn view(&self) -> Vec<MemberView> {
        self.lock()
            .iter()
            .map(|(id, m)| MemberView {
                id: id.to_string(),
                addr: m.addr.to_string(),
                weight: m.weight,
                source: m.source,
                healthy: m.healthy,
                consecutive_failures: m.failures,
                open_connections: self
                    .metrics
                    .open_connections
                    .get_metric_with_label_values(&[id])
                    .map(|g| g.get())
                    .unwrap_or(0),
                room_options: m.room_options.as_deref().map(str::to_owned),
            })
            .collect()
    }

    fn publish(&self, members: &BTreeMap<Arc<str>, Member>) {
        let ring = Ring::new(
            members.iter().map(|(id, m)| RingNode {
                id: id.clone(),
                addr: m.addr.clone(),
                weight: m.weight,
                healthy: m.healthy,
            }),
            self.vnodes,
        );
        for (id, m) in members {
            self.metrics
                .node_up
                .with_label_values(&[id])
                .set(i64::from(m.healthy));
        }
        self.metrics.ring_size.set(ring.len() as i64);
        self.metrics.members.set(members.len() as i64);
        self.check_options(members);
        self.ring_tx.send_replace(Arc::new(ring));
    }
}

fn upsert_locked(
    members: &mut BTreeMap<Arc<str>, Member>,
    id: &str,
    addr: &str,
    weight: usize,
    source: Source,
) {
    match members.get_mut(id) {
        Some(m) if m.source == Source::Static && source != Source::Static => {}
        Some(m) => {
            if *m.addr != *addr {
                info!(node = %id, addr, "node moved");
                m.addr = addr.into();
                m.healthy = true;
                m.failures = 0;
                m.room_options = None;
            }
            m.weight = weight;
            m.source = source;
        }
        None => {
            info!(node = %id, addr, ?source, "node joined");
            members.insert(
                id.into(),
                Member {
                    addr: addr.into(),
                    weight,
                    source,
                    healthy: true,
                    passes: 0,
                    failures: 0,
                    room_options: None,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Membership {
        Membership::new(
            64,
            Thresholds {
                unhealthy: 2,
                healthy: 2,
            },
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn thresholds_and_passive_marks_move_nodes_in_and_out() {
        let m = membership();
        m.upsert("a", "127.0.0.1:1", 1, Source::Static);
        m.upsert("b", "127.0.0.1:2", 1, Source::Static);
        assert_eq!(m.ring().len(), 2);
        m.report_check("a", "127.0.0.1:1", false);
        assert_eq!(m.ring().len(), 2, "one failure is below the threshold");
        m.report_check("a", "127.0.0.1:1", false);
        assert_eq!(m.ring().len(), 1);
        m.report_check("a", "127.0.0.1:1", true);
        assert_eq!(m.ring().len(), 1, "one pass is below the threshold");
        m.report_check("a", "127.0.0.1:1", true);
        assert_eq!(m.ring().len(), 2);
        m.mark_down("b");
        assert_eq!(m.ring().len(), 1);
    }

    #[test]
    fn redis_sync_adds_and_removes_but_never_replaces_static() {
        let m = membership();
        m.upsert("s", "127.0.0.1:1", 1, Source::Static);
        m.sync_source(
            Source::Redis,
            &[
                ("r1".into(), "127.0.0.1:2".into(), 1),
                ("s".into(), "127.0.0.1:9".into(), 1),
            ],
        );
        let v = m.view();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v.iter().find(|x| x.id == "s").map(|x| x.addr.as_str()),
            Some("127.0.0.1:1")
        );
        m.sync_source(Source::Redis, &[]);
        assert_eq!(m.view().len(), 1);
        assert_eq!(m.view()[0].source, Source::Static);
    }
}
