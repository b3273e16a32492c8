//! `ringcast-gateway`: parse the configuration, install logging, bind, run until SIGTERM/SIGINT.
//! `ringcast-gateway token …` prints a development token instead.

use clap::Parser;
use ringcast_gateway::config::Command;
use ringcast_gateway::Config;
use ringcast_node::process;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Some(Command::Token(args)) = &config.command {
        let auth = &config.auth;
        return match ringcast_gateway::token::mint(
            args,
            auth.jwt_secret.as_deref(),
            auth.jwt_audience.as_deref(),
            auth.jwt_issuer.as_deref(),
        ) {
            Ok(token) => {
                println!("{token}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringcast-gateway token: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
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
    match ringcast_gateway::run(listener, config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}
