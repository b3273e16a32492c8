//! The Redis bus's two connections and the supervisors that keep them up (on a Redis Cluster
//! the command connection is a cluster connection and the subscriber is per shard:
//! `redis_shards.rs`).
//!
//! Each connection carries a generation number; failure reports (a disconnect pushed by the
//! connection's reader, a failed command, a failed probe) name the generation they concern, so a
//! late report about a replaced connection never tears down its successor. The subscriber is
//! rebuilt from the bus's wanted set, which makes every (re)connect restore all subscriptions;
//! the subscriptions count as live only from then on until that connection's loss is reported.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use bytes::Bytes;
use redis::aio::{MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, Client, ErrorKind, PushInfo, PushKind, RedisError, Value};
use ringcast_net::redis_target::RedisConn;
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use super::liveness::Liveness;
use super::probe::{self, Backoff};
use super::redis_batch::Batch;
use super::redis_config::RedisBusConfig;
use super::redis_shard_set::Shards;
use super::{BusError, Inbox};
use crate::metrics::Metrics;

/// Most channels named in one SUBSCRIBE / UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;

/// One live connection, tagged with the generation that tells its failure reports apart from
/// those of connections it replaced.
#[derive(Clone)]
struct Link<C = RedisConn> {
    generation: u64,
    conn: C,
}

/// The subscriber connection (one Redis) and what it must follow.
struct Subscriber {
    link: Option<Link<MultiplexedConnection>>,
    /// Redis channel names to follow (the broadcast channel from the start, plus what was
    /// subscribed and not unsubscribed since). Bounded by the hub's rooms and clients.
    wanted: BTreeSet<String>,
}

/// Everything the bus and its supervisors share.
pub(super) struct Inner {
    /// One Redis's client (`None` on a cluster, whose connections `settings.target` makes).
    client: Option<Client>,
    settings: RedisBusConfig,
    probe_channel: Arc<[u8]>,
    inbox: Inbox,
    metrics: Arc<Metrics>,
    next_generation: AtomicU64,
    publisher: RwLock<Option<Link>>,
    /// Held across SUBSCRIBE round trips (a tokio mutex), so commands and resubscription after a
    /// reconnect never interleave. One Redis only.
    subscriber: Mutex<Subscriber>,
    /// The per-shard subscribers of a cluster.
    pub(super) shards: Shards,
    /// Highest failed generation of each connection.
    publisher_failed_tx: watch::Sender<u64>,
    subscriber_failed_tx: watch::Sender<u64>,
    /// Highest probe token that came back.
    probe_seen_tx: watch::Sender<u64>,
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    healthy_tx: watch::Sender<bool>,
    /// Whether the wanted set is subscribed on a live connection (see [`Inner::live_rx`]).
    live_tx: watch::Sender<bool>,
    /// The generations `live_tx` speaks for; read and written only inside `live_tx`'s update
    /// closures, so both change together.
    liveness: std::sync::Mutex<Liveness>,
}

pub(super) fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

fn poisoned<T>(e: std::sync::PoisonError<T>) -> T {
    // The guarded values (one Option replaced whole, plain Liveness data) are consistent after
    // any panic.
    e.into_inner()
}

/// Records a failed generation in a "highest failed" watch.
pub(super) fn report_failure(tx: &watch::Sender<u64>, generation: u64) {
    tx.send_if_modified(|failed| {
        let newer = generation > *failed;
        if newer {
            *failed = generation;
        }
        newer
    });
}

impl Inner {
    /// The state of a bus that has not connected yet; `wanted` starts with the channels it always
    /// follows.
    pub(super) fn new(
        client: Option<Client>,
        settings: RedisBusConfig,
        probe_channel: String,
        wanted: BTreeSet<String>,
        inbox: Inbox,
        metrics: Arc<Metrics>,
    ) -> Self {
        let probe_base = probe_channel.clone();
        Inner {
            client,
            probe_channel: probe_channel.into_bytes().into(),
            inbox,
            metrics,
            next_generation: AtomicU64::new(1),
            publisher: RwLock::new(None),
            shards: Shards::new(wanted.clone()).with_probe_base(probe_base),
            subscriber: Mutex::new(Subscriber { link: None, wanted }),
            publisher_failed_tx: watch::channel(0).0,
            subscriber_failed_tx: watch::channel(0).0,
            probe_seen_tx: watch::channel(0).0,
            publisher_up: AtomicBool::new(false),
            subscriber_up: AtomicBool::new(false),
            healthy_tx: watch::channel(false).0,
            live_tx: watch::channel(false).0,
            liveness: std::sync::Mutex::new(Liveness::default()),
            settings,
        }
    }

    /// Follows the health of the bus (both connections up).
    pub(super) fn healthy_rx(&self) -> watch::Receiver<bool> {
        self.healthy_tx.subscribe()
    }

    /// Follows whether every wanted channel is subscribed on a live subscriber connection.
    pub(super) fn live_rx(&self) -> watch::Receiver<bool> {
        self.live_tx.subscribe()
    }

    /// Whether Redis is a cluster.
    pub(super) fn is_cluster(&self) -> bool {
        self.settings.target.is_cluster()
    }

    /// The settings.
    pub(super) fn settings(&self) -> &RedisBusConfig {
        &self.settings
    }

    /// The inbox every received payload goes to.
    pub(super) fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// The metrics.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The subscriber of `generation` has every wanted channel subscribed (believed only if
    /// that generation was not reported lost meanwhile: see `liveness.rs`).
    pub(super) fn subscriptions_restored(&self, generation: u64) {
        self.update_liveness(|l| l.restored(generation));
    }

    /// The subscriber of `generation` is lost (or judged so): until a new one has resubscribed,
    /// nothing published reaches this node. A report about a replaced generation changes nothing.
    pub(super) fn subscriptions_lost(&self, generation: u64) {
        self.update_liveness(|l| l.lost(generation));
    }

    fn update_liveness(&self, update: impl FnOnce(&mut Liveness) -> bool) {
        self.live_tx.send_if_modified(|live| {
            let mut liveness = self.liveness.lock().unwrap_or_else(poisoned);
            let changed = update(&mut liveness);
            *live = liveness.is_live();
            changed
        });
    }

    /// The channel prefix.
    pub(super) fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    pub(super) fn generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// The generation the next connection will get: it changes whenever any connection to
    /// Redis was made anew (after a restart, a failover, a lost connection).
    pub(super) fn generations_made(&self) -> u64 {
        self.next_generation.load(Ordering::Relaxed)
    }

    /// Marks the subscriber side up or down (health is both sides up).
    pub(super) fn set_subscriber_up(&self, up: bool) {
        self.set_up(&self.subscriber_up, up);
    }

    fn set_up(&self, flag: &AtomicBool, up: bool) {
        flag.store(up, Ordering::Release);
        let healthy =
            self.publisher_up.load(Ordering::Acquire) && self.subscriber_up.load(Ordering::Acquire);
        self.healthy_tx.send_if_modified(|h| {
            let changed = *h != healthy;
            *h = healthy;
            changed
        });
    }

    fn publisher(&self) -> Option<Link> {
        self.publisher.read().unwrap_or_else(poisoned).clone()
    }

    /// A connection to one server of `client` (one Redis's, or a shard's) whose pushes go to
    /// `push`.
    pub(super) async fn connect_to(
        &self,
        client: &Client,
        push: impl redis::aio::AsyncPushSender,
    ) -> Result<MultiplexedConnection, RedisError> {
        let limit = Some(self.settings.command_timeout);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(limit)
            .set_response_timeout(limit)
            .set_push_sender(push);
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.settings.command_timeout * 2, connecting).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((ErrorKind::Io, "connect timed out"))),
        }
    }

    /// A connection to the one Redis.
    async fn connect(
        &self,
        push: impl redis::aio::AsyncPushSender,
    ) -> Result<MultiplexedConnection, RedisError> {
        let Some(client) = &self.client else {
            return Err(RedisError::from((
                ErrorKind::Client,
                "no single-server client on a cluster",
            )));
        };
        self.connect_to(client, push).await
    }

    /// The command connection: to the one Redis (its disconnects go to `push`), or to the
    /// cluster.
    async fn connect_commands(
        &self,
        push: impl redis::aio::AsyncPushSender,
    ) -> Result<RedisConn, RedisError> {
        if self.client.is_some() {
            return self.connect(push).await.map(RedisConn::Single);
        }
        self.settings
            .target
            .connect(self.settings.command_timeout)
            .await
    }

    /// Publishes on the current publisher connection; a failure that may have broken the
    /// connection hands it to the supervisor for rebuilding.
    pub(super) async fn publish_raw(
        &self,
        channel: &[u8],
        payload: &[u8],
    ) -> Result<usize, BusError> {
        let Some(mut link) = self.publisher() else {
            return Err(BusError::Unavailable(
                "Redis publisher is reconnecting".into(),
            ));
        };
        let command = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let result: Result<usize, RedisError> = redis::cmd(command)
            .arg(channel)
            .arg(payload)
            .query_async(&mut link.conn)
            .await;
        result.map_err(|e| {
            if !matches!(e.kind(), ErrorKind::Server(_)) {
                report_failure(&self.publisher_failed_tx, link.generation);
            }
            unavailable("Redis publish failed", e)
        })
    }

    /// Sends a pipeline (one write, one round trip) on the publisher connection and returns
    /// one value per command, in order; a failure that may have broken the connection hands it
    /// to the supervisor for rebuilding.
    pub(super) async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, BusError> {
        let Some(mut link) = self.publisher() else {
            return Err(BusError::Unavailable(
                "Redis publisher is reconnecting".into(),
            ));
        };
        let result: Result<Vec<Value>, RedisError> = pipe.query_async(&mut link.conn).await;
        result.map_err(|e| {
            if !matches!(e.kind(), ErrorKind::Server(_)) {
                report_failure(&self.publisher_failed_tx, link.generation);
            }
            unavailable("Redis publish failed", e)
        })
    }

    /// Sends a batch that may span hash slots (see `redis_batch.rs`); the replies of the
    /// commands not ignored, in the batch's order.
    pub(super) async fn batch(&self, batch: &Batch) -> Result<Vec<Value>, BusError> {
        if !self.is_cluster() {
            return self.pipeline(&batch.pipeline()).await;
        }
        // The group of the batch's first command goes first and alone: callers put there what
        // must be in place before the rest runs (presence lists a room under the node's key
        // before it adds members to the room, so that a sweep finds every room a dead node may
        // hold). The other groups, one pipeline per slot, then go all at once (the cluster
        // connection multiplexes them over its connection to each shard): two round trips,
        // not one per slot. Replies come back in the groups' order.
        let groups = batch.slot_groups();
        let pipelines: Vec<redis::Pipeline> = groups
            .iter()
            .map(|group| batch.pipeline_of(group))
            .collect();
        let mut replies = Vec::with_capacity(groups.len());
        if let Some((first, rest)) = pipelines.split_first() {
            replies.push(self.pipeline(first).await?);
            let others = futures_util::future::join_all(rest.iter().map(|p| self.pipeline(p)));
            for reply in others.await {
                replies.push(reply?);
            }
        }
        batch
            .merge(&groups, replies)
            .ok_or_else(|| BusError::Unavailable("Redis answered a batch short".into()))
    }

    /// Runs one command on the publisher connection (as [`Inner::pipeline`]).
    pub(super) async fn query(&self, cmd: &redis::Cmd) -> Result<Value, BusError> {
        let Some(mut link) = self.publisher() else {
            return Err(BusError::Unavailable(
                "Redis publisher is reconnecting".into(),
            ));
        };
        let result: Result<Value, RedisError> = cmd.query_async(&mut link.conn).await;
        result.map_err(|e| {
            if !matches!(e.kind(), ErrorKind::Server(_)) {
                report_failure(&self.publisher_failed_tx, link.generation);
            }
            unavailable("Redis command failed", e)
        })
    }

    fn probe_echoed(&self, payload: &[u8]) {
        let token = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(token) = token {
            self.probe_seen(token);
        }
    }

    /// Probe `token` came back (on a cluster: on every shard).
    pub(super) fn probe_seen(&self, token: u64) {
        self.probe_seen_tx.send_if_modified(|seen| {
            let newer = token > *seen;
            if newer {
                *seen = token;
            }
            newer
        });
    }

    /// Follows the highest probe token that came back.
    pub(super) fn probe_seen_rx(&self) -> watch::Receiver<u64> {
        self.probe_seen_tx.subscribe()
    }
}

impl Inner {
    /// Runs a subscriber command; any failure leaves the server's view of this connection
    /// unknown, so the connection is dropped and rebuilt from the wanted set.
    pub(super) async fn subscriber_command(
        &self,
        names: &[String],
        subscribe: bool,
    ) -> Result<(), BusError> {
        let mut sub = self.subscriber.lock().await;
        if !subscribe {
            for n in names {
                sub.wanted.remove(n);
            }
        }
        let Some(mut link) = sub.link.clone() else {
            return if subscribe {
                Err(BusError::Unavailable(
                    "Redis subscriber is reconnecting".into(),
                ))
            } else {
                // Nothing to undo on the server: the next connection only follows `wanted`.
                Ok(())
            };
        };
        for chunk in names.chunks(CHANNELS_PER_COMMAND) {
            let result = if subscribe {
                link.conn.subscribe(chunk).await
            } else {
                link.conn.unsubscribe(chunk).await
            };
            if let Err(e) = result {
                sub.link = None;
                drop(sub);
                // At once, as for a pushed disconnect: joins wait from now on.
                self.subscriptions_lost(link.generation);
                report_failure(&self.subscriber_failed_tx, link.generation);
                return Err(unavailable("Redis (un)subscribe failed", e));
            }
        }
        if subscribe {
            sub.wanted.extend(names.iter().cloned());
        }
        Ok(())
    }
}

/// Keeps a publisher connection up until the bus is dropped.
pub(super) async fn supervise_publisher(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(inner.settings.reconnect_max);
    let mut failed_rx = inner.publisher_failed_tx.subscribe();
    let mut lost_one = false;
    loop {
        let generation = inner.generation();
        let weak = Arc::downgrade(&inner);
        let push = move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                if let Some(inner) = weak.upgrade() {
                    report_failure(&inner.publisher_failed_tx, generation);
                }
            }
            Ok::<(), SendError>(())
        };
        let conn = match inner.connect_commands(push).await {
            Ok(conn) => conn,
            Err(e) => {
                let pause = backoff.next_delay();
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Redis publisher connect failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        backoff.reset();
        *inner.publisher.write().unwrap_or_else(poisoned) = Some(Link { generation, conn });
        if lost_one {
            inner.metrics.bus_reconnects.inc();
        }
        info!(generation, "Redis publisher connected");
        inner.set_up(&inner.publisher_up, true);
        let _ = failed_rx.wait_for(|failed| *failed >= generation).await;
        lost_one = true;
        inner.set_up(&inner.publisher_up, false);
        let mut slot = inner.publisher.write().unwrap_or_else(poisoned);
        if slot.as_ref().is_some_and(|l| l.generation == generation) {
            *slot = None;
        }
        drop(slot);
        warn!(generation, "Redis publisher lost; reconnecting");
    }
}

/// Keeps a subscriber connection up, following every wanted channel, until the bus is dropped.
pub(super) async fn supervise_subscriber(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(inner.settings.reconnect_max);
    let mut failed_rx = inner.subscriber_failed_tx.subscribe();
    let mut lost_one = false;
    loop {
        let generation = inner.generation();
        if let Err(e) = open_subscriber(&inner, generation).await {
            let pause = backoff.next_delay();
            warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Redis subscriber connect failed");
            tokio::time::sleep(pause).await;
            continue;
        }
        backoff.reset();
        if lost_one {
            inner.metrics.bus_reconnects.inc();
        }
        info!(generation, "Redis subscriber connected");
        inner.set_up(&inner.subscriber_up, true);
        let probe_inner = inner.clone();
        let probe = probe::watch_subscriber(
            inner.settings.probe_interval,
            inner.settings.probe_timeout,
            move |token| {
                let inner = probe_inner.clone();
                async move {
                    let channel = inner.probe_channel.clone();
                    inner
                        .publish_raw(&channel, token.to_string().as_bytes())
                        .await
                        .ok()
                }
            },
            inner.probe_seen_tx.subscribe(),
        );
        let starved = tokio::select! {
            _ = failed_rx.wait_for(|failed| *failed >= generation) => None,
            outcome = probe => Some(outcome),
        };
        lost_one = true;
        inner.subscriptions_lost(generation);
        inner.set_up(&inner.subscriber_up, false);
        let mut sub = inner.subscriber.lock().await;
        if sub
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            sub.link = None;
        }
        drop(sub);
        match starved {
            Some(outcome) => {
                inner.metrics.bus_probe_failures.inc();
                warn!(
                    generation,
                    ?outcome,
                    "Redis subscriber starved; rebuilding it"
                );
            }
            None => warn!(generation, "Redis subscriber lost; reconnecting"),
        }
    }
}

/// Connects a subscriber and subscribes the probe channel and every wanted channel.
async fn open_subscriber(inner: &Arc<Inner>, generation: u64) -> Result<(), RedisError> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let inbox = inner.inbox.clone();
    let probe_channel = inner.probe_channel.clone();
    let push = move |info: PushInfo| {
        match info.kind {
            PushKind::Message => {
                let mut data = info.data.into_iter();
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    if *channel == *probe_channel {
                        if let Some(inner) = weak.upgrade() {
                            inner.probe_echoed(&payload);
                        }
                    } else {
                        inbox(Bytes::from(payload));
                    }
                }
            }
            PushKind::Disconnection => {
                if let Some(inner) = weak.upgrade() {
                    // At once, from the connection's reader: a join from now on waits for the
                    // resubscription instead of trusting subscriptions that are gone.
                    inner.subscriptions_lost(generation);
                    report_failure(&inner.subscriber_failed_tx, generation);
                }
            }
            _ => {}
        }
        Ok::<(), SendError>(())
    };
    let mut conn = inner.connect(push).await?;
    let mut sub = inner.subscriber.lock().await;
    conn.subscribe(&*inner.probe_channel).await?;
    let wanted: Vec<&String> = sub.wanted.iter().collect();
    for chunk in wanted.chunks(CHANNELS_PER_COMMAND) {
        conn.subscribe(chunk).await?;
    }
    sub.link = Some(Link { generation, conn });
    // Under the lock, so no subscribe can slip in between and find the set not live yet.
    inner.subscriptions_restored(generation);
    Ok(())
}
