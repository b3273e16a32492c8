//! A `history` request, answered the same way to a WebSocket member and to the server API: a
//! page after `since` (from the start when `since` names another epoch), or the newest
//! messages, as the `history` event's bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringcast_protocol::event::history_event;
use ringcast_protocol::Since;
use tokio::time::timeout;

use crate::bus::{Bus, HistoryPage, HistoryQuery};

/// Why a history request got no page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryError {
    /// The bus could not be read in time.
    Bus,
    /// `since.offset` is beyond the room's last offset in that epoch.
    BeyondTop,
}

/// Reads the page a `history` request asks for and encodes the answer; `keeps` is false for a
/// room that keeps no history (an empty, complete answer).
pub async fn answer(
    bus: &Arc<dyn Bus>,
    room: &str,
    since: Option<&Since>,
    limit: usize,
    keeps: bool,
    meta_ttl: Duration,
    bus_timeout: Duration,
) -> Result<Bytes, HistoryError> {
    if !keeps {
        return Ok(history_event(room, &[], 0, "", true));
    }
    let page = |query| async move {
        match timeout(bus_timeout, bus.history(room, query, limit, meta_ttl)).await {
            Ok(Ok(page)) => Ok::<HistoryPage, HistoryError>(page),
            _ => Err(HistoryError::Bus),
        }
    };
    let query = since.map_or(HistoryQuery::Newest, |s| HistoryQuery::After(s.offset));
    let mut got = page(query).await?;
    if let Some(s) = since {
        if *s.epoch != *got.epoch {
            // Another epoch: the client's offsets mean nothing here; page from the start.
            got = page(HistoryQuery::After(0)).await?;
        } else if s.offset > got.top {
            return Err(HistoryError::BeyondTop);
        }
    }
    let complete = match query {
        HistoryQuery::Newest => true,
        HistoryQuery::After(_) => got.messages.last().is_none_or(|(o, _)| *o >= got.top),
    };
    let frames: Vec<&str> = got.messages.iter().map(|(_, f)| f.as_str()).collect();
    Ok(history_event(room, &frames, got.top, &got.epoch, complete))
}
