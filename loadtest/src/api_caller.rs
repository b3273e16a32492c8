//! One caller of the `api` scenario: a kept-alive connection that publishes stamped messages
//! over the server API — one `publish`, or one `batch` of B publishes, per call — as soon as
//! the last call is answered or on a schedule, and tallies what the server answered.
//!
//! Caller `c` is sender `c` of every stamp, and numbers its messages per room, so a member sees
//! each caller's messages to its room as one sequence 0, 1, 2, …: the next call is sent only
//! once the last is answered (stored and published), so that sequence arrives in order. Its
//! k-th message goes to room (c + k) mod R, which spreads every caller over every room.
//!
//! A 200 answer is counted without parsing it when every command of a batch has a result (the
//! usual case); otherwise the replies are parsed to learn which commands failed and why.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use memchr::memmem;
use serde_json::Value;
use tokio::time::Instant;

use crate::api_client::{Answer, ApiConn};
use crate::counters::Counters;
use crate::latency::Recorder;
use crate::stamp::FrameBuilder;

/// What a caller does.
#[derive(Debug, Clone)]
pub struct CallerPlan {
    /// This caller's index: the sender of its stamps.
    pub index: usize,
    /// The room names.
    pub rooms: Vec<String>,
    /// Publishes per `batch` call; `None`: one `publish` per call.
    pub batch: Option<usize>,
    /// Calls per second of this caller; 0: the next as soon as the last is answered.
    pub rate: f64,
    /// How long it calls.
    pub duration: Duration,
    /// Padding bytes in each message's data.
    pub payload_bytes: usize,
}

/// How many answers of one kind, and the first one's message.
pub type Kinds = BTreeMap<String, (u64, String)>;

/// What a caller sent and what it was answered.
#[derive(Debug, Default)]
pub struct Tally {
    /// Calls answered (any status).
    pub calls: u64,
    /// Calls answered 200.
    pub ok_calls: u64,
    /// Publishes sent (in answered calls and in the one left unanswered, if any).
    pub sent: u64,
    /// Publishes answered with a result, per room.
    pub accepted: Vec<u64>,
    /// Of those, the ones whose result carried an offset (the room keeps history).
    pub with_offset: u64,
    /// Calls answered with another status, by `STATUS code`.
    pub refused: Kinds,
    /// Commands of 200 `batch` answers that failed, by code.
    pub command_errors: Kinds,
    /// Publishes in a call that got no answer (the server may or may not have run them).
    pub unanswered: u64,
    /// Why the caller stopped before its time was up.
    pub failed: Option<String>,
}

/// The stamped bodies of one caller.
struct Bodies {
    /// One builder per room.
    builders: Vec<FrameBuilder>,
    /// The next sequence number per room.
    next_seq: Vec<u64>,
    /// The room of the next message.
    next_room: usize,
}

impl Bodies {
    fn new(plan: &CallerPlan) -> Bodies {
        let sender = plan.index as u32;
        Bodies {
            builders: plan
                .rooms
                .iter()
                .map(|r| FrameBuilder::api_publish(r, sender, plan.payload_bytes))
                .collect(),
            next_seq: vec![0; plan.rooms.len()],
            next_room: plan.index % plan.rooms.len(),
        }
    }

    /// Appends the next message's params to `out` and returns its room.
    fn push_next(&mut self, out: &mut String) -> usize {
        let room = self.next_room;
        self.builders[room].push_frame(out, self.next_seq[room]);
        self.next_seq[room] += 1;
        self.next_room = (room + 1) % self.builders.len();
        room
    }

    /// The next call's body (`publish` params, or a `batch` of `n`), and the room of each
    /// message in it, in order.
    fn next_call(&mut self, batch: Option<usize>, rooms: &mut Vec<usize>) -> Bytes {
        rooms.clear();
        let Some(n) = batch else {
            let mut body = String::with_capacity(128);
            rooms.push(self.push_next(&mut body));
            return Bytes::from(body);
        };
        let mut body = String::with_capacity(16 + n * 128);
        body.push_str(r#"{"commands":["#);
        for i in 0..n {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"method":"publish","params":"#);
            rooms.push(self.push_next(&mut body));
            body.push('}');
        }
        body.push_str("]}");
        Bytes::from(body)
    }
}

/// Kinds kept apart per caller; a server answering with more codes than that has the rest
/// counted as `other`.
const MAX_KINDS: usize = 32;

/// Counts one kind of answer; `first` describes the first of its kind (at most 200 bytes kept).
fn count(kinds: &mut Kinds, kind: String, first: impl FnOnce() -> String) {
    let kind = if kinds.len() >= MAX_KINDS && !kinds.contains_key(&kind) {
        "other".to_owned()
    } else {
        kind
    };
    kinds
        .entry(kind)
        .or_insert_with(|| {
            let mut first = first();
            if first.len() > 200 {
                let mut cut = 200;
                while !first.is_char_boundary(cut) {
                    cut -= 1;
                }
                first.truncate(cut);
            }
            (0, first)
        })
        .0 += 1;
}

/// The `{"code","message"}` of an `{"error":…}` object, if it is one.
fn error_of(v: &Value) -> Option<(String, String)> {
    let e = v.get("error")?;
    Some((
        e["code"].as_str().unwrap_or("?").to_owned(),
        e["message"].as_str().unwrap_or("").to_owned(),
    ))
}

impl Tally {
    /// Counts the answer to a call whose messages went to `rooms`.
    pub fn answered(&mut self, answer: &Answer, rooms: &[usize], batch: bool) {
        self.calls += 1;
        let body = &answer.body[..];
        if answer.status != 200 {
            let parsed = serde_json::from_slice::<Value>(body).ok();
            let (code, message) = parsed.as_ref().and_then(error_of).unwrap_or_else(|| {
                let start = &body[..body.len().min(200)];
                ("-".into(), String::from_utf8_lossy(start).into_owned())
            });
            count(
                &mut self.refused,
                format!("{} {code}", answer.status),
                || message,
            );
            return;
        }
        self.ok_calls += 1;
        let results = memmem::find_iter(body, br#"{"result":"#).count();
        if results == rooms.len() && (batch || body.starts_with(br#"{"result":"#)) {
            for &r in rooms {
                self.accepted[r] += 1;
            }
            self.with_offset += memmem::find_iter(body, br#""offset":"#).count() as u64;
            return;
        }
        // Some command failed, or the answer is shaped otherwise: read it properly.
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let replies: Vec<&Value> = match (&parsed, batch) {
            (Some(v), true) => v["replies"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
            (Some(v), false) => vec![v],
            (None, _) => Vec::new(),
        };
        if replies.len() != rooms.len() {
            count(&mut self.command_errors, "malformed_answer".into(), || {
                format!(
                    "200 with {} replies for {} messages: {}",
                    replies.len(),
                    rooms.len(),
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
            });
        }
        for (reply, &room) in replies.iter().zip(rooms) {
            if let Some(result) = reply.get("result") {
                self.accepted[room] += 1;
                if result.get("offset").is_some() {
                    self.with_offset += 1;
                }
            } else if let Some((code, message)) = error_of(reply) {
                count(&mut self.command_errors, code, || message);
            } else {
                count(&mut self.command_errors, "malformed_reply".into(), || {
                    reply.to_string()
                });
            }
        }
    }
}

/// Calls until `plan.duration` is up (or a call fails); counts answered calls into `calls` and
/// accepted messages into `accepted`, and each call's round trip into `call_latency`.
pub async fn call_until(
    mut conn: ApiConn,
    plan: CallerPlan,
    calls: Counters,
    accepted: Counters,
    mut call_latency: Recorder,
) -> Tally {
    let mut tally = Tally {
        accepted: vec![0; plan.rooms.len()],
        ..Tally::default()
    };
    let mut bodies = Bodies::new(&plan);
    let method = if plan.batch.is_some() {
        "batch"
    } else {
        "publish"
    };
    let mut rooms = Vec::with_capacity(plan.batch.unwrap_or(1));
    let start = Instant::now();
    let end = start + plan.duration;
    let mut n = 0u64;
    loop {
        if plan.rate > 0.0 {
            let due = start + Duration::from_secs_f64(n as f64 / plan.rate);
            tokio::time::sleep_until(due.min(end)).await;
        }
        let sent_at = Instant::now();
        if sent_at >= end {
            break;
        }
        let body = bodies.next_call(plan.batch, &mut rooms);
        tally.sent += rooms.len() as u64;
        match conn.call(method, body).await {
            Ok(answer) => {
                call_latency.record(sent_at.elapsed().as_micros() as u64);
                let before: u64 = tally.accepted.iter().sum();
                tally.answered(&answer, &rooms, plan.batch.is_some());
                calls.add(plan.index, 1);
                accepted.add(plan.index, tally.accepted.iter().sum::<u64>() - before);
            }
            Err(e) => {
                tally.unanswered += rooms.len() as u64;
                tally.failed = Some(e);
                break;
            }
        }
        n += 1;
    }
    call_latency.flush();
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(batch: Option<usize>) -> CallerPlan {
        CallerPlan {
            index: 1,
            rooms: vec!["a".into(), "b".into(), "c".into()],
            batch,
            rate: 0.0,
            duration: Duration::from_secs(1),
            payload_bytes: 0,
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn bodies_spread_rooms_and_number_each_room_apart() {
        let mut b = Bodies::new(&plan(Some(4)));
        let mut rooms = Vec::new();
        let body = b.next_call(Some(4), &mut rooms);
        assert_eq!(rooms, [1, 2, 0, 1]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let cmds = v["commands"].as_array().unwrap();
        assert_eq!(cmds.len(), 4);
        assert_eq!(cmds[0]["method"], "publish");
        assert_eq!(cmds[3]["params"]["room"], "b");
        let data: Vec<&str> = cmds
            .iter()
            .map(|c| c["params"]["data"].as_str().unwrap())
            .collect();
        assert!(data[0].starts_with("lt1 1 0 "), "{data:?}");
        assert!(data[3].starts_with("lt1 1 1 "), "{data:?}");
        let one = b.next_call(None, &mut rooms);
        assert_eq!(rooms, [2]);
        let v: Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(v["room"], "c");
        assert!(v["data"].as_str().unwrap().starts_with("lt1 1 1 "));
    }

    #[test]
    fn answers_are_counted_by_kind() {
        let mut t = Tally {
            accepted: vec![0; 3],
            ..Tally::default()
        };
        t.answered(
            &answer(200, r#"{"result":{"offset":3,"epoch":"e"}}"#),
            &[0],
            false,
        );
        t.answered(&answer(200, r#"{"result":{}}"#), &[1], false);
        t.answered(
            &answer(
                200,
                r#"{"replies":[{"result":{}},{"result":{"offset":1,"epoch":"e"}}]}"#,
            ),
            &[2, 2],
            true,
        );
        t.answered(
            &answer(
                200,
                r#"{"replies":[{"result":{}},{"error":{"code":"bus_unavailable","message":"down"}}]}"#,
            ),
            &[0, 1],
            true,
        );
        t.answered(
            &answer(
                401,
                r#"{"error":{"code":"unauthorized","message":"no key"}}"#,
            ),
            &[1],
            false,
        );
        t.answered(&answer(502, "Bad Gateway"), &[1], false);
        assert_eq!(t.accepted, [2, 1, 2]);
        assert_eq!(t.with_offset, 2);
        assert_eq!((t.calls, t.ok_calls), (6, 4));
        assert_eq!(t.command_errors["bus_unavailable"], (1, "down".into()));
        assert_eq!(t.refused["401 unauthorized"], (1, "no key".into()));
        assert_eq!(t.refused["502 -"], (1, "Bad Gateway".into()));
        for code in 0..40 {
            let body = format!(
                r#"{{"error":{{"code":"c{code}","message":"{}"}}}}"#,
                "é".repeat(300)
            );
            t.answered(&answer(400, &body), &[0], false);
        }
        assert_eq!(t.refused.len(), MAX_KINDS + 1, "{:?}", t.refused.keys());
        assert_eq!(t.refused["other"].0, 40 - (MAX_KINDS as u64 - 2));
        assert!(t.refused.values().all(|(_, first)| first.len() <= 200));
    }
}
