//! A process's shutdown as one value, [`Drain`], made at the top (`run`) and handed to every
//! part that spawns a task or must notice the shutdown. The node and the gateway both drain
//! through it.
//!
//! A drain has two phases, each a signal and the tasks it waits for:
//! - *draining* ([`Drain::begin`]): the process takes no new clients (say, `/healthz` 503 and new
//!   connections refused or no longer accepted) and its clients' sessions wind down; the top
//!   waits for the session tasks ([`Drain::spawn_session`]) up to a grace period
//!   ([`Drain::sessions_ended`]).
//! - *stopped* ([`Drain::stop`]): whatever is still open is closed or ends once what it carries
//!   is written, background tasks return, and the top waits for every task of both phases
//!   ([`Drain::spawn`]) with a time limit ([`Drain::all_ended`]).
//!
//! Two phases because what carries the sessions' last bytes (connections, links) must outlive
//! the sessions. Every task is tracked by one phase and ends when its signal fires (or sooner);
//! nothing polls a counter.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};
use tokio_util::task::TaskTracker;

/// A process's shutdown: its two signals and the tasks each waits for. Clones share them.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    draining: CancellationToken,
    stopped: CancellationToken,
    sessions: TaskTracker,
    tasks: TaskTracker,
}

impl Drain {
    /// A drain not begun.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins draining: the process takes no new clients and its sessions wind down.
    pub fn begin(&self) {
        self.draining.cancel();
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once draining has begun.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    /// The process has drained (its sessions are gone, or the grace period is over): every task
    /// still running ends after what it carries, or is closed.
    pub fn stop(&self) {
        self.draining.cancel();
        self.stopped.cancel();
    }

    /// A guard that stops this drain when dropped: held by a `run` from its first spawn on, so
    /// that a start that fails half-way (a listener that cannot bind) leaves no task running.
    /// Stopping a drain that already stopped changes nothing.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.clone())
    }

    /// Whether the process has drained.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// Resolves once the process has drained.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stopped.cancelled()
    }

    /// Resolves once the process has drained, owning what it waits on: for a long-lived future
    /// that should not hold a whole [`Drain`] (a tunnel, say).
    pub fn stopped_owned(&self) -> WaitForCancellationFutureOwned {
        self.stopped.clone().cancelled_owned()
    }

    /// Runs one client's session (what the grace period is for); draining waits for it.
    pub fn spawn_session<F>(&self, session: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.sessions.spawn(session)
    }

    /// Runs a task that ends once the process has stopped (a connection, a link, a background
    /// job) or sooner; the end of the drain waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits up to `limit` for every session to end; returns whether they did.
    pub async fn sessions_ended(&self, limit: Duration) -> bool {
        self.sessions.close();
        tokio::time::timeout(limit, self.sessions.wait())
            .await
            .is_ok()
    }

    /// Waits up to `limit` for every task, sessions included, to end; returns whether they did.
    pub async fn all_ended(&self, limit: Duration) -> bool {
        self.sessions.close();
        self.tasks.close();
        let both = async {
            self.sessions.wait().await;
            self.tasks.wait().await;
        };
        tokio::time::timeout(limit, both).await.is_ok()
    }

    /// Tasks still running, sessions included.
    pub fn tasks_left(&self) -> usize {
        self.sessions.len() + self.tasks.len()
    }
}

/// Stops its [`Drain`] when dropped (see [`Drain::stop_on_drop`]).
#[derive(Debug)]
pub struct StopOnDrop(Drain);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dropped_guard_stops_its_drain() {
        let drain = super::Drain::new();
        let guard = drain.stop_on_drop();
        assert!(!drain.is_stopped());
        drop(guard);
        assert!(drain.is_stopped() && drain.is_draining());
    }

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_are_waited_for_within_the_limit_and_tasks_after_the_stop() {
        let drain = Drain::new();
        let session = {
            let drain = drain.clone();
            async move { drain.draining().await }
        };
        drain.spawn_session(session);
        let task = {
            let drain = drain.clone();
            async move { drain.stopped().await }
        };
        drain.spawn(task);
        assert!(!drain.sessions_ended(Duration::from_secs(1)).await);
        drain.begin();
        assert!(drain.is_draining());
        assert!(drain.sessions_ended(Duration::from_secs(1)).await);
        assert!(!drain.all_ended(Duration::from_secs(1)).await);
        assert_eq!(drain.tasks_left(), 1);
        drain.stop();
        assert!(drain.all_ended(Duration::from_secs(1)).await);
        assert_eq!(drain.tasks_left(), 0);
    }
}
