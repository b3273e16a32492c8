//! The subscriber side of the bus on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), one plain
//! connection per primary that owns a wanted channel's slot, following `CLUSTER SHARDS`.
//!
//! redis-rs's own cluster pub/sub takes the `sunsubscribe` a primary pushes when a slot leaves
//! it for a command reply, and stops tracking the channel. So the connections here are plain
//! ones we manage. Subscriptions go out pipelined per shard (one write, one round trip), one
//! channel per `SSUBSCRIBE`, so an error such as `-MOVED` answers exactly its own channel.
//!
//! Anything that may have cost a subscription makes the whole set be rebuilt from the wanted
//! channels on fresh connections to the owners `CLUSTER SHARDS` names: a connection lost (a
//! primary killed), a pushed `sunsubscribe` for a channel still wanted (its slot moved), a
//! command that failed, or a probe that did not come back. Until the rebuild is done the bus's
//! subscriptions count as lost, which is what makes the hub fill each room's gap from history.
//! A probe channel per shard, hash-tagged into a slot that shard owns, finds a starved one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use redis::aio::{MultiplexedConnection, SendError};
use redis::{PushInfo, PushKind, Value};
use ringcast_net::redis_target::{single_client, slot_of, RedisTarget};
use tracing::{info, warn};

use super::probe::{self, Backoff};
use super::redis_conn::{report_failure, unavailable, Inner};
use super::redis_shard_set::{poisoned, State};
use super::redis_topology::{shard_url, Topology};
use super::BusError;

/// Most `SSUBSCRIBE`s in one pipeline.
const PER_PIPELINE: usize = 1000;

/// Subscribes (or unsubscribes) channels at runtime, on the shards that own them. Any failure
/// leaves the server's view of a connection unknown, so the whole set is rebuilt.
pub(super) async fn command(
    inner: &Arc<Inner>,
    names: &[String],
    subscribe: bool,
) -> Result<(), BusError> {
    let shards = &inner.shards;
    let mut state = shards.state.lock().await;
    if !subscribe {
        let mut now = shards.wanted_now.lock().unwrap_or_else(poisoned);
        for n in names {
            state.wanted.remove(n);
            now.remove(n);
        }
    }
    if !state.live {
        return if subscribe {
            Err(BusError::Unavailable(
                "Redis subscribers are reconnecting".into(),
            ))
        } else {
            // Nothing to undo on the servers: the next rebuild only follows `wanted`.
            Ok(())
        };
    }
    let generation = state.generation;
    let outcome = follow(inner, &mut state, generation, names, subscribe).await;
    match outcome {
        Ok(()) => {
            if subscribe {
                state.wanted.extend(names.iter().cloned());
                shards
                    .wanted_now
                    .lock()
                    .unwrap_or_else(poisoned)
                    .extend(names.iter().cloned());
            }
            Ok(())
        }
        Err(e) => {
            state.live = false;
            state.conns.clear();
            drop(state);
            inner.subscriptions_lost(generation);
            report_failure(&shards.failed_tx, generation);
            Err(e)
        }
    }
}

/// (Un)subscribes `names` on their owners' connections of `generation`, opening a connection
/// to an owner that has none yet.
async fn follow(
    inner: &Arc<Inner>,
    state: &mut State,
    generation: u64,
    names: &[String],
    subscribe: bool,
) -> Result<(), BusError> {
    let mut by_owner: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for name in names {
        let slot = slot_of(name.as_bytes());
        let owner = state.topology.owner(slot).ok_or_else(|| {
            BusError::Unavailable(format!("no primary serves slot {slot} right now"))
        })?;
        by_owner
            .entry(owner.to_owned())
            .or_default()
            .push(name.as_str());
    }
    for (addr, channels) in by_owner {
        if !state.conns.contains_key(&addr) {
            if !subscribe {
                continue;
            }
            let conn = connect_shard(inner, &addr, generation).await?;
            state.conns.insert(addr.clone(), conn);
        }
        let Some(conn) = state.conns.get_mut(&addr) else {
            continue;
        };
        send(conn, &channels, subscribe).await?;
    }
    Ok(())
}

/// Sends one `SSUBSCRIBE` (or `SUNSUBSCRIBE`) per channel, pipelined, and checks each answer
/// confirms its own channel.
async fn send(
    conn: &mut MultiplexedConnection,
    channels: &[&str],
    subscribe: bool,
) -> Result<(), BusError> {
    let (name, kind) = if subscribe {
        ("SSUBSCRIBE", PushKind::SSubscribe)
    } else {
        ("SUNSUBSCRIBE", PushKind::SUnsubscribe)
    };
    for chunk in channels.chunks(PER_PIPELINE) {
        let mut pipe = redis::pipe();
        for c in chunk {
            pipe.cmd(name).arg(*c);
        }
        let replies = conn
            .send_packed_commands(&pipe, 0, chunk.len())
            .await
            .map_err(|e| unavailable("Redis sharded (un)subscribe failed", e))?;
        if replies.len() != chunk.len() {
            return Err(BusError::Unavailable(format!(
                "{name}: {} answers to {} channels",
                replies.len(),
                chunk.len()
            )));
        }
        for (c, reply) in chunk.iter().zip(&replies) {
            let confirmed = match reply {
                Value::Push { kind: k, data } if *k == kind => {
                    matches!(data.first(), Some(Value::BulkString(b)) if b.as_slice() == c.as_bytes())
                }
                _ => false,
            };
            if !confirmed {
                return Err(BusError::Unavailable(format!(
                    "{name} {c}: answered {reply:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Opens a subscriber connection to the primary at `addr`, its pushes handled for
/// `generation`.
async fn connect_shard(
    inner: &Arc<Inner>,
    addr: &str,
    generation: u64,
) -> Result<MultiplexedConnection, BusError> {
    let RedisTarget::Cluster(seeds) = &inner.settings().target else {
        return Err(BusError::Unavailable("not a cluster".into()));
    };
    let seed = seeds
        .first()
        .ok_or_else(|| BusError::Unavailable("no cluster seed".into()))?;
    let client =
        single_client(&shard_url(seed, addr)).map_err(|e| unavailable("Redis shard URL", e))?;
    let push = push_handler(inner, generation);
    inner
        .connect_to(&client, push)
        .await
        .map_err(|e| unavailable(&format!("Redis shard {addr} unreachable"), e))
}

/// What a shard connection does with what Redis pushes: messages to the inbox (probes to the
/// probe), and a lost connection or a slot that left it to a rebuild of every subscription.
fn push_handler(
    inner: &Arc<Inner>,
    generation: u64,
) -> impl Fn(PushInfo) -> Result<(), SendError> + Send + Sync + 'static {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let inbox = inner.inbox().clone();
    move |info: PushInfo| {
        let lost = |inner: &Inner| {
            inner.subscriptions_lost(generation);
            report_failure(&inner.shards.failed_tx, generation);
        };
        match info.kind {
            PushKind::SMessage => {
                let mut data = info.data.into_iter();
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    match weak.upgrade() {
                        Some(inner) if inner.shards.is_probe(&channel) => {
                            if let Some(seen) = inner.shards.probe_echoed(&channel, &payload) {
                                inner.probe_seen(seen);
                            }
                        }
                        _ => inbox(Bytes::from(payload)),
                    }
                }
            }
            PushKind::SUnsubscribe => {
                // Our own SUNSUBSCRIBE names channels no longer wanted; one still wanted (or a
                // probe's) was taken from us: its slot moved.
                if let (Some(Value::BulkString(channel)), Some(inner)) =
                    (info.data.first(), weak.upgrade())
                {
                    if inner.shards.is_wanted(channel) || inner.shards.is_probe(channel) {
                        warn!(
                            channel = %String::from_utf8_lossy(channel),
                            "Redis moved a subscribed slot; resubscribing on its new owner"
                        );
                        lost(&inner);
                    }
                }
            }
            PushKind::Disconnection => {
                if let Some(inner) = weak.upgrade() {
                    lost(&inner);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads the topology, then opens a connection to each owner of a wanted or probe channel and
/// subscribes them all; the subscriptions are live from the end of this on.
async fn open_all(inner: &Arc<Inner>, generation: u64) -> Result<(), BusError> {
    let shards_cmd = redis::cmd("CLUSTER").arg("SHARDS").to_owned();
    let topology =
        Topology::parse(&inner.query(&shards_cmd).await?).map_err(BusError::Unavailable)?;
    let shards = &inner.shards;
    let mut state = shards.state.lock().await;
    state.live = false;
    state.conns.clear();
    state.topology = topology;
    state.generation = generation;
    let mut probes = HashMap::new();
    for addr in state.topology.primaries() {
        if let Some(channel) = shards.probe_channel(&state.topology, addr) {
            probes.insert(channel.into_bytes(), 0u64);
        }
    }
    let probe_names: Vec<String> = probes
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    *shards.probes.lock().unwrap_or_else(poisoned) = probes;
    let wanted: Vec<String> = state.wanted.iter().cloned().collect();
    let all: Vec<String> = wanted.into_iter().chain(probe_names).collect();
    follow(inner, &mut state, generation, &all, true).await?;
    state.live = true;
    let owners = state.conns.len();
    drop(state);
    // Under no lock now, but a loss reported meanwhile still wins (see `liveness.rs`).
    inner.subscriptions_restored(generation);
    info!(
        generation,
        shards = owners,
        "Redis Cluster subscribers connected"
    );
    Ok(())
}

/// Keeps every wanted channel subscribed on the shard that owns it until the bus is dropped.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(inner.settings().reconnect_max);
    let mut failed_rx = inner.shards.failed_tx.subscribe();
    let mut lost_one = false;
    loop {
        let generation = inner.generation();
        if let Err(e) = open_all(&inner, generation).await {
            let pause = backoff.next_delay();
            warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Redis Cluster subscribers not ready");
            let mut state = inner.shards.state.lock().await;
            if state.generation == generation {
                state.live = false;
                state.conns.clear();
            }
            drop(state);
            tokio::time::sleep(pause).await;
            continue;
        }
        backoff.reset();
        if lost_one {
            inner.metrics().bus_reconnects.inc();
        }
        inner.set_subscriber_up(true);
        let probe_inner = inner.clone();
        let probe = probe::watch_subscriber(
            inner.settings().probe_interval,
            inner.settings().probe_timeout,
            move |token| {
                let inner = probe_inner.clone();
                async move { publish_probes(&inner, token).await }
            },
            inner.probe_seen_rx(),
        );
        let starved = tokio::select! {
            _ = failed_rx.wait_for(|failed| *failed >= generation) => None,
            outcome = probe => Some(outcome),
        };
        lost_one = true;
        inner.subscriptions_lost(generation);
        inner.set_subscriber_up(false);
        let mut state = inner.shards.state.lock().await;
        if state.generation == generation {
            state.live = false;
            state.conns.clear();
        }
        drop(state);
        match starved {
            Some(outcome) => {
                inner.metrics().bus_probe_failures.inc();
                warn!(
                    generation,
                    ?outcome,
                    "Redis Cluster subscriber starved; rebuilding"
                );
            }
            None => warn!(generation, "Redis Cluster subscription lost; rebuilding"),
        }
    }
}

/// Publishes `token` on every shard's probe channel; the fewest receivers any had.
async fn publish_probes(inner: &Inner, token: u64) -> Option<usize> {
    let mut fewest = usize::MAX;
    for channel in inner.shards.probe_channels() {
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(channel).arg(token.to_string());
        let n = match inner.query(&cmd).await.ok()? {
            Value::Int(n) => n.max(0) as usize,
            _ => return None,
        };
        fewest = fewest.min(n);
    }
    (fewest != usize::MAX).then_some(fewest)
}
