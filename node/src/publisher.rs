//! The node's one publishing queue: sessions hand their envelopes over in order and go on
//! reading; one task publishes them in batches (one Redis pipeline, one round trip per batch).
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
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::bus::{Bus, BusError, Channel};
use crate::metrics::Metrics;

/// Most publishes sent to the bus as one batch.
const BATCH: usize = 256;
/// Most publishes waiting in the queue; senders wait beyond it. Four batches: enough to keep
/// one pipeline in flight while the next fills, and at most 64 MiB of envelopes even if every
/// one carried a maximal (64 KiB) message.
pub const QUEUE: usize = 1024;

/// Called with the outcome of a publish nobody waits for.
pub type Then = Box<dyn FnOnce(&Result<usize, BusError>) + Send>;

/// What to do with a publish's outcome.
pub enum Done {
    /// Hand the outcome back to a waiting sender.
    Reply(oneshot::Sender<Result<usize, BusError>>),
    /// Nobody waits; run this with the outcome (it tells the sender about failures).
    Then(Then),
}

/// One envelope to publish.
pub struct Job {
    /// Where to publish it.
    pub channel: Channel,
    /// The encoded envelope.
    pub payload: Bytes,
    /// What to do with the outcome.
    pub done: Done,
}

/// Publishes queued jobs in batches until every sender is gone.
pub async fn run(bus: Arc<dyn Bus>, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut jobs, BATCH).await > 0 {
        let (items, dones): (Vec<_>, Vec<_>) = jobs
            .drain(..)
            .map(|j| ((j.channel, j.payload), j.done))
            .unzip();
        let results = bus.publish_batch(&items).await;
        for (((channel, _), done), result) in items.iter().zip(dones).zip(results) {
            match &result {
                Ok(_) => metrics.bus_published.inc(),
                Err(e) => {
                    metrics.bus_publish_failures.inc();
                    warn!(error = %e, channel = %channel, "publish failed");
                }
            }
            match done {
                Done::Reply(tx) => {
                    let _ = tx.send(result);
                }
                Done::Then(f) => f(&result),
            }
        }
    }
}
