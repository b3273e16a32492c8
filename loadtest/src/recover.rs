//! Staying in one room through closes (`--recover`): a client that reconnects with the same
//! client_id after a drain (1012), a dead node or a broken connection, with a bounded backoff,
//! and rejoins with `since` = the offset and epoch of the last room message it got, so the
//! server replays what it missed.
//!
//! The loop reads on tungstenite and hands every text frame to a [`Frames`] (the stamp-reading
//! [`Receiver`], or a scenario's own record); it classifies only what recovery needs — chat
//! offsets, its own join acks, `history_reset`, `bus_unavailable` — into [`RecoverStats`] per
//! phase, so the `faults` scenario can say which fault caused what. A publisher sends numbered
//! room messages on the same connection ([`Pacer`], with ids and resends when it has an
//! outbox) and carries its sequence across reconnects. What the frames say is read in
//! [`crate::rejoin`], what to send when in [`crate::pacer`]; this file owns the connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::backoff::Backoff;
use crate::conn::Ws;
use crate::connect::Connector;
use crate::error::ConnectError;
use crate::outbox::Outbox;
use crate::pacer::{Pace, Pacer, Schedule};
use crate::placement::Placement;
use crate::receiver::Receiver;
use crate::rejoin::{classify, join_frame, Event, Position};
use crate::stamp::now_micros;

/// What one client's recovery went through in one phase of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoverStats {
    /// Connections opened again after a close (the first connection is not counted).
    pub reconnects: u64,
    /// Rejoins with `since` acknowledged `recovered: true`.
    pub recovered: u64,
    /// Rejoins with `since` acknowledged `recovered: false`.
    pub not_recovered: u64,
    /// `history_reset` events received.
    pub history_resets: u64,
    /// Publishes refused with `bus_unavailable`.
    pub refused: u64,
    /// Publishes refused with `rate_limited`.
    pub rate_limited: u64,
}

impl RecoverStats {
    /// Adds another client's (or phase's) counts.
    pub fn add(&mut self, o: &RecoverStats) {
        self.reconnects += o.reconnects;
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.history_resets += o.history_resets;
        self.refused += o.refused;
        self.rate_limited += o.rate_limited;
    }

    /// The counts as JSON fields.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "reconnects": self.reconnects,
            "rejoins_recovered": self.recovered,
            "rejoins_not_recovered": self.not_recovered,
            "history_resets": self.history_resets,
            "refused": self.refused,
            "rate_limited": self.rate_limited,
        })
    }
}

/// Something that takes in every text frame a recovering client receives.
pub trait Frames: Send {
    /// One text frame, received at `received_micros` (Unix microseconds).
    fn on_text(&mut self, frame: &[u8], received_micros: u64);
    /// Reading has ended.
    fn finish(&mut self) {}
}

impl Frames for Receiver {
    fn on_text(&mut self, frame: &[u8], received_micros: u64) {
        Receiver::on_text(self, frame, received_micros);
    }
    fn finish(&mut self) {
        self.flush_latency();
    }
}

/// Who the recovering client is and where it reports.
pub struct Member {
    /// Opens its connections.
    pub connector: Arc<Connector>,
    /// Its connection index (picks the target and source address).
    pub index: usize,
    /// Its client id, the same on every connection.
    pub client_id: String,
    /// The room it stays in.
    pub room: String,
    /// The run's current phase; counts go to that phase's [`RecoverStats`].
    pub phase: Arc<AtomicUsize>,
    /// Number of phases.
    pub phases: usize,
    /// Where to note the node that serves it (from `welcome`), if the run wants to know.
    pub placement: Option<Placement>,
}

/// What a recovering client hands back when the run stops.
pub struct Stayed<F> {
    /// Its frame record.
    pub frames: F,
    /// Its recovery counts, one per phase.
    pub stats: Vec<RecoverStats>,
    /// Where it ended.
    pub position: Option<Position>,
    /// A publisher's outbox, as it ended.
    pub outbox: Option<Outbox>,
}

/// Resolves when `stop_rx` turns true or its sender is gone (the run ended).
async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|s| *s).await;
}

/// Sends one text frame, giving up after `limit` (a connection nobody reads any more).
async fn send_within(ws: &mut Ws, text: String, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("send blocked for {limit:?}")),
    }
}

/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connects, joins and stays in the room until `stop_rx` turns true, reconnecting on any close.
/// The first connection and join must work: its outcome goes to `ready_tx` (an error ends the
/// client, and the run with it). Later failures are retried with [`Backoff`], each connect and
/// each wait for a join ack bounded by the connector's timeout.
pub async fn stay<F: Frames>(
    member: Member,
    mut frames: F,
    mut pacer: Option<Pacer>,
    ready_tx: mpsc::Sender<Result<(), ConnectError>>,
    mut stop_rx: watch::Receiver<bool>,
) -> Option<Stayed<F>> {
    let c = member.connector.clone();
    let addr = c.target(member.index).addr;
    let fail = |detail: String| ConnectError::Protocol { addr, detail };
    let mut ready_tx = Some(ready_tx);
    let mut stats = vec![RecoverStats::default(); member.phases.max(1)];
    let last_phase = stats.len() - 1;
    let phase = || member.phase.load(Ordering::Relaxed).min(last_phase);
    let mut since: Option<Position> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), BACKOFF_MAX);
    let mut pace_closed = false;
    let mut connections = 0u64;
    'connections: loop {
        if *stop_rx.borrow() {
            break;
        }
        if connections > 0 {
            let wait = backoff.step();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut stop_rx) => break,
            }
        }
        let connected = tokio::select! {
            r = c.connect_on::<Ws>(member.index, &member.client_id) => r,
            _ = stopped(&mut stop_rx) => break,
        };
        let mut ws = match connected {
            Ok((ws, _, node)) => {
                if let Some(p) = &member.placement {
                    p.set(member.index, node);
                }
                ws
            }
            Err(e) => match ready_tx.take() {
                Some(tx) => {
                    let _ = tx.send(Err(e)).await;
                    return None;
                }
                None => {
                    connections += 1;
                    continue;
                }
            },
        };
        connections += 1;
        if connections > 1 {
            let i = phase();
            stats[i].reconnects += 1;
        }
        let join = join_frame(&member.room, since.as_ref());
        if let Err(e) = send_within(&mut ws, join, c.timeout()).await {
            if let Some(tx) = ready_tx.take() {
                let _ = tx
                    .send(Err(fail(format!("sending join_room failed: {e}"))))
                    .await;
                return None;
            }
            continue;
        }
        let join_deadline = Instant::now() + c.timeout();
        let mut joined = false;
        // The pacer's schedule restarts on every connection.
        let mut schedule = Schedule::default();
        loop {
            let due = match &pacer {
                Some(p) if joined => p.due(&mut schedule, Instant::now()),
                _ => None,
            };
            tokio::select! {
                biased;
                // Stopped, or the run is gone.
                _ = stopped(&mut stop_rx) => break 'connections,
                changed = async {
                    match pacer.as_mut() {
                        Some(p) => p.pace_rx.changed().await,
                        None => std::future::pending().await,
                    }
                }, if !pace_closed => {
                    if changed.is_err() {
                        pace_closed = true;
                    }
                    if let Some(p) = pacer.as_mut() {
                        if *p.pace_rx.borrow() == Pace::Halt {
                            p.report_done();
                        }
                    }
                }
                next = ws.next() => match next {
                    Some(Ok(Message::Text(t))) => {
                        let i = phase();
                        let event = classify(t.as_bytes(), &member.client_id, &member.room);
                        if let Some(o) = pacer.as_mut().and_then(|p| p.outbox.as_mut()) {
                            o.on_event(t.as_bytes(), &event, i, Instant::now());
                        }
                        match event {
                            Event::Chat(p) => since = Some(p),
                            Event::Ack { recovered, at } => {
                                if let Some(at) = at {
                                    since = Some(at);
                                }
                                match recovered {
                                    Some(true) => stats[i].recovered += 1,
                                    Some(false) => stats[i].not_recovered += 1,
                                    None => {}
                                }
                                joined = true;
                                backoff.reset();
                                if let Some(tx) = ready_tx.take() {
                                    let _ = tx.send(Ok(())).await;
                                }
                            }
                            Event::HistoryReset => stats[i].history_resets += 1,
                            Event::Error { code, .. } if code == "bus_unavailable" => stats[i].refused += 1,
                            Event::Error { code, .. } if code == "rate_limited" => stats[i].rate_limited += 1,
                            Event::Error { .. } | Event::Published { .. } | Event::Other => {}
                        }
                        frames.on_text(t.as_bytes(), now_micros());
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        if let Some(p) = &member.placement {
                            p.set(member.index, None);
                        }
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Err(fail("the connection closed before the first join was acknowledged".into()))).await;
                            return None;
                        }
                        continue 'connections;
                    }
                    Some(Ok(_)) => {}
                },
                _ = tokio::time::sleep_until(join_deadline), if !joined => {
                    if let Some(tx) = ready_tx.take() {
                        let secs = c.timeout().as_secs_f64();
                        let _ = tx.send(Err(fail(format!("no `user_joined` for {} in room {} within {secs:.1} s", member.client_id, member.room)))).await;
                        return None;
                    }
                    continue 'connections;
                }
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(p) = pacer.as_mut() {
                        if let Some(out) = p.take(Instant::now()) {
                            if send_within(&mut ws, out.text, c.timeout()).await.is_err() {
                                continue 'connections;
                            }
                            p.sent(out.next, phase());
                            schedule.sent(Instant::now());
                        }
                    }
                }
            }
        }
    }
    if let Some(p) = pacer.as_mut() {
        p.report_done();
    }
    frames.finish();
    Some(Stayed {
        frames,
        stats,
        position: since,
        outbox: pacer.and_then(|p| p.outbox),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let waits: Vec<u64> = (0..5).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(50));
    }
}
