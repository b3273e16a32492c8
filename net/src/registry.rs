//! Dynamic membership, node side: while it serves, a node started with `--redis-url` and
//! `--advertise HOST:PORT` holds a lease in the registry index, refreshed every
//! `--register-interval-ms`; on shutdown (drain) it gives the lease up so gateways drop it at
//! once.
//!
//! The index is two keys in one hash slot (hash tag `{PREFIX:nodes}`, so it works on Redis
//! Cluster): a sorted set of node ids scored by their lease's expiry in milliseconds
//! ([`index_key`]) and a hash from node id to `HOST:PORT` (`HOST:PORT*WEIGHT` with a `--weight`
//! other than 1, as a gateway's `--node` is written; [`addrs_key`]). Gateways read both in one
//! script ([`READ_SCRIPT`]) and never scan the keyspace, so a shared Redis full of other keys
//! cannot hide a node. Expiry is computed on the Redis clock (`TIME` inside the scripts), so
//! node and gateway clocks never need to agree; every heartbeat also prunes a few lapsed leases.
//!
//! For gateways that predate the index, the node also keeps the old key `{prefix}:node:{id}`
//! (same value, server-side TTL) alive; gateways of this version ignore it.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tracing::{info, warn};

use crate::drain::Drain;

/// The sorted set of registered node ids, scored by lease expiry (Redis time, milliseconds).
pub fn index_key(prefix: &str) -> String {
    format!("{{{prefix}:nodes}}")
}

/// The hash from registered node id to its registry value (see [`registry_value`]); in the
/// same hash slot as [`index_key`].
pub fn addrs_key(prefix: &str) -> String {
    format!("{{{prefix}:nodes}}:addrs")
}

/// The key a node of an earlier version registered under, still written for older gateways.
pub fn legacy_key(prefix: &str, node_id: &str) -> String {
    format!("{prefix}:node:{node_id}")
}

/// `EVAL script 2 index addrs`, ready for its `ARGV`. The scripts are a few hundred bytes, so
/// sending them whole each time costs little and survives a Redis restart (no `NOSCRIPT`).
pub fn eval(script: &str, index: &str, addrs: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(2).arg(index).arg(addrs);
    cmd
}

/// Most lapsed leases one heartbeat prunes (bounds the script's work).
const PRUNE_BATCH: usize = 64;

/// Renews a lease: `KEYS` = [index, addrs], `ARGV` = [id, value, ttl ms, prune batch]. Prunes
/// up to a batch of lapsed leases first, then writes this node's entry. (Redis before 5 must be
/// told to replicate the writes rather than the script, which reads the clock.)
const REGISTER_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now), 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[1])
return #lapsed
";

/// Gives a lease up: `KEYS` = [index, addrs], `ARGV` = [id].
const DEREGISTER_SCRIPT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// Reads every live lease in one command: `KEYS` = [index, addrs], `ARGV` = [most entries];
/// returns `[id1, value1, id2, value2, …]` for leases that expire after now (Redis time).
pub const READ_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
if #ids == 0 then return out end
local values = redis.call('HMGET', KEYS[2], unpack(ids))
for i, id in ipairs(ids) do
  if values[i] then
    out[#out + 1] = id
    out[#out + 1] = values[i]
  end
end
return out
";

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

/// Heartbeats until the node begins draining, then deregisters (best effort, bounded by a
/// timeout).
pub async fn run(reg: Registration, drain: Drain) {
    let key = legacy_key(&reg.prefix, &reg.node_id);
    let index = index_key(&reg.prefix);
    let addrs = addrs_key(&reg.prefix);
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
            _ = drain.draining() => break,
        }
        if drain.is_draining() {
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
        let set = heartbeat(c, &index, &addrs, &reg.node_id, &value, &key, ttl_ms).await;
        match set {
            Ok(()) if !registered => {
                registered = true;
                info!(node = %reg.node_id, index, advertise = %reg.advertise, weight = reg.weight, "registered with gateways");
            }
            Ok(()) => {}
            Err(e) => {
                warn!(error = %e, "registration heartbeat failed");
                conn = None;
            }
        }
    }
    deregister(
        &client,
        &conn_config,
        conn,
        &index,
        &addrs,
        &reg.node_id,
        &key,
    )
    .await;
}

/// One heartbeat: the lease in the index, then the key older gateways read.
#[allow(clippy::too_many_arguments)]
async fn heartbeat(
    conn: &mut MultiplexedConnection,
    index: &str,
    addrs: &str,
    node_id: &str,
    value: &str,
    legacy: &str,
    ttl_ms: u64,
) -> redis::RedisResult<()> {
    let _pruned: i64 = eval(REGISTER_SCRIPT, index, addrs)
        .arg(node_id)
        .arg(value)
        .arg(ttl_ms)
        .arg(PRUNE_BATCH)
        .query_async(conn)
        .await?;
    redis::cmd("SET")
        .arg(legacy)
        .arg(value)
        .arg("PX")
        .arg(ttl_ms)
        .query_async(conn)
        .await
}

async fn deregister(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    conn: Option<MultiplexedConnection>,
    index: &str,
    addrs: &str,
    node_id: &str,
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
            "cannot deregister: Redis unreachable (the lease lapses by itself)"
        );
        return;
    };
    let released: redis::RedisResult<i64> = eval(DEREGISTER_SCRIPT, index, addrs)
        .arg(node_id)
        .query_async(&mut conn)
        .await;
    let del: redis::RedisResult<()> = match released {
        Ok(_) => redis::cmd("DEL").arg(key).query_async(&mut conn).await,
        Err(e) => Err(e),
    };
    match del {
        Ok(()) => info!(node = node_id, index, "deregistered"),
        Err(e) => {
            warn!(error = %e, node = node_id, "deregister failed (the lease lapses by itself)")
        }
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
        assert_eq!(legacy_key(&reg.prefix, &reg.node_id), "ringcast:node:x");
        assert_eq!(index_key(&reg.prefix), "{ringcast:nodes}");
        assert_eq!(addrs_key(&reg.prefix), "{ringcast:nodes}:addrs");
    }
}
