//! The `faults` scenario: a numbered stream in one room through the routine faults of a local
//! cluster (deploy/local/cluster.sh) — a node drain, a node crash, a Redis crash — one after
//! another, with every client recovering (`--recover` semantics), and an exact account per
//! fault of what was sent, stored, refused, missed and duplicated.
//!
//! The faults are applied through the cluster script itself (`drain`, `kill`, `restart`), so the
//! processes are found, checked and restarted the one way the script knows; the scenario only
//! needs its path (and the script its `$RINGCAST_LOCAL_STATE`, passed through).
//!
//! One publisher numbers its messages 0, 1, 2…; "stored" is what it saw echoed (live, or
//! replayed on its own rejoin), which is what the room's history holds. Each subscriber keeps a
//! count per number, so missing (stored, never received) and duplicated (received again) are
//! exact ([`crate::seqcounts`]). The stream is cut into phases at the publisher's next number
//! when a fault starts: phase 0 is the baseline before any fault, phase k the k-th fault and the
//! settling after it. Events (reconnects, `recovered:false`, `history_reset`, refusals) count in
//! the phase they arrive in.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cli::{Fault, FaultsArgs};
use crate::connect::Connector;
use crate::counters::Counters;
use crate::error::RunError;
use crate::fanout::secs;
use crate::pacer::{Pace, Pacer};
use crate::placement::Placement;
use crate::recover::{stay, Frames, Member, RecoverStats, Stayed};
use crate::report::Outcome;
use crate::seqcounts::{tally, SeqCounts, Tally};
use crate::stamp::{FrameBuilder, StampFinder};

/// Stamps of the one publisher (sender 0), counted per number.
struct Record {
    finder: StampFinder,
    counts: SeqCounts,
    received: Counters,
    index: usize,
}

impl Frames for Record {
    fn on_text(&mut self, frame: &[u8], _received_micros: u64) {
        if let Some(stamp) = self.finder.find(frame).filter(|s| s.sender == 0) {
            self.counts.record(stamp.seq);
            self.received.add(self.index, 1);
        }
    }
}

/// Runs `deploy/local/cluster.sh VERB NAME`, each call bounded.
struct Cluster {
    script: PathBuf,
    timeout: Duration,
}

impl Cluster {
    async fn run(&self, verb: &str, name: &str) -> Result<(), String> {
        let what = format!("{} {verb} {name}", self.script.display());
        let out = tokio::process::Command::new("bash")
            .arg(&self.script)
            .args([verb, name])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(self.timeout, out)
            .await
            .map_err(|_| format!("{what}: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        Err(format!("{what}: {} {last}", out.status))
    }

    /// Applies `fault` to `node` (or Redis) and brings it back.
    async fn apply(&self, fault: Fault, node: &str, down: Duration) -> Result<(), String> {
        match fault {
            Fault::Drain => {
                self.run("drain", node).await?;
                self.run("restart", node).await
            }
            Fault::Crash => {
                self.run("kill", node).await?;
                tokio::time::sleep(down).await;
                self.run("restart", node).await
            }
            Fault::Redis => {
                self.run("kill", "redis").await?;
                tokio::time::sleep(down).await;
                self.run("restart", "redis").await
            }
        }
    }
}

/// What one phase came to, over every client.
#[derive(Debug, Clone, Default)]
struct PhaseReport {
    name: String,
    /// What the fault hit (a node name, `redis`; empty for the baseline).
    target: String,
    sent: u64,
    stored: u64,
    tally: Tally,
    subscribers_missing: u64,
    recovery: RecoverStats,
    error: Option<String>,
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
    let pacer = Pacer {
        builder: FrameBuilder::room_message(&room, 0, 0),
        rate: args.rate,
        pace_rx,
        next_seq: next_seq.clone(),
        done_tx: None,
        outbox: None,
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
        let node = match args.node.as_str() {
            "busiest" => placement
                .busiest(Some(args.subscribers))
                .unwrap_or_else(|| "node-1".into()),
            n => n.to_owned(),
        };
        let target = match fault {
            Fault::Redis => "redis".to_owned(),
            _ => node.clone(),
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
    let mut reports = account(&names, &cuts, errors, publisher.as_ref(), &subscribers);
    for (r, t) in reports.iter_mut().zip(targets) {
        r.target = t;
    }
    Ok(summarize(args, &reports, &subscribers))
}

/// Adds up each phase from the publisher's stored numbers and every subscriber's counts.
fn account(
    names: &[String],
    cuts: &[u64],
    errors: Vec<Option<String>>,
    publisher: Option<&Stayed<Record>>,
    subscribers: &[Option<Stayed<Record>>],
) -> Vec<PhaseReport> {
    let empty = SeqCounts::default();
    let stored = publisher.map_or(&empty, |p| &p.frames.counts);
    let mut reports = Vec::new();
    for (k, error) in errors.into_iter().enumerate() {
        let range = cuts[k]..cuts[k + 1];
        let mut r = PhaseReport {
            name: names[k].clone(),
            sent: range.end - range.start,
            stored: range.clone().filter(|s| stored.get(*s) > 0).count() as u64,
            error,
            ..PhaseReport::default()
        };
        if let Some(p) = publisher {
            r.recovery.add(&p.stats[k]);
        }
        for s in subscribers.iter().flatten() {
            let t = tally(stored, &s.frames.counts, range.clone());
            r.tally.missing += t.missing;
            r.tally.duplicated += t.duplicated;
            r.tally.unconfirmed += t.unconfirmed;
            r.subscribers_missing += u64::from(t.missing > 0);
            r.recovery.add(&s.stats[k]);
        }
        reports.push(r);
    }
    reports
}

fn summarize(
    args: &FaultsArgs,
    reports: &[PhaseReport],
    subscribers: &[Option<Stayed<Record>>],
) -> Outcome {
    let mut problems = Vec::new();
    let failed = subscribers.iter().filter(|s| s.is_none()).count();
    if failed > 0 {
        problems.push(format!("{failed} subscriber tasks failed"));
    }
    for r in reports {
        if let Some(e) = &r.error {
            problems.push(format!("{}: the fault could not be applied: {e}", r.name));
        }
        if r.tally.missing > 0 {
            problems.push(format!(
                "{}: {} stored messages missing over {} subscribers",
                r.name, r.tally.missing, r.subscribers_missing
            ));
        }
        if r.tally.duplicated > 0 {
            problems.push(format!(
                "{}: {} duplicate deliveries",
                r.name, r.tally.duplicated
            ));
        }
        if r.recovery.rate_limited > 0 {
            problems.push(format!(
                "{}: {} publishes refused with rate_limited: lower --rate or raise the nodes' limit \
                 (RINGCAST_LOCAL_NODE_ARGS='--rate-limit-per-sec 1000 --rate-limit-burst 2000' cluster.sh up)",
                r.name, r.recovery.rate_limited
            ));
        }
    }
    let phases: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let mut v = json!({
                "fault": r.name,
                "target": r.target,
                "sent": r.sent,
                "stored": r.stored,
                "missing": r.tally.missing,
                "duplicated": r.tally.duplicated,
                "received_unconfirmed": r.tally.unconfirmed,
                "subscribers_missing": r.subscribers_missing,
                "error": r.error,
            });
            if let (Some(o), Some(extra)) = (v.as_object_mut(), r.recovery.json().as_object()) {
                o.extend(extra.clone());
            }
            v
        })
        .collect();
    let json = json!({
        "scenario": "faults",
        "subscribers": args.subscribers,
        "rate": args.rate,
        "node": args.node,
        "settle_secs": args.settle_secs,
        "down_secs": args.down_secs,
        "phases": phases,
    });
    let mut human = format!(
        "faults: 1 publisher at {} msg/s, {} subscribers, one room; node chosen: {}\n\
         {:<16} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>13} {:>8}\n",
        args.rate,
        args.subscribers,
        args.node,
        "phase",
        "sent",
        "stored",
        "refused",
        "missing",
        "dup",
        "reconnects",
        "recov:false",
        "resets"
    );
    for r in reports {
        human.push_str(&format!(
            "{:<16} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>13} {:>8}{}\n",
            if r.target.is_empty() {
                r.name.clone()
            } else {
                format!("{} {}", r.name, r.target)
            },
            r.sent,
            r.stored,
            r.recovery.refused,
            r.tally.missing,
            r.tally.duplicated,
            r.recovery.reconnects,
            r.recovery.not_recovered,
            r.recovery.history_resets,
            r.error
                .as_deref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default()
        ));
    }
    Outcome::new(json, human.trim_end().to_owned(), problems)
}
