//! The `fanout` scenario: S subscribers over R rooms, P publishers sending room messages.
//!
//! Subscriber i joins room i mod R and counts as ready only once its own `user_joined` arrives;
//! publisher j joins room j mod R (the server only accepts room messages from members) and
//! starts sending when everyone is ready. Each subscriber tracks every publisher's sequence
//! numbers, so loss is exact per subscriber: what the publishers of its room sent (minus what
//! the server refused with `rate_limited`) against the distinct messages it received.
//!
//! Subscribers, which take in nearly all the traffic and only listen once joined, read on
//! [`RawWs`]; publishers send and read their echoes on tungstenite.
//!
//! With `--recover` every client stays in its room through closes ([`crate::recover`]): it
//! reconnects and rejoins with `since`, and a publisher's accepted messages are those it saw
//! stored (its own echoes, live or replayed), since a message sent into a dying connection may
//! or may not have been. Everyone then reads on tungstenite.
//!
//! With `--ids` every room message carries an id and each publisher counts what it heard back
//! ([`crate::acks`]); the run waits for the last answers after the last deliveries.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ack_reader::{AckReader, AckTotals};
use crate::cli::FanoutArgs;
use crate::conn::{Conn, Ws};
use crate::connect::Connector;
use crate::counters::Counters;
use crate::error::{ConnectError, RunError};
use crate::latency::{Latencies, LatencySummary};
use crate::pacer::{Pace, Pacer};
use crate::raw::RawWs;
use crate::receiver::Receiver;
use crate::recover::{stay, Member, RecoverStats};
use crate::report::{per_sec, Outcome};
use crate::stamp::FrameBuilder;
use crate::tracker::SeqTracker;
use crate::traffic::{drain, receive_until, send_paced};

/// The run's shape after `--quick` is applied.
#[derive(Debug, Clone)]
struct Plan {
    subscribers: usize,
    rooms: usize,
    publishers: usize,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    drain_timeout: Duration,
    recover: bool,
    ids: bool,
}

impl Plan {
    fn from_args(a: &FanoutArgs) -> Result<Plan, RunError> {
        let mut p = Plan {
            subscribers: a.subscribers,
            rooms: a.rooms,
            publishers: a.publishers,
            rate: a.rate,
            duration: secs(a.duration_secs, "--duration-secs")?,
            payload_bytes: a.payload_bytes,
            drain_timeout: secs(a.drain_timeout_secs, "--drain-timeout-secs")?,
            recover: a.recover,
            ids: a.ids,
        };
        if a.quick {
            p.subscribers = 20;
            p.rooms = 2;
            p.publishers = 2;
            p.rate = 20.0;
            p.duration = Duration::from_secs(1);
        }
        if p.subscribers == 0 || p.rooms == 0 || p.publishers == 0 {
            return Err(RunError::Usage(
                "--subscribers, --rooms and --publishers must be at least 1".into(),
            ));
        }
        if p.recover && p.rate == 0.0 {
            return Err(RunError::Usage(
                "--recover paces its publishers: give a positive --rate".into(),
            ));
        }
        if !(p.rate >= 0.0 && p.rate.is_finite()) {
            return Err(RunError::Usage(
                "--rate must be 0 (open loop) or positive".into(),
            ));
        }
        Ok(p)
    }
}

/// Parses a positive number of seconds.
pub fn secs(v: f64, flag: &str) -> Result<Duration, RunError> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| RunError::Usage(format!("{flag} must be a positive number of seconds")))
}

/// What the shared tasks need.
struct Shared {
    connector: Arc<Connector>,
    connect_slots: Semaphore,
    room_names: Vec<String>,
}

struct SubscriberEnd {
    room: usize,
    receiver: Receiver,
    /// With `--recover`: what its recovery went through.
    recovery: RecoverStats,
}

struct PublisherEnd {
    sent: u64,
    send_error: Option<String>,
    reader: Receiver,
    /// With `--recover`: what its recovery went through.
    recovery: RecoverStats,
}

impl Shared {
    /// A recovering client: connection `index` as `role`, staying in `room`.
    fn member(&self, index: usize, role: &str, room: usize) -> Member {
        Member {
            connector: self.connector.clone(),
            index,
            client_id: self.connector.client_id(role, index),
            room: self.room_names[room].clone(),
            phase: Arc::new(AtomicUsize::new(0)),
            phases: 1,
            placement: None,
        }
    }
}

/// Runs the scenario.
pub async fn run(
    args: &FanoutArgs,
    connector: Arc<Connector>,
    connect_concurrency: usize,
    progress: bool,
) -> Result<Outcome, RunError> {
    let plan = Plan::from_args(args)?;
    crate::limits::ensure_fds((plan.subscribers + plan.publishers) as u64)?;
    let shared = Arc::new(Shared {
        room_names: (0..plan.rooms)
            .map(|r| connector.client_id("room", r))
            .collect(),
        connector,
        connect_slots: Semaphore::new(connect_concurrency.max(1)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(false);
    let (pace_tx, pace_rx) = watch::channel(Pace::Wait);
    let latencies = Latencies::default();
    let received = Counters::default();
    let sent_counter = Counters::default();
    let echo_counter = Counters::default();
    let answers = Counters::default();

    // Subscribers: connect, join, then receive until stopped.
    let (ready_tx, mut ready_rx) = mpsc::channel(plan.subscribers + plan.publishers);
    let mut subs: Vec<JoinHandle<Option<SubscriberEnd>>> = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let shared = shared.clone();
        let ready_tx = ready_tx.clone();
        let stop_rx = stop_rx.clone();
        let receiver = Receiver::new(
            i,
            plan.publishers,
            Some(latencies.recorder(i)),
            received.clone(),
        );
        let room = i % plan.rooms;
        if plan.recover {
            let member = shared.member(i, "s", room);
            subs.push(tokio::spawn(async move {
                let stayed = stay(member, receiver, None, ready_tx, stop_rx).await?;
                Some(SubscriberEnd {
                    room,
                    receiver: stayed.frames,
                    recovery: stayed.stats[0],
                })
            }));
            continue;
        }
        subs.push(tokio::spawn(async move {
            let joined = join_as::<RawWs>(&shared, i, "s", room).await;
            let ws = crate::progress::report_ready(joined, &ready_tx).await?;
            let receiver = ws.receive_until(receiver, stop_rx).await;
            Some(SubscriberEnd {
                room,
                receiver,
                recovery: RecoverStats::default(),
            })
        }));
    }
    // Publishers: connect, join, wait for the start, send, then read until stopped.
    let (done_tx, mut done_rx) = mpsc::channel(plan.publishers);
    let mut pubs: Vec<JoinHandle<Option<PublisherEnd>>> = Vec::with_capacity(plan.publishers);
    for j in 0..plan.publishers {
        let shared = shared.clone();
        let ready_tx = ready_tx.clone();
        let done_tx = done_tx.clone();
        let stop_rx = stop_rx.clone();
        let mut start_rx = start_rx.clone();
        let mut reader = Receiver::new(
            plan.subscribers + j,
            plan.publishers,
            None,
            echo_counter.clone(),
        );
        if plan.ids {
            reader.acks = Some(AckReader::new(j as u32, answers.clone()));
        }
        let sent_counter = sent_counter.clone();
        let plan = plan.clone();
        if plan.recover {
            let room = j % plan.rooms;
            let member = shared.member(plan.subscribers + j, "p", room);
            let (sent_tx, sent_rx) = oneshot::channel();
            let next_seq = Arc::new(AtomicU64::new(0));
            let pacer = Pacer {
                builder: FrameBuilder::room_message(
                    &shared.room_names[room],
                    j as u32,
                    plan.payload_bytes,
                ),
                rate: plan.rate,
                pace_rx: pace_rx.clone(),
                next_seq: next_seq.clone(),
                done_tx: Some(sent_tx),
                outbox: None,
            };
            pubs.push(tokio::spawn(async move {
                let forward = async {
                    if let Ok(sent) = sent_rx.await {
                        sent_counter.add(j, sent);
                        let _ = done_tx.send((room, sent)).await;
                    }
                };
                let (stayed, ()) = tokio::join!(
                    stay(member, reader, Some(pacer), ready_tx, stop_rx),
                    forward
                );
                let stayed = stayed?;
                Some(PublisherEnd {
                    sent: next_seq.load(Ordering::Relaxed),
                    send_error: None,
                    reader: stayed.frames,
                    recovery: stayed.stats[0],
                })
            }));
            continue;
        }
        pubs.push(tokio::spawn(async move {
            let room = j % plan.rooms;
            let ws = crate::progress::report_ready(
                join_as::<Ws>(&shared, plan.subscribers + j, "p", room).await,
                &ready_tx,
            )
            .await?;
            if start_rx.wait_for(|s| *s).await.is_err() {
                return None;
            }
            let (mut sink, stream) = ws.split();
            let reader = tokio::spawn(receive_until(stream, reader, stop_rx));
            let room_name = &shared.room_names[room];
            let builder = if plan.ids {
                FrameBuilder::room_message_with_id(room_name, j as u32, plan.payload_bytes)
            } else {
                FrameBuilder::room_message(room_name, j as u32, plan.payload_bytes)
            };
            let (sent, send_error) = send_paced(
                &mut sink,
                &builder,
                plan.rate,
                plan.duration,
                &sent_counter,
                j,
            )
            .await;
            let _ = done_tx.send((room, sent)).await;
            let reader = reader.await.ok()?;
            let _ = sink.close().await;
            Some(PublisherEnd {
                sent,
                send_error,
                reader,
                recovery: RecoverStats::default(),
            })
        }));
    }
    drop(ready_tx);
    drop(done_tx);

    // Wait until every connection has joined (or the first fails).
    let total = (plan.subscribers + plan.publishers) as u64;
    let setup_started = Instant::now();
    crate::progress::await_ready(progress, "joining", total, &mut ready_rx, &stop_tx).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();

    // Run.
    let duration_ms = plan.duration.as_millis() as u64;
    let bar = crate::progress::bar(progress, duration_ms, "publishing");
    let started = Instant::now();
    let _ = start_tx.send(true);
    let _ = pace_tx.send(Pace::Send);
    let halt = tokio::spawn({
        let duration = plan.duration;
        async move {
            tokio::time::sleep(duration).await;
            let _ = pace_tx.send(Pace::Halt);
        }
    });
    let mut in_room = vec![0u64; plan.rooms];
    for i in 0..plan.subscribers {
        in_room[i % plan.rooms] += 1;
    }
    let mut expected_deliveries = 0u64;
    let mut total_sent = 0u64;
    let mut done = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while done < plan.publishers {
        tokio::select! {
            d = done_rx.recv() => match d {
                Some((room, sent)) => {
                    done += 1;
                    total_sent += sent;
                    expected_deliveries += sent * in_room[room];
                }
                None => break,
            },
            _ = tick.tick() => {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_position((started.elapsed().as_millis() as u64).min(duration_ms));
                bar.set_message(format!(
                    "{} deliveries/s, {} sent",
                    per_sec(received.total() as f64 / secs),
                    sent_counter.total()
                ));
            }
        }
    }
    bar.finish_and_clear();
    let finished = drain(&received, expected_deliveries, plan.drain_timeout).await;
    let elapsed = (finished - started).as_secs_f64().max(1e-6);
    if plan.ids {
        // Deliveries can overtake their acks; give the answers the same grace.
        drain(&answers, total_sent, plan.drain_timeout).await;
    }
    let _ = stop_tx.send(true);
    halt.abort();

    let mut publishers = Vec::with_capacity(plan.publishers);
    for h in pubs {
        publishers.push(h.await.ok().flatten());
    }
    let mut subscribers = Vec::with_capacity(plan.subscribers);
    for h in subs {
        subscribers.push(h.await.ok().flatten());
    }
    Ok(summarize(
        &plan,
        &publishers,
        &subscribers,
        &latencies,
        elapsed,
        setup_secs,
        &echo_counter,
    ))
}

/// Connects connection `index` with role `role`, joins `room`, and returns the connection.
async fn join_as<C: Conn>(
    shared: &Shared,
    index: usize,
    role: &str,
    room: usize,
) -> Result<C, ConnectError> {
    let _slot = shared.connect_slots.acquire().await;
    let c = &shared.connector;
    let id = c.client_id(role, index);
    let (ws, _) = c
        .connect_joined(index, &id, &shared.room_names[room])
        .await?;
    Ok(ws)
}

fn summarize(
    plan: &Plan,
    publishers: &[Option<PublisherEnd>],
    subscribers: &[Option<SubscriberEnd>],
    latencies: &Latencies,
    elapsed: f64,
    setup_secs: f64,
    echo_counter: &Counters,
) -> Outcome {
    let mut problems = Vec::new();
    // What each publisher got through: sent minus what the server refused; with --recover,
    // what it saw stored (its own distinct echoes), as a send into a dying connection may or
    // may not have been stored.
    let accepted: Vec<u64> = publishers
        .iter()
        .enumerate()
        .map(|(j, p)| {
            p.as_ref().map_or(0, |p| {
                if plan.recover {
                    p.reader.trackers.get(j).map_or(0, |t| t.distinct)
                } else {
                    p.sent.saturating_sub(p.reader.rate_limited)
                }
            })
        })
        .collect();
    let mut recovery = RecoverStats::default();
    for s in subscribers.iter().flatten() {
        recovery.add(&s.recovery);
    }
    for p in publishers.iter().flatten() {
        recovery.add(&p.recovery);
    }
    let sent: u64 = publishers.iter().flatten().map(|p| p.sent).sum();
    let rate_limited: u64 = publishers
        .iter()
        .flatten()
        .map(|p| p.reader.rate_limited)
        .sum();
    let publisher_failures: Vec<String> = publishers
        .iter()
        .enumerate()
        .filter_map(|(j, p)| match p {
            None => Some(format!("publisher {j} task failed")),
            Some(p) => p
                .send_error
                .clone()
                .or_else(|| p.reader.closed.clone())
                .map(|e| format!("publisher {j}: {e}")),
        })
        .collect();

    let mut expected = 0u64;
    let mut received = 0u64;
    let mut lost = 0u64;
    let mut with_loss = 0u64;
    let mut max_lost = 0u64;
    let mut totals = SeqTracker::default();
    let mut disconnected = Vec::new();
    for (i, s) in subscribers.iter().enumerate() {
        let Some(s) = s else {
            disconnected.push(format!("subscriber {i} task failed"));
            continue;
        };
        let mine: u64 = (0..plan.publishers)
            .filter(|j| j % plan.rooms == s.room)
            .map(|j| accepted[j])
            .sum();
        let distinct = s.receiver.distinct();
        for t in &s.receiver.trackers {
            totals.add_counts(t);
        }
        expected += mine;
        received += s.receiver.stamped;
        let l = mine.saturating_sub(distinct);
        lost += l;
        if l > 0 {
            with_loss += 1;
            max_lost = max_lost.max(l);
        }
        if let Some(why) = &s.receiver.closed {
            disconnected.push(format!("subscriber {i}: {why}"));
        }
    }
    let latency = LatencySummary::of(&latencies.merged());
    let deliveries_per_sec = received as f64 / elapsed;
    if lost > 0 {
        problems.push(format!(
            "{lost} deliveries lost over {with_loss} subscribers (at most {max_lost} by one)"
        ));
    }
    if totals.duplicates > 0 {
        problems.push(format!("{} duplicate deliveries", totals.duplicates));
    }
    if totals.reordered > 0 {
        problems.push(format!("{} deliveries out of order", totals.reordered));
    }
    if rate_limited > 0 {
        problems.push(format!(
            "{rate_limited} messages refused with rate_limited: raise the server's per-connection rate limit"
        ));
    }
    if !disconnected.is_empty() {
        problems.push(format!(
            "{} subscribers disconnected early (first: {})",
            disconnected.len(),
            disconnected[0]
        ));
    }
    if !publisher_failures.is_empty() {
        problems.push(format!(
            "{} publishers failed (first: {})",
            publisher_failures.len(),
            publisher_failures[0]
        ));
    }
    let json = json!({
        "scenario": "fanout",
        "subscribers": plan.subscribers,
        "rooms": plan.rooms,
        "publishers": plan.publishers,
        "rate_per_publisher": plan.rate,
        "duration_secs": plan.duration.as_secs_f64(),
        "payload_bytes": plan.payload_bytes,
        "setup_secs": setup_secs,
        "elapsed_secs": elapsed,
        "sent": sent,
        "rate_limited": rate_limited,
        "expected": expected,
        "received": received,
        "distinct": totals.distinct,
        "lost": lost,
        "duplicates": totals.duplicates,
        "reordered": totals.reordered,
        "subscribers_with_loss": with_loss,
        "max_lost_by_one_subscriber": max_lost,
        "disconnected_subscribers": disconnected.len(),
        "publisher_echoes": echo_counter.total(),
        "deliveries_per_sec": deliveries_per_sec,
        "sent_per_sec": sent as f64 / elapsed,
        "latency": latency,
    });
    let mut json = json;
    let mut human = format!(
        "fanout: {} subscribers in {} rooms, {} publishers at {} msg/s each for {:.1} s (setup {:.1} s)\n\
         sent {sent}, expected {expected} deliveries, received {received} ({} distinct)\n\
         lost {lost} ({with_loss} subscribers), duplicates {}, out of order {}, rate-limited {rate_limited}\n\
         deliveries/s {} over {:.2} s (subscribers only; publishers also got {} echoes)\n\
         latency {}",
        plan.subscribers,
        plan.rooms,
        plan.publishers,
        if plan.rate > 0.0 { plan.rate.to_string() } else { "max".into() },
        plan.duration.as_secs_f64(),
        setup_secs,
        totals.distinct,
        totals.duplicates,
        totals.reordered,
        per_sec(deliveries_per_sec),
        elapsed,
        echo_counter.total(),
        latency.human(),
    );
    if plan.ids {
        let mut acks = AckTotals::default();
        for p in publishers.iter().flatten() {
            if let Some(reader) = &p.reader.acks {
                acks.add(p.sent, reader);
            }
        }
        acks.report(&mut json, &mut human, &mut problems);
    }
    if plan.recover {
        if let Some(o) = json.as_object_mut() {
            o.insert("recover".into(), recovery.json());
        }
        human.push_str(&format!(
            "\nrecover: {} reconnects, rejoins recovered:true {} / recovered:false {}, history_reset {}, refused (bus_unavailable) {}",
            recovery.reconnects,
            recovery.recovered,
            recovery.not_recovered,
            recovery.history_resets,
            recovery.refused
        ));
    }
    Outcome::new(json, human, problems)
}
