//! The bus: how nodes exchange envelopes. In memory for one process, Redis for many.
//!
//! The bus knows channels, not clients: the hub decides which channels this node needs (the
//! broadcast channel always, a room's channel while it has local members, a client's channel while
//! it has local connections) and the subscription manager asks the bus to follow that set. Every
//! envelope a node receives goes to its [`Inbox`]; a node delivers even its own messages only
//! through the bus, so no message is delivered twice and one sender's order is kept.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::watch;

mod liveness;
pub mod memory;
mod memory_history;
mod memory_presence;
pub mod presence;
mod probe;
pub mod redis;
mod redis_batch;
pub mod redis_config;
mod redis_conn;
mod redis_history;
mod redis_presence;
mod redis_presence_changes;
mod redis_presence_keys;
mod redis_shard_set;
mod redis_shards;
mod redis_topology;

/// A bus channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Every node follows it.
    Broadcast,
    /// Followed by the nodes with local members in the room.
    Room(String),
    /// Followed by the nodes holding a connection of the client id.
    Client(String),
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Broadcast => write!(f, "broadcast"),
            Channel::Room(r) => write!(f, "room:{r}"),
            Channel::Client(c) => write!(f, "client:{c}"),
        }
    }
}

/// How a room keeps its messages (from its room options and the node's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Messages kept (≥ 1).
    pub size: u32,
    /// How long the history lives after the room's last message.
    pub ttl: Duration,
    /// How long the room's offset counter and epoch live after its last message (at least
    /// `ttl`): a client that missed nothing is told `recovered:true` for this long.
    pub meta_ttl: Duration,
}

/// A room message for history: the bus gives it the room's next offset, keeps it and publishes
/// it, as one step, so offset order is delivery order.
#[derive(Debug, Clone)]
pub struct StoredPublish {
    /// The room.
    pub room: String,
    /// The chat frame up to `"offset":` (`ringcast_protocol::stored::chat_head`).
    pub head: Bytes,
    /// When it was published, for delivery latency.
    pub sent_at_micros: u64,
    /// How the room keeps messages.
    pub keep: Keep,
    /// The sender's dedupe key (`ID\nSENDER`, see [`dedupe_key`]) for a message with an `id`:
    /// while a message stored under the same key is still in the room's history, this one is
    /// not stored or published again, and its answer is the first one's offset.
    pub dedupe: Option<Arc<str>>,
}

/// The key a message id is deduplicated under: the id, a newline (which neither an id nor a
/// client id may contain), the sender. One sender's ids never collide with another's.
pub fn dedupe_key(sender: &str, id: &str) -> Arc<str> {
    format!("{id}\n{sender}").into()
}

/// What storing a room message gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: Arc<str>,
    /// Nodes subscribed to the room's channel (0 for a duplicate, which is not published).
    pub subscribers: usize,
    /// It repeated a message still in history ([`StoredPublish::dedupe`]): nothing was stored
    /// or published, and `offset` is the first one's.
    pub duplicate: bool,
}

/// One connection more or fewer of a client id in a room's presence, with what to announce
/// when that was the client id's first connection there anywhere (a join) or its last (a
/// leave). Queued with the node's publishes, so an announcement keeps its place among what
/// the same session published before it, and the bus writes the change and publishes the
/// announcement in one step (on Redis: one script, no second round trip).
#[derive(Debug, Clone)]
pub struct PresenceChange {
    /// One connection more (`true`) or fewer.
    pub add: bool,
    /// The room.
    pub room: String,
    /// The client id.
    pub client: Arc<str>,
    /// The node instance the connection is counted under (`presence.rs`).
    pub instance: Arc<str>,
    /// An envelope for the room's channel, published only when the change was the client id's
    /// first (add) or last (remove) connection in the room anywhere.
    pub announce: Option<Bytes>,
}

/// One publish of a batch.
#[derive(Debug, Clone)]
pub enum Publish {
    /// An envelope to a channel, not kept.
    Plain(Channel, Bytes),
    /// A room message to number, keep and publish.
    Stored(StoredPublish),
    /// A presence change and its announcement.
    Presence(PresenceChange),
}

/// The outcome of one [`Publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Nodes subscribed to the channel.
    Plain(usize),
    /// What storing gave the message.
    Stored(Stored),
    /// Whether the change was the client id's first (add) or last (remove) connection in the
    /// room anywhere, i.e. whether its announcement went out. A removal under an instance
    /// that was swept meanwhile changes nothing and says false.
    Presence(bool),
}

impl Published {
    /// Nodes that were subscribed (0 for a presence change).
    pub fn subscribers(&self) -> usize {
        match self {
            Published::Plain(n) => *n,
            Published::Stored(s) => s.subscribers,
            Published::Presence(_) => 0,
        }
    }
}

/// Which part of a room's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The oldest messages after this offset.
    After(u64),
    /// The newest messages.
    Newest,
}

/// A page of a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The room's last offset (0: nothing stored yet in this epoch).
    pub top: u64,
    /// The room's epoch (created by the read if the room had none).
    pub epoch: Arc<str>,
    /// The oldest offset still kept, if any.
    pub first: Option<u64>,
    /// `(offset, frame)`, ascending.
    pub messages: Vec<(u64, String)>,
}

/// Where a bus hands each received payload (an encoded envelope). Called from the bus's own task;
/// it must not block.
pub type Inbox = Arc<dyn Fn(Bytes) + Send + Sync>;

/// Why a bus operation failed.
#[derive(Debug, Error, Clone)]
pub enum BusError {
    /// The bus backend is unreachable right now.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A publish/subscribe transport between nodes.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a payload; returns how many nodes were subscribed to the channel.
    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<usize, BusError>;

    /// Numbers, keeps and publishes one room message (see [`StoredPublish`]).
    async fn publish_stored(&self, msg: &StoredPublish) -> Result<Stored, BusError>;

    /// Publishes several items in this order; one result per item. The default publishes them
    /// one by one; a bus with a round trip per command should send them as one batch.
    async fn publish_all(&self, batch: &[Publish]) -> Vec<Result<Published, BusError>> {
        let mut results = Vec::with_capacity(batch.len());
        for item in batch {
            results.push(match item {
                Publish::Plain(channel, payload) => self
                    .publish(channel, payload.clone())
                    .await
                    .map(Published::Plain),
                Publish::Stored(msg) => self.publish_stored(msg).await.map(Published::Stored),
                Publish::Presence(change) => {
                    self.change_presence(change).await.map(Published::Presence)
                }
            });
        }
        results
    }

    /// Writes a presence change to [`Bus::presence`], then publishes its announcement when it
    /// was the client id's first or last connection in the room; whether it was. A bus that
    /// batches publishes does both in one step of [`Bus::publish_all`] instead.
    async fn change_presence(&self, change: &PresenceChange) -> Result<bool, BusError> {
        let presence = self.presence();
        let (room, client, instance) = (&change.room, &*change.client, &*change.instance);
        let changed = if change.add {
            presence.add(room, client, instance).await?
        } else {
            presence.remove(room, client, instance).await?
        };
        if let (true, Some(payload)) = (changed, &change.announce) {
            // The change stands: a failed announcement is the publisher's to log, not a
            // failed change (the caller would undo a join that Redis counted).
            let _ = self
                .publish(&Channel::Room(room.clone()), payload.clone())
                .await;
        }
        Ok(changed)
    }

    /// Reads up to `limit` messages of a room's history, with its top offset and epoch (a room
    /// without an epoch gets one, kept for `meta_ttl`).
    async fn history(
        &self,
        room: &str,
        query: HistoryQuery,
        limit: usize,
        meta_ttl: Duration,
    ) -> Result<HistoryPage, BusError>;

    /// Whether publishing costs a round trip, so senders should queue their publishes for
    /// batching (`publisher.rs`) instead of awaiting each one. An in-process bus delivers within
    /// `publish` itself, which keeps fan-out on the senders' tasks and paces them; it says no.
    fn batches_publishes(&self) -> bool {
        false
    }

    /// Subscribes to channels; returns once every subscription is active, so anything published
    /// after it returns reaches this node's inbox.
    async fn subscribe(&self, channels: &[Channel]) -> Result<(), BusError>;

    /// Unsubscribes from channels.
    async fn unsubscribe(&self, channels: &[Channel]) -> Result<(), BusError>;

    /// `true` while the bus can publish and receive.
    fn healthy(&self) -> watch::Receiver<bool>;

    /// Where this bus keeps presence.
    fn presence(&self) -> &dyn presence::Presence;

    /// `true` while every subscription [`Bus::subscribe`] confirmed is in effect: false from the
    /// moment the connection carrying them is lost until a new one has them all again. What is
    /// published meanwhile does not reach this node. A bus that cannot lose its subscriptions
    /// (the in-memory one) keeps the default, always true.
    fn subscriptions_live(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }
}
