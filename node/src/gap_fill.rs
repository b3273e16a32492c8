//! Gap fill: reads from history what this node missed on the bus and hands it to the hub.
//!
//! A room's stream breaks on a node when an offset is skipped (a pub/sub message lost) or when
//! the bus restored its subscriptions after an outage (whatever was published meanwhile never
//! arrives). The hub then holds the room's live messages and queues the room here; this task
//! reads history after the last offset delivered, page by page, until the hub says the stream is
//! whole again. A bus that is down is retried with capped backoff for as long as the room has
//! members here: the members are not told anything is lost unless history no longer has it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::bus::{Bus, HistoryQuery};
use crate::hub::stream::Filled;
use crate::hub::Hub;
use ringcast_net::drain::Drain;

/// Messages read per page (with [`crate::hub::stream::MAX_HELD`], what one step of a fill may
/// queue per member).
pub const FILL_PAGE: usize = 256;
/// Rooms filled at once (after an outage every numbered room needs one).
const CONCURRENT: usize = 16;
/// First and longest pause before reading again after a failed read.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How a fill reads history.
#[derive(Clone)]
pub struct Reader {
    /// The bus history is read from.
    pub bus: Arc<dyn Bus>,
    /// Longest wait for one read.
    pub bus_timeout: Duration,
    /// How long a room's offsets live (passed to reads, which may create them).
    pub meta_ttl: Duration,
}

/// Runs until the node has drained.
pub async fn run(hub: Arc<Hub>, reader: Reader, drain: Drain) {
    let mut running: JoinSet<()> = JoinSet::new();
    // First come, first filled.
    let mut queued: VecDeque<String> = VecDeque::new();
    loop {
        while running.len() < CONCURRENT {
            let Some(room) = queued.pop_front() else {
                break;
            };
            running.spawn(fill(hub.clone(), reader.clone(), room, drain.clone()));
        }
        tokio::select! {
            rooms = hub.fills_wanted() => queued.extend(rooms),
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = drain.stopped() => return,
        }
    }
}

/// Fills one room until its stream is whole, it has no members here, or the node stops.
async fn fill(hub: Arc<Hub>, reader: Reader, room: String, drain: Drain) {
    let mut pause = RETRY_FIRST;
    let mut previous = None;
    while let Some(asked) = hub.fill_position(&room) {
        if previous.as_ref() == Some(&asked) {
            // Another read from the same place (messages published after the last read):
            // not in a tight loop.
            tokio::select! {
                _ = tokio::time::sleep(RETRY_FIRST) => {}
                _ = drain.stopped() => return,
            }
        }
        previous = Some(asked.clone());
        let read = reader.bus.history(
            &room,
            HistoryQuery::After(asked.0),
            FILL_PAGE,
            reader.meta_ttl,
        );
        match timeout(reader.bus_timeout, read).await {
            Ok(Ok(page)) => {
                pause = RETRY_FIRST;
                debug!(
                    room,
                    after = asked.0,
                    got = page.messages.len(),
                    "gap fill page"
                );
                if hub.fill_apply(&room, &asked, page, FILL_PAGE) == Filled::Done {
                    return;
                }
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                warn!(room, %error, "gap fill: history read failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = drain.stopped() => return,
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}
