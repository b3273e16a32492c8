//! The `connections` scenario (not written yet).

use std::sync::Arc;

use crate::cli::ConnectionsArgs;
use crate::connect::Connector;
use crate::error::RunError;
use crate::report::Outcome;

/// Runs the scenario.
pub async fn run(
    _args: &ConnectionsArgs,
    _connector: Arc<Connector>,
    _connect_concurrency: usize,
    _progress: bool,
) -> Result<Outcome, RunError> {
    Err(RunError::Other(
        "the connections scenario is not implemented yet".into(),
    ))
}
