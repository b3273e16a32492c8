//! Liveness of the Redis bus: reconnect backoff and the starvation probe.
//!
//! A subscriber connection can stay open while nothing reaches it (a half-open TCP connection, a
//! stuck proxy). Redis gives no sign of that, so the bus publishes a numbered token to a channel
//! only this node's subscriber follows and expects it back; a token that does not come back within
//! the timeout means the subscriber is starved and gets rebuilt.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tracing::debug;

/// First pause after a failed connection attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Capped exponential backoff with jitter, so restarted nodes do not reconnect in lockstep.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 50 ms and doubles up to `max`.
    pub fn new(max: Duration) -> Self {
        let max = max.max(BACKOFF_MIN);
        Backoff {
            next: BACKOFF_MIN,
            max,
        }
    }

    /// The pause before the next attempt (75–100 % of the current step).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(rand::random_range(0.75..=1.0))
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// What one probe round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The token came back.
    Echoed,
    /// The token could not be published (publisher trouble; not the subscriber's fault).
    NotPublished,
    /// Redis delivered the token to nobody: the subscriber is not subscribed any more.
    NoSubscriber,
    /// The token did not come back in time.
    Lost,
}

/// Probes every `every`; returns once a probe shows the subscriber starved (never returns while
/// it is healthy). `publish(token)` publishes a token and yields Redis's receiver count;
/// `seen_rx` holds the highest token that came back.
pub async fn watch_subscriber<P, F>(
    every: Duration,
    wait: Duration,
    mut publish: P,
    mut seen_rx: watch::Receiver<u64>,
) -> ProbeOutcome
where
    P: FnMut(u64) -> F,
    F: Future<Output = Option<usize>>,
{
    let mut ticker = interval(every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut token = *seen_rx.borrow();
    loop {
        ticker.tick().await;
        token += 1;
        let outcome = probe_once(token, wait, &mut publish, &mut seen_rx).await;
        debug!(token, ?outcome, "bus probe");
        match outcome {
            ProbeOutcome::Echoed | ProbeOutcome::NotPublished => {}
            starved => return starved,
        }
    }
}

async fn probe_once<P, F>(
    token: u64,
    wait: Duration,
    publish: &mut P,
    seen_rx: &mut watch::Receiver<u64>,
) -> ProbeOutcome
where
    P: FnMut(u64) -> F,
    F: Future<Output = Option<usize>>,
{
    match publish(token).await {
        None => ProbeOutcome::NotPublished,
        Some(0) => ProbeOutcome::NoSubscriber,
        Some(_) => match timeout(wait, seen_rx.wait_for(|seen| *seen >= token)).await {
            Ok(Ok(_)) => ProbeOutcome::Echoed,
            _ => ProbeOutcome::Lost,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(300));
        let steps: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(steps[0] <= Duration::from_millis(50));
        assert!(steps[1] > Duration::from_millis(70) && steps[1] <= Duration::from_millis(100));
        assert!(steps[4] >= Duration::from_millis(225) && steps[4] <= Duration::from_millis(300));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn probe_passes_while_tokens_echo_and_fails_when_they_stop() {
        let (seen_tx, seen_rx) = watch::channel(0u64);
        let seen_tx = Arc::new(seen_tx);
        let echo = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let publish = {
            let (seen_tx, echo, rounds) = (seen_tx.clone(), echo.clone(), rounds.clone());
            move |token: u64| {
                let (seen_tx, echo, rounds) = (seen_tx.clone(), echo.clone(), rounds.clone());
                async move {
                    let n = rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n == 3 {
                        echo.store(false, std::sync::atomic::Ordering::SeqCst);
                    }
                    if echo.load(std::sync::atomic::Ordering::SeqCst) {
                        seen_tx.send_replace(token);
                    }
                    Some(1)
                }
            }
        };
        let outcome = watch_subscriber(
            Duration::from_secs(1),
            Duration::from_secs(2),
            publish,
            seen_rx,
        )
        .await;
        assert_eq!(outcome, ProbeOutcome::Lost);
        assert_eq!(rounds.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn unpublished_probes_do_not_count_and_zero_receivers_does() {
        let (_seen_tx, seen_rx) = watch::channel(0u64);
        let mut calls = 0;
        let outcome = watch_subscriber(
            Duration::from_secs(1),
            Duration::from_secs(1),
            move |_| {
                calls += 1;
                let r = if calls < 3 { None } else { Some(0) };
                async move { r }
            },
            seen_rx,
        )
        .await;
        assert_eq!(outcome, ProbeOutcome::NoSubscriber);
    }
}
