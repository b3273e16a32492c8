//! The Redis bus: nodes exchange envelopes over Redis pub/sub.
//!
//! Two RESP3 connections per node: a multiplexed one that pipelines every PUBLISH, and a
//! dedicated subscriber whose push messages go straight from the connection's reader to the
//! [`Inbox`] (no queue in between, so a node that cannot keep up shows as a slow subscriber in
//! Redis, which drops it, instead of growing a buffer here). A supervisor task per connection
//! rebuilds it with capped backoff whenever it fails; the subscriber is rebuilt too when Redis
//! drops it or when the probe (`probe.rs`) finds it starved. The bus keeps its own set of wanted
//! channels and subscribes all of them on every new subscriber connection, so subscriptions
//! survive Redis restarts. What the hub must notice is the gap: `subscriptions_live()` is false
//! from the moment the subscriber connection is lost (its reader reports the disconnect) until a
//! new one has resubscribed everything, so the hub holds back join acks meanwhile. `healthy()` is
//! false while either connection is down (the subscriber counts as down until resubscribed).
//!
//! On a Redis Cluster (`--redis-cluster`) the command connection is a cluster connection that
//! routes each command by its key's slot, publishes are `SPUBLISH` (broadcast too: a fixed
//! sharded channel, so it costs one shard what a room does, instead of classic `PUBLISH`,
//! which every shard would forward to every other), a batch is cut into one pipeline per slot
//! (sent concurrently; a room's messages stay in order because a room is one slot), and the
//! subscriber is one connection per shard (`redis_shards.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ringcast_net::redis_target::{single_client, slot_of, RedisTarget};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use ringcast_protocol::stored::new_epoch;

use super::redis_batch::Batch;
use super::redis_config::RedisBusConfig;
use super::redis_conn::{supervise_publisher, supervise_subscriber, unavailable, Inner};
use super::redis_history::{
    parse_page, parse_stored, publish_cmd, read_cmd, room_channel, Mode, PUBLISH_SCRIPT, SCRIPT_RUN,
};
use super::redis_presence_changes::{
    changes_cmd, parse_changes, ListedRooms, Listing, CHANGES_RUN,
};
use super::redis_shards;
use super::{
    Bus, BusError, Channel, HistoryPage, HistoryQuery, Inbox, PresenceChange, Publish, Published,
    Stored, StoredPublish,
};
use crate::metrics::Metrics;

/// A [`Bus`] over Redis pub/sub.
pub struct RedisBus {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    /// Rooms the node's instance has listed for presence (`redis_presence_changes.rs`).
    listed: std::sync::Mutex<ListedRooms>,
}

impl RedisBus {
    /// Starts the bus: parses the URL and spawns the connection supervisors, which connect in the
    /// background and keep retrying. Fails only on an unusable URL.
    pub fn start(
        settings: RedisBusConfig,
        inbox: Inbox,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BusError> {
        // rediss:// needs a rustls crypto provider; ignore "already installed".
        let _ = rustls::crypto::ring::default_provider().install_default();
        settings
            .target
            .validate()
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let client = match &settings.target {
            RedisTarget::Single(url) => {
                Some(single_client(url).map_err(|e| unavailable("invalid Redis URL", e))?)
            }
            RedisTarget::Cluster(_) => None,
        };
        let cluster = settings.target.is_cluster();
        let probe_channel = format!(
            "{}:probe:{}:{:016x}",
            settings.prefix,
            settings.node_id,
            rand::random::<u64>()
        );
        let broadcast = format!("{}:{}", settings.prefix, Channel::Broadcast);
        let inner = Arc::new(Inner::new(
            client,
            settings,
            probe_channel,
            BTreeSet::from([broadcast]),
            inbox,
            metrics,
        ));
        let subscriber = if cluster {
            tokio::spawn(redis_shards::supervise(inner.clone()))
        } else {
            tokio::spawn(supervise_subscriber(inner.clone()))
        };
        let tasks = vec![tokio::spawn(supervise_publisher(inner.clone())), subscriber];
        Ok(RedisBus {
            inner,
            tasks,
            listed: Default::default(),
        })
    }

    /// Waits up to `limit` for both connections; returns whether the bus is healthy.
    pub async fn wait_healthy(&self, limit: Duration) -> bool {
        let mut rx = self.inner.healthy_rx();
        let up = tokio::time::timeout(limit, rx.wait_for(|up| *up)).await;
        up.is_ok()
    }

    /// The key prefix.
    pub(super) fn prefix(&self) -> &str {
        self.inner.prefix()
    }

    /// Sends a batch that may span slots on the command connection (`redis_batch.rs`).
    pub(super) async fn batch(&self, batch: &Batch) -> Result<Vec<redis::Value>, BusError> {
        self.inner.batch(batch).await
    }

    /// The scripts' mode.
    fn mode(&self) -> Mode {
        if self.inner.is_cluster() {
            Mode::Cluster
        } else {
            Mode::Single
        }
    }

    /// Sends one command on the command connection.
    pub(super) async fn query(&self, cmd: &redis::Cmd) -> Result<redis::Value, BusError> {
        self.inner.query(cmd).await
    }

    /// A channel's Redis name: `PREFIX:broadcast`, `PREFIX:client:ID`, and for a room the
    /// hash-tagged `{PREFIX:room:R}` its history keys share a slot with.
    fn name(&self, channel: &Channel) -> String {
        match channel {
            Channel::Room(room) => room_channel(self.inner.prefix(), room),
            _ => format!("{}:{channel}", self.inner.prefix()),
        }
    }
}

impl RedisBus {
    /// Sends `batch` as one pipeline (on a cluster: all of one slot), in order: plain publishes
    /// as they are, runs of stored messages and runs of presence changes as script calls. With
    /// `list`, the rooms presence changes add to are listed under their instances first, in the
    /// same pipeline (on a cluster the caller lists them before: another slot).
    async fn publish_pipeline(
        &self,
        batch: &[Publish],
        list: bool,
    ) -> Vec<Result<Published, BusError>> {
        let steps = plan(batch);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // (Only a batch with presence adds looks at the listed rooms: most batches are messages.)
        let listing = (list && presence_adds(batch).next().is_some())
            .then(|| self.listing(presence_adds(batch)));
        let listed = listing.as_ref().map_or(0, Listing::len);
        if let Some(listing) = &listing {
            listing.batch.add_to(&mut pipe);
        }
        // The script goes by its SHA; loading it first in the same pipeline (one `SCRIPT LOAD`
        // per batch, not per message) means Redis has it for every `EVALSHA` after, even just
        // after a restart or a `SCRIPT FLUSH` — and a NOSCRIPT can never reorder a batch.
        if steps.iter().any(|s| matches!(s, Step::Script(_))) {
            pipe.cmd("SCRIPT").arg("LOAD").arg(PUBLISH_SCRIPT).ignore();
        }
        let epoch = new_epoch(rand::random::<u8>);
        for step in &steps {
            match step {
                Step::Plain(i) => {
                    let Publish::Plain(channel, payload) = &batch[*i] else {
                        unreachable!("plan() makes a Plain step of a plain publish only")
                    };
                    let command = match self.mode() {
                        Mode::Single => "PUBLISH",
                        Mode::Cluster => "SPUBLISH",
                    };
                    pipe.cmd(command)
                        .arg(self.name(channel))
                        .arg(payload.as_ref());
                }
                Step::Script(run) => {
                    let msgs: Vec<&StoredPublish> = batch[run.clone()]
                        .iter()
                        .filter_map(|p| match p {
                            Publish::Stored(m) => Some(m),
                            _ => None,
                        })
                        .collect();
                    pipe.add_command(publish_cmd(self.inner.prefix(), &msgs, &epoch, self.mode()));
                }
                Step::Presence(run) => {
                    let changes: Vec<&PresenceChange> =
                        presence_changes(&batch[run.clone()]).collect();
                    let publish = match self.mode() {
                        Mode::Single => "PUBLISH",
                        Mode::Cluster => "SPUBLISH",
                    };
                    pipe.add_command(changes_cmd(self.inner.prefix(), &changes, publish));
                }
            }
        }
        let err = match self.inner.pipeline(&pipe).await {
            Ok(mut values) if values.len() == listed + steps.len() => {
                // A room Redis did not list fails its changes (they are written again, listed,
                // by the retry pass); one it listed is remembered.
                let unlisted = values.drain(..listed).find_map(|v| match v {
                    redis::Value::Int(_) => None,
                    other => Some(BusError::Unavailable(format!(
                        "Redis answered a presence listing with {other:?}"
                    ))),
                });
                if let (Some(listing), None) = (listing, &unlisted) {
                    self.listed_ok(listing);
                }
                let mut out = Vec::with_capacity(batch.len());
                for (step, value) in steps.iter().zip(values) {
                    if let (Step::Presence(run), Some(e)) = (step, &unlisted) {
                        out.extend(run.clone().map(|_| Err(e.clone())));
                        continue;
                    }
                    match step {
                        Step::Plain(_) => out.push(match value {
                            redis::Value::Int(n) => Ok(Published::Plain(n.max(0) as usize)),
                            other => Err(BusError::Unavailable(format!(
                                "Redis answered a PUBLISH with {other:?}"
                            ))),
                        }),
                        Step::Script(run) => out.extend(
                            parse_stored(&value, run.len())
                                .into_iter()
                                .map(|r| r.map(Published::Stored)),
                        ),
                        Step::Presence(run) => {
                            let changes: Vec<&PresenceChange> =
                                presence_changes(&batch[run.clone()]).collect();
                            out.extend(
                                parse_changes(&value, &changes)
                                    .into_iter()
                                    .map(|r| r.map(Published::Presence)),
                            )
                        }
                    }
                }
                return out;
            }
            Ok(values) => BusError::Unavailable(format!(
                "Redis answered {} commands with {} replies",
                listed + steps.len(),
                values.len()
            )),
            Err(e) => e,
        };
        batch.iter().map(|_| Err(err.clone())).collect()
    }

    /// The `SADD`s that list the rooms of `adds` (instance, room) the node has not listed yet.
    pub(super) fn listing<'a>(
        &self,
        adds: impl IntoIterator<Item = (&'a Arc<str>, &'a str)>,
    ) -> Listing {
        let listed = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        listed.listing(self.inner.prefix(), adds, self.inner.generations_made())
    }

    /// Remembers a listing Redis took.
    pub(super) fn listed_ok(&self, listing: Listing) {
        let mut listed = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        listed.listed(listing, self.inner.generations_made());
    }

    /// Forgets listed rooms: `Some(rooms)` about to be taken off the list, `None` all of them.
    pub(super) fn forget_listed(&self, rooms: Option<&[String]>) {
        let mut listed = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        match rooms {
            Some(rooms) => listed.forget(rooms),
            None => listed.clear(),
        }
    }

    /// The name whose slot an item goes to: its channel's, or its room's.
    fn slot_name(&self, item: &Publish) -> String {
        match item {
            Publish::Plain(channel, _) => self.name(channel),
            Publish::Stored(m) => room_channel(self.inner.prefix(), &m.room),
            Publish::Presence(c) => room_channel(self.inner.prefix(), &c.room),
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<usize, BusError> {
        self.inner
            .publish_raw(self.name(channel).as_bytes(), &payload)
            .await
    }

    fn batches_publishes(&self) -> bool {
        true
    }

    async fn publish_stored(&self, msg: &StoredPublish) -> Result<Stored, BusError> {
        self.publish_all(&[Publish::Stored(msg.clone())])
            .await
            .pop()
            .unwrap_or_else(|| Err(BusError::Unavailable("no reply".into())))
            .and_then(|p| match p {
                Published::Stored(s) => Ok(s),
                _ => Err(BusError::Unavailable("not a stored reply".into())),
            })
    }

    async fn publish_all(&self, batch: &[Publish]) -> Vec<Result<Published, BusError>> {
        if !self.inner.is_cluster() {
            return self.publish_pipeline(batch, true).await;
        }
        // The rooms presence changes add to are listed first (the instances' slots); if that
        // fails, the adds fail and the rest goes on.
        let mut unlisted = None;
        if presence_adds(batch).next().is_some() {
            let listing = self.listing(presence_adds(batch));
            if !listing.batch.is_empty() {
                unlisted = self.inner.batch(&listing.batch).await.err();
            }
            if unlisted.is_none() {
                self.listed_ok(listing);
            }
        }
        // One pipeline per slot, all at once; each item's result back at its place.
        let mut out: Vec<Option<Result<Published, BusError>>> = vec![None; batch.len()];
        let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, item) in batch.iter().enumerate() {
            if let (Some(e), Publish::Presence(change)) = (&unlisted, item) {
                if change.add {
                    out[i] = Some(Err(e.clone()));
                    continue;
                }
            }
            let slot = slot_of(self.slot_name(item).as_bytes());
            match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, group)) => group.push(i),
                None => by_slot.push((slot, vec![i])),
            }
        }
        let sends = by_slot.iter().map(|(_, group)| {
            let part: Vec<Publish> = group.iter().map(|i| batch[*i].clone()).collect();
            async move { self.publish_pipeline(&part, false).await }
        });
        let results = futures_util::future::join_all(sends).await;
        for ((_, group), part) in by_slot.iter().zip(results) {
            for (i, r) in group.iter().zip(part) {
                out[*i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BusError::Unavailable("no reply".into()))))
            .collect()
    }

    async fn history(
        &self,
        room: &str,
        query: HistoryQuery,
        limit: usize,
        meta_ttl: Duration,
    ) -> Result<HistoryPage, BusError> {
        let epoch = new_epoch(rand::random::<u8>);
        let cmd = read_cmd(
            self.inner.prefix(),
            room,
            query,
            limit,
            &epoch,
            meta_ttl,
            self.mode(),
        );
        parse_page(&self.inner.query(&cmd).await?, query)
    }

    async fn subscribe(&self, channels: &[Channel]) -> Result<(), BusError> {
        let names: Vec<String> = channels.iter().map(|c| self.name(c)).collect();
        if self.inner.is_cluster() {
            return redis_shards::command(&self.inner, &names, true).await;
        }
        self.inner.subscriber_command(&names, true).await
    }

    async fn unsubscribe(&self, channels: &[Channel]) -> Result<(), BusError> {
        let names: Vec<String> = channels
            .iter()
            .filter(|c| **c != Channel::Broadcast)
            .map(|c| self.name(c))
            .collect();
        if self.inner.is_cluster() {
            return redis_shards::command(&self.inner, &names, false).await;
        }
        self.inner.subscriber_command(&names, false).await
    }

    fn healthy(&self) -> watch::Receiver<bool> {
        self.inner.healthy_rx()
    }

    fn presence(&self) -> &dyn super::presence::Presence {
        self
    }

    fn subscriptions_live(&self) -> watch::Receiver<bool> {
        self.inner.live_rx()
    }
}

/// One command of a publish pipeline: a plain `PUBLISH` of the batch's item `i`, one script
/// call for a run of consecutive stored messages, or one for a run of consecutive presence
/// changes (a run never crosses another kind of item, so the pipeline keeps the batch's order
/// exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Plain(usize),
    Script(std::ops::Range<usize>),
    Presence(std::ops::Range<usize>),
}

/// Cuts a batch into [`Step`]s: runs of stored messages of at most [`SCRIPT_RUN`], runs of
/// presence changes of at most [`CHANGES_RUN`].
fn plan(batch: &[Publish]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (i, item) in batch.iter().enumerate() {
        match (item, steps.last_mut()) {
            (Publish::Plain(..), _) => steps.push(Step::Plain(i)),
            (Publish::Stored(_), Some(Step::Script(run))) if run.len() < SCRIPT_RUN => {
                run.end = i + 1
            }
            (Publish::Stored(_), _) => steps.push(Step::Script(i..i + 1)),
            (Publish::Presence(_), Some(Step::Presence(run))) if run.len() < CHANGES_RUN => {
                run.end = i + 1
            }
            (Publish::Presence(_), _) => steps.push(Step::Presence(i..i + 1)),
        }
    }
    steps
}

/// The (instance, room) of each presence add among `items`.
fn presence_adds(items: &[Publish]) -> impl Iterator<Item = (&Arc<str>, &str)> {
    presence_changes(items)
        .filter(|c| c.add)
        .map(|c| (&c.instance, c.room.as_str()))
}

/// The presence changes among `items`, in order.
fn presence_changes(items: &[Publish]) -> impl Iterator<Item = &PresenceChange> {
    items.iter().filter_map(|p| match p {
        Publish::Presence(c) => Some(c),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Config;

    fn settings(url: &str) -> RedisBusConfig {
        let mut c = Config::for_tests();
        c.redis_url = Some(url.into());
        c.node_id = Some("n1".into());
        RedisBusConfig::from_config(&c).expect("url set")
    }

    #[test]
    fn a_batch_is_cut_into_runs_of_stored_messages_that_keep_its_order() {
        let plain = || Publish::Plain(Channel::Broadcast, Bytes::new());
        let stored = || {
            Publish::Stored(StoredPublish {
                room: "r".into(),
                head: Bytes::new(),
                sent_at_micros: 0,
                keep: crate::bus::Keep {
                    size: 1,
                    ttl: Duration::from_secs(1),
                    meta_ttl: Duration::from_secs(1),
                },
                dedupe: None,
            })
        };
        let batch = vec![stored(), stored(), plain(), stored(), plain(), plain()];
        assert_eq!(
            plan(&batch),
            [
                Step::Script(0..2),
                Step::Plain(2),
                Step::Script(3..4),
                Step::Plain(4),
                Step::Plain(5)
            ]
        );
        let long: Vec<_> = (0..SCRIPT_RUN * 2 + 1).map(|_| stored()).collect();
        assert_eq!(
            plan(&long),
            [
                Step::Script(0..SCRIPT_RUN),
                Step::Script(SCRIPT_RUN..2 * SCRIPT_RUN),
                Step::Script(2 * SCRIPT_RUN..2 * SCRIPT_RUN + 1)
            ]
        );
        assert!(plan(&[]).is_empty());
    }

    #[tokio::test]
    async fn urls_parse_or_fail_clearly() {
        let inbox: Inbox = Arc::new(|_| {});
        let metrics = Arc::new(Metrics::new());
        for ok in [
            "redis://127.0.0.1:1",
            "redis://user:secret@127.0.0.1:1/0",
            "rediss://127.0.0.1:1",
        ] {
            let bus = RedisBus::start(settings(ok), inbox.clone(), metrics.clone());
            assert!(bus.is_ok(), "{ok}");
            assert!(
                !*bus.unwrap().healthy().borrow(),
                "nothing listens on port 1"
            );
        }
        let Err(BusError::Unavailable(msg)) = RedisBus::start(settings("http://x"), inbox, metrics)
        else {
            panic!("http:// must be refused");
        };
        assert!(msg.contains("invalid Redis URL"), "{msg}");
    }
}
