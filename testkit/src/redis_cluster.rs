//! A real Redis Cluster on loopback: 3 primaries + 3 replicas, each a `redis-server
//! --cluster-enabled yes` owned (and killed by PID) by the test, joined by `redis-cli --cluster
//! create`.
//!
//! Cluster nodes talk to each other on their port + 10000 (the cluster bus), so ports are
//! picked in 10000–22767 with both the port and its bus port free, below the kernel's default
//! ephemeral range (32768–60999) so no outgoing connection lands on them. The helpers read the topology with
//! `CLUSTER NODES` and move slots the way an operator does (`CLUSTER SETSLOT` + `MIGRATE`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Per-process counter for the clusters' data directories.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// Six redis-server processes in one cluster: 3 primaries, each with one replica.
pub struct RedisCluster {
    /// (port, process); `None` once killed.
    servers: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six servers, creates the cluster and waits until every node reports
    /// `cluster_state:ok`, knows all six and every replica is in sync with its primary.
    /// Blocking (run it on `spawn_blocking` in async tests); panics with a clear message.
    pub fn start() -> Self {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ringcast-redis-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis cluster temp dir");
        let mut cluster = RedisCluster {
            servers: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            let server = cluster.spawn_server();
            cluster.servers.push(server);
        }
        let addrs: Vec<String> = cluster
            .servers
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is not installed: run the README's test command");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Starts one cluster-enabled server on a free port whose bus port is free too; retries on
    /// a lost race for either.
    fn spawn_server(&self) -> (u16, Option<Child>) {
        for attempt in 0..20u32 {
            let port = cluster_port(attempt);
            let dir = self.dir.join(port.to_string());
            std::fs::create_dir_all(&dir).expect("create redis node dir");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                // Fast failure detection: a killed primary is replaced within a few seconds.
                .args(["--cluster-node-timeout", "1500"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is not installed: run the README's test command");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("cluster redis-server on {port} exited ({status}); another port");
                    break;
                }
                if crate::listens_on(child.id(), port)
                    && crate::listens_on(child.id(), port + 10000)
                {
                    return (port, Some(child));
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("cluster redis-server did not listen on {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("no cluster redis-server could start in 20 tries");
    }

    /// Waits until every live node says `cluster_state:ok` and knows all six nodes, and every
    /// live replica's link to its primary is up.
    fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let healthy = self.live_ports().iter().all(|&p| {
                let info = self.try_cli(p, &["CLUSTER", "INFO"]).unwrap_or_default();
                let replication = self
                    .try_cli(p, &["INFO", "replication"])
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_known_nodes:6")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the redis cluster was not healthy within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:PORT` of every node: the seeds for `--redis-cluster`.
    pub fn seeds(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The ports of the nodes still running.
    fn live_ports(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The cluster slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key): the
    /// bus's own mapping, which the tests below check against Redis's answers.
    pub fn slot_of(key: &str) -> u16 {
        ringcast_net::redis_target::slot_of(key.as_bytes())
    }

    /// The ports of the primaries that own slots, as every live node sees them.
    pub fn primaries(&self) -> Vec<u16> {
        let view = self.agreed_view(Duration::from_secs(10));
        let mut ports: Vec<u16> = view
            .iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The port of the primary that owns `slot`, once every live node agrees on it (waits up
    /// to 10 s for gossip to settle).
    pub fn primary_of_slot(&self, slot: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let owners: Vec<Option<u16>> = self
                .live_ports()
                .iter()
                .map(|&p| owner_in(&self.nodes_seen_by(p)?, slot))
                .collect();
            if let Some(Some(first)) = owners.first() {
                if owners.iter().all(|o| *o == Some(*first)) {
                    return *first;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster nodes do not agree on slot {slot}'s owner: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the primary that owns `slot` (by PID) and returns its port.
    pub fn kill_primary_of_slot(&mut self, slot: u16) -> u16 {
        let port = self.primary_of_slot(slot);
        let (_, child) = self
            .servers
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("the owner is one of ours");
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        port
    }

    /// Waits until the live nodes agree that a primary other than `old` owns `slot` and the
    /// cluster is ok again; returns the new owner's port.
    pub fn wait_failover(&self, slot: u16, old: u16, limit: Duration) -> u16 {
        let deadline = Instant::now() + limit;
        loop {
            let live = self.live_ports();
            let owners: Vec<Option<u16>> = live
                .iter()
                .map(|&p| owner_in(&self.nodes_seen_by(p)?, slot))
                .collect();
            let ok = live.iter().all(|&p| {
                self.try_cli(p, &["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if let Some(Some(first)) = owners.first() {
                if *first != old && ok && owners.iter().all(|o| *o == Some(*first)) {
                    return *first;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over slot {slot} from {old} within {limit:?}: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Moves `slot` with its keys to the primary on port `to`, as `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE of the keys in batches, then SETSLOT NODE on
    /// every primary. Blocking; traffic may keep flowing meanwhile (clients get ASK redirects).
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.primary_of_slot(slot);
        if from == to {
            return;
        }
        let slot_arg = slot.to_string();
        let from_id = self.cli(from, &["CLUSTER", "MYID"]).trim().to_owned();
        let to_id = self.cli(to, &["CLUSTER", "MYID"]).trim().to_owned();
        self.ok(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        );
        self.ok(
            from,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "slot {slot} never emptied");
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let out = self.cli(from, &args);
            assert!(
                out.trim() == "OK" || out.trim() == "NOKEY",
                "MIGRATE of slot {slot} failed: {out}"
            );
        }
        // The new owner first, then the old one, then the others (as redis-cli does).
        self.ok(to, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        self.ok(from, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        for p in self.primaries() {
            if p != to && p != from {
                self.ok(p, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
            }
        }
    }

    /// Runs `redis-cli -p PORT args…` and returns its stdout; panics when it fails.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.try_cli(port, args)
            .unwrap_or_else(|| panic!("redis-cli -p {port} {args:?} failed"))
    }

    fn try_cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command that must answer OK.
    fn ok(&self, port: u16, args: &[&str]) {
        let out = self.cli(port, args);
        assert_eq!(out.trim(), "OK", "redis-cli -p {port} {args:?}: {out}");
    }

    /// `CLUSTER NODES` as node `port` sees it.
    fn nodes_seen_by(&self, port: u16) -> Option<Vec<ClusterNode>> {
        Some(parse_nodes(&self.try_cli(port, &["CLUSTER", "NODES"])?))
    }

    /// The view of the first live node, once all live nodes agree on which primary owns which
    /// slots.
    fn agreed_view(&self, limit: Duration) -> Vec<ClusterNode> {
        let deadline = Instant::now() + limit;
        loop {
            let views: Vec<Vec<Owner>> = self
                .live_ports()
                .iter()
                .filter_map(|&p| self.nodes_seen_by(p))
                .map(|v| {
                    let mut owners: Vec<_> = v
                        .iter()
                        .filter(|n| n.primary && !n.slots.is_empty())
                        .map(|n| (n.port, n.slots.clone()))
                        .collect();
                    owners.sort();
                    owners
                })
                .collect();
            if views.windows(2).all(|w| w[0] == w[1]) {
                if let Some(view) = self
                    .live_ports()
                    .first()
                    .and_then(|&p| self.nodes_seen_by(p))
                {
                    return view;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster nodes do not agree on the slot owners"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.servers {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary's port and the slot ranges it owns.
type Owner = (u16, Vec<(u16, u16)>);

/// One line of `CLUSTER NODES`, reduced to what the helpers need.
#[derive(Debug, Clone)]
struct ClusterNode {
    port: u16,
    /// Flagged `master` and not `fail`.
    primary: bool,
    /// Inclusive slot ranges it owns (migration markers `[…]` left out).
    slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES` text: `id ip:port@bus[,host] flags master ping pong epoch link slots…`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?;
            let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = fields.get(2)?;
            let primary = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "fail?");
            let slots = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(ClusterNode {
                port,
                primary,
                slots,
            })
        })
        .collect()
}

/// The primary owning `slot` in one node's view.
fn owner_in(view: &[ClusterNode], slot: u16) -> Option<u16> {
    view.iter()
        .find(|n| n.primary && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
        .map(|n| n.port)
}

/// A port in 10000–22767 that is free, as is its cluster bus port (+10000, so 20000–32767), a
/// moment ago: both below Linux's default ephemeral range (32768–60999).
fn cluster_port(attempt: u32) -> u16 {
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(CLUSTERS.load(Ordering::Relaxed).wrapping_mul(7919))
        .wrapping_add(attempt.wrapping_mul(104_729))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    for i in 0..12_768u32 {
        let port = 10_000 + ((seed.wrapping_add(i.wrapping_mul(37))) % 12_768) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair (p, p+10000) in 10000–22767");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_for_known_keys() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(RedisCluster::slot_of("foo"), 12182);
        assert_eq!(RedisCluster::slot_of("{user1000}.following"), 3443);
        assert_eq!(RedisCluster::slot_of("{}x"), RedisCluster::slot_of("{}x"));
    }

    #[test]
    fn cluster_nodes_lines_are_parsed_with_ranges_and_flags() {
        let text = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-b2]
b2 127.0.0.1:30002@40002,host master,fail - 0 0 2 connected 5461-10922
c3 127.0.0.1:30003@40003 master - 0 0 3 connected 10923-16383
d4 127.0.0.1:30004@40004 slave a1 0 0 1 connected
";
        let view = parse_nodes(text);
        assert_eq!(view.len(), 4);
        assert_eq!(owner_in(&view, 0), Some(30001));
        assert_eq!(owner_in(&view, 5460), Some(30001));
        assert_eq!(owner_in(&view, 5461), None, "a failed primary owns nothing");
        assert_eq!(owner_in(&view, 16383), Some(30003));
        assert!(!view[3].primary);
    }

    /// A whole cluster: created, a slot moved with its key, a primary killed and replaced.
    #[test]
    fn a_cluster_starts_moves_a_slot_and_fails_over() {
        let mut cluster = RedisCluster::start();
        assert_eq!(cluster.seeds().len(), 6);
        assert_eq!(cluster.primaries().len(), 3);
        let slot = RedisCluster::slot_of("{t}k");
        let from = cluster.primary_of_slot(slot);
        assert_eq!(cluster.cli(from, &["SET", "{t}k", "v"]).trim(), "OK");
        let to = *cluster.primaries().iter().find(|p| **p != from).unwrap();
        cluster.migrate_slot(slot, to);
        assert_eq!(cluster.primary_of_slot(slot), to);
        assert_eq!(cluster.cli(to, &["GET", "{t}k"]).trim(), "v");
        assert_eq!(cluster.primaries().len(), 3);
        let old = cluster.kill_primary_of_slot(slot);
        assert_eq!(old, to);
        let new = cluster.wait_failover(slot, old, Duration::from_secs(20));
        assert_ne!(new, old);
        assert_eq!(cluster.cli(new, &["GET", "{t}k"]).trim(), "v");
    }
}
