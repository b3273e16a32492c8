//! The `faults` scenario: a numbered stream in one room through the routine faults of a local
//! cluster (deploy/local/cluster.sh) — a node drain, a node crash, a crash of the publisher's
//! node, a Redis crash — one after another, with every client recovering (`--recover`
//! semantics), and an exact account per fault of what was sent, stored, acknowledged, lost,
//! sent again, missed and duplicated.
//!
//! The faults are applied through the cluster script itself ([`cluster`]), so the processes
//! are found, checked and restarted the one way the script knows; the scenario only needs its
//! path (and the script its `$RINGCAST_LOCAL_STATE`, passed through).
//!
//! One publisher numbers its messages 0, 1, 2…; "stored" is what it saw echoed (live, or
//! replayed on its own rejoin), which is what the room's history holds. By default its
//! messages carry ids ([`crate::outbox`]): it keeps its client_id across reconnects, sends
//! again whatever was not acknowledged, and a message it never got an ack for by the end of
//! the run is lost. Each subscriber keeps a count per number, so missing (stored, never
//! received) and duplicated (received again) are exact ([`crate::seqcounts`]). The stream is
//! cut into phases at the publisher's next number when a fault starts: phase 0 is the baseline
//! before any fault, phase k the k-th fault and the settling after it. A message belongs to the
//! phase it was first sent in; events (reconnects, resends, repeat acks, `recovered:false`,
//! `history_reset`, refusals) count in the phase they happen in.

mod cluster;
mod report;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::{Fault, FaultsArgs, PublisherKind};
use crate::connect::Connector;
use crate::counters::Counters;
use crate::error::RunError;
use crate::fanout::secs;
use crate::outbox::Outbox;
use crate::pacer::{Pace, Pacer};
use crate::placement::Placement;
use crate::recover::{stay, Frames, Member, Stayed};
use crate::report::Outcome;
use crate::seqcounts::SeqCounts;
use crate::stamp::{FrameBuilder, StampFinder};
use cluster::Cluster;

/// Stamps of the one publisher (sender 0), counted per number and per epoch of the room's
/// history they came in.
pub(crate) struct Record {
    finder: StampFinder,
    counts: SeqCounts,
    received: Counters,
    index: usize,
    /// The epoch of the last room message, and how many different epochs came before it.
    epoch: Vec<u8>,
    generation: u16,
}

impl Frames for Record {
    fn on_text(&mut self, frame: &[u8], _received_micros: u64) {
        if let Some(stamp) = self.finder.find(frame).filter(|s| s.sender == 0) {
            if let Some(epoch) = epoch_of(frame).filter(|e| *e != self.epoch.as_slice()) {
                if !self.epoch.is_empty() {
                    self.generation = self.generation.saturating_add(1);
                }
                self.epoch = epoch.to_vec();
            }
            self.counts.record_in(stamp.seq, self.generation);
            self.received.add(self.index, 1);
        }
    }
}

/// The `epoch` of a room `chat` event (the server writes it after the content, so the last
/// occurrence is the event's own).
fn epoch_of(frame: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"epoch\":\"";
    let at = frame.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let rest = &frame[at..];
    let end = rest.iter().position(|b| *b == b'"')?;
    Some(&rest[..end])
}

/// Runs the scenario.
pub async fn run(
    args: &FaultsArgs,
    connector: Arc<Connector>,
    progress: bool,
) -> Result<Outcome, RunError> {
    let settle = secs(args.settle_secs, "--settle-secs")?;
    let down = secs(args.down_secs, "--down-secs")?;
    let stall = secs(args.drain_timeout_secs, "--drain-timeout-secs")?;
    let fault_timeout = secs(args.fault_timeout_secs, "--fault-timeout-secs")?;
    if args.subscribers == 0 || !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(RunError::Usage(
            "--subscribers must be at least 1 and --rate positive".into(),
        ));
    }
    if args.faults.is_empty() {
        return Err(RunError::Usage("--faults names no fault".into()));
    }
    if !args.cluster.is_file() {
        return Err(RunError::Usage(format!(
            "--cluster {}: no such script (deploy/local/cluster.sh of the checkout that runs the cluster)",
            args.cluster.display()
        )));
    }
    crate::limits::ensure_fds(args.subscribers as u64 + 1)?;
    let cluster = Cluster {
        script: args.cluster.clone(),
        timeout: fault_timeout,
    };
    // Every number the publisher can reach, with room to spare: settle per phase plus each
    // fault's worst case.
    let bound = settle * (args.faults.len() as u32 + 1)
        + (fault_timeout * 2 + down) * args.faults.len() as u32;
    let capacity = (bound.as_secs_f64() * args.rate * 1.1) as usize + 1024;
    let phases = args.faults.len() + 1;
    let phase = Arc::new(AtomicUsize::new(0));
    let room = connector.client_id("room", 0);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (pace_tx, pace_rx) = watch::channel(Pace::Wait);
    let (ready_tx, mut ready_rx) = mpsc::channel(args.subscribers + 1);
    let received = Counters::default();
    let next_seq = Arc::new(AtomicU64::new(0));
    let placement = Placement::new(args.subscribers + 1);
    let member = |index: usize, role: &str| Member {
        placement: Some(placement.clone()),
        connector: connector.clone(),
        index,
        client_id: connector.client_id(role, index),
        room: room.clone(),
        phase: phase.clone(),
        phases,
    };
    let record = |index: usize, received: &Counters| Record {
        finder: StampFinder::default(),
        counts: SeqCounts::with_capacity(capacity),
        received: received.clone(),
        index,
        epoch: Vec::new(),
        generation: 0,
    };
    let mut subs: Vec<JoinHandle<Option<Stayed<Record>>>> = Vec::new();
    for i in 0..args.subscribers {
        subs.push(tokio::spawn(stay(
            member(i, "s"),
            record(i, &received),
            None,
            ready_tx.clone(),
            stop_rx.clone(),
        )));
    }
    let outbox = match args.publisher {
        PublisherKind::Ids => Some(Outbox::new(0, capacity, args.recheck, phases)),
        PublisherKind::Plain => None,
    };
    let unacked = outbox.as_ref().map(Outbox::unacked_gauge);
    let pacer = Pacer {
        builder: FrameBuilder::room_message(&room, 0, 0),
        rate: args.rate,
        pace_rx,
        next_seq: next_seq.clone(),
        done_tx: None,
        outbox,
    };
    let publisher = tokio::spawn(stay(
        member(args.subscribers, "p"),
        record(args.subscribers, &Counters::default()),
        Some(pacer),
        ready_tx,
        stop_rx.clone(),
    ));
    crate::progress::await_ready(
        progress,
        "joining",
        args.subscribers as u64 + 1,
        &mut ready_rx,
        &stop_tx,
    )
    .await?;

    // Baseline, then each fault and the settling after it.
    let bar = crate::progress::bar(progress, phases as u64, "faults");
    let _ = pace_tx.send(Pace::Send);
    let mut cuts = vec![0u64];
    let mut errors: Vec<Option<String>> = vec![None];
    let mut targets = vec![String::new()];
    tokio::time::sleep(settle).await;
    bar.inc(1);
    for (k, fault) in args.faults.iter().enumerate() {
        cuts.push(next_seq.load(Ordering::Relaxed));
        phase.store(k + 1, Ordering::Relaxed);
        bar.set_message(format!("{fault:?}"));
        let node = match (fault, args.node.as_str()) {
            (Fault::CrashPublisher, _) => {
                publisher_node(&placement, args.subscribers, fault_timeout).await
            }
            (_, "busiest") => placement
                .busiest(Some(args.subscribers))
                .unwrap_or_else(|| "node-1".into()),
            (_, n) => n.to_owned(),
        };
        let target = match fault {
            Fault::Redis => "redis".to_owned(),
            Fault::Drain | Fault::Crash | Fault::CrashPublisher => node.clone(),
        };
        targets.push(target);
        let result = cluster.apply(*fault, &node, down).await;
        let failed = result.is_err();
        errors.push(result.err());
        if failed {
            // The cluster is not what the next fault expects; stop here.
            break;
        }
        tokio::time::sleep(settle).await;
        bar.inc(1);
    }
    let _ = pace_tx.send(Pace::Halt);
    let sent = next_seq.load(Ordering::Relaxed);
    cuts.push(sent);
    bar.finish_and_clear();
    if let Some(unacked) = &unacked {
        // The last messages' acks (and whatever is still being sent again), one settle at most.
        let deadline = Instant::now() + settle;
        while unacked.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    crate::traffic::drain(&received, sent * args.subscribers as u64, stall).await;
    let _ = stop_tx.send(true);

    let publisher = publisher.await.ok().flatten();
    let mut subscribers = Vec::with_capacity(subs.len());
    for h in subs {
        subscribers.push(h.await.ok().flatten());
    }
    let names: Vec<String> = std::iter::once("baseline".to_owned())
        .chain(args.faults.iter().map(|f| f.name().to_owned()))
        .collect();
    let mut reports = report::account(&names, &cuts, errors, publisher.as_ref(), &subscribers);
    for (r, t) in reports.iter_mut().zip(targets) {
        r.target = t;
    }
    let subscribers_failed = subscribers.iter().filter(|s| s.is_none()).count();
    Ok(report::summarize(
        args,
        &reports,
        publisher.is_none(),
        subscribers_failed,
    ))
}

/// The node serving the publisher (client `index`), waiting up to `limit` for it to have one
/// (it may be between connections); `node-1` if it never does.
async fn publisher_node(placement: &Placement, index: usize, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(node) = placement.node_of(index) {
            return node;
        }
        if Instant::now() >= deadline {
            return "node-1".into();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::epoch_of;

    #[test]
    fn the_epoch_is_the_events_own_not_one_in_the_content() {
        let frame = br#"{"event":"chat","from":"p","room":"r","content":{"x":"\"epoch\":\"no"},"offset":3,"epoch":"E-1"}"#;
        assert_eq!(epoch_of(frame), Some(&b"E-1"[..]));
        assert_eq!(
            epoch_of(br#"{"event":"chat","from":"p","content":1}"#),
            None
        );
        assert_eq!(epoch_of(br#"{"epoch":"cut"#), None);
    }
}
