//! The node's publishing API and its one queue: sessions hand their frames to the [`Publisher`],
//! which wraps them in envelopes in order and goes on; one task publishes them in batches (one
//! Redis pipeline, one round trip per batch).
//!
//! Why: a session that awaited each publish could send at most one message per bus round trip,
//! which bounded fan-out through Redis at ~450 messages/s for 4 publishers on a loaded machine.
//! The queue is bounded (a full queue makes the senders wait, i.e. stop reading their sockets)
//! and FIFO, and batches are published one after another, so per-sender order still holds.
//! A publish whose sender needs the answer before going on (joins, leaves) waits on its own
//! reply; room and direct messages leave a callback that reports failures (and an offline
//! target) to their sender.

use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::{Envelope, Target};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::bus::{Bus, BusError, Channel, Keep, PresenceChange, Publish, Published, StoredPublish};
use crate::hub::now_micros;
use crate::metrics::Metrics;

/// Most publishes sent to the bus as one batch.
const BATCH: usize = 256;
/// Most publishes waiting in the queue; senders wait beyond it. Four batches: enough to keep
/// one pipeline in flight while the next fills, and at most 64 MiB of envelopes even if every
/// one carried a maximal (64 KiB) message.
const QUEUE: usize = 1024;

/// Called with the outcome of a publish nobody waits for.
pub type Then = Box<dyn FnOnce(&Result<Published, BusError>) + Send>;

/// What to do with a publish's outcome.
enum Done {
    /// Hand the outcome back to a waiting sender.
    Reply(oneshot::Sender<Result<Published, BusError>>),
    /// Nobody waits; run this with the outcome (it tells the sender about failures).
    Then(Then),
}

/// One publish and what to do with its outcome.
struct Job {
    /// What to publish.
    publish: Publish,
    /// What to do with the outcome.
    done: Done,
}

/// Where a node's frames enter the bus: wraps each in an envelope from this node and publishes
/// it, through the queue when the bus batches publishes.
pub struct Publisher {
    node_id: Arc<str>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    publish_tx: mpsc::Sender<Job>,
}

impl Publisher {
    /// Starts the publishing task, which ends once this publisher is dropped (it is no part of
    /// the drain: what sessions publish while the node drains, their goodbyes included, still
    /// goes out). Must be called within a Tokio runtime.
    pub fn start(node_id: Arc<str>, bus: Arc<dyn Bus>, metrics: Arc<Metrics>) -> Self {
        let (publish_tx, publish_rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(bus.clone(), metrics.clone(), publish_rx));
        Publisher {
            node_id,
            bus,
            metrics,
            publish_tx,
        }
    }

    /// The bus it publishes on (history reads go straight to it).
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Wraps a client frame in an envelope and publishes it, after everything queued before it:
    /// the one place frames enter the bus. Returns how many nodes were subscribed.
    pub async fn publish(
        &self,
        channel: Channel,
        target: Target,
        frame: &Bytes,
    ) -> Result<usize, BusError> {
        let publish = self.plain(channel, target, frame)?;
        if !self.bus.batches_publishes() {
            return self.publish_now(publish).await.map(|p| p.subscribers());
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(publish, Done::Reply(tx)).await?;
        rx.await
            .unwrap_or_else(|_| Err(BusError::Unavailable("node is shutting down".into())))
            .map(|p| p.subscribers())
    }

    /// Queues a room message for history (see [`StoredPublish`]): numbered, kept and published
    /// in one step by the bus (once per `dedupe` key while the first is kept); `then` runs with
    /// the offset and epoch it got, or the failure.
    pub async fn publish_stored(
        &self,
        room: &str,
        head: Vec<u8>,
        keep: Keep,
        dedupe: Option<Arc<str>>,
        then: Then,
    ) {
        let publish = Publish::Stored(StoredPublish {
            room: room.to_owned(),
            head: Bytes::from(head),
            sent_at_micros: now_micros(),
            keep,
            dedupe,
        });
        if !self.bus.batches_publishes() {
            let result = self.publish_now(publish).await;
            then(&result);
            return;
        }
        if let Err(e) = self.enqueue(publish, Done::Then(then)).await {
            warn!(error = %e, "publish not queued");
        }
    }

    /// Like [`Publisher::publish`] but returns once the envelope is queued (waiting only while
    /// the queue is full); `then` runs with the outcome once it is published.
    pub async fn publish_queued(
        &self,
        channel: Channel,
        target: Target,
        frame: &Bytes,
        then: Then,
    ) {
        let publish = match self.plain(channel, target, frame) {
            Ok(p) => p,
            Err(e) => return then(&Err(e)),
        };
        if !self.bus.batches_publishes() {
            let result = self.publish_now(publish).await;
            then(&result);
            return;
        }
        if let Err(e) = self.enqueue(publish, Done::Then(then)).await {
            warn!(error = %e, "publish not queued");
        }
    }

    /// Writes a presence change after everything queued before it, and publishes `announce`
    /// (a frame for `target`, in an envelope from this node) on the room's channel when it was
    /// the client id's first (add) or last (remove) connection in the room anywhere; whether
    /// it was. One step on the bus: the announcement costs no round trip of its own.
    pub async fn presence(
        &self,
        mut change: PresenceChange,
        announce: Option<(Target, &Bytes)>,
    ) -> Result<bool, BusError> {
        if let Some((target, frame)) = announce {
            let envelope = Envelope::new(&self.node_id, now_micros(), target, frame);
            let payload = envelope
                .encode()
                .map_err(|e| BusError::Unavailable(e.to_string()))?;
            change.announce = Some(payload);
        }
        let publish = Publish::Presence(change);
        let published = if self.bus.batches_publishes() {
            let (tx, rx) = oneshot::channel();
            self.enqueue(publish, Done::Reply(tx)).await?;
            rx.await
                .unwrap_or_else(|_| Err(BusError::Unavailable("node is shutting down".into())))
        } else {
            self.publish_now(publish).await
        };
        match published? {
            Published::Presence(changed) => Ok(changed),
            other => Err(BusError::Unavailable(format!(
                "a presence change answered {other:?}"
            ))),
        }
    }

    /// Wraps a frame in an envelope from this node.
    fn plain(&self, channel: Channel, target: Target, frame: &Bytes) -> Result<Publish, BusError> {
        let envelope = Envelope::new(&self.node_id, now_micros(), target, frame);
        let payload = envelope
            .encode()
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(Publish::Plain(channel, payload))
    }

    /// Publishes right away, on the caller's task (for a bus without round trips).
    async fn publish_now(&self, publish: Publish) -> Result<Published, BusError> {
        let result = match &publish {
            Publish::Plain(channel, payload) => self
                .bus
                .publish(channel, payload.clone())
                .await
                .map(Published::Plain),
            Publish::Stored(msg) => self.bus.publish_stored(msg).await.map(Published::Stored),
            Publish::Presence(change) => self
                .bus
                .change_presence(change)
                .await
                .map(Published::Presence),
        };
        count(&self.metrics, &publish, &result);
        result
    }

    async fn enqueue(&self, publish: Publish, done: Done) -> Result<(), BusError> {
        let job = Job { publish, done };
        if let Err(mpsc::error::SendError(job)) = self.publish_tx.send(job).await {
            let e = BusError::Unavailable("node is shutting down".into());
            if let Done::Then(f) = job.done {
                f(&Err(e.clone()));
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Counts a publish's outcome (and logs a failure).
fn count(metrics: &Metrics, publish: &Publish, result: &Result<Published, BusError>) {
    match result {
        // A failed presence change is its caller's to answer (a refused join, a retried
        // leave): not a failed publish.
        Err(e) if matches!(publish, Publish::Presence(_)) => {
            debug!(error = %e, "presence change failed")
        }
        // A presence change is a publish when its announcement went out.
        Ok(Published::Presence(changed)) => {
            if let (true, Publish::Presence(c)) = (changed, publish) {
                if c.announce.is_some() {
                    metrics.bus_published.inc();
                }
            }
        }
        Ok(_) => metrics.bus_published.inc(),
        Err(e) => {
            metrics.bus_publish_failures.inc();
            match publish {
                Publish::Plain(channel, _) => {
                    warn!(error = %e, channel = %channel, "publish failed")
                }
                Publish::Stored(msg) => warn!(error = %e, room = %msg.room, "publish failed"),
                Publish::Presence(_) => {}
            }
        }
    }
}

/// Publishes queued jobs in batches until every sender is gone.
async fn run(bus: Arc<dyn Bus>, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut jobs, BATCH).await > 0 {
        let (items, dones): (Vec<_>, Vec<_>) = jobs.drain(..).map(|j| (j.publish, j.done)).unzip();
        let results = bus.publish_all(&items).await;
        for ((item, done), result) in items.iter().zip(dones).zip(results) {
            count(&metrics, item, &result);
            match done {
                Done::Reply(tx) => {
                    let _ = tx.send(result);
                }
                Done::Then(f) => f(&result),
            }
        }
    }
}
