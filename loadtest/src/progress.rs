//! The progress bar on stderr (drawn only when stderr is a terminal and --no-progress is absent).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{mpsc, watch};

/// A bar counting `len` steps of `phase`; hidden when `enabled` is false.
pub fn bar(enabled: bool, len: u64, phase: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {prefix:>12} [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(phase.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A client's side of [`await_ready`]: reports its connection outcome and hands back the
/// connection, or `None` when it failed (the run then stops).
pub async fn report_ready<T, E>(
    connected: Result<T, E>,
    ready_tx: &mpsc::Sender<Result<(), E>>,
) -> Option<T> {
    match connected {
        Ok(conn) => {
            let _ = ready_tx.send(Ok(())).await;
            Some(conn)
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e)).await;
            None
        }
    }
}

/// Counts readiness reports from `total` clients on a bar labelled `phase`, and returns what
/// they reported (in arrival order). On the first error it tells every client to stop and
/// returns the error; a closed channel ends the wait early.
pub async fn await_ready<T, E>(
    enabled: bool,
    phase: &str,
    total: u64,
    ready_rx: &mut mpsc::Receiver<Result<T, E>>,
    stop_tx: &watch::Sender<bool>,
) -> Result<Vec<T>, E> {
    let bar = bar(enabled, total, phase);
    let mut ready = Vec::new();
    while (ready.len() as u64) < total {
        match ready_rx.recv().await {
            Some(Ok(what)) => {
                ready.push(what);
                bar.set_position(ready.len() as u64);
            }
            Some(Err(e)) => {
                bar.finish_and_clear();
                let _ = stop_tx.send(true);
                return Err(e);
            }
            None => break,
        }
    }
    bar.finish_and_clear();
    Ok(ready)
}
