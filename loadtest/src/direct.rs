//! The `direct` scenario: pairs of clients exchanging direct messages at a fixed rate.
//!
//! Client c talks to c XOR 1 and connects to --url number c mod N, so with two URLs every pair
//! spans two nodes. Each message carries a stamp; the receiver checks sequence and latency.
//! The stamp's sender field is the client's side of the pair (0 or 1): a client only ever
//! hears from its partner, so two trackers per client suffice.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::cli::DirectArgs;
use crate::conn::Ws;
use crate::connect::Connector;
use crate::counters::Counters;
use crate::error::RunError;
use crate::fanout::secs;
use crate::latency::{Latencies, LatencySummary};
use crate::receiver::Receiver;
use crate::report::{per_sec, Outcome};
use crate::stamp::FrameBuilder;
use crate::tracker::SeqTracker;
use crate::traffic::{drain, receive_until, send_paced};

struct ClientEnd {
    sent: u64,
    send_error: Option<String>,
    receiver: Receiver,
}

/// Runs the scenario.
pub async fn run(
    args: &DirectArgs,
    connector: Arc<Connector>,
    connect_concurrency: usize,
    progress: bool,
) -> Result<Outcome, RunError> {
    if args.pairs == 0 {
        return Err(RunError::Usage("--pairs must be at least 1".into()));
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(RunError::Usage(
            "--rate must be 0 (open loop) or positive".into(),
        ));
    }
    let duration = secs(args.duration_secs, "--duration-secs")?;
    let drain_timeout = secs(args.drain_timeout_secs, "--drain-timeout-secs")?;
    let clients = args.pairs * 2;
    crate::limits::ensure_fds(clients as u64)?;

    let slots = Arc::new(Semaphore::new(connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel(clients);
    let (done_tx, mut done_rx) = mpsc::channel(clients);
    let latencies = Latencies::default();
    let received = Counters::default();
    let sent_counter = Counters::default();
    let mut handles = Vec::with_capacity(clients);
    for c in 0..clients {
        let connector = connector.clone();
        let slots = slots.clone();
        let ready_tx = ready_tx.clone();
        let done_tx = done_tx.clone();
        let stop_rx = stop_rx.clone();
        let mut start_rx = start_rx.clone();
        let receiver = Receiver::new(c, 2, Some(latencies.recorder(c)), received.clone());
        let sent_counter = sent_counter.clone();
        let rate = args.rate;
        handles.push(tokio::spawn(async move {
            let connected = {
                let _slot = slots.acquire().await;
                connector
                    .connect::<Ws>(c, &connector.client_id("d", c))
                    .await
            };
            let (ws, _) = crate::progress::report_ready(connected, &ready_tx).await?;
            if start_rx.wait_for(|s| *s).await.is_err() {
                return None;
            }
            let (mut sink, stream) = ws.split();
            let reader = tokio::spawn(receive_until(stream, receiver, stop_rx));
            let partner = connector.client_id("d", c ^ 1);
            let builder = FrameBuilder::direct_message(&partner, (c % 2) as u32, 0);
            let (sent, send_error) =
                send_paced(&mut sink, &builder, rate, duration, &sent_counter, c).await;
            let _ = done_tx.send(sent).await;
            let receiver = reader.await.ok()?;
            let _ = sink.close().await;
            Some(ClientEnd {
                sent,
                send_error,
                receiver,
            })
        }));
    }
    drop(ready_tx);
    drop(done_tx);

    crate::progress::await_ready(
        progress,
        "connecting",
        clients as u64,
        &mut ready_rx,
        &stop_tx,
    )
    .await?;

    let duration_ms = duration.as_millis() as u64;
    let bar = crate::progress::bar(progress, duration_ms, "sending");
    let started = Instant::now();
    let _ = start_tx.send(true);
    let mut expected = 0u64;
    let mut done = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while done < clients {
        tokio::select! {
            d = done_rx.recv() => match d {
                Some(sent) => { done += 1; expected += sent; }
                None => break,
            },
            _ = tick.tick() => {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_position((started.elapsed().as_millis() as u64).min(duration_ms));
                bar.set_message(format!("{} messages/s", per_sec(received.total() as f64 / secs)));
            }
        }
    }
    bar.finish_and_clear();
    let finished = drain(&received, expected, drain_timeout).await;
    let elapsed = (finished - started).as_secs_f64().max(1e-6);
    let _ = stop_tx.send(true);
    let mut ends = Vec::with_capacity(clients);
    for h in handles {
        ends.push(h.await.ok().flatten());
    }

    // Loss per client: what its partner sent, minus what the server refused, minus what arrived.
    let mut lost = 0u64;
    let mut totals = SeqTracker::default();
    let mut received_total = 0u64;
    let mut offline = 0u64;
    let mut rate_limited = 0u64;
    let mut failures = Vec::new();
    for c in 0..clients {
        let Some(me) = &ends[c] else {
            failures.push(format!("client {c} task failed"));
            continue;
        };
        let refused_partner = ends[c ^ 1]
            .as_ref()
            .map_or(0, |p| p.receiver.target_offline + p.receiver.rate_limited);
        let partner_sent = ends[c ^ 1].as_ref().map_or(0, |p| p.sent);
        let accepted = partner_sent.saturating_sub(refused_partner);
        for t in &me.receiver.trackers {
            totals.add_counts(t);
        }
        lost += accepted.saturating_sub(me.receiver.distinct());
        received_total += me.receiver.stamped;
        offline += me.receiver.target_offline;
        rate_limited += me.receiver.rate_limited;
        if let Some(why) = me.send_error.as_ref().or(me.receiver.closed.as_ref()) {
            failures.push(format!("client {c}: {why}"));
        }
    }
    let latency = LatencySummary::of(&latencies.merged());
    let per_second = received_total as f64 / elapsed;
    let mut problems = Vec::new();
    if lost > 0 {
        problems.push(format!("{lost} direct messages lost"));
    }
    if totals.duplicates + totals.reordered > 0 {
        problems.push(format!(
            "{} duplicates, {} out of order",
            totals.duplicates, totals.reordered
        ));
    }
    if offline + rate_limited > 0 {
        problems.push(format!(
            "server refused {offline} messages with target_offline and {rate_limited} with rate_limited"
        ));
    }
    if !failures.is_empty() {
        problems.push(format!(
            "{} clients failed (first: {})",
            failures.len(),
            failures[0]
        ));
    }
    let json = json!({
        "scenario": "direct",
        "pairs": args.pairs,
        "rate_per_client": args.rate,
        "duration_secs": duration.as_secs_f64(),
        "elapsed_secs": elapsed,
        "sent": expected,
        "received": received_total,
        "distinct": totals.distinct,
        "lost": lost,
        "duplicates": totals.duplicates,
        "reordered": totals.reordered,
        "target_offline": offline,
        "rate_limited": rate_limited,
        "failed_clients": failures.len(),
        "messages_per_sec": per_second,
        "latency": latency,
    });
    let human = format!(
        "direct: {} pairs at {} msg/s per client for {:.1} s\n\
         sent {expected}, received {received_total}, lost {lost}, duplicates {}, out of order {}, target_offline {offline}, rate-limited {rate_limited}\n\
         messages/s {} over {elapsed:.2} s\nlatency {}",
        args.pairs,
        if args.rate > 0.0 { args.rate.to_string() } else { "max".into() },
        duration.as_secs_f64(),
        totals.duplicates,
        totals.reordered,
        per_sec(per_second),
        latency.human(),
    );
    Ok(Outcome::new(json, human, problems))
}
