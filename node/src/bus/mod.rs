//! The bus: how nodes exchange envelopes. In memory for one process, Redis for many.
//!
//! The bus knows channels, not clients: the hub decides which channels this node needs (the
//! broadcast channel always, a room's channel while it has local members, a client's channel while
//! it has local connections) and the subscription manager asks the bus to follow that set. Every
//! envelope a node receives goes to its [`Inbox`]; a node delivers even its own messages only
//! through the bus, so no message is delivered twice and one sender's order is kept.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::watch;

mod liveness;
pub mod memory;
mod probe;
pub mod redis;
pub mod redis_config;
mod redis_conn;

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

    /// Publishes several payloads in this order; one result per payload. The default publishes
    /// them one by one; a bus with a round trip per command should send them as one batch.
    async fn publish_batch(&self, batch: &[(Channel, Bytes)]) -> Vec<Result<usize, BusError>> {
        let mut results = Vec::with_capacity(batch.len());
        for (channel, payload) in batch {
            results.push(self.publish(channel, payload.clone()).await);
        }
        results
    }

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

    /// `true` while every subscription [`Bus::subscribe`] confirmed is in effect: false from the
    /// moment the connection carrying them is lost until a new one has them all again. What is
    /// published meanwhile does not reach this node. A bus that cannot lose its subscriptions
    /// (the in-memory one) keeps the default, always true.
    fn subscriptions_live(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }
}
