//! The `connections` scenario: open N idle connections at a target rate, hold them, and report
//! the connect rate achieved, failures by kind, connect latency, and the servers' memory per
//! connection (VmRSS of the given PIDs before opening and while holding).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::ConnectionsArgs;
use crate::conn::Ws;
use crate::connect::Connector;
use crate::error::{ConnectError, RunError};
use crate::fanout::secs;
use crate::latency::LatencySummary;
use crate::receiver::close_reason;
use crate::report::{per_sec, Outcome};

/// Resident memory of a process in bytes (VmRSS in /proc/PID/status).
pub fn vm_rss_bytes(pid: u32) -> Result<u64, RunError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        RunError::Other(format!(
            "cannot read {path}: {e} (is --server-pid {pid} a running server?)"
        ))
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| RunError::Other(format!("no VmRSS line in {path}")))
}

/// Connection `index` for the whole run: opens it, then holds it until `stop_rx` fires.
/// `None` when it could not be opened, else why it ended while held, if it did.
async fn connect_and_hold(
    connector: Arc<Connector>,
    index: usize,
    slot: OwnedSemaphorePermit,
    result_tx: mpsc::Sender<Result<Duration, ConnectError>>,
    stop_rx: watch::Receiver<bool>,
) -> Option<Option<String>> {
    // Boxed: connecting runs once, and inline its state machine would size this task's
    // allocation for as long as the connection is held.
    let mut ws = Box::pin(open(&connector, index, slot, result_tx)).await?;
    Some(hold_open(&mut ws, stop_rx).await)
}

/// Opens connection `index`, frees its connect `slot`, and reports how long that took (or why
/// it failed) on `result_tx`.
async fn open(
    connector: &Connector,
    index: usize,
    slot: OwnedSemaphorePermit,
    result_tx: mpsc::Sender<Result<Duration, ConnectError>>,
) -> Option<Ws> {
    let started = Instant::now();
    let id = connector.client_id("c", index);
    let connected = connector.connect(index, &id).await;
    drop(slot);
    match connected {
        Ok((ws, _)) => {
            let _ = result_tx.send(Ok(started.elapsed())).await;
            Some(ws)
        }
        Err(e) => {
            let _ = result_tx.send(Err(e)).await;
            None
        }
    }
}

/// Holds `ws` open, reading (and so answering pings), until `stop_rx` turns true; returns why
/// the connection ended if it ended first.
///
/// Not [`crate::traffic::receive_until`]: its `Receiver` (stamp and error finders) would make
/// every held connection's task ~1.8 KiB bigger, for stamped frames this scenario never gets.
/// `ws` is borrowed so the stream is stored once, in the caller's state, not moved again.
async fn hold_open(ws: &mut Ws, mut stop_rx: watch::Receiver<bool>) -> Option<String> {
    loop {
        tokio::select! {
            biased;
            next = ws.next() => match next {
                Some(Ok(Message::Close(frame))) => return Some(close_reason(frame)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(format!("connection error: {e}")),
                None => return Some("connection ended".into()),
            },
            changed = stop_rx.changed() => {
                if changed.is_err() || *stop_rx.borrow() {
                    return None;
                }
            }
        }
    }
}

/// Runs the scenario.
pub async fn run(
    args: &ConnectionsArgs,
    connector: Arc<Connector>,
    connect_concurrency: usize,
    progress: bool,
) -> Result<Outcome, RunError> {
    let n = args.connections;
    if n == 0 {
        return Err(RunError::Usage("--connections must be at least 1".into()));
    }
    if !(args.connect_rate >= 0.0 && args.connect_rate.is_finite()) {
        return Err(RunError::Usage(
            "--connect-rate must be 0 or positive".into(),
        ));
    }
    let hold = secs(args.hold_secs, "--hold-secs")?;
    crate::limits::ensure_fds(n as u64)?;
    let before: Vec<u64> = args
        .server_pids
        .iter()
        .map(|&pid| vm_rss_bytes(pid))
        .collect::<Result<_, _>>()?;

    let slots = Arc::new(Semaphore::new(connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (result_tx, mut result_rx) = mpsc::channel::<Result<Duration, ConnectError>>(1024);
    let bar = crate::progress::bar(progress, n as u64, "connecting");
    let started = Instant::now();
    let pacer = {
        let connector = connector.clone();
        let rate = args.connect_rate;
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut holders = Vec::with_capacity(n);
            for i in 0..n {
                if rate > 0.0 {
                    tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate))
                        .await;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let connector = connector.clone();
                let (result_tx, stop_rx) = (result_tx.clone(), stop_rx.clone());
                holders.push(tokio::spawn(connect_and_hold(
                    connector, i, slot, result_tx, stop_rx,
                )));
            }
            holders
        })
    };

    let mut connect_hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant bounds 1..1h with 3 significant figures are valid");
    let mut failures: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let mut ok = 0u64;
    for done in 1..=n as u64 {
        match result_rx.recv().await {
            Some(Ok(took)) => {
                ok += 1;
                connect_hist.saturating_record(took.as_micros() as u64);
            }
            Some(Err(e)) => {
                let entry = failures.entry(e.kind()).or_insert((0, e.to_string()));
                entry.0 += 1;
            }
            None => break,
        }
        bar.set_position(done);
    }
    let connect_secs = started.elapsed().as_secs_f64().max(1e-6);
    bar.finish_and_clear();

    let bar = crate::progress::bar(progress, hold.as_millis() as u64, "holding");
    let hold_start = Instant::now();
    while hold_start.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(100).min(hold)).await;
        bar.set_position(hold_start.elapsed().as_millis() as u64);
    }
    bar.finish_and_clear();
    let after: Vec<u64> = args
        .server_pids
        .iter()
        .map(|&pid| vm_rss_bytes(pid))
        .collect::<Result<_, _>>()?;
    let _ = stop_tx.send(true);
    let holders = pacer.await.unwrap_or_default();
    let mut dropped = 0u64;
    let mut first_drop = None;
    for h in holders {
        if let Ok(Some(Some(why))) = h.await {
            dropped += 1;
            first_drop.get_or_insert(why);
        }
    }

    let failed: u64 = failures.values().map(|(c, _)| c).sum();
    let grown: i64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| *a as i64 - *b as i64)
        .sum();
    let per_conn = if ok > 0 && !before.is_empty() {
        Some(grown as f64 / ok as f64)
    } else {
        None
    };
    let connect_rate = ok as f64 / connect_secs;
    let latency = LatencySummary::of(&connect_hist);
    let mut problems = Vec::new();
    if failed > 0 {
        let (kind, (count, first)) = failures
            .iter()
            .next()
            .map(|(k, v)| (*k, v.clone()))
            .unwrap_or_default();
        problems.push(format!(
            "{failed} connections failed ({count} {kind}, e.g. {first})"
        ));
    }
    if dropped > 0 {
        problems.push(format!(
            "{dropped} connections ended while held (first: {})",
            first_drop.unwrap_or_default()
        ));
    }
    let json = json!({
        "scenario": "connections",
        "connections": n,
        "target_connect_rate": args.connect_rate,
        "hold_secs": hold.as_secs_f64(),
        "opened": ok,
        "failed": failed,
        "failures": failures.iter().map(|(k, (c, e))| (k.to_string(), json!({"count": c, "first": e}))).collect::<serde_json::Map<_, _>>(),
        "dropped_while_held": dropped,
        "connect_secs": connect_secs,
        "connects_per_sec": connect_rate,
        "connect_latency": latency,
        "server_pids": args.server_pids,
        "rss_before_bytes": before,
        "rss_held_bytes": after,
        "server_bytes_per_connection": per_conn,
    });
    let memory = match per_conn {
        Some(b) => format!(
            "server memory: {:.0} bytes per connection (VmRSS of PIDs {:?}: {} → {} KiB)",
            b,
            args.server_pids,
            before.iter().sum::<u64>() / 1024,
            after.iter().sum::<u64>() / 1024
        ),
        None => "server memory: not measured (give --server-pid)".into(),
    };
    let human = format!(
        "connections: opened {ok} of {n} in {connect_secs:.2} s = {} connects/s (target {}), failed {failed}, dropped while held {dropped}\n\
         connect+welcome latency {}\n{memory}",
        per_sec(connect_rate),
        if args.connect_rate > 0.0 { per_sec(args.connect_rate) } else { "max".into() },
        latency.human(),
    );
    Ok(Outcome::new(json, human, problems))
}
