//! Dynamic membership, gateway side: poll the Redis registry that nodes keep alive with
//! `--advertise` (keys `{prefix}:node:{id}` = `HOST:PORT` or `HOST:PORT*WEIGHT`, with a TTL)
//! and mirror it into membership, weights included. A key appears → the node joins within one poll; it expires (no heartbeat) or is
//! deleted (a draining node deregisters) → the node leaves within one poll.
//!
//! While Redis is unreachable the last known members are kept (health checks still guard them):
//! losing the registry must not empty the ring.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use ringcast_node::registration::registry_pattern;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::membership::{Membership, Source};
use crate::metrics::Metrics;

/// Most registered nodes read per poll (bounds one poll's work and memory).
const MAX_NODES: usize = 1024;

/// Polls the registry every `interval` until `shutdown` turns true.
pub async fn run(
    redis_url: String,
    prefix: String,
    interval: Duration,
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match redis::Client::open(redis_url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "dynamic membership disabled: bad Redis URL");
            return;
        }
    };
    let timeout = Duration::from_secs(1);
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let pattern = registry_pattern(&prefix);
    let key_prefix = pattern.trim_end_matches('*').to_owned();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if conn.is_none() {
            conn = client
                .get_multiplexed_async_connection_with_config(&conn_config)
                .await
                .ok();
        }
        let result = match conn.as_mut() {
            Some(c) => read_registry(c, &pattern, &key_prefix).await,
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

async fn read_registry(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    key_prefix: &str,
) -> redis::RedisResult<Vec<(String, String, usize)>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    // Bounded: at most 64 SCAN round trips per poll.
    for _ in 0..64 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(256)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= MAX_NODES {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys.truncate(MAX_NODES);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    Ok(keys
        .iter()
        .zip(values)
        .filter_map(|(key, addr)| {
            let id = key.strip_prefix(key_prefix)?;
            let addr = addr?;
            // A malformed entry is skipped, never routed to.
            let spec = format!("{id}={addr}")
                .parse::<crate::config::NodeSpec>()
                .ok()?;
            Some((spec.id, spec.addr, spec.weight))
        })
        .collect())
}
