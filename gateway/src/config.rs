//! Gateway configuration: every flag also readable from a `RINGCAST_*` environment variable.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Log output format (shared with the node).
pub use ringcast_net::process::LogFormat;
// Authentication flags: the node's too (same flags, same environment variables).
use ringcast_protocol::auth::AuthArgs;

use crate::origin::OriginPattern;
use crate::token::TokenArgs;

/// How clients reach their node (see [`Config::node_transport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeTransport {
    /// Every client routed to a node shares one TCP connection to it.
    Link,
    /// One TCP connection to the node per client.
    Tcp,
}

/// What the binary does besides serving (the default with no subcommand).
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a signed HS256 development token (uses --jwt-secret / RINGCAST_JWT_SECRET) and exit.
    Token(TokenArgs),
}

/// One statically configured node: `ID=HOST:PORT`, optionally `ID=HOST:PORT*WEIGHT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's id (as it reports in `welcome`).
    pub id: String,
    /// Where the gateway reaches it (`host:port`; the host may be a name).
    pub addr: String,
    /// Relative share of the ring (1 = normal).
    pub weight: usize,
}

impl FromStr for NodeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
        let (addr, weight) = match rest.split_once('*') {
            Some((a, w)) => (
                a,
                w.parse::<usize>()
                    .ok()
                    .filter(|w| (1..=100).contains(w))
                    .ok_or_else(|| format!("{s:?}: weight must be 1..=100"))?,
            ),
            None => (rest, 1),
        };
        let id = id.trim();
        if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace()) {
            return Err(format!("{s:?}: node id must be 1-128 non-space characters"));
        }
        let addr = addr.trim();
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(format!("{s:?}: expected HOST:PORT after '='")),
        }
        Ok(NodeSpec {
            id: id.to_owned(),
            addr: addr.to_owned(),
            weight,
        })
    }
}

/// Configuration of one ringcast gateway.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringcast-gateway",
    version,
    about = "The ringcast gateway: routes each client_id to its node on a consistent-hash ring"
)]
pub struct Config {
    /// With no subcommand the gateway serves.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on for WebSocket upgrades (/ws) and HTTP (/healthz, /metrics, /nodes).
    #[arg(long, env = "RINGCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A static node, `ID=HOST:PORT` (optionally `*WEIGHT`); repeatable. With no nodes and no
    /// Redis, the gateway runs an embedded node in-process.
    #[arg(long = "node", env = "RINGCAST_NODES", value_delimiter = ',')]
    pub nodes: Vec<NodeSpec>,

    /// Redis URL for dynamic membership: nodes started with `--advertise` register there.
    #[arg(long, env = "RINGCAST_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Cluster seed node URLs for dynamic membership instead of one Redis (repeat the
    /// flag, or comma-separate them in the variable); the nodes use the same cluster.
    #[arg(
        long,
        env = "RINGCAST_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster: Vec<String>,

    /// Prefix of the Redis keys nodes register under (must match the nodes' `--redis-prefix`).
    #[arg(long, env = "RINGCAST_REDIS_PREFIX", default_value = "ringcast")]
    pub redis_prefix: String,

    /// Milliseconds between reads of the Redis node registry.
    #[arg(long, env = "RINGCAST_MEMBERSHIP_POLL_MS", default_value_t = 500)]
    pub membership_poll_ms: u64,

    /// Virtual nodes per node (times its weight) on the hash ring.
    #[arg(long, env = "RINGCAST_VNODES", default_value_t = 256)]
    pub vnodes: usize,

    /// Milliseconds between active `/healthz` checks of each node.
    #[arg(long, env = "RINGCAST_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,

    /// Milliseconds one health check may take before it counts as failed.
    #[arg(long, env = "RINGCAST_HEALTH_TIMEOUT_MS", default_value_t = 1000)]
    pub health_timeout_ms: u64,

    /// Consecutive failed checks before a node leaves the ring.
    #[arg(long, env = "RINGCAST_UNHEALTHY_THRESHOLD", default_value_t = 2)]
    pub unhealthy_threshold: u32,

    /// Consecutive passed checks before a down node rejoins the ring.
    #[arg(long, env = "RINGCAST_HEALTHY_THRESHOLD", default_value_t = 1)]
    pub healthy_threshold: u32,

    /// Milliseconds a node may take before the next candidate is tried: a TCP connect; with
    /// links, also a new link's connect and 101 together, and each answer to an upgrade sent
    /// over a link (above 1 s, so one lost SYN is retransmitted before giving up).
    #[arg(long, env = "RINGCAST_CONNECT_TIMEOUT_MS", default_value_t = 3000)]
    pub connect_timeout_ms: u64,

    /// How clients reach their node: `link` carries every client routed to a node over one
    /// TCP connection to it (a node without links is reached the other way); `tcp` opens one
    /// TCP connection to the node per client.
    #[arg(long, env = "RINGCAST_NODE_TRANSPORT", value_enum, default_value_t = NodeTransport::Link)]
    pub node_transport: NodeTransport,

    /// Shared secret (16-256 printable bytes) presented to nodes to open a link; the nodes' own
    /// `--link-secret`. A bearer token sent in plaintext to every node address on the ring,
    /// those registered in Redis included: keep Redis and the node network private. Without it
    /// only nodes on this host take links; a node that refuses the link is reached with one
    /// connection per client. Unused with `--node-transport tcp`.
    #[arg(long, env = "RINGCAST_LINK_SECRET", hide_env_values = true,
          value_parser = ringcast_net::link::secret::SecretParser)]
    pub link_secret: Option<ringcast_net::link::LinkSecret>,

    /// Every connection to nodes (links, tunnels, health checks, API calls) speaks TLS, verified
    /// against `--node-ca`: each node's certificate must name the host of its address (an IP
    /// SAN for an IP). The nodes serve TLS with their own `--tls-cert`/`--tls-key`.
    #[arg(long, env = "RINGCAST_NODE_TLS", requires = "node_ca")]
    pub node_tls: bool,

    /// PEM file with the certificate authorities that sign the nodes' certificates (with
    /// `--node-tls`; only these are trusted).
    #[arg(long, env = "RINGCAST_NODE_CA")]
    pub node_ca: Option<std::path::PathBuf>,

    /// Most nodes tried for one upgrade (the owner, then the ring's replica order).
    #[arg(long, env = "RINGCAST_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: usize,

    /// Seconds a client has to send complete request headers (slowloris guard); also bounds
    /// the whole upgrade including the node's answer.
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// Largest request head in bytes (8192 to 16384, what a node accepts from a gateway);
    /// larger requests are refused with 431.
    #[arg(long, env = "RINGCAST_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// The server API's keys and body limit.
    #[command(flatten)]
    pub api: ringcast_net::api_auth::ApiArgs,

    /// Serve the server API on this address only (not on `--listen`), to keep it off the
    /// internet.
    #[arg(long, env = "RINGCAST_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,

    /// TLS on `--listen`: the certificate pair and its reload.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    /// A second listener without TLS, for `/healthz`, `/metrics` and `/nodes` inside the
    /// cluster (probes, scrapers) when `--listen` speaks TLS; it serves no `/ws` upgrades.
    #[arg(long, env = "RINGCAST_PLAIN_LISTEN")]
    pub plain_listen: Option<SocketAddr>,

    /// Most client connections held at once (tunnels and plain HTTP); past it new TCP
    /// connections wait in the kernel backlog.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Bytes of the copy buffer a tunnel allocates while data flows (none while idle).
    #[arg(long, env = "RINGCAST_COPY_BUFFER_BYTES", default_value_t = 4 * 1024)]
    pub copy_buffer_bytes: usize,

    /// Seconds one direction of a tunnel may stay open after the other closed (time for the
    /// WebSocket close handshake); then the tunnel ends even if that peer vanished silently.
    #[arg(long, env = "RINGCAST_TUNNEL_LINGER_SECS", default_value_t = 10)]
    pub tunnel_linger_secs: u64,

    /// Seconds open tunnels may stay up after a shutdown signal before they are closed.
    #[arg(long, env = "RINGCAST_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Most client connections from one IP address at once (0: no per-address limit); IPv6
    /// clients count per /64 network. Counted by the TCP peer address, so leave it at 0 behind
    /// a load balancer or NAT that makes every client share one address.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// A browser origin allowed to connect, exact (`https://app.example.com`) or every
    /// subdomain (`https://*.example.com`); repeatable, or comma-separated in the environment.
    /// None: every origin is allowed. Requests without `Origin` (non-browser clients) are
    /// always allowed; the token is what keeps them out.
    #[arg(
        long = "allowed-origin",
        env = "RINGCAST_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<OriginPattern>,

    /// Authentication (JWT) settings, the same as the nodes'.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// Serve the demo chat page at `/demo/` (off by default: a public edge should serve no
    /// pages it does not need).
    #[arg(long, env = "RINGCAST_DEMO")]
    pub demo: bool,

    /// Log format.
    #[arg(long, env = "RINGCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Parse the configuration (flags and `RINGCAST_*` environment), print `config ok` and exit
    /// 0 without listening; a bad flag or value exits 2 with clap's error (deploy manifest checks).
    #[arg(long, env = "RINGCAST_CHECK_CONFIG")]
    pub check_config: bool,
}

impl Config {
    /// The defaults, as `ringcast-gateway` with no flags and no environment would run.
    pub fn for_tests() -> Self {
        Config::parse_from(["ringcast-gateway"])
    }

    /// Where the node registry is: `--redis-url` or `--redis-cluster`.
    pub fn redis_target(&self) -> Option<ringcast_net::redis_target::RedisTarget> {
        ringcast_net::redis_target::RedisTarget::from_flags(
            self.redis_url.as_deref(),
            &self.redis_cluster,
        )
    }

    /// Whether the gateway must run its own node (nothing else to route to).
    pub fn embedded(&self) -> bool {
        self.nodes.is_empty() && self.redis_target().is_none()
    }

    pub(crate) fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(10))
    }

    pub(crate) fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms.max(10))
    }

    /// How the gateway connects to nodes: TLS verified against `--node-ca` with `--node-tls`
    /// (an error when the CA file cannot be used, or when there are no nodes but the embedded
    /// one, which serves no TLS), else TCP. `--node-ca` alone changes nothing.
    pub fn node_connector(&self) -> Result<crate::node_io::Connector, String> {
        match (&self.node_tls, &self.node_ca) {
            (true, _) if self.embedded() => Err(
                "--node-tls needs nodes (--node, --redis-url or --redis-cluster): the embedded node serves no TLS"
                    .into(),
            ),
            (true, Some(ca)) => {
                crate::node_io::Connector::tls(ca).map_err(|e| format!("--node-ca: {e}"))
            }
            _ => Ok(crate::node_io::Connector::plain()),
        }
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(10))
    }

    /// `--max-header-bytes` within 8192..=16384: a node refuses heads past 16 KiB (plus what
    /// a gateway adds), so a gateway that accepted more would relay the node's 431.
    pub(crate) fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
            .clamp(8192, ringcast_net::http1::request::MAX_HEAD_BYTES)
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        // Clamped: a deadline is computed from it for every connection.
        Duration::from_secs(
            self.handshake_timeout_secs
                .clamp(1, ringcast_net::process::MAX_SECS),
        )
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.membership_poll_ms.clamp(50, 1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_node_specs() {
        let c = Config::for_tests();
        assert_eq!(c.listen.port(), 8080);
        assert!(c.embedded());
        let c = Config::parse_from([
            "g",
            "--node",
            "a=127.0.0.1:9001",
            "--node",
            "b=node-b.internal:9002*3",
        ]);
        assert!(!c.embedded());
        assert_eq!(c.nodes[1].addr, "node-b.internal:9002");
        assert_eq!(c.nodes[1].weight, 3);
        assert!("nohost".parse::<NodeSpec>().is_err());
        assert!("a=host".parse::<NodeSpec>().is_err());
        assert!("a=host:99999".parse::<NodeSpec>().is_err());
        assert!("=host:1".parse::<NodeSpec>().is_err());
        assert!("a=host:1*0".parse::<NodeSpec>().is_err());
    }

    #[test]
    fn auth_origins_and_the_token_subcommand() {
        let c = Config::parse_from([
            "g",
            "--jwt-secret",
            "0123456789abcdef",
            "--allowed-origin",
            "https://a.io",
            "--allowed-origin",
            "https://*.b.io",
            "--max-connections-per-ip",
            "5",
        ]);
        assert!(c.command.is_none(), "no subcommand: serve");
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("0123456789abcdef"));
        assert_eq!(c.allowed_origins.len(), 2);
        assert_eq!(c.max_connections_per_ip, 5);
        assert!(Config::try_parse_from(["g", "--allowed-origin", "a.io"]).is_err());
        let c = Config::parse_from([
            "g",
            "--jwt-secret",
            "0123456789abcdef",
            "token",
            "--sub",
            "alice",
            "--rooms",
            "support-*,team-42",
            "--ttl",
            "2h",
            "--chat",
            "true",
        ]);
        let Some(Command::Token(t)) = c.command else {
            panic!("token subcommand not parsed")
        };
        assert_eq!(t.sub, "alice");
        assert_eq!(t.rooms.as_deref().map(<[String]>::len), Some(2));
        assert_eq!((t.ttl, t.chat), (7200, Some(true)));
    }
}
