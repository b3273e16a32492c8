//! What the `faults` scenario reports: each phase's numbers added up from the publisher's
//! record (stored echoes, and with ids its outbox's acks) and every subscriber's counts, the
//! problems among them, and the JSON and the table.

use serde_json::json;

use super::Record;
use crate::acks::message_id;
use crate::cli::{FaultsArgs, PublisherKind};
use crate::outbox::OutboxStats;
use crate::recover::{RecoverStats, Stayed};
use crate::seqcounts::{tally, SeqCounts, Tally};

/// How many lost message numbers a phase lists.
const LOST_LISTED: usize = 10;

/// What the publisher with ids saw in one phase.
#[derive(Debug, Clone, Default)]
pub(super) struct Acks {
    /// Messages first sent in the phase and acknowledged (by the end of the run).
    acked: u64,
    /// Messages first sent in the phase and never acknowledged.
    lost: u64,
    /// The first few of their numbers.
    lost_seqs: Vec<u64>,
    /// Resends, rechecks, repeat acks, conflicts and rejections while the phase ran.
    outbox: OutboxStats,
    /// The publisher's own reconnects while the phase ran.
    reconnects: u64,
}

/// What one phase came to, over every client.
#[derive(Debug, Clone, Default)]
pub(super) struct PhaseReport {
    /// `baseline` or the fault's name.
    pub(super) name: String,
    /// What the fault hit (a node name, `redis`; empty for the baseline).
    pub(super) target: String,
    sent: u64,
    stored: u64,
    tally: Tally,
    subscribers_missing: u64,
    /// Subscribers whose counts were added up.
    subscribers: u64,
    recovery: RecoverStats,
    acks: Option<Acks>,
    /// Why the fault could not be applied.
    pub(super) error: Option<String>,
}

/// Adds up each phase (numbers `cuts[k]..cuts[k + 1]`) from the publisher's stored numbers,
/// its outbox, and every subscriber's counts.
pub(super) fn account(
    names: &[String],
    cuts: &[u64],
    errors: Vec<Option<String>>,
    publisher: Option<&Stayed<Record>>,
    subscribers: &[Option<Stayed<Record>>],
) -> Vec<PhaseReport> {
    let empty = SeqCounts::default();
    let stored = publisher.map_or(&empty, |p| &p.frames.counts);
    let outbox = publisher.and_then(|p| p.outbox.as_ref());
    let mut reports = Vec::new();
    for (k, error) in errors.into_iter().enumerate() {
        let range = cuts[k]..cuts[k + 1];
        let sent = range.end - range.start;
        let mut r = PhaseReport {
            name: names[k].clone(),
            sent,
            stored: range.clone().filter(|s| stored.get(*s) > 0).count() as u64,
            error,
            ..PhaseReport::default()
        };
        if let Some(p) = publisher {
            r.recovery.add(&p.stats[k]);
        }
        if let Some(o) = outbox {
            let acked = o.acked_in(range.clone());
            r.acks = Some(Acks {
                acked,
                lost: sent - acked,
                lost_seqs: o.unacked_in(range.clone(), LOST_LISTED),
                outbox: o.stats(k),
                reconnects: publisher.map_or(0, |p| p.stats[k].reconnects),
            });
        }
        for s in subscribers.iter().flatten() {
            let t = tally(stored, &s.frames.counts, range.clone());
            r.tally.missing += t.missing;
            r.tally.duplicated += t.duplicated;
            r.tally.redelivered += t.redelivered;
            r.tally.unconfirmed += t.unconfirmed;
            r.subscribers_missing += u64::from(t.missing > 0);
            r.subscribers += 1;
            r.recovery.add(&s.stats[k]);
        }
        reports.push(r);
    }
    reports
}

/// What went wrong, one line each.
fn problems(
    reports: &[PhaseReport],
    publisher_failed: bool,
    subscribers_failed: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if publisher_failed {
        problems.push("the publisher task failed".to_owned());
    }
    if subscribers_failed > 0 {
        problems.push(format!("{subscribers_failed} subscriber tasks failed"));
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
        // A message whose store was never acknowledged (Redis died mid-call) is sent again; if
        // Redis lost the room meanwhile, so did the dedupe record, and the resend is stored in
        // the new epoch — receivers that got the first copy get it again, after being told
        // (`history_reset`). Anything else arriving in a second epoch is a defect.
        let resent = r.acks.as_ref().map_or(0, |a| a.outbox.resent);
        if r.tally.redelivered > 0
            && (r.recovery.history_resets == 0 || r.tally.redelivered > resent * r.subscribers)
        {
            problems.push(format!(
                "{}: {} deliveries again in a later epoch, beyond what {} resends after {} \
                 history resets explain",
                r.name, r.tally.redelivered, resent, r.recovery.history_resets
            ));
        }
        if let Some(a) = &r.acks {
            if a.lost > 0 {
                let first: Vec<String> = a.lost_seqs.iter().map(|s| message_id(*s)).collect();
                problems.push(format!(
                    "{}: {} messages sent and never acknowledged ({} given up on an error; \
                     first: {})",
                    r.name,
                    a.lost,
                    a.outbox.rejected,
                    first.join(" ")
                ));
            }
            if a.outbox.conflicts > 0 {
                problems.push(format!(
                    "{}: {} acks placed a message at another offset than where it was already \
                     stored (stored twice)",
                    r.name, a.outbox.conflicts
                ));
            }
        }
        if r.recovery.rate_limited > 0 {
            problems.push(format!(
                "{}: {} publishes refused with rate_limited: lower --rate or raise the nodes' limit \
                 (RINGCAST_LOCAL_NODE_ARGS='--rate-limit-per-sec 1000 --rate-limit-burst 2000' cluster.sh up)",
                r.name, r.recovery.rate_limited
            ));
        }
    }
    problems
}

fn phase_json(r: &PhaseReport) -> serde_json::Value {
    let a = r.acks.as_ref();
    let mut v = json!({
        "fault": r.name,
        "target": r.target,
        "sent": r.sent,
        "stored": r.stored,
        "acked": a.map(|a| a.acked),
        "lost": a.map(|a| a.lost),
        "lost_seqs": a.map(|a| a.lost_seqs.clone()),
        "resent": a.map(|a| a.outbox.resent),
        "rechecked": a.map(|a| a.outbox.rechecked),
        "repeat_acks": a.map(|a| a.outbox.repeat_acks),
        "ack_conflicts": a.map(|a| a.outbox.conflicts),
        "rejected": a.map(|a| a.outbox.rejected),
        "publisher_reconnects": a.map(|a| a.reconnects),
        "missing": r.tally.missing,
        "duplicated": r.tally.duplicated,
        "redelivered_after_reset": r.tally.redelivered,
        "received_unconfirmed": r.tally.unconfirmed,
        "subscribers_missing": r.subscribers_missing,
        "error": r.error,
    });
    if let (Some(o), Some(extra)) = (v.as_object_mut(), r.recovery.json().as_object()) {
        o.extend(extra.clone());
    }
    v
}

/// The scenario's outcome: JSON, the table, and the problems.
pub(super) fn summarize(
    args: &FaultsArgs,
    reports: &[PhaseReport],
    publisher_failed: bool,
    subscribers_failed: usize,
) -> crate::report::Outcome {
    let problems = problems(reports, publisher_failed, subscribers_failed);
    let publisher = match args.publisher {
        PublisherKind::Ids => "ids",
        PublisherKind::Plain => "plain",
    };
    let json = json!({
        "scenario": "faults",
        "publisher": publisher,
        "recheck": args.recheck,
        "subscribers": args.subscribers,
        "rate": args.rate,
        "node": args.node,
        "settle_secs": args.settle_secs,
        "down_secs": args.down_secs,
        "phases": reports.iter().map(phase_json).collect::<Vec<_>>(),
    });
    let row = |cells: [&str; 15]| {
        let mut line = format!("{:<22}", cells[0]);
        for (c, w) in cells[1..]
            .iter()
            .zip([6, 6, 6, 4, 7, 6, 6, 7, 7, 4, 7, 10, 11, 6])
        {
            line.push_str(&format!(" {c:>w$}"));
        }
        line
    };
    let mut human = format!(
        "faults: 1 publisher ({publisher}) at {} msg/s, {} subscribers, one room; node chosen: {}\n{}\n",
        args.rate,
        args.subscribers,
        args.node,
        row([
            "phase",
            "sent",
            "stored",
            "acked",
            "lost",
            "refused",
            "resent",
            "rechk",
            "repeats",
            "missing",
            "dup",
            "redeliv",
            "reconnects",
            "recov:false",
            "resets"
        ])
    );
    for r in reports {
        let phase = if r.target.is_empty() {
            r.name.clone()
        } else {
            format!("{} {}", r.name, r.target)
        };
        let a = r.acks.as_ref();
        let opt = |f: fn(&Acks) -> u64| a.map_or("-".to_owned(), |a| f(a).to_string());
        let cells = [
            phase,
            r.sent.to_string(),
            r.stored.to_string(),
            opt(|a| a.acked),
            opt(|a| a.lost),
            r.recovery.refused.to_string(),
            opt(|a| a.outbox.resent),
            opt(|a| a.outbox.rechecked),
            opt(|a| a.outbox.repeat_acks),
            r.tally.missing.to_string(),
            r.tally.duplicated.to_string(),
            r.tally.redelivered.to_string(),
            r.recovery.reconnects.to_string(),
            r.recovery.not_recovered.to_string(),
            r.recovery.history_resets.to_string(),
        ];
        human.push_str(&row(cells.each_ref().map(String::as_str)));
        if let Some(e) = &r.error {
            human.push_str(&format!("  FAILED: {e}"));
        }
        human.push('\n');
    }
    crate::report::Outcome::new(json, human.trim_end().to_owned(), problems)
}
