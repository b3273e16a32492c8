//! `ringcast-gateway`: parse the configuration, install logging, bind, run until SIGTERM/SIGINT.
//! `ringcast-gateway token …` prints a development token instead.

use clap::Parser;
use ringcast_gateway::config::Command;
use ringcast_gateway::Config;
use ringcast_net::process;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Some(Command::Token(args)) = &config.command {
        return match ringcast_gateway::token::mint(args, &config.auth) {
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
    // A certificate pair that cannot be served stops the start (and --check-config) with the
    // file and the reason on stderr, before anything listens.
    if let Some(files) = config.tls.files() {
        if let Err(e) = ringcast_gateway::tls::load(&files) {
            eprintln!("error: TLS: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    // So does a --node-ca that holds no usable certificate authority, or --node-tls with only
    // the embedded node.
    if let Err(e) = config.node_connector() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    if config.check_config {
        if let Some(Err(e)) = config.redis_target().map(|t| t.validate()) {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
        if config.embedded() {
            if let Err(e) =
                ringcast_gateway::embedded::EmbeddedNode::config(&config.auth, &config.api.api_keys)
            {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        }
        println!("config ok");
        return std::process::ExitCode::SUCCESS;
    }
    let (listen, log_format) = (config.listen, config.log_format);
    process::serve(listen, log_format, "gateway", |listener, shutdown| {
        ringcast_gateway::run(listener, config, shutdown)
    })
    .await
}
