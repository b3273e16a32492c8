//! The `churn` scenario: workers loop connect → join → (leave) → disconnect, then the servers'
//! `/stats` must come back to zero connections and zero rooms: anything else is a leak.
//!
//! Even cycles leave the room and close politely; odd cycles drop the TCP connection while
//! still in the room, so the server's cleanup on abrupt disconnects is exercised too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::ChurnArgs;
use crate::conn::Ws;
use crate::connect::Connector;
use crate::error::{ConnectError, RunError};
use crate::fanout::secs;
use crate::latency::LatencySummary;
use crate::report::{per_sec, Outcome};

/// Runs the scenario.
pub async fn run(
    args: &ChurnArgs,
    connector: Arc<Connector>,
    _connect_concurrency: usize,
    progress: bool,
) -> Result<Outcome, RunError> {
    if args.workers == 0 || args.cycles == 0 || args.rooms == 0 {
        return Err(RunError::Usage(
            "--workers, --cycles and --rooms must be at least 1".into(),
        ));
    }
    let settle = secs(args.settle_timeout_secs, "--settle-timeout-secs")?;
    crate::limits::ensure_fds(args.workers as u64)?;
    let mut stats_urls: Vec<String> = if args.stats_urls.is_empty() {
        connector.targets().iter().map(|t| t.stats_url()).collect()
    } else {
        args.stats_urls.clone()
    };
    stats_urls.sort();
    stats_urls.dedup();

    let total = (args.workers * args.cycles) as u64;
    let (result_tx, mut result_rx) = mpsc::channel::<Result<Duration, ConnectError>>(1024);
    for w in 0..args.workers {
        let connector = connector.clone();
        let result_tx = result_tx.clone();
        let room = connector.client_id("churn", w % args.rooms);
        let cycles = args.cycles;
        tokio::spawn(async move {
            for cycle in 0..cycles {
                let t = Instant::now();
                let r = one_cycle(&connector, w, cycle, &room)
                    .await
                    .map(|()| t.elapsed());
                if result_tx.send(r).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(result_tx);

    let bar = crate::progress::bar(progress, total, "cycling");
    let started = Instant::now();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant bounds 1..1h with 3 significant figures are valid");
    let mut ok = 0u64;
    let mut failures: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let mut done = 0u64;
    while let Some(r) = result_rx.recv().await {
        match r {
            Ok(took) => {
                ok += 1;
                hist.saturating_record(took.as_micros() as u64);
            }
            Err(e) => failures.entry(e.kind()).or_insert((0, e.to_string())).0 += 1,
        }
        done += 1;
        bar.set_position(done);
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    bar.finish_and_clear();

    // Then every server must settle back to zero.
    let mut problems = Vec::new();
    let mut final_stats = serde_json::Map::new();
    for url in &stats_urls {
        let (settled, last) = settle_to_zero(url, settle).await;
        if !settled {
            problems.push(format!(
                "{url} did not return to zero connections and rooms within {:.0} s: {last}",
                settle.as_secs_f64()
            ));
        }
        final_stats.insert(url.clone(), last);
    }
    let failed: u64 = failures.values().map(|(c, _)| c).sum();
    if let Some((kind, (count, first))) = failures.iter().next() {
        problems.push(format!(
            "{failed} cycles failed ({count} {kind}, e.g. {first})"
        ));
    }
    let latency = LatencySummary::of(&hist);
    let json = json!({
        "scenario": "churn",
        "workers": args.workers,
        "cycles_per_worker": args.cycles,
        "rooms": args.rooms,
        "completed": ok,
        "failed": failed,
        "failures": failures.iter().map(|(k, (c, e))| (k.to_string(), json!({"count": c, "first": e}))).collect::<serde_json::Map<_, _>>(),
        "elapsed_secs": elapsed,
        "cycles_per_sec": ok as f64 / elapsed,
        "cycle_latency": latency,
        "final_stats": final_stats,
        "leak_free": problems.iter().all(|p| !p.contains("return to zero")),
    });
    let human = format!(
        "churn: {ok} of {total} connect/join/leave/disconnect cycles in {elapsed:.2} s = {} cycles/s, failed {failed}\n\
         cycle latency {}\n/stats afterwards: {}",
        per_sec(ok as f64 / elapsed),
        latency.human(),
        Value::Object(final_stats),
    );
    Ok(Outcome::new(json, human, problems))
}

/// One cycle: connect, join, then leave and close (even cycles) or just drop (odd cycles).
async fn one_cycle(
    connector: &Connector,
    worker: usize,
    cycle: usize,
    room: &str,
) -> Result<(), ConnectError> {
    let id = connector.client_id(&format!("w{worker}x"), cycle);
    let (mut ws, my_id) = connector.connect_joined::<Ws>(worker, &id, room).await?;
    if cycle & 1 == 0 {
        let addr = connector.target(worker).addr;
        connector.leave(&mut ws, addr, room, &my_id).await?;
        let _ = tokio::time::timeout(connector.timeout(), ws.close(None)).await;
    }
    drop(ws);
    Ok(())
}

/// Polls `/stats` until `local_connections` and `rooms` are both 0; returns whether they got
/// there and the last answer (or the error).
async fn settle_to_zero(url: &str, limit: Duration) -> (bool, Value) {
    let deadline = Instant::now() + limit;
    loop {
        let last = match crate::http::get(url).await {
            Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
                Ok(v) => {
                    if v["local_connections"] == 0 && v["rooms"] == 0 {
                        return (true, v);
                    }
                    v
                }
                Err(_) => Value::from(format!("not JSON: {body}")),
            },
            Ok((status, body)) => Value::from(format!("HTTP {status}: {body}")),
            Err(e) => Value::from(e),
        };
        if Instant::now() >= deadline {
            return (false, last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
