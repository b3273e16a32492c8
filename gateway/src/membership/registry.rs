//! Dynamic membership, gateway side: poll the Redis registry index that nodes keep leases in
//! with `--advertise` (see `ringcast_net::registry`: a sorted set of ids scored by lease
//! expiry and a hash of `HOST:PORT` / `HOST:PORT*WEIGHT` values, both under the hash tag
//! `{PREFIX:nodes}`) and mirror it into membership, weights included. A lease appears → the
//! node joins within one poll; it lapses (no heartbeat) or is given up (a draining node
//! deregisters) → the node leaves within one poll.
//!
//! One poll is one script call that reads only the index — never a scan of the keyspace — so
//! the other keys of a shared Redis cost nothing and cannot hide a node. While Redis is
//! unreachable or the read fails, the last known members are kept (health checks still guard
//! them): a failed read is never taken for an empty registry.

use std::sync::Arc;
use std::time::Duration;

use ringcast_net::drain::Drain;
use ringcast_net::redis_target::{RedisConn, RedisTarget};
use ringcast_net::registry::{addrs_key, eval, index_key, READ_SCRIPT};
use tracing::{info, warn};

use crate::membership::{Membership, Source};
use crate::metrics::Metrics;

/// Most registered nodes read per poll (bounds one poll's work and memory).
const MAX_NODES: usize = 1024;

/// Polls the registry every `interval` until the gateway's drain is over (`drain` stops).
pub async fn run(
    target: RedisTarget,
    prefix: String,
    interval: Duration,
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    drain: Drain,
) {
    if let Err(e) = target.validate() {
        warn!(error = %e, "dynamic membership disabled: bad Redis URL");
        return;
    }
    let timeout = Duration::from_secs(1);
    let index = index_key(&prefix);
    let addrs = addrs_key(&prefix);
    let mut conn: Option<RedisConn> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.stopped() => return,
        }
        if conn.is_none() {
            conn = target.connect(timeout).await.ok();
        }
        let result = match conn.as_mut() {
            Some(c) => read_registry(c, &index, &addrs).await,
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "cannot connect",
            ))),
        };
        match result {
            Ok(nodes) => {
                if !healthy {
                    info!("node registry readable again");
                    healthy = true;
                }
                membership.sync_source(Source::Redis, &nodes);
            }
            Err(e) => {
                metrics.membership_errors.inc();
                if healthy {
                    warn!(error = %e, "cannot read the node registry; keeping the last members");
                    healthy = false;
                }
                conn = None;
            }
        }
    }
}

/// Every live lease: (id, addr, weight), at most [`MAX_NODES`].
async fn read_registry(
    conn: &mut RedisConn,
    index: &str,
    addrs: &str,
) -> redis::RedisResult<Vec<(String, String, usize)>> {
    let flat: Vec<String> = eval(READ_SCRIPT, index, addrs)
        .arg(MAX_NODES)
        .query_async(conn)
        .await?;
    if flat.len() / 2 >= MAX_NODES {
        warn!(
            max = MAX_NODES,
            "the node registry holds more live nodes than a gateway reads; the rest are ignored"
        );
    }
    Ok(flat
        .chunks_exact(2)
        .filter_map(|pair| {
            let (id, addr) = (&pair[0], &pair[1]);
            // A malformed entry is skipped, never routed to.
            let spec = format!("{id}={addr}")
                .parse::<crate::config::NodeSpec>()
                .ok()?;
            Some((spec.id, spec.addr, spec.weight))
        })
        .collect())
}
