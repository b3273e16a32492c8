//! The `presence` scenario: M members join one room, then one or a few askers (members too)
//! send `presence` requests for D seconds, back to back or at a fixed rate. It reports the time
//! to each answer (p50/p99/max), the `count` answered and whether `members` was truncated, and
//! checks every answer against the client ids that joined.
//!
//! Members only listen, on the hand reader. Each join of a room that announces sends a
//! `user_joined` to every member already there, so M joins make M²/2 frames and those, not
//! presence, would be the benchmark. The default room name starts with `bench-`: nodes started
//! with `--room-options 'bench*:announce=off'` spare the members them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::cli::PresenceArgs;
use crate::conn::{Conn, Incoming, Ws};
use crate::connect::Connector;
use crate::counters::Counters;
use crate::error::RunError;
use crate::fanout::secs;
use crate::latency::LatencySummary;
use crate::raw::RawWs;
use crate::receiver::{closed_by_server, Receiver};
use crate::report::{per_sec, Outcome};

/// What every asker needs.
struct Question {
    room: String,
    rate: f64,
    duration: Duration,
    /// Longest wait for one answer.
    limit: Duration,
    /// The client ids that joined (members and askers).
    expected: HashSet<String>,
}

/// What one `presence` answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    count: u64,
    listed: u64,
    truncated: bool,
}

/// What the askers got.
struct Asked {
    latency: Histogram<u64>,
    sent: u64,
    answers: u64,
    /// The first and the last correct answer.
    first: Option<Seen>,
    last: Option<Seen>,
    /// Correct answers with `truncated: true`.
    truncated: u64,
    /// Requests answered with an `error` event, by code.
    errors: BTreeMap<String, u64>,
    /// Answers that do not match the room, and what was wrong with the first.
    wrong: u64,
    first_wrong: Option<String>,
    /// Why an asker stopped before the end, if one did.
    ended: Vec<String>,
}

impl Asked {
    fn new() -> Self {
        Asked {
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant bounds 1..1h with 3 significant figures are valid"),
            sent: 0,
            answers: 0,
            first: None,
            last: None,
            truncated: 0,
            errors: BTreeMap::new(),
            wrong: 0,
            first_wrong: None,
            ended: Vec::new(),
        }
    }

    /// Counts one answer, `took` after its request was sent (or due).
    fn record(&mut self, took: Duration, checked: Result<Seen, String>) {
        self.answers += 1;
        self.latency.saturating_record(took.as_micros() as u64);
        match checked {
            Ok(seen) => {
                self.first.get_or_insert(seen);
                self.last = Some(seen);
                self.truncated += u64::from(seen.truncated);
            }
            Err(why) => {
                self.wrong += 1;
                self.first_wrong.get_or_insert(why);
            }
        }
    }

    /// Adds another asker's results.
    fn merge(&mut self, other: Asked) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.sent += other.sent;
        self.answers += other.answers;
        self.first = self.first.or(other.first);
        self.last = other.last.or(self.last);
        self.truncated += other.truncated;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.wrong += other.wrong;
        self.first_wrong = self.first_wrong.take().or(other.first_wrong);
        self.ended.extend(other.ended);
    }
}

/// Runs the scenario.
pub async fn run(
    args: &PresenceArgs,
    connector: Arc<Connector>,
    connect_concurrency: usize,
    progress: bool,
) -> Result<Outcome, RunError> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(RunError::Usage("--rate must be 0 or positive".into()));
    }
    let duration = secs(args.duration_secs, "--duration-secs")?;
    let members = args.members;
    crate::limits::ensure_fds((members + args.askers) as u64)?;
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-{}", connector.client_id("presence", 0)));

    // Members: connect, join, report the id the server confirmed, then listen until stopped.
    let slots = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let heard = Counters::default();
    let mut holders = Vec::with_capacity(members);
    for i in 0..members {
        let (connector, slots, room) = (connector.clone(), slots.clone(), room.clone());
        let (ready_tx, stop_rx, heard) = (ready_tx.clone(), stop_rx.clone(), heard.clone());
        holders.push(tokio::spawn(async move {
            let joined = {
                let _slot = slots.acquire().await;
                let id = connector.client_id("m", i);
                connector.connect_joined::<RawWs>(i, &id, &room).await
            };
            let ws = match joined {
                Ok((ws, id)) => {
                    let _ = ready_tx.send(Ok(id)).await;
                    ws
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e)).await;
                    return None;
                }
            };
            drop(ready_tx);
            let listened = ws.receive_until(Receiver::new(i, 0, None, heard), stop_rx);
            listened.await.closed
        }));
    }
    drop(ready_tx);
    let join_started = Instant::now();
    let mut ids =
        crate::progress::await_ready(progress, "joining", members as u64, &mut ready_rx, &stop_tx)
            .await?;
    let join_secs = join_started.elapsed().as_secs_f64().max(1e-6);

    // Askers join after every member, so the first answer should already count them all.
    let mut askers = Vec::with_capacity(args.askers);
    for a in 0..args.askers {
        let id = connector.client_id("a", a);
        let (ws, id) = connector
            .connect_joined::<Ws>(members + a, &id, &room)
            .await?;
        ids.push(id);
        askers.push(ws);
    }
    let question = Arc::new(Question {
        room: room.clone(),
        rate: args.rate,
        duration,
        limit: connector.timeout(),
        expected: ids.into_iter().collect(),
    });

    let duration_ms = duration.as_millis() as u64;
    let bar = crate::progress::bar(progress, duration_ms, "asking");
    let started = Instant::now();
    let tasks: Vec<_> = askers
        .into_iter()
        .map(|ws| tokio::spawn(ask(ws, question.clone(), started)))
        .collect();
    while !tasks.is_empty() && started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100).min(duration)).await;
        bar.set_position((started.elapsed().as_millis() as u64).min(duration_ms));
    }
    let mut asked = Asked::new();
    // An asker that is done stays connected until all are: leaving would change the count the
    // others' last answers give.
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok((a, ws)) => {
                asked.merge(a);
                done.push(ws);
            }
            Err(e) => asked.ended.push(format!("asker task failed: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    bar.finish_and_clear();
    drop(done);

    let _ = stop_tx.send(true);
    let mut dropped = 0u64;
    let mut first_drop = None;
    for h in holders {
        if let Ok(Some(why)) = h.await {
            dropped += 1;
            first_drop.get_or_insert(why);
        }
    }
    Ok(summarize(
        args,
        &question,
        &asked,
        Timing { join_secs, elapsed },
        (dropped, first_drop),
    ))
}

/// How long the two phases took, in seconds.
struct Timing {
    join_secs: f64,
    elapsed: f64,
}

/// One asker: requests `presence` of the room until the duration is over, one at a time;
/// hands its connection back still open.
async fn ask(mut ws: Ws, q: Arc<Question>, start: Instant) -> (Asked, Ws) {
    let frame = json!({"type": "presence", "room": q.room}).to_string();
    let end = start + q.duration;
    let mut asked = Asked::new();
    loop {
        let due = if q.rate > 0.0 {
            start + Duration::from_secs_f64(asked.sent as f64 / q.rate)
        } else {
            Instant::now()
        };
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        let sent_at = if q.rate > 0.0 { due } else { Instant::now() };
        if let Err(e) = ws.send_text(frame.clone()).await {
            asked.ended.push(format!("sending a request failed: {e}"));
            break;
        }
        asked.sent += 1;
        match tokio::time::timeout(q.limit, next_reply(&mut ws, &q.room)).await {
            Err(_) => {
                asked
                    .ended
                    .push(format!("no answer within {:.1} s", q.limit.as_secs_f64()));
                break;
            }
            Ok(Reply::Ended(why)) => {
                asked.ended.push(why);
                break;
            }
            Ok(Reply::Error(code)) => *asked.errors.entry(code).or_default() += 1,
            Ok(Reply::Answer(answer, at)) => {
                asked.record(at - sent_at, check(&answer, &q.expected));
            }
        }
    }
    (asked, ws)
}

/// How the server answered one request.
enum Reply {
    /// The room's `presence` event, and when it arrived.
    Answer(Value, Instant),
    /// An `error` event with this code.
    Error(String),
    /// The connection ended, or sent something that is not a seed-protocol event.
    Ended(String),
}

/// Reads until the answer to a `presence` request of `room`, skipping other events.
async fn next_reply(ws: &mut Ws, room: &str) -> Reply {
    loop {
        let text = match ws.next_incoming().await {
            Incoming::Text(t) => t,
            Incoming::Binary => continue,
            Incoming::Close(frame) => {
                return Reply::Ended(closed_by_server(
                    frame.as_ref().map(|(c, r)| (*c, r.as_str())),
                ))
            }
            Incoming::Failed(e) => return Reply::Ended(format!("connection error: {e}")),
            Incoming::Ended => return Reply::Ended("connection ended".into()),
        };
        let at = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            return Reply::Ended("the server sent a text frame that is not JSON".into());
        };
        match v["event"].as_str() {
            Some("presence") if v["room"] == room => return Reply::Answer(v, at),
            Some("error") => {
                return Reply::Error(v["code"].as_str().unwrap_or("unknown").to_owned())
            }
            _ => {}
        }
    }
}

/// Checks one `presence` answer against the client ids that joined: `count` is all of them,
/// `members` lists only them, each once, and `truncated` says whether it lists fewer.
fn check(answer: &Value, expected: &HashSet<String>) -> Result<Seen, String> {
    let (Some(count), Some(truncated), Some(members)) = (
        answer["count"].as_u64(),
        answer["truncated"].as_bool(),
        answer["members"].as_array(),
    ) else {
        return Err("an answer without `count`, `truncated` or `members`".into());
    };
    let seen = Seen {
        count,
        listed: members.len() as u64,
        truncated,
    };
    if count != expected.len() as u64 {
        return Err(format!("count {count}, but {} joined", expected.len()));
    }
    if truncated != (seen.listed < count) {
        return Err(format!(
            "truncated: {truncated} with {} of {count} listed",
            seen.listed
        ));
    }
    let mut listed = HashSet::with_capacity(members.len());
    for id in members {
        let Some(id) = id.as_str() else {
            return Err(format!("a member that is not a string: {id}"));
        };
        if !expected.contains(id) {
            return Err(format!("{id:?} listed, but it never joined"));
        }
        if !listed.insert(id) {
            return Err(format!("{id:?} listed twice"));
        }
    }
    Ok(seen)
}

fn summarize(
    args: &PresenceArgs,
    q: &Question,
    asked: &Asked,
    timing: Timing,
    (dropped, first_drop): (u64, Option<String>),
) -> Outcome {
    let Timing { join_secs, elapsed } = timing;
    let expected = q.expected.len() as u64;
    let latency = LatencySummary::of(&asked.latency);
    let errored: u64 = asked.errors.values().sum();
    let mut problems = Vec::new();
    if args.askers > 0 && asked.answers == 0 {
        problems.push("no `presence` request was answered".to_owned());
    }
    if asked.wrong > 0 {
        problems.push(format!(
            "{} of {} answers were wrong (first: {})",
            asked.wrong,
            asked.answers,
            asked.first_wrong.as_deref().unwrap_or_default()
        ));
    }
    if errored > 0 {
        problems.push(format!(
            "{errored} requests were answered with an error: {:?}",
            asked.errors
        ));
    }
    for why in &asked.ended {
        problems.push(format!("an asker stopped early: {why}"));
    }
    if dropped > 0 {
        problems.push(format!(
            "{dropped} members' connections ended during the run (first: {})",
            first_drop.unwrap_or_default()
        ));
    }
    let seen = |s: Option<Seen>| {
        s.map(|s| json!({"count": s.count, "listed": s.listed, "truncated": s.truncated}))
    };
    let json = json!({
        "scenario": "presence",
        "room": q.room,
        "members": args.members,
        "askers": args.askers,
        "rate_per_asker": args.rate,
        "duration_secs": q.duration.as_secs_f64(),
        "join_secs": join_secs,
        "joins_per_sec": args.members as f64 / join_secs,
        "requests": asked.sent,
        "answers": asked.answers,
        "answers_per_sec": asked.answers as f64 / elapsed,
        "latency": latency,
        "expected_count": expected,
        "count": asked.last.map(|s| s.count),
        "listed": asked.last.map(|s| s.listed),
        "truncated": asked.last.map(|s| s.truncated),
        "truncated_answers": asked.truncated,
        "first_answer": seen(asked.first),
        "wrong_answers": asked.wrong,
        "first_wrong": asked.first_wrong,
        "errors": asked.errors,
        "members_dropped": dropped,
    });
    let answer = match asked.last {
        Some(s) => format!(
            "count {} (expected {expected}), {} ids listed, truncated {}",
            s.count, s.listed, s.truncated
        ),
        None => format!("no correct answer (expected count {expected})"),
    };
    let human = format!(
        "presence: {} members joined {} in {join_secs:.2} s = {} joins/s\n\
         {} asker(s): {} answers to {} requests in {elapsed:.2} s = {} answers/s, \
         wrong {}, errors {errored}\nanswer latency {}\nlast answer: {answer}",
        args.members,
        q.room,
        per_sec(args.members as f64 / join_secs),
        args.askers,
        asked.answers,
        asked.sent,
        per_sec(asked.answers as f64 / elapsed),
        asked.wrong,
        latency.human(),
    );
    Outcome::new(json, human, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(n: usize) -> HashSet<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn a_full_list_and_a_truncated_one_are_right() {
        let ids = joined(3);
        let full = json!({"count": 3, "truncated": false, "members": ["m2", "m0", "m1"]});
        assert_eq!(
            check(&full, &ids),
            Ok(Seen {
                count: 3,
                listed: 3,
                truncated: false
            })
        );
        let part = json!({"count": 3, "truncated": true, "members": ["m1"]});
        assert_eq!(check(&part, &ids).map(|s| s.listed), Ok(1));
    }

    #[test]
    fn wrong_counts_flags_strangers_and_repeats_are_told() {
        let ids = joined(3);
        let cases = [
            (
                json!({"count": 2, "truncated": false, "members": ["m0", "m1"]}),
                "count 2, but 3 joined",
            ),
            (
                json!({"count": 3, "truncated": false, "members": ["m0"]}),
                "truncated: false with 1 of 3",
            ),
            (
                json!({"count": 3, "truncated": true, "members": ["m0", "m1", "m2"]}),
                "truncated: true with 3 of 3",
            ),
            (
                json!({"count": 3, "truncated": true, "members": ["m0", "x"]}),
                "\"x\" listed, but it never joined",
            ),
            (
                json!({"count": 3, "truncated": true, "members": ["m0", "m0"]}),
                "\"m0\" listed twice",
            ),
            (json!({"count": 3, "members": []}), "without"),
        ];
        for (answer, says) in cases {
            let why = check(&answer, &ids).expect_err(&answer.to_string());
            assert!(why.contains(says), "{answer}: {why}");
        }
    }
}
