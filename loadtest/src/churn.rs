//! The `churn` scenario (not written yet).

use std::sync::Arc;

use crate::cli::ChurnArgs;
use crate::connect::Connector;
use crate::error::RunError;
use crate::report::Outcome;

/// Runs the scenario.
pub async fn run(
    _args: &ChurnArgs,
    _connector: Arc<Connector>,
    _connect_concurrency: usize,
    _progress: bool,
) -> Result<Outcome, RunError> {
    Err(RunError::Other(
        "the churn scenario is not implemented yet".into(),
    ))
}
