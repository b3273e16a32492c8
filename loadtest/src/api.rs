//! The `api` scenario: R rooms × M WebSocket members listen while C kept-alive HTTP/1.1
//! connections publish into those rooms over the server API — what a backend does.
//!
//! The API connections are opened first, so a wrong --api-url fails before thousands of joins.
//! Then every member joins through --url and counts as ready once its own `user_joined` arrives;
//! then the callers ([`crate::api_caller`]) call for --duration-secs. A message counts as
//! accepted when its call (or its command in a `batch`) was answered with a result, and each
//! member of its room should then get it once: expected deliveries = accepted × members. The
//! members read on [`RawWs`] into a [`Receiver`], as `fanout`'s subscribers do, so delivery
//! latency is from the stamp the caller wrote just before sending the call to the member's read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api_caller::{call_until, CallerPlan, Tally};
use crate::api_client::ApiConn;
use crate::api_plan::{MemberEnd, Plan};
use crate::api_report::{summarize, Measured};
use crate::cli::ApiArgs;
use crate::connect::Connector;
use crate::counters::Counters;
use crate::error::RunError;
use crate::http::HttpUrl;
use crate::latency::Latencies;
use crate::raw::RawWs;
use crate::receiver::Receiver;
use crate::report::{per_sec, Outcome};
use crate::traffic::drain;

/// Runs the scenario.
pub async fn run(
    args: &ApiArgs,
    connector: Arc<Connector>,
    connect_concurrency: usize,
    progress: bool,
) -> Result<Outcome, RunError> {
    let plan = Plan::from_args(args, &connector)?;
    let subscribers = plan.subscribers();
    crate::limits::ensure_fds((subscribers + plan.connections) as u64)?;
    let url = HttpUrl::parse(&plan.api_url).map_err(RunError::Other)?;
    let mut conns = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        conns.push(
            ApiConn::open(&url, &args.api_key, plan.call_timeout)
                .await
                .map_err(RunError::Other)?,
        );
    }

    let room_names: Arc<[String]> = (0..plan.rooms)
        .map(|r| connector.client_id("room", r))
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let latencies = Latencies::default();
    let received = Counters::default();
    let slots = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::channel(subscribers);
    let mut members: Vec<JoinHandle<Option<MemberEnd>>> = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let room = i % plan.rooms;
        let receiver = Receiver::new(
            i,
            plan.connections,
            Some(latencies.recorder(i)),
            received.clone(),
        );
        let (connector, slots, room_names) = (connector.clone(), slots.clone(), room_names.clone());
        let (ready_tx, stop_rx) = (ready_tx.clone(), stop_rx.clone());
        members.push(tokio::spawn(async move {
            let joined = {
                let _slot = slots.acquire().await;
                let id = connector.client_id("m", i);
                connector
                    .connect_joined::<RawWs>(i, &id, &room_names[room])
                    .await
                    .map(|(ws, _)| ws)
            };
            let ws = crate::progress::report_ready(joined, &ready_tx).await?;
            let receiver = ws.receive_until(receiver, stop_rx).await;
            Some(MemberEnd { room, receiver })
        }));
    }
    drop(ready_tx);
    let setup_started = Instant::now();
    crate::progress::await_ready(
        progress,
        "joining",
        subscribers as u64,
        &mut ready_rx,
        &stop_tx,
    )
    .await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();

    // Call.
    let call_counter = Counters::default();
    let accepted_counter = Counters::default();
    let call_latencies = Latencies::default();
    let started = Instant::now();
    let callers: Vec<JoinHandle<Tally>> = conns
        .into_iter()
        .enumerate()
        .map(|(index, conn)| {
            let caller = CallerPlan {
                index,
                rooms: room_names.to_vec(),
                batch: plan.batch,
                rate: plan.rate / plan.connections as f64,
                duration: plan.duration,
                payload_bytes: plan.payload_bytes,
            };
            tokio::spawn(call_until(
                conn,
                caller,
                call_counter.clone(),
                accepted_counter.clone(),
                call_latencies.recorder(index),
            ))
        })
        .collect();
    let duration_ms = plan.duration.as_millis() as u64;
    let bar = crate::progress::bar(progress, duration_ms, "calling");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut all = std::pin::pin!(futures_util::future::join_all(callers));
    let joined = loop {
        tokio::select! {
            joined = &mut all => break joined,
            _ = tick.tick() => {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_position((started.elapsed().as_millis() as u64).min(duration_ms));
                bar.set_message(format!(
                    "{} calls/s, {} accepted/s, {} deliveries/s",
                    per_sec(call_counter.total() as f64 / secs),
                    per_sec(accepted_counter.total() as f64 / secs),
                    per_sec(received.total() as f64 / secs),
                ));
            }
        }
    };
    // From the start to the last answer.
    let calling_secs = started.elapsed().as_secs_f64().max(1e-6);
    bar.finish_and_clear();
    let tallies: Vec<Tally> = joined
        .into_iter()
        .enumerate()
        .map(|(i, joined)| {
            joined.unwrap_or_else(|e| Tally {
                accepted: vec![0; plan.rooms],
                failed: Some(format!("caller {i} task failed: {e}")),
                ..Tally::default()
            })
        })
        .collect();
    let mut accepted = vec![0u64; plan.rooms];
    for t in &tallies {
        for (sum, n) in accepted.iter_mut().zip(&t.accepted) {
            *sum += n;
        }
    }
    let expected = accepted.iter().sum::<u64>() * plan.members as u64;
    let finished = drain(&received, expected, plan.drain_timeout).await;
    let elapsed = (finished - started).as_secs_f64().max(1e-6);
    let _ = stop_tx.send(true);

    let mut ends = Vec::with_capacity(subscribers);
    for h in members {
        ends.push(h.await.ok().flatten());
    }
    Ok(summarize(
        &plan,
        Measured {
            tallies: &tallies,
            accepted: &accepted,
            members: &ends,
            latency: &latencies.merged(),
            call_latency: &call_latencies.merged(),
            setup_secs,
            calling_secs,
            elapsed,
        },
    ))
}
