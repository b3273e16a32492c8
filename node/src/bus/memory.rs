//! The in-memory bus: nodes in one process share a [`MemoryBroker`].
//!
//! This is the default with no Redis URL. Tests also put several nodes on one broker to exercise
//! cross-node routing without Redis. Delivery is synchronous in the publisher's task, which keeps
//! one sender's messages in order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use ringcast_protocol::stored::StoredMessage;

use super::memory_history::MemoryHistory;
use super::memory_presence::MemoryPresence;
use super::{Bus, BusError, Channel, HistoryPage, HistoryQuery, Inbox, Stored, StoredPublish};

type NodeKey = u64;

/// Channel subscriptions of every node on one in-process bus.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<BrokerState>,
}

#[derive(Default)]
struct BrokerState {
    next_key: AtomicU64,
    subscribers: RwLock<HashMap<Channel, Vec<(NodeKey, Inbox)>>>,
    history: MemoryHistory,
    presence: MemoryPresence,
}

impl MemoryBroker {
    /// A broker with no nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches one node, which receives what its subscriptions select through `inbox`.
    pub fn attach(&self, inbox: Inbox) -> MemoryBus {
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let (healthy_tx, _) = watch::channel(true);
        MemoryBus {
            broker: self.inner.clone(),
            key,
            inbox,
            own: RwLock::new(HashSet::new()),
            healthy_tx,
        }
    }
}

/// One node's handle on a [`MemoryBroker`].
pub struct MemoryBus {
    broker: Arc<BrokerState>,
    key: NodeKey,
    inbox: Inbox,
    own: RwLock<HashSet<Channel>>,
    healthy_tx: watch::Sender<bool>,
}

fn poisoned<T>(e: std::sync::PoisonError<T>) -> T {
    // A panic while holding the lock left the map consistent (every update is one insert or
    // remove), so keep serving rather than cascading the panic.
    e.into_inner()
}

impl MemoryBus {
    fn inboxes(&self, channel: &Channel) -> Vec<Inbox> {
        let subs = self.broker.subscribers.read().unwrap_or_else(poisoned);
        subs.get(channel)
            .map(|v| v.iter().map(|(_, inbox)| inbox.clone()).collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<usize, BusError> {
        let inboxes = self.inboxes(channel);
        for inbox in &inboxes {
            inbox(payload.clone());
        }
        Ok(inboxes.len())
    }

    async fn publish_stored(&self, msg: &StoredPublish) -> Result<Stored, BusError> {
        let channel = Channel::Room(msg.room.clone());
        let (offset, epoch, subscribers) = self.broker.history.store(
            &msg.room,
            &msg.head,
            msg.keep,
            msg.dedupe.as_ref(),
            |offset, epoch, frame| {
                let payload = Bytes::from(
                    StoredMessage {
                        offset,
                        epoch,
                        sent_at_micros: msg.sent_at_micros,
                        room: &msg.room,
                        frame,
                    }
                    .encode(),
                );
                let inboxes = self.inboxes(&channel);
                for inbox in &inboxes {
                    inbox(payload.clone());
                }
                inboxes.len()
            },
        );
        Ok(Stored {
            offset,
            epoch,
            subscribers: subscribers.unwrap_or(0),
            duplicate: subscribers.is_none(),
        })
    }

    async fn history(
        &self,
        room: &str,
        query: HistoryQuery,
        limit: usize,
        meta_ttl: std::time::Duration,
    ) -> Result<HistoryPage, BusError> {
        Ok(self.broker.history.read(room, query, limit, meta_ttl))
    }

    async fn subscribe(&self, channels: &[Channel]) -> Result<(), BusError> {
        let mut own = self.own.write().unwrap_or_else(poisoned);
        let mut subs = self.broker.subscribers.write().unwrap_or_else(poisoned);
        for channel in channels {
            if own.insert(channel.clone()) {
                subs.entry(channel.clone())
                    .or_default()
                    .push((self.key, self.inbox.clone()));
            }
        }
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[Channel]) -> Result<(), BusError> {
        let mut own = self.own.write().unwrap_or_else(poisoned);
        let mut subs = self.broker.subscribers.write().unwrap_or_else(poisoned);
        for channel in channels {
            if own.remove(channel) {
                if let Some(list) = subs.get_mut(channel) {
                    list.retain(|(k, _)| *k != self.key);
                    if list.is_empty() {
                        subs.remove(channel);
                    }
                }
            }
        }
        Ok(())
    }

    fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy_tx.subscribe()
    }

    fn presence(&self) -> &dyn super::presence::Presence {
        &self.broker.presence
    }
}

impl Drop for MemoryBus {
    fn drop(&mut self) {
        let own = std::mem::take(self.own.get_mut().unwrap_or_else(poisoned));
        let mut subs = self.broker.subscribers.write().unwrap_or_else(poisoned);
        for channel in own {
            if let Some(list) = subs.get_mut(&channel) {
                list.retain(|(k, _)| *k != self.key);
                if list.is_empty() {
                    subs.remove(&channel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recorder() -> (Inbox, Arc<Mutex<Vec<Bytes>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        (Arc::new(move |b| g.lock().unwrap().push(b)), got)
    }

    #[tokio::test]
    async fn routes_by_subscription_and_counts_receivers() {
        let broker = MemoryBroker::new();
        let (inbox_a, got_a) = recorder();
        let (inbox_b, got_b) = recorder();
        let a = broker.attach(inbox_a);
        let b = broker.attach(inbox_b);
        let room = Channel::Room("r".into());
        a.subscribe(std::slice::from_ref(&room)).await.unwrap();
        a.subscribe(std::slice::from_ref(&room)).await.unwrap();
        assert_eq!(b.publish(&room, Bytes::from_static(b"1")).await.unwrap(), 1);
        b.subscribe(std::slice::from_ref(&room)).await.unwrap();
        assert_eq!(a.publish(&room, Bytes::from_static(b"2")).await.unwrap(), 2);
        a.unsubscribe(std::slice::from_ref(&room)).await.unwrap();
        assert_eq!(a.publish(&room, Bytes::from_static(b"3")).await.unwrap(), 1);
        drop(b);
        assert_eq!(a.publish(&room, Bytes::from_static(b"4")).await.unwrap(), 0);
        assert_eq!(*got_a.lock().unwrap(), vec!["1", "2"]);
        assert_eq!(*got_b.lock().unwrap(), vec!["2", "3"]);
    }
}
