//! The `api` scenario's shape, checked from its flags, and what a member ends with: shared by
//! the run (`api.rs`) and its report (`api_report.rs`).

use std::time::Duration;

use crate::cli::ApiArgs;
use crate::connect::Connector;
use crate::error::RunError;
use crate::fanout::secs;
use crate::receiver::Receiver;

/// The run's shape, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The API's base URL.
    pub api_url: String,
    /// Rooms.
    pub rooms: usize,
    /// Members per room.
    pub members: usize,
    /// API connections.
    pub connections: usize,
    /// Publishes per `batch` call; `None`: `publish` calls.
    pub batch: Option<usize>,
    /// Calls per second over all connections; 0: as fast as answers come.
    pub rate: f64,
    /// How long the connections call.
    pub duration: Duration,
    /// Padding bytes per message.
    pub payload_bytes: usize,
    /// How long a connect or a call may take.
    pub call_timeout: Duration,
    /// How long deliveries may pause after the calls before the rest counts as lost.
    pub drain_timeout: Duration,
}

impl Plan {
    pub fn from_args(a: &ApiArgs, connector: &Connector) -> Result<Plan, RunError> {
        if a.rooms == 0 || a.members == 0 || a.connections == 0 {
            return Err(RunError::Usage(
                "--rooms, --members and --connections must be at least 1".into(),
            ));
        }
        if !(a.rate >= 0.0 && a.rate.is_finite()) {
            return Err(RunError::Usage(
                "--rate must be 0 (as fast as answers come) or positive".into(),
            ));
        }
        let api_url = a
            .api_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", connector.target(0).authority));
        Ok(Plan {
            api_url,
            rooms: a.rooms,
            members: a.members,
            connections: a.connections,
            batch: a.batch.map(|b| b as usize),
            rate: a.rate,
            duration: secs(a.duration_secs, "--duration-secs")?,
            payload_bytes: a.payload_bytes,
            call_timeout: secs(a.call_timeout_secs, "--call-timeout-secs")?,
            drain_timeout: secs(a.drain_timeout_secs, "--drain-timeout-secs")?,
        })
    }

    /// WebSocket members in all.
    pub fn subscribers(&self) -> usize {
        self.rooms * self.members
    }
}

/// A member when the run ends.
pub struct MemberEnd {
    /// Its room.
    pub room: usize,
    /// What it received.
    pub receiver: Receiver,
}
