//! Node configuration: every flag also readable from a `RINGCAST_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Parser};
use ringcast_net::process::{LogFormat, MAX_SECS};

/// The parser of a seconds flag: `0..=MAX_SECS`, anything else a clear error at startup.
fn secs() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(..=MAX_SECS)
}

/// Configuration of one ringcast node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringcast-node",
    version,
    about = "A ringcast node: holds WebSocket clients and relays their messages over a bus"
)]
pub struct Config {
    /// Address to listen on for WebSocket upgrades (/ws) and HTTP (/healthz, /stats, /metrics).
    #[arg(long, env = "RINGCAST_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,

    /// This node's id, sent to clients in `welcome` and used on the bus. Default: the hostname.
    #[arg(long, env = "RINGCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis URL (redis:// or rediss://, with user:password@ if needed). Absent: in-memory bus,
    /// one process only.
    #[arg(long, env = "RINGCAST_REDIS_URL", group = "redis")]
    pub redis_url: Option<String>,

    /// Redis Cluster seed node URLs instead of one Redis (repeat the flag, or comma-separate
    /// them in the variable; `redis://` or `rediss://`, with user:password@ if needed). Rooms
    /// and clients then use sharded pub/sub, one subscriber connection per shard.
    #[arg(
        long,
        env = "RINGCAST_REDIS_CLUSTER",
        value_delimiter = ',',
        group = "redis",
        conflicts_with = "redis_url"
    )]
    pub redis_cluster: Vec<String>,

    /// Prefix of every Redis channel name this node uses.
    #[arg(long, env = "RINGCAST_REDIS_PREFIX", default_value = "ringcast")]
    pub redis_prefix: String,

    /// Milliseconds between Redis bus probes (a token published to this node's own probe
    /// channel, which must come back; catches a subscriber that is open but starved).
    #[arg(long, env = "RINGCAST_REDIS_PROBE_INTERVAL_MS", default_value_t = 2000)]
    pub redis_probe_interval_ms: u64,

    /// Milliseconds a Redis bus probe may take to come back before the subscriber is rebuilt.
    #[arg(long, env = "RINGCAST_REDIS_PROBE_TIMEOUT_MS", default_value_t = 3000)]
    pub redis_probe_timeout_ms: u64,

    /// Longest pause in milliseconds between Redis reconnection attempts (backoff starts at 50).
    #[arg(long, env = "RINGCAST_REDIS_RECONNECT_MAX_MS", default_value_t = 1000)]
    pub redis_reconnect_max_ms: u64,

    /// Milliseconds one Redis command (or connection attempt) may take before it counts as failed.
    #[arg(
        long,
        env = "RINGCAST_REDIS_COMMAND_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub redis_command_timeout_ms: u64,

    /// Send `user_connected` / `user_disconnected` to every client (O(connections) per event).
    #[arg(long, env = "RINGCAST_ANNOUNCE_CONNECTIONS", default_value_t = true, action = ArgAction::Set)]
    pub announce_connections: bool,

    /// Keep presence (who is in each room, across nodes) unless a room's options say
    /// `presence=off`. With it, `user_joined`/`user_left` are per client id, not per connection.
    #[arg(long, env = "RINGCAST_PRESENCE", default_value_t = true, action = ArgAction::Set)]
    pub presence: bool,

    /// Most client ids one `presence` answer lists (`truncated:true` past it; `count` is
    /// always the total).
    #[arg(long, env = "RINGCAST_PRESENCE_MAX_MEMBERS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub presence_max_members: u32,

    /// Milliseconds a node's presence lease lasts without a renewal (renewed every third of
    /// it). A node killed without a drain has its clients removed from presence, and announced
    /// gone, within about this plus half a second.
    #[arg(long, env = "RINGCAST_PRESENCE_LEASE_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(300..=600_000))]
    pub presence_lease_ms: u64,

    /// The server API's keys and body limit.
    #[command(flatten)]
    pub api: ringcast_net::api_auth::ApiArgs,

    /// TLS on the listener (`--tls-cert`, `--tls-key`): gateways then reach this node with
    /// `--node-tls`.
    #[command(flatten)]
    pub tls: ringcast_net::tls::TlsArgs,

    /// Most WebSocket connections this node holds; further upgrades get HTTP 503.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Shared secret (16-256 printable bytes) a gateway must present to carry clients over a
    /// link (`/link`); set the same on every gateway. It travels in plaintext (a bearer token):
    /// keep the network between gateways and nodes private. Without it, links are taken from
    /// loopback peers only (a gateway elsewhere then reaches this node with one connection per
    /// client).
    #[arg(long, env = "RINGCAST_LINK_SECRET", hide_env_values = true,
          value_parser = ringcast_net::link::secret::SecretParser)]
    pub link_secret: Option<ringcast_net::link::LinkSecret>,

    /// For rolling-upgrade tests only: answer link upgrades exactly as the release before
    /// link versioning did (only the unversioned `ringcast-link` token gets a link, anything
    /// else its 400, and no GOAWAY on drain), so that a current gateway can be tested against
    /// an "old" node.
    #[arg(long, env = "RINGCAST_LINK_LEGACY_ONLY", hide = true)]
    pub link_legacy_only: bool,

    /// Largest client message (and frame) in bytes; a larger one closes the connection with 1009.
    #[arg(long, env = "RINGCAST_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Most rooms one connection may be in at once (`too_many_rooms` past it).
    #[arg(long, env = "RINGCAST_MAX_ROOMS_PER_CONNECTION", default_value_t = 100)]
    pub max_rooms_per_connection: usize,

    /// Most frames waiting to be written to one client; past it the client is closed with 1013.
    #[arg(long, env = "RINGCAST_SEND_QUEUE_FRAMES", default_value_t = 1024)]
    pub send_queue_frames: usize,

    /// Most bytes waiting to be written to one client; past it the client is closed with 1013.
    #[arg(long, env = "RINGCAST_SEND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub send_queue_bytes: usize,

    /// Messages per second one connection may send on average (token bucket refill rate).
    #[arg(long, env = "RINGCAST_RATE_LIMIT_PER_SEC", default_value_t = 100.0)]
    pub rate_limit_per_sec: f64,

    /// Messages one connection may send in a burst (token bucket size).
    #[arg(long, env = "RINGCAST_RATE_LIMIT_BURST", default_value_t = 200.0)]
    pub rate_limit_burst: f64,

    /// Rate-limited messages tolerated within 10 s before the connection is closed with 1008.
    #[arg(long, env = "RINGCAST_FLOOD_STRIKES", default_value_t = 50.0)]
    pub flood_strikes: f64,

    /// Seconds between WebSocket pings to each client.
    #[arg(long, env = "RINGCAST_PING_INTERVAL_SECS", default_value_t = 25, value_parser = secs())]
    pub ping_interval_secs: u64,

    /// Seconds without any frame from a client (pong included) before it is closed with 1001.
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = secs())]
    pub idle_timeout_secs: u64,

    /// Seconds a client has to send its complete upgrade request headers.
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = secs())]
    pub handshake_timeout_secs: u64,

    /// Seconds a subscription (room join, connect) may wait for the bus before giving up.
    #[arg(long, env = "RINGCAST_BUS_TIMEOUT_SECS", default_value_t = 5, value_parser = secs())]
    pub bus_timeout_secs: u64,

    /// Seconds between a shutdown signal and closing clients, while `/healthz` already answers 503
    /// and new upgrades are refused, so load balancers stop routing here first.
    #[arg(long, env = "RINGCAST_DRAIN_DELAY_SECS", default_value_t = 0, value_parser = secs())]
    pub drain_delay_secs: u64,

    /// Seconds to wait for clients to close after they were sent 1012, before exiting.
    #[arg(long, env = "RINGCAST_SHUTDOWN_GRACE_SECS", default_value_t = 10, value_parser = secs())]
    pub shutdown_grace_secs: u64,

    /// Options for rooms whose name matches a glob pattern (`*` any run, `?` one character,
    /// `\` escapes): `PATTERN:key=value,...` with keys `post=members|anyone`,
    /// `announce=on|off`, `max_members=N`, `history=N`, `history_ttl=DURATION` and
    /// `presence=on|off`. Repeatable (`;` between entries in the environment); the first
    /// matching entry wins, a built-in `*` with the defaults comes last. Give every node the same.
    #[arg(long = "room-options", env = "RINGCAST_ROOM_OPTIONS", value_delimiter = ';',
          value_parser = crate::room_options::parse_entry)]
    pub room_options: Vec<crate::room_options::RoomRule>,

    /// Messages each room keeps for recovery (`join_room` with `since`, `history`) unless its
    /// room options say `history=N`; 0: rooms keep nothing and their messages carry no offset.
    #[arg(long, env = "RINGCAST_HISTORY_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::room_options::MAX_HISTORY)))]
    pub history_size: u32,

    /// Seconds a room's history lives after its last message, unless its room options say
    /// `history_ttl`.
    #[arg(long, env = "RINGCAST_HISTORY_TTL_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    pub history_ttl_secs: u64,

    /// Seconds a room's offset counter and epoch live after its last message (at least its
    /// history's): for this long a client that missed nothing rejoins with `recovered:true`.
    #[arg(long, env = "RINGCAST_HISTORY_META_TTL_SECS", default_value_t = 7 * 86_400,
          value_parser = clap::value_parser!(u64).range(1..=365 * 86_400))]
    pub history_meta_ttl_secs: u64,

    /// Authentication (JWT) settings.
    #[command(flatten)]
    pub auth: ringcast_protocol::auth::AuthArgs,
    /// `HOST:PORT` gateways should use to reach this node. With `--redis-url` (or
    /// `--redis-cluster`), the node registers itself there (TTL heartbeat) so gateways with the
    /// same Redis route to it.
    #[arg(long, env = "RINGCAST_ADVERTISE", requires = "redis",
          value_parser = ringcast_net::registry::parse_advertise)]
    pub advertise: Option<String>,

    /// This node's share of clients on the gateways' hash ring, relative to the other nodes
    /// (1..=100; a node of weight 2 gets about twice the clients of one of weight 1). Registered
    /// with `--advertise`; a node given to gateways with `--node` takes its weight from there.
    #[arg(long, env = "RINGCAST_WEIGHT", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub weight: u16,

    /// Milliseconds between registration heartbeats (with `--advertise`).
    #[arg(long, env = "RINGCAST_REGISTER_INTERVAL_MS", default_value_t = 1000)]
    pub register_interval_ms: u64,

    /// Milliseconds a registration lives without a heartbeat; gateways drop the node after it.
    #[arg(long, env = "RINGCAST_REGISTER_TTL_MS", default_value_t = 3000)]
    pub register_ttl_ms: u64,

    /// Log format.
    #[arg(long, env = "RINGCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Parse the configuration (flags and `RINGCAST_*` environment), print `config ok` and exit
    /// 0 without listening; a bad flag or value exits 2 with clap's error (deploy manifest checks).
    #[arg(long, env = "RINGCAST_CHECK_CONFIG")]
    pub check_config: bool,
}

impl Config {
    /// The defaults, as `ringcast-node` with no flags and no environment would run.
    pub fn for_tests() -> Self {
        Config::parse_from(["ringcast-node"])
    }

    /// The node id: configured, else the hostname, else "node".
    pub fn resolved_node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            gethostname::gethostname()
                .into_string()
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".to_owned())
        })
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.clamp(1, MAX_SECS))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.clamp(1, MAX_SECS))
    }

    /// Where Redis is: `--redis-url` or `--redis-cluster`; `None`: the in-memory bus.
    pub fn redis_target(&self) -> Option<ringcast_net::redis_target::RedisTarget> {
        ringcast_net::redis_target::RedisTarget::from_flags(
            self.redis_url.as_deref(),
            &self.redis_cluster,
        )
    }

    /// The Redis registration this node keeps, when Redis and `--advertise` are set.
    pub fn registration(&self) -> Option<crate::registration::Registration> {
        Some(crate::registration::Registration {
            target: self.redis_target()?,
            prefix: self.redis_prefix.clone(),
            node_id: self.resolved_node_id(),
            advertise: self.advertise.clone()?,
            weight: usize::from(self.weight),
            interval: Duration::from_millis(self.register_interval_ms.max(50)),
            ttl: Duration::from_millis(self.register_ttl_ms.max(100)),
        })
    }

    /// The room options the entries describe, or why they cannot work (too many entries).
    pub fn room_options(&self) -> Result<crate::room_options::RoomOptions, String> {
        crate::room_options::RoomOptions::new(self.room_options.clone())
    }

    /// Checks what clap cannot check entry by entry; `--check-config` and `run` both call it.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(target) = self.redis_target() {
            target.validate()?;
        }
        // A certificate pair that cannot be served stops the start, naming the file and why.
        if let Some(files) = self.tls.files() {
            ringcast_net::tls::load(&files).map_err(|e| format!("TLS: {e}"))?;
        }
        self.room_options().map(|_| ())
    }

    /// How a room with these options keeps its messages; `None`: it keeps none.
    pub fn keep(&self, settings: &crate::room_options::RoomSettings) -> Option<crate::bus::Keep> {
        let size = settings.history.unwrap_or(self.history_size);
        if size == 0 {
            return None;
        }
        let ttl = settings.history_ttl.map_or(
            Duration::from_secs(self.history_ttl_secs),
            Duration::from_millis,
        );
        Some(crate::bus::Keep {
            size,
            ttl,
            meta_ttl: Duration::from_secs(self.history_meta_ttl_secs).max(ttl),
        })
    }

    /// How long a node's presence lease lasts.
    pub fn presence_lease(&self) -> Duration {
        Duration::from_millis(self.presence_lease_ms)
    }

    /// Whether a room with these options keeps presence.
    pub fn keeps_presence(&self, settings: &crate::room_options::RoomSettings) -> bool {
        settings.presence.unwrap_or(self.presence)
    }

    /// How long a room's counter and epoch live (for reads of rooms that keep history).
    pub fn meta_ttl(&self) -> Duration {
        Duration::from_secs(self.history_meta_ttl_secs)
    }

    pub(crate) fn bus_timeout(&self) -> Duration {
        Duration::from_secs(self.bus_timeout_secs.clamp(1, MAX_SECS))
    }

    /// Clamped: every connection computes its handshake deadline from it.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs.clamp(1, MAX_SECS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let c = Config::for_tests();
        assert_eq!(c.listen.port(), 9001);
        assert!(c.announce_connections);
        assert_eq!(c.max_message_bytes, 65536);
        let c = Config::parse_from(["ringcast-node", "--announce-connections=false"]);
        assert!(!c.announce_connections);
        assert!(!Config::parse_from(["x", "--node-id", "n7"])
            .resolved_node_id()
            .is_empty());
    }

    #[test]
    fn a_seconds_flag_past_a_year_is_refused_and_accessors_stay_in_range() {
        for flag in [
            "--ping-interval-secs",
            "--idle-timeout-secs",
            "--handshake-timeout-secs",
            "--bus-timeout-secs",
            "--drain-delay-secs",
            "--shutdown-grace-secs",
        ] {
            let err = Config::try_parse_from(["x", flag, "18446744073709551615"]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag}: {err}");
            assert!(Config::try_parse_from(["x", flag, &MAX_SECS.to_string()]).is_ok());
        }
        // A configuration built in code is clamped where deadlines are computed.
        let mut c = Config::for_tests();
        c.idle_timeout_secs = u64::MAX;
        c.ping_interval_secs = u64::MAX;
        c.bus_timeout_secs = u64::MAX;
        c.handshake_timeout_secs = u64::MAX;
        let now = std::time::Instant::now();
        for d in [
            c.idle_timeout(),
            c.ping_interval(),
            c.bus_timeout(),
            c.handshake_timeout(),
        ] {
            assert!(now.checked_add(d).is_some());
        }
    }

    #[test]
    fn a_weight_is_registered_with_the_address_and_bounded() {
        let reg = |args: &[&str]| {
            let mut argv = vec![
                "x",
                "--redis-url",
                "redis://r:6379",
                "--advertise",
                "h:9001",
            ];
            argv.extend_from_slice(args);
            let r = Config::parse_from(argv).registration().unwrap();
            ringcast_net::registry::registry_value(&r.advertise, r.weight)
        };
        assert_eq!(reg(&[]), "h:9001", "weight 1 reads as before weights");
        assert_eq!(reg(&["--weight", "3"]), "h:9001*3");
        for bad in ["0", "101", "x"] {
            assert!(
                Config::try_parse_from(["x", "--weight", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
