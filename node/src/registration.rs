//! Dynamic membership, node side: while it serves, a node started with `--redis-url` and
//! `--advertise HOST:PORT` keeps a key `{prefix}:node:{id}` = `HOST:PORT` (`HOST:PORT*WEIGHT`
//! with a `--weight` other than 1, as a gateway's `--node` is written) alive in Redis with a
//! TTL, refreshed every `--register-interval-ms`; on shutdown (drain) it deletes the key so
//! gateways drop it at once. Gateways read the same keys (see [`registry_key`]).
//!
//! Plain keys with a server-side TTL rather than timestamps: expiry runs on the Redis clock, so
//! node and gateway clocks never need to agree.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::watch;
use tracing::{info, warn};

/// The Redis key a node registers under.
pub fn registry_key(prefix: &str, node_id: &str) -> String {
    format!("{prefix}:node:{node_id}")
}

/// The `SCAN MATCH` pattern of every registered node's key.
pub fn registry_pattern(prefix: &str) -> String {
    format!("{prefix}:node:*")
}

/// What a node registers: `HOST:PORT`, with `*WEIGHT` when its weight is not 1 (so gateways
/// that predate weights still read a node of weight 1).
pub fn registry_value(advertise: &str, weight: usize) -> String {
    if weight == 1 {
        advertise.to_owned()
    } else {
        format!("{advertise}*{weight}")
    }
}

/// Checks an `--advertise` value: `HOST:PORT` with a non-empty host and a valid port.
pub fn parse_advertise(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!("{s:?}: expected HOST:PORT")),
    }
}

/// What a node registers, and how often.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Redis URL.
    pub redis_url: String,
    /// Key prefix.
    pub prefix: String,
    /// The node id.
    pub node_id: String,
    /// `HOST:PORT` gateways should connect to.
    pub advertise: String,
    /// Ring weight (1..=100).
    pub weight: usize,
    /// Time between heartbeats.
    pub interval: Duration,
    /// Key lifetime; a node silent this long is dropped by gateways.
    pub ttl: Duration,
}

/// Heartbeats until `shutdown` turns true, then deregisters (best effort, bounded by a timeout).
pub async fn run(reg: Registration, mut shutdown: watch::Receiver<bool>) {
    let key = registry_key(&reg.prefix, &reg.node_id);
    let value = registry_value(&reg.advertise, reg.weight);
    let client = match redis::Client::open(reg.redis_url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "registration disabled: bad Redis URL");
            return;
        }
    };
    let io_timeout = reg.interval.max(Duration::from_millis(200));
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(io_timeout))
        .set_response_timeout(Some(io_timeout));
    let ttl_ms = reg.ttl.as_millis().clamp(100, u128::from(u32::MAX)) as u64;
    let mut conn: Option<MultiplexedConnection> = None;
    let mut registered = false;
    let mut tick = tokio::time::interval(reg.interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        if conn.is_none() {
            conn = client
                .get_multiplexed_async_connection_with_config(&conn_config)
                .await
                .map_err(|e| warn!(error = %e, "registration: cannot reach Redis"))
                .ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(c)
            .await;
        match set {
            Ok(()) if !registered => {
                registered = true;
                info!(key, advertise = %reg.advertise, weight = reg.weight, "registered with gateways");
            }
            Ok(()) => {}
            Err(e) => {
                warn!(error = %e, "registration heartbeat failed");
                conn = None;
            }
        }
    }
    deregister(&client, &conn_config, conn, &key).await;
}

async fn deregister(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    conn: Option<MultiplexedConnection>,
    key: &str,
) {
    let conn = match conn {
        Some(c) => Some(c),
        None => client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .ok(),
    };
    let Some(mut conn) = conn else {
        warn!(
            key,
            "cannot deregister: Redis unreachable (the key expires by its TTL)"
        );
        return;
    };
    let del: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
    match del {
        Ok(()) => info!(key, "deregistered"),
        Err(e) => warn!(error = %e, key, "deregister failed (the key expires by its TTL)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn advertise_needs_redis_and_a_host_port() {
        assert!(parse_advertise("10.0.0.7:9001").is_ok());
        assert!(parse_advertise("node-a.internal:9001").is_ok());
        assert!(parse_advertise("node-a").is_err());
        assert!(parse_advertise(":9001").is_err());
        assert!(parse_advertise("h:0").is_err());
        assert!(crate::Config::try_parse_from(["n", "--advertise", "h:1"]).is_err());
        let c = crate::Config::try_parse_from([
            "n",
            "--advertise",
            "h:1",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--node-id",
            "x",
        ])
        .expect("valid");
        let reg = c.registration().expect("registration");
        assert_eq!(reg.advertise, "h:1");
        assert_eq!(registry_key(&reg.prefix, &reg.node_id), "ringcast:node:x");
    }
}
