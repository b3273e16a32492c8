//! What both binaries (`ringcast-node`, `ringcast-gateway`) do around their library: logging,
//! binding with a deep accept backlog, and turning SIGTERM/SIGINT into the shutdown signal.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// Longest duration any seconds flag of either binary may name (one year): every deadline
/// computed from one stays far inside the clock's range, however it is added.
pub const MAX_SECS: u64 = 365 * 86_400;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Accept backlog requested from the kernel (capped by `net.core.somaxconn`). The std default of
/// 128 overflows during connection bursts and costs clients a 1 s SYN retry.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Installs the `tracing` subscriber (`RUST_LOG` filters, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
}

/// Binds `addr` with SO_REUSEADDR and a [`LISTEN_BACKLOG`]-deep accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The body of both binaries' `main`: installs logging, binds `listen`, runs `run` until
/// SIGTERM/SIGINT, and maps the outcome to an exit code (`what` names the process in logs).
pub async fn serve<F, Fut, E>(
    listen: SocketAddr,
    log_format: LogFormat,
    what: &str,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(TcpListener, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    init_tracing(log_format);
    let listener = match bind(listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %listen, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(listener, shutdown_on_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A shutdown receiver that turns true on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    rx
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
