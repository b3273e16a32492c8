//! `ringcast-node`: parse the configuration, install logging, bind, run until SIGTERM/SIGINT.

use clap::Parser;
use ringcast_node::{process, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if config.check_config {
        println!("config ok");
        return std::process::ExitCode::SUCCESS;
    }
    process::init_tracing(config.log_format);
    let listener = match process::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.listen, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = process::shutdown_on_signal();
    match ringcast_node::run(listener, config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            std::process::ExitCode::FAILURE
        }
    }
}
