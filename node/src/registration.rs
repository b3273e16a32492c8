//! Dynamic membership, node side: while it serves, a node started with `--redis-url` and
//! `--advertise HOST:PORT` holds a lease in the registry index, refreshed every
//! `--register-interval-ms`; on shutdown (drain) it gives the lease up so gateways drop it at
//! once. The registry's layout (keys, scripts, values) is [`ringcast_net::registry`].

use std::time::Duration;

use ringcast_net::redis_target::{RedisConn, RedisTarget};
use ringcast_net::registry::{
    addrs_key, eval, index_key, legacy_key, registry_value, DEREGISTER_SCRIPT, PRUNE_BATCH,
    REGISTER_SCRIPT,
};
use tracing::{info, warn};

use ringcast_net::drain::Drain;

/// What a node registers, and how often.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Where Redis is.
    pub target: RedisTarget,
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
    if let Err(e) = reg.target.validate() {
        warn!(error = %e, "registration disabled: bad Redis URL");
        return;
    }
    let io_timeout = reg.interval.max(Duration::from_millis(200));
    let ttl_ms = reg.ttl.as_millis().clamp(100, u128::from(u32::MAX)) as u64;
    let mut conn: Option<RedisConn> = None;
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
            conn = reg
                .target
                .connect(io_timeout)
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
        &reg.target,
        io_timeout,
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
    conn: &mut RedisConn,
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
    target: &RedisTarget,
    io_timeout: Duration,
    conn: Option<RedisConn>,
    index: &str,
    addrs: &str,
    node_id: &str,
    key: &str,
) {
    let conn = match conn {
        Some(c) => Some(c),
        None => target.connect(io_timeout).await.ok(),
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
    use clap::Parser;

    #[test]
    fn advertise_needs_redis_and_a_host_port() {
        assert!(crate::Config::try_parse_from(["n", "--advertise", "h:1"]).is_err());
        assert!(crate::Config::try_parse_from([
            "n",
            "--advertise",
            "h",
            "--redis-url",
            "redis://127.0.0.1:1"
        ])
        .is_err());
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
        assert_eq!(reg.node_id, "x");
    }
}
