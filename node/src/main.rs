//! `ringcast-node`: parse the configuration, install logging, bind, run until SIGTERM/SIGINT.

use clap::Parser;
use ringcast_net::process;
use ringcast_node::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    if config.check_config {
        println!("config ok");
        return std::process::ExitCode::SUCCESS;
    }
    let (listen, log_format) = (config.listen, config.log_format);
    process::serve(listen, log_format, "node", |listener, shutdown| {
        ringcast_node::run(listener, config, shutdown)
    })
    .await
}
