//! What an `api` run found: the callers' tallies and the members' receipts turned into the
//! JSON result, the human summary and the problems (loss, answers other than 200, failed
//! commands, callers that stopped, members that were closed).

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::api_caller::{Kinds, Tally};
use crate::api_plan::{MemberEnd, Plan};
use crate::latency::LatencySummary;
use crate::report::{per_sec, Outcome};
use crate::tracker::SeqTracker;

/// What a run measured.
pub struct Measured<'a> {
    /// One per API connection.
    pub tallies: &'a [Tally],
    /// Messages accepted per room, over all connections.
    pub accepted: &'a [u64],
    /// One per member; `None` when its task failed.
    pub members: &'a [Option<MemberEnd>],
    /// Delivery latency: stamp to the member's read.
    pub latency: &'a Histogram<u64>,
    /// Call round trips.
    pub call_latency: &'a Histogram<u64>,
    /// Seconds the members took to join.
    pub setup_secs: f64,
    /// Seconds from the first call to the last answer.
    pub calling_secs: f64,
    /// Seconds from the first call to the last delivery.
    pub elapsed: f64,
}

/// Sums the kinds of several callers.
fn merged<'a>(all: impl Iterator<Item = &'a Kinds>) -> Kinds {
    let mut out = Kinds::new();
    for kinds in all {
        for (kind, (n, first)) in kinds {
            out.entry(kind.clone())
                .or_insert_with(|| (0, first.clone()))
                .0 += n;
        }
    }
    out
}

fn kinds_json(kinds: &Kinds) -> Value {
    kinds
        .iter()
        .map(|(k, (n, first))| (k.clone(), json!({"count": n, "first": first})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn kinds_human(kinds: &Kinds) -> String {
    if kinds.is_empty() {
        return "none".into();
    }
    kinds
        .iter()
        .map(|(k, (n, first))| format!("{k} × {n} ({first})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Judges a run.
pub fn summarize(plan: &Plan, m: Measured<'_>) -> Outcome {
    let calls: u64 = m.tallies.iter().map(|t| t.calls).sum();
    let ok_calls: u64 = m.tallies.iter().map(|t| t.ok_calls).sum();
    let sent: u64 = m.tallies.iter().map(|t| t.sent).sum();
    let with_offset: u64 = m.tallies.iter().map(|t| t.with_offset).sum();
    let unanswered: u64 = m.tallies.iter().map(|t| t.unanswered).sum();
    let accepted: u64 = m.accepted.iter().sum();
    let refused = merged(m.tallies.iter().map(|t| &t.refused));
    let command_errors = merged(m.tallies.iter().map(|t| &t.command_errors));
    let stopped: Vec<String> = m
        .tallies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.failed.as_ref().map(|e| format!("connection {i}: {e}")))
        .collect();

    let mut expected = 0u64;
    let mut received = 0u64;
    let mut lost = 0u64;
    let mut with_loss = 0u64;
    let mut foreign = 0u64;
    let mut totals = SeqTracker::default();
    let mut closed = Vec::new();
    for (i, member) in m.members.iter().enumerate() {
        let Some(member) = member else {
            closed.push(format!("member {i} task failed"));
            continue;
        };
        let mine = m.accepted[member.room];
        let r = &member.receiver;
        for t in &r.trackers {
            totals.add_counts(t);
        }
        expected += mine;
        received += r.stamped;
        foreign += r.foreign;
        let l = mine.saturating_sub(r.distinct());
        lost += l;
        with_loss += u64::from(l > 0);
        if let Some(why) = &r.closed {
            closed.push(format!("member {i}: {why}"));
        }
    }

    let mut problems = Vec::new();
    if calls == 0 {
        problems.push("no call was answered".to_owned());
    }
    if lost > 0 {
        problems.push(format!(
            "{lost} of {expected} deliveries lost over {with_loss} members"
        ));
    }
    if totals.duplicates > 0 {
        problems.push(format!("{} duplicate deliveries", totals.duplicates));
    }
    if totals.reordered > 0 {
        problems.push(format!("{} deliveries out of order", totals.reordered));
    }
    let refused_calls: u64 = refused.values().map(|(n, _)| n).sum();
    if refused_calls > 0 {
        problems.push(format!(
            "{refused_calls} calls answered other than 200: {}",
            kinds_human(&refused)
        ));
    }
    if !command_errors.is_empty() {
        problems.push(format!(
            "batch commands failed: {}",
            kinds_human(&command_errors)
        ));
    }
    if !stopped.is_empty() {
        problems.push(format!(
            "{} API connections stopped early, {unanswered} messages unanswered (first: {})",
            stopped.len(),
            stopped[0]
        ));
    }
    if !closed.is_empty() {
        problems.push(format!(
            "{} members closed early (first: {})",
            closed.len(),
            closed[0]
        ));
    }

    let latency = LatencySummary::of(m.latency);
    let call_latency = LatencySummary::of(m.call_latency);
    let calls_per_sec = calls as f64 / m.calling_secs;
    let accepted_per_sec = accepted as f64 / m.calling_secs;
    let deliveries_per_sec = received as f64 / m.elapsed;
    let method = if plan.batch.is_some() {
        "batch"
    } else {
        "publish"
    };
    let json = json!({
        "scenario": "api",
        "api_url": plan.api_url,
        "method": method,
        "batch": plan.batch,
        "rooms": plan.rooms,
        "members_per_room": plan.members,
        "subscribers": plan.subscribers(),
        "connections": plan.connections,
        "rate": plan.rate,
        "duration_secs": plan.duration.as_secs_f64(),
        "payload_bytes": plan.payload_bytes,
        "setup_secs": m.setup_secs,
        "calling_secs": m.calling_secs,
        "elapsed_secs": m.elapsed,
        "calls": calls,
        "calls_ok": ok_calls,
        "calls_per_sec": calls_per_sec,
        "sent": sent,
        "accepted": accepted,
        "accepted_per_sec": accepted_per_sec,
        "with_offset": with_offset,
        "refused": kinds_json(&refused),
        "command_errors": kinds_json(&command_errors),
        "unanswered": unanswered,
        "stopped_connections": stopped.len(),
        "expected": expected,
        "received": received,
        "distinct": totals.distinct,
        "lost": lost,
        "members_with_loss": with_loss,
        "duplicates": totals.duplicates,
        "reordered": totals.reordered,
        "foreign": foreign,
        "closed_members": closed.len(),
        "deliveries_per_sec": deliveries_per_sec,
        "latency": latency,
        "call_latency": call_latency,
    });
    let calling = match plan.batch {
        Some(b) => format!("batch of {b} publishes"),
        None => "publish".into(),
    };
    let pace = if plan.rate > 0.0 {
        format!("{} calls/s in all", per_sec(plan.rate))
    } else {
        "as fast as answered".into()
    };
    let human = format!(
        "api: {} rooms × {} members ({} WebSocket), {} connections calling {calling} {pace} for {:.1} s (setup {:.1} s) at {}\n\
         calls {calls} answered ({ok_calls} with 200) = {} calls/s; messages sent {sent}, accepted {accepted} = {}/s ({with_offset} with an offset)\n\
         answers other than 200: {}; failed batch commands: {}; unanswered {unanswered}\n\
         expected {expected} deliveries, received {received} ({} distinct), lost {lost} ({with_loss} members), duplicates {}, out of order {}\n\
         deliveries/s {} over {:.2} s\n\
         delivery latency {}\n\
         call latency {}",
        plan.rooms,
        plan.members,
        plan.subscribers(),
        plan.connections,
        plan.duration.as_secs_f64(),
        m.setup_secs,
        plan.api_url,
        per_sec(calls_per_sec),
        per_sec(accepted_per_sec),
        kinds_human(&refused),
        kinds_human(&command_errors),
        totals.distinct,
        totals.duplicates,
        totals.reordered,
        per_sec(deliveries_per_sec),
        m.elapsed,
        latency.human(),
        call_latency.human(),
    );
    Outcome::new(json, human, problems)
}
