//! The `resume` scenario (issue 19, history and recovery): C clients join a room and note where
//! the join ack says they are; all disconnect; one publisher, a member of every room, publishes
//! M numbered messages into each and waits for its own echo of the last one (so all are
//! stored); then all C reconnect at once (at most --connect-concurrency connecting) and rejoin
//! with `since`.
//!
//! Each client times its own `user_joined` ack from the start of its connect (once it holds a
//! connect slot) and from its `join_room` send, and hands the room messages it got before the
//! ack to [`crate::catchup::check`]: exactly the M missed ones, in order, and `recovered:true`.
//! The run reports those times, the wall time until every client was caught up, and every
//! client that was not, by kind; any failure makes the exit status 3. Every wait has a limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::catchup::{check, Failure, Seen};
use crate::cli::ResumeArgs;
use crate::conn::{Conn, Incoming, Ws};
use crate::connect::Connector;
use crate::error::{ConnectError, RunError};
use crate::fanout::secs;
use crate::latency::LatencySummary;
use crate::rejoin::{classify, join_frame, Event, Position};
use crate::report::{per_sec, Outcome};
use crate::stamp::{FrameBuilder, StampFinder};

/// What a join with reading brought: the room messages before the ack, and the ack.
struct Joined {
    seen: Vec<Seen>,
    recovered: Option<bool>,
    at: Option<Position>,
    sent: Instant,
    acked: Instant,
}

/// How one client's rejoin went.
struct Rejoin {
    /// Room messages it got before its ack (0 when it got no ack).
    replayed: u64,
    /// From connect start and from the `join_room` send to the ack, in µs, and when the ack
    /// came; `None` without an ack.
    times: Option<(u64, u64, Instant)>,
    verdict: Result<(), Failure>,
}

/// Runs the scenario.
pub async fn run(
    args: &ResumeArgs,
    connector: Arc<Connector>,
    connect_concurrency: usize,
    progress: bool,
) -> Result<Outcome, RunError> {
    if args.clients == 0 || args.rooms == 0 || args.missed == 0 {
        return Err(RunError::Usage(
            "--clients, --rooms and --missed must be at least 1".into(),
        ));
    }
    let rooms_n = u32::try_from(args.rooms)
        .map_err(|_| RunError::Usage("--rooms must fit in 32 bits".into()))?;
    let limit = secs(args.catch_up_timeout_secs, "--catch-up-timeout-secs")?;
    crate::limits::ensure_fds(args.clients as u64 + 1)?;
    let rooms: Arc<[String]> = (0..rooms_n)
        .map(|r| connector.client_id("room", r as usize))
        .collect();
    let slots = Arc::new(Semaphore::new(connect_concurrency.max(1)));

    // The publisher joins first: its own join is nothing the clients have to skip.
    let pub_index = args.clients;
    let (mut publisher, pub_me) = connector
        .connect::<Ws>(pub_index, &connector.client_id("rp", 0))
        .await?;
    let pub_addr = connector.target(pub_index).addr;
    for room in rooms.iter() {
        connector
            .join(&mut publisher, pub_addr, room, &pub_me)
            .await?;
    }

    // Every client joins, notes its position, and leaves.
    let setup_started = Instant::now();
    let bar = crate::progress::bar(progress, args.clients as u64, "joining");
    let mut visits = JoinSet::new();
    for i in 0..args.clients {
        let (connector, slots, rooms) = (connector.clone(), slots.clone(), rooms.clone());
        visits.spawn(async move {
            let at = first_visit(&connector, &slots, i, &rooms[i % rooms.len()]).await;
            (i, at)
        });
    }
    let mut positions: Vec<Option<Position>> = vec![None; args.clients];
    while let Some(done) = visits.join_next().await {
        let (i, at) = done.map_err(|e| RunError::Other(format!("a client task failed: {e}")))?;
        positions[i] = Some(at?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let setup_secs = setup_started.elapsed().as_secs_f64();

    let publish_started = Instant::now();
    publish(&mut publisher, &pub_me, &rooms, args.missed, limit).await?;
    let publish_secs = publish_started.elapsed().as_secs_f64();
    close(publisher, connector.timeout()).await;

    // All at once, each as soon as it gets a connect slot.
    let bar = crate::progress::bar(progress, args.clients as u64, "rejoining");
    let go = Instant::now();
    let mut rejoins = JoinSet::new();
    for (i, since) in positions.into_iter().enumerate() {
        let Some(since) = since else { continue };
        let (connector, slots, rooms) = (connector.clone(), slots.clone(), rooms.clone());
        let missed = args.missed;
        rejoins.spawn(async move {
            let r = i % rooms.len();
            let sender = u32::try_from(r).unwrap_or(u32::MAX);
            rejoin(
                &connector, &slots, i, &rooms[r], since, sender, missed, limit,
            )
            .await
        });
    }
    let mut results = Vec::with_capacity(args.clients);
    while let Some(done) = rejoins.join_next().await {
        results.push(done.unwrap_or_else(|e| Rejoin {
            replayed: 0,
            times: None,
            verdict: Err(Failure::Error(format!("client task failed: {e}"))),
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(summarize(
        args,
        connect_concurrency,
        &results,
        go,
        setup_secs,
        publish_secs,
    ))
}

/// Connects client `index`, joins `room` without `since`, and closes; returns where the ack
/// said the room was.
async fn first_visit(
    connector: &Connector,
    slots: &Semaphore,
    index: usize,
    room: &str,
) -> Result<Position, ConnectError> {
    let addr = connector.target(index).addr;
    let (mut ws, me) = {
        let _slot = slots.acquire().await;
        connector
            .connect::<Ws>(index, &connector.client_id("r", index))
            .await?
    };
    let protocol = |detail: String| ConnectError::Protocol { addr, detail };
    let joined = join_reading(&mut ws, room, &me, None, connector.timeout())
        .await
        .map_err(|f| protocol(format!("first join of {me}: {}", f.detail())))?;
    let at = joined.at.ok_or_else(|| {
        protocol(format!(
            "the join ack of {me} in {room} carries no offset and epoch: does the server keep history (--history-size > 0)?"
        ))
    })?;
    close(ws, connector.timeout()).await;
    Ok(at)
}

/// Reconnects client `index` and rejoins `room` with `since`; times the ack and checks what
/// came before it against the `missed` messages stamped by `sender`.
#[allow(clippy::too_many_arguments)]
async fn rejoin(
    connector: &Connector,
    slots: &Semaphore,
    index: usize,
    room: &str,
    since: Position,
    sender: u32,
    missed: u64,
    limit: Duration,
) -> Rejoin {
    let failed = |f: Failure| Rejoin {
        replayed: 0,
        times: None,
        verdict: Err(f),
    };
    let (mut ws, me, started) = {
        let _slot = slots.acquire().await;
        let started = Instant::now();
        match connector
            .connect::<Ws>(index, &connector.client_id("r", index))
            .await
        {
            Ok((ws, me)) => (ws, me, started),
            Err(e @ ConnectError::Timeout { .. }) => {
                return failed(Failure::Timeout(e.to_string()))
            }
            Err(e) => return failed(Failure::Error(e.to_string())),
        }
    };
    let joined = match join_reading(&mut ws, room, &me, Some(&since), limit).await {
        Ok(j) => j,
        Err(f) => return failed(f),
    };
    close(ws, connector.timeout()).await;
    let micros = |from: Instant| joined.acked.duration_since(from).as_micros() as u64;
    Rejoin {
        replayed: joined.seen.len() as u64,
        times: Some((micros(started), micros(joined.sent), joined.acked)),
        verdict: check(&since, &joined.seen, joined.recovered, sender, missed),
    }
}

/// Sends `join_room` (with `since` when given) and reads until this client's own ack, keeping
/// the room messages on the way; at most `limit` from the send.
async fn join_reading(
    ws: &mut Ws,
    room: &str,
    me: &str,
    since: Option<&Position>,
    limit: Duration,
) -> Result<Joined, Failure> {
    let stamps = StampFinder::default();
    match tokio::time::timeout(limit, ws.send_text(join_frame(room, since))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::Error(format!("sending join_room failed: {e}"))),
        Err(_) => return Err(Failure::Timeout("sending join_room blocked".into())),
    }
    let sent = Instant::now();
    let deadline = sent + limit;
    let mut seen = Vec::new();
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, ws.next_incoming()).await else {
            return Err(Failure::Timeout(format!(
                "no user_joined in {room} within {:.1} s of join_room ({} room messages by then)",
                limit.as_secs_f64(),
                seen.len()
            )));
        };
        let t = match next {
            Incoming::Text(t) => t,
            Incoming::Binary => continue,
            Incoming::Close(frame) => {
                return Err(Failure::Error(format!(
                    "closed before user_joined: {frame:?}"
                )))
            }
            Incoming::Failed(e) => return Err(Failure::Error(format!("read failed: {e}"))),
            Incoming::Ended => return Err(Failure::Error("ended before user_joined".into())),
        };
        match classify(t.as_bytes(), me, room) {
            Event::Chat(at) => seen.push(Seen {
                at,
                stamp: stamps.find(t.as_bytes()).map(|s| (s.sender, s.seq)),
            }),
            Event::Ack { recovered, at } => {
                return Ok(Joined {
                    seen,
                    recovered,
                    at,
                    sent,
                    acked: Instant::now(),
                })
            }
            Event::Error { code, .. } => {
                return Err(Failure::Error(format!("error event {code:?}")))
            }
            Event::HistoryReset | Event::Published { .. } | Event::Other => {}
        }
    }
}

/// Publishes `missed` numbered messages into each room (room r's stamped by sender r) and waits,
/// at most `limit`, for its own echo of each room's last one: then all of them are stored.
async fn publish(
    ws: &mut Ws,
    me: &str,
    rooms: &[String],
    missed: u64,
    limit: Duration,
) -> Result<(), RunError> {
    let fail = |what: String| RunError::Other(format!("publisher {me}: {what}"));
    for (r, room) in rooms.iter().enumerate() {
        let frames = FrameBuilder::room_message(room, u32::try_from(r).unwrap_or(u32::MAX), 0);
        for seq in 0..missed {
            tokio::time::timeout(limit, ws.send_text(frames.frame(seq)))
                .await
                .map_err(|_| fail("sending blocked".into()))?
                .map_err(|e| fail(format!("sending failed: {e}")))?;
        }
    }
    let stamps = StampFinder::default();
    let mut last_echoed = vec![false; rooms.len()];
    let mut pending = rooms.len();
    let deadline = Instant::now() + limit;
    while pending > 0 {
        let next = tokio::time::timeout_at(deadline, ws.next_incoming())
            .await
            .map_err(|_| {
                fail(format!(
                    "no echo of the last message in {pending} room(s) within {:.1} s",
                    limit.as_secs_f64()
                ))
            })?;
        let t = match next {
            Incoming::Text(t) => t,
            Incoming::Binary => continue,
            other => return Err(fail(format!("connection ended: {other:?}"))),
        };
        if let Event::Error { code, .. } = classify(t.as_bytes(), me, "") {
            let hint = if code == "rate_limited" {
                " (raise the node's --rate-limit-burst above --rooms x --missed)"
            } else {
                ""
            };
            return Err(fail(format!("the server answered error {code:?}{hint}")));
        }
        let Some(s) = stamps.find(t.as_bytes()) else {
            continue;
        };
        let r = s.sender as usize;
        if s.seq + 1 == missed && r < rooms.len() && !last_echoed[r] {
            if let Event::Chat(_) = classify(t.as_bytes(), me, &rooms[r]) {
                last_echoed[r] = true;
                pending -= 1;
            }
        }
    }
    Ok(())
}

/// Closes politely, waiting at most `limit` for the server's side of it.
async fn close(mut ws: Ws, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn summarize(
    args: &ResumeArgs,
    connect_concurrency: usize,
    results: &[Rejoin],
    go: Instant,
    setup_secs: f64,
    publish_secs: f64,
) -> Outcome {
    let new_hist = || {
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant bounds 1..1h with 3 significant figures are valid")
    };
    let (mut from_connect, mut from_join) = (new_hist(), new_hist());
    let mut failures: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let mut last_ack: Option<Instant> = None;
    let mut replayed = 0u64;
    for r in results {
        replayed += r.replayed;
        match (&r.verdict, r.times) {
            (Ok(()), Some((connect_us, join_us, acked))) => {
                from_connect.saturating_record(connect_us.max(1));
                from_join.saturating_record(join_us.max(1));
                last_ack = Some(last_ack.map_or(acked, |l| l.max(acked)));
            }
            (Ok(()), None) => {}
            (Err(f), _) => {
                failures
                    .entry(f.name())
                    .or_insert_with(|| (0, f.detail()))
                    .0 += 1
            }
        }
    }
    let caught_up = from_join.len();
    let failed: u64 = failures.values().map(|(c, _)| c).sum();
    let wall = last_ack.map_or(0.0, |l| l.duration_since(go).as_secs_f64());
    let expected = args.clients as u64 * args.missed;
    let mut problems = Vec::new();
    for (kind, (count, first)) in &failures {
        problems.push(format!("{count} clients {kind}, e.g. {first}"));
    }
    let (join_lat, connect_lat) = (
        LatencySummary::of(&from_join),
        LatencySummary::of(&from_connect),
    );
    let json = json!({
        "scenario": "resume",
        "clients": args.clients,
        "rooms": args.rooms,
        "missed_per_client": args.missed,
        "connect_concurrency": connect_concurrency,
        "expected_replayed": expected,
        "replayed": replayed,
        "caught_up": caught_up,
        "failed": failed,
        "failures": failures.iter().map(|(k, (c, e))| (k.to_string(), json!({"count": c, "first": e}))).collect::<serde_json::Map<_, _>>(),
        "catch_up_from_join": join_lat,
        "catch_up_from_connect": connect_lat,
        "all_caught_up_secs": wall,
        "replayed_per_sec": replayed as f64 / wall.max(1e-6),
        "setup_secs": setup_secs,
        "publish_secs": publish_secs,
    });
    let failure_line = if failures.is_empty() {
        "none".to_owned()
    } else {
        failures
            .iter()
            .map(|(k, (c, _))| format!("{k} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let human = format!(
        "resume: {} clients over {} room(s), each missed {} messages; caught up {caught_up}, failed {failed} ({failure_line})\n\
         replayed {} of {} expected; first joins took {setup_secs:.2} s, publishing and storing {publish_secs:.2} s\n\
         caught up from join_room send: {}\n\
         caught up from connect start:  {}\n\
         all caught up {wall:.3} s after the reconnect storm began (at most {connect_concurrency} connecting at once), {} replayed messages/s",
        args.clients,
        args.rooms,
        args.missed,
        per_sec(replayed as f64),
        per_sec(expected as f64),
        join_lat.human(),
        connect_lat.human(),
        per_sec(replayed as f64 / wall.max(1e-6)),
    );
    Outcome::new(json, human, problems)
}
