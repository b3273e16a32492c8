//! The process's file-descriptor limit: raised to the hard limit, and checked against a run's needs.

use crate::error::RunError;

/// Descriptors kept for things other than connections (stdio, runtime, epoll, /proc reads).
pub const SPARE_FDS: u64 = 64;

/// Raises the soft RLIMIT_NOFILE to the hard limit and checks that `connections` fit.
/// Returns the soft limit now in force.
pub fn ensure_fds(connections: u64) -> Result<u64, RunError> {
    let needed = connections + SPARE_FDS;
    let soft = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| RunError::Other(format!("cannot read or raise the open-files limit: {e}")))?;
    if needed > soft {
        let per_process = soft.saturating_sub(SPARE_FDS).max(1);
        return Err(RunError::TooManyFds {
            needed,
            hard: soft,
            processes: connections.div_ceil(per_process),
        });
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_runs_fit_and_huge_ones_are_refused_with_advice() {
        assert!(ensure_fds(10).is_ok());
        match ensure_fds(1 << 40) {
            Err(RunError::TooManyFds { processes, .. }) => assert!(processes >= 2),
            other => panic!("expected TooManyFds, got {other:?}"),
        }
    }
}
