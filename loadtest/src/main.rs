//! The `ringcast-loadtest` binary: parses flags, builds the runtime, prints the result.
//!
//! Exit status: 0 the run was clean; 1 the run could not be done (bad URL, refused connection,
//! a server speaking another protocol, too few file descriptors); 2 bad flags (clap);
//! 3 the run completed but found problems (loss, duplicates, disconnects, leaks).

/// mimalloc: the load generator allocates per connection on every thread; glibc grows each
/// thread arena with mprotect calls that cost ~10 % of its CPU in a connection storm.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;
use ringcast_loadtest::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.common.threads > 0 {
        builder.worker_threads(cli.common.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringcast-loadtest: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(ringcast_loadtest::run(&cli));
    // Connections still open are dropped without waiting for their close handshakes.
    runtime.shutdown_background();
    match result {
        Ok(outcome) => {
            if cli.common.json {
                println!("{}", outcome.json);
            } else {
                println!("{}", outcome.human);
            }
            if outcome.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                for p in &outcome.problems {
                    eprintln!("ringcast-loadtest: problem: {p}");
                }
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("ringcast-loadtest: error: {e}");
            ExitCode::from(1)
        }
    }
}
