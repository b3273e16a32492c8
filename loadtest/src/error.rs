//! What can stop a load test, each with a message that says what to check.

use std::net::{IpAddr, SocketAddr};

/// Why one connection could not be established as a seed-protocol client.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens at the address.
    #[error("connection refused by {addr}: is the server running and listening there?")]
    Refused {
        /// Server address.
        addr: SocketAddr,
    },
    /// The process ran out of file descriptors.
    #[error("out of file descriptors (EMFILE) while connecting to {addr}: raise `ulimit -n` or split the run over several processes")]
    NoFds {
        /// Server address.
        addr: SocketAddr,
    },
    /// Binding the chosen local source address failed.
    #[error("cannot bind local source address {ip}: {source} (try --source-addrs none)")]
    Bind {
        /// The source IP.
        ip: IpAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Any other TCP-level failure.
    #[error("TCP connect to {addr} failed: {source}")]
    Io {
        /// Server address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server answered the upgrade request with something other than 101.
    #[error("{addr} answered HTTP {status} instead of switching to WebSocket (101): wrong URL path, a full server, or not a seed-protocol server")]
    NotUpgraded {
        /// Server address.
        addr: SocketAddr,
        /// The HTTP status it sent.
        status: u16,
    },
    /// The WebSocket handshake failed in another way (garbage reply, closed early, …).
    #[error("WebSocket handshake with {addr} failed: {detail} (is this a WebSocket server?)")]
    Handshake {
        /// Server address.
        addr: SocketAddr,
        /// What tungstenite said.
        detail: String,
    },
    /// Nothing, or not the expected event, arrived in time after connecting or joining.
    #[error("{addr}: {detail}")]
    Protocol {
        /// Server address.
        addr: SocketAddr,
        /// What was expected and what came instead.
        detail: String,
    },
    /// The connect + handshake took longer than the timeout.
    #[error("connecting to {addr} timed out after {secs:.1} s")]
    Timeout {
        /// Server address.
        addr: SocketAddr,
        /// The timeout.
        secs: f64,
    },
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Refused { .. } => "refused",
            ConnectError::NoFds { .. } => "no_fds",
            ConnectError::Bind { .. } => "bind",
            ConnectError::Io { .. } => "io",
            ConnectError::NotUpgraded { .. } => "http_status",
            ConnectError::Handshake { .. } => "handshake",
            ConnectError::Protocol { .. } => "protocol",
            ConnectError::Timeout { .. } => "timeout",
        }
    }
}

/// Why a run could not be done (exit status 1), as opposed to a run that found a problem.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag has an unusable value.
    #[error("invalid argument: {0}")]
    Usage(String),
    /// A --url cannot be used.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A connection needed by the scenario failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The run needs more file descriptors than this process may have.
    #[error("this run needs about {needed} file descriptors but the hard limit is {hard} per process: split it over {processes} loadtest processes (each with a distinct --id-prefix and a share of the connections)")]
    TooManyFds {
        /// Descriptors needed.
        needed: u64,
        /// The hard limit.
        hard: u64,
        /// Suggested process count.
        processes: u64,
    },
    /// Something else went wrong (reading /proc, an HTTP check, …).
    #[error("{0}")]
    Other(String),
}
