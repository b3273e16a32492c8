//! Command line: global flags shared by every scenario, and one subcommand per scenario.
//!
//! Every flag can also come from a `RINGCAST_LOADTEST_*` environment variable, so a benchmark
//! script can set the target once and run several scenarios.

use clap::{Args, Parser, Subcommand};

/// ringcast-loadtest: drives any server of the seed protocol (JSON over WebSocket).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringcast-loadtest",
    version,
    about = "Load generator for ringcast (or any seed-protocol server): fanout, connections, direct, churn, faults, resume, presence, api"
)]
pub struct Cli {
    /// Flags every scenario understands.
    #[command(flatten)]
    pub common: Common,

    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Flags shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// WebSocket URL(s) of the server, e.g. ws://127.0.0.1:9001/ws. Repeat (or comma-separate) to
    /// spread connections round-robin over several nodes or gateways.
    #[arg(
        long = "url",
        env = "RINGCAST_LOADTEST_URL",
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:9001/ws"
    )]
    pub urls: Vec<String>,

    /// PEM file with the CA certificate(s) to trust for `wss://` URLs (each connect is a full
    /// TLS handshake: no session resumption).
    #[arg(long, env = "RINGCAST_LOADTEST_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Print one JSON object with the results on stdout instead of the human summary.
    #[arg(long, env = "RINGCAST_LOADTEST_JSON", global = true)]
    pub json: bool,

    /// Do not draw a progress bar (it is drawn on stderr, only when stderr is a terminal).
    #[arg(long, env = "RINGCAST_LOADTEST_NO_PROGRESS", global = true)]
    pub no_progress: bool,

    /// Local source addresses to spread connections over (each gives ~28 000 ports per server
    /// address): `auto` (127.0.0.1-127.0.0.8 when every server is on IPv4 loopback, else the OS
    /// choice), `none`, or a comma-separated list of IPs.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_SOURCE_ADDRS",
        global = true,
        default_value = "auto"
    )]
    pub source_addrs: String,

    /// Seconds to wait for the server's `welcome` (and for a join's `user_joined`) before calling
    /// the server unresponsive or not a seed-protocol server.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_WELCOME_TIMEOUT_SECS",
        global = true,
        default_value_t = 5.0
    )]
    pub welcome_timeout_secs: f64,

    /// Require a `welcome` event after the upgrade (ringcast sends one). Set to false for the
    /// original tutorial server, which sends none: the requested client_id is then used as is.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_REQUIRE_WELCOME",
        global = true,
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub require_welcome: bool,

    /// Most connection attempts in flight at once.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_CONNECT_CONCURRENCY",
        global = true,
        default_value_t = 256
    )]
    pub connect_concurrency: usize,

    /// Prefix of every client_id this process uses (make it differ between concurrent processes).
    /// Default: `lt` followed by this process's id.
    #[arg(long, env = "RINGCAST_LOADTEST_ID_PREFIX", global = true)]
    pub id_prefix: Option<String>,

    /// Runtime worker threads (0: one per CPU).
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_THREADS",
        global = true,
        default_value_t = 0
    )]
    pub threads: usize,

    /// WebSocket read buffer per connection, in bytes, at least 1024 (tungstenite zeroes it on
    /// every read, so bigger is not faster for small frames; `fanout` subscribers read by hand
    /// into one that is not zeroed and grows for a bigger message). Default: 1024 for
    /// `connections`, whose idle connections only ever read a `welcome` and pings, so a
    /// connection storm touches 3 KiB less fresh memory per connection; 4096 for the others.
    #[arg(long, env = "RINGCAST_LOADTEST_READ_BUFFER_BYTES", global = true)]
    pub read_buffer_bytes: Option<usize>,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// S subscribers over R rooms, P publishers sending room messages; deliveries/s, loss, latency.
    Fanout(FanoutArgs),
    /// Open N idle connections at a target rate and hold them; connect rate, failures, memory.
    Connections(ConnectionsArgs),
    /// Pairs of clients exchanging direct messages (across nodes with several --url); rate, latency.
    Direct(DirectArgs),
    /// Connect/join/leave/disconnect cycles; then checks /stats returns to zero.
    Churn(ChurnArgs),
    /// A numbered stream in one room through node drain/crash and Redis crash on a
    /// deploy/local/cluster.sh cluster; per fault: sent, stored, acked, lost, refused, resent,
    /// repeat acks, missing, duplicated.
    Faults(FaultsArgs),
    /// C clients note their room position, leave, miss M messages, then all rejoin at once
    /// with `since`; time to caught up (p50/p99/p99.9/max), wall time, and every client that
    /// did not get exactly the missed messages in order with `recovered:true`.
    Resume(ResumeArgs),
    /// M members join one room, then askers send `presence` requests for D seconds; answer
    /// latency (p50/p99/max), the `count` answered and whether `members` was truncated, each
    /// answer checked against the ids that joined.
    Presence(PresenceArgs),
    /// R rooms × M WebSocket members; C kept-alive HTTP/1.1 connections publish over the
    /// server API (`publish`, or `batch` of B publishes) for D seconds; API calls/s, messages/s
    /// accepted, answers other than 200 by code, deliveries/s at the members, latency, loss.
    Api(ApiArgs),
}

impl Scenario {
    /// The WebSocket read buffer per connection when --read-buffer-bytes is not given.
    pub fn default_read_buffer_bytes(&self) -> usize {
        match self {
            Scenario::Connections(_) => 1024,
            _ => 4096,
        }
    }
}

/// Flags of `fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers (connections that only receive).
    #[arg(long, env = "RINGCAST_LOADTEST_SUBSCRIBERS", default_value_t = 1000)]
    pub subscribers: usize,

    /// Rooms; subscriber i and publisher j join room i mod R and j mod R.
    #[arg(long, env = "RINGCAST_LOADTEST_ROOMS", default_value_t = 1)]
    pub rooms: usize,

    /// Publishers (connections that join a room and send room messages to it).
    #[arg(long, env = "RINGCAST_LOADTEST_PUBLISHERS", default_value_t = 4)]
    pub publishers: usize,

    /// Messages per second per publisher; 0 means open loop (as fast as the connection takes).
    #[arg(long, env = "RINGCAST_LOADTEST_RATE", default_value_t = 100.0)]
    pub rate: f64,

    /// Seconds the publishers send.
    #[arg(long, env = "RINGCAST_LOADTEST_DURATION_SECS", default_value_t = 10.0)]
    pub duration_secs: f64,

    /// Extra bytes of padding in each message's content.
    #[arg(long, env = "RINGCAST_LOADTEST_PAYLOAD_BYTES", default_value_t = 0)]
    pub payload_bytes: usize,

    /// Seconds without any new delivery, after the publishers stop, before giving up on the rest.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_DRAIN_TIMEOUT_SECS",
        default_value_t = 3.0
    )]
    pub drain_timeout_secs: f64,

    /// A tiny smoke run: 20 subscribers, 2 rooms, 2 publishers at 20 msg/s for 1 s.
    #[arg(long, env = "RINGCAST_LOADTEST_QUICK")]
    pub quick: bool,

    /// Keep every client in its room through closes: reconnect (bounded backoff) with the same
    /// client_id and rejoin with `since`; loss then counts against what each publisher saw
    /// stored. Clients read on tungstenite, not the faster hand reader; needs a --rate.
    #[arg(long, env = "RINGCAST_LOADTEST_RECOVER")]
    pub recover: bool,

    /// Give every room message a unique `id` (`PUBLISHER.SEQ`), which asks the server for an
    /// `ack`; publishers count the acks and the errors naming an id, and a message answered by
    /// neither when the run ends is reported as unacked.
    #[arg(long, env = "RINGCAST_LOADTEST_IDS", conflicts_with = "recover")]
    pub ids: bool,
}

/// A fault the `faults` scenario applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGTERM one node (`cluster.sh drain`: 1012 to its clients), then restart it.
    Drain,
    /// SIGKILL one node (`cluster.sh kill`), then restart it.
    Crash,
    /// SIGKILL the node serving the publisher, then restart it: the publisher reconnects to
    /// another node and sends again what was not acknowledged (and its rechecks).
    CrashPublisher,
    /// SIGKILL Redis, then restart it with the same port and flags.
    Redis,
}

impl Fault {
    /// The fault's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Drain => "drain",
            Fault::Crash => "crash",
            Fault::CrashPublisher => "crash-publisher",
            Fault::Redis => "redis",
        }
    }
}

/// The publisher of the `faults` scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublisherKind {
    /// Messages carry ids (issue 20): each is acknowledged, what is not is sent again after a
    /// reconnect or a transient error, and the server's dedupe keeps a retry from being stored
    /// twice; reports acked, lost, resent and repeat acks.
    Ids,
    /// Plain numbered messages without ids, never sent again (the issue 19 drill): a message
    /// refused while Redis is down is gone.
    Plain,
}

/// Flags of `faults`.
#[derive(Debug, Clone, Args)]
pub struct FaultsArgs {
    /// Subscribers in the room.
    #[arg(long, env = "RINGCAST_LOADTEST_SUBSCRIBERS", default_value_t = 60)]
    pub subscribers: usize,

    /// Messages per second of the one publisher (over the node's default limit of 100/s: start
    /// the cluster with RINGCAST_LOCAL_NODE_ARGS='--rate-limit-per-sec 1000 --rate-limit-burst 2000').
    #[arg(long, env = "RINGCAST_LOADTEST_RATE", default_value_t = 200.0)]
    pub rate: f64,

    /// The faults, applied in this order.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_FAULTS",
        value_enum,
        value_delimiter = ',',
        default_value = "drain,crash,crash-publisher,redis"
    )]
    pub faults: Vec<Fault>,

    /// The publisher: `ids` (acknowledged messages, sent again until acknowledged) or `plain`.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_PUBLISHER",
        value_enum,
        default_value = "ids"
    )]
    pub publisher: PublisherKind,

    /// With `--publisher ids`: after each reconnect, also send again the last N acknowledged
    /// messages (as a client whose acks were lost in a failover would); the server must answer
    /// each with its first offset and deliver none of them again.
    #[arg(long, env = "RINGCAST_LOADTEST_RECHECK", default_value_t = 8)]
    pub recheck: usize,

    /// The cluster script that started the cluster; it finds the processes in its state folder
    /// ($RINGCAST_LOCAL_STATE, passed through).
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_CLUSTER",
        default_value = "deploy/local/cluster.sh"
    )]
    pub cluster: std::path::PathBuf,

    /// The node drained and crashed (a cluster.sh name such as node-2), or `busiest`: the one
    /// serving the most subscribers when the fault starts (from their `welcome`), other than
    /// the publisher's while another node serves anyone — so the stream goes on through the
    /// fault and the subscribers must recover what they missed. Give it 3 nodes or more.
    /// (`crash-publisher` always hits the publisher's node.)
    #[arg(long, env = "RINGCAST_LOADTEST_NODE", default_value = "busiest")]
    pub node: String,

    /// Seconds of stream before the first fault and after each one.
    #[arg(long, env = "RINGCAST_LOADTEST_SETTLE_SECS", default_value_t = 5.0)]
    pub settle_secs: f64,

    /// Seconds a crashed node or Redis stays down before its restart.
    #[arg(long, env = "RINGCAST_LOADTEST_DOWN_SECS", default_value_t = 1.0)]
    pub down_secs: f64,

    /// Seconds one cluster.sh command (drain, kill, restart) may take.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_FAULT_TIMEOUT_SECS",
        default_value_t = 30.0
    )]
    pub fault_timeout_secs: f64,

    /// Seconds without any new delivery, after the publisher stops, before giving up on the rest.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_DRAIN_TIMEOUT_SECS",
        default_value_t = 3.0
    )]
    pub drain_timeout_secs: f64,
}

/// Flags of `resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// Clients that leave and rejoin with `since`.
    #[arg(long, env = "RINGCAST_LOADTEST_CLIENTS", default_value_t = 1000)]
    pub clients: usize,

    /// Rooms; client i joins room i mod R, and the publisher joins them all.
    #[arg(long, env = "RINGCAST_LOADTEST_ROOMS", default_value_t = 1)]
    pub rooms: usize,

    /// Messages published into each room while its clients are away (the node keeps
    /// --history-size, default 500, per room; the publisher sends them as fast as it can, so
    /// --rooms x --missed must stay under the node's --rate-limit-burst, default 200).
    #[arg(long, env = "RINGCAST_LOADTEST_MISSED", default_value_t = 100)]
    pub missed: u64,

    /// Seconds a rejoining client waits, from its `join_room`, for its ack (and the publisher
    /// for the echo of its last message).
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_CATCH_UP_TIMEOUT_SECS",
        default_value_t = 30.0
    )]
    pub catch_up_timeout_secs: f64,
}

/// Flags of `api`.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the server API; calls go to URL/api/METHOD. Default: http:// and the
    /// host:port of the first --url (a gateway or node serves the API on its public listener).
    #[arg(long, env = "RINGCAST_LOADTEST_API_URL")]
    pub api_url: Option<String>,

    /// The key sent as `Authorization: apikey KEY` (the servers' --api-key).
    #[arg(long, env = "RINGCAST_LOADTEST_API_KEY", hide_env_values = true)]
    pub api_key: String,

    /// Rooms the messages go to; a connection's k-th message goes to room (its index + k) mod R.
    #[arg(long, env = "RINGCAST_LOADTEST_ROOMS", default_value_t = 100)]
    pub rooms: usize,

    /// WebSocket members per room (they join through --url and only listen).
    #[arg(long, env = "RINGCAST_LOADTEST_MEMBERS", default_value_t = 10)]
    pub members: usize,

    /// Kept-alive HTTP/1.1 connections calling the API, each one call at a time.
    #[arg(long, env = "RINGCAST_LOADTEST_CONNECTIONS", default_value_t = 32)]
    pub connections: usize,

    /// Publishes per call, sent as one `batch` call (1 to 10 000); without it every call is
    /// one `publish`.
    #[arg(long, env = "RINGCAST_LOADTEST_BATCH", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: Option<u32>,

    /// API calls per second over all connections; 0: each connection calls again as soon as
    /// it is answered.
    #[arg(long, env = "RINGCAST_LOADTEST_RATE", default_value_t = 0.0)]
    pub rate: f64,

    /// Seconds the connections call.
    #[arg(long, env = "RINGCAST_LOADTEST_DURATION_SECS", default_value_t = 10.0)]
    pub duration_secs: f64,

    /// Extra bytes of padding in each message's data.
    #[arg(long, env = "RINGCAST_LOADTEST_PAYLOAD_BYTES", default_value_t = 0)]
    pub payload_bytes: usize,

    /// Seconds a call may take to connect or be answered; a connection whose call is not
    /// answered in time stops calling (whether the server ran that call is unknown).
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_CALL_TIMEOUT_SECS",
        default_value_t = 10.0
    )]
    pub call_timeout_secs: f64,

    /// Seconds without any new delivery, after the calls stop, before giving up on the rest.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_DRAIN_TIMEOUT_SECS",
        default_value_t = 3.0
    )]
    pub drain_timeout_secs: f64,
}

/// Flags of `presence`.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Members that join the room and then only listen.
    #[arg(long, env = "RINGCAST_LOADTEST_MEMBERS", default_value_t = 10_000)]
    pub members: usize,

    /// Clients that join the room after the members, then ask `presence`, each waiting for its
    /// answer before the next request. 0: the members join and leave again, and the join rate
    /// is the figure (it works with presence off too).
    #[arg(long, env = "RINGCAST_LOADTEST_ASKERS", default_value_t = 1)]
    pub askers: usize,

    /// Requests per second per asker, on a schedule (latency then counts from when a request
    /// was due, so a slow answer also delays the ones after it); 0: back to back.
    #[arg(long, env = "RINGCAST_LOADTEST_RATE", default_value_t = 0.0)]
    pub rate: f64,

    /// Seconds the askers ask.
    #[arg(long, env = "RINGCAST_LOADTEST_DURATION_SECS", default_value_t = 10.0)]
    pub duration_secs: f64,

    /// The room. Default: `bench-` followed by this run's --id-prefix and `-presence`, so a node
    /// started with `--room-options 'bench*:announce=off'` spares the members the O(M²)
    /// `user_joined` frames of M joins.
    #[arg(long, env = "RINGCAST_LOADTEST_ROOM")]
    pub room: Option<String>,
}

/// Flags of `connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Connections to open.
    #[arg(long, env = "RINGCAST_LOADTEST_CONNECTIONS", default_value_t = 1000)]
    pub connections: usize,

    /// Target connection attempts per second; 0 means as fast as --connect-concurrency allows.
    #[arg(long, env = "RINGCAST_LOADTEST_CONNECT_RATE", default_value_t = 1000.0)]
    pub connect_rate: f64,

    /// Seconds to hold the connections open (idle) before measuring memory and closing them.
    #[arg(long, env = "RINGCAST_LOADTEST_HOLD_SECS", default_value_t = 5.0)]
    pub hold_secs: f64,

    /// PID of a server process whose VmRSS (/proc/PID/status) is read before and while holding.
    /// Repeat for a gateway plus nodes.
    #[arg(
        long = "server-pid",
        env = "RINGCAST_LOADTEST_SERVER_PIDS",
        value_delimiter = ','
    )]
    pub server_pids: Vec<u32>,
}

/// Flags of `direct`.
#[derive(Debug, Clone, Args)]
pub struct DirectArgs {
    /// Pairs of clients; the two of a pair connect to consecutive --url entries.
    #[arg(long, env = "RINGCAST_LOADTEST_PAIRS", default_value_t = 100)]
    pub pairs: usize,

    /// Direct messages per second each client sends to its partner; 0 means open loop.
    #[arg(long, env = "RINGCAST_LOADTEST_RATE", default_value_t = 10.0)]
    pub rate: f64,

    /// Seconds the clients send.
    #[arg(long, env = "RINGCAST_LOADTEST_DURATION_SECS", default_value_t = 10.0)]
    pub duration_secs: f64,

    /// Seconds without any new delivery, after sending stops, before giving up on the rest.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_DRAIN_TIMEOUT_SECS",
        default_value_t = 3.0
    )]
    pub drain_timeout_secs: f64,
}

/// Flags of `churn`.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Concurrent workers, each running connect/join/leave/disconnect cycles.
    #[arg(long, env = "RINGCAST_LOADTEST_WORKERS", default_value_t = 50)]
    pub workers: usize,

    /// Cycles per worker.
    #[arg(long, env = "RINGCAST_LOADTEST_CYCLES", default_value_t = 20)]
    pub cycles: usize,

    /// Distinct rooms the workers join (worker w uses room w mod N).
    #[arg(long, env = "RINGCAST_LOADTEST_ROOMS", default_value_t = 10)]
    pub rooms: usize,

    /// `/stats` URL(s) that must report zero connections and rooms afterwards. Default: the
    /// /stats of each --url's host:port.
    #[arg(
        long = "stats-url",
        env = "RINGCAST_LOADTEST_STATS_URLS",
        value_delimiter = ','
    )]
    pub stats_urls: Vec<String>,

    /// Seconds to wait for /stats to return to zero after the last cycle.
    #[arg(
        long,
        env = "RINGCAST_LOADTEST_SETTLE_TIMEOUT_SECS",
        default_value_t = 10.0
    )]
    pub settle_timeout_secs: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_after_the_subcommand() {
        let cli = Cli::parse_from([
            "x",
            "fanout",
            "--quick",
            "--url",
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws",
            "--json",
        ]);
        assert_eq!(cli.common.urls.len(), 2);
        assert!(cli.common.json);
        assert!(matches!(
            cli.scenario,
            Scenario::Fanout(FanoutArgs { quick: true, .. })
        ));
    }

    #[test]
    fn ids_and_recover_do_not_mix() {
        // --recover does not resend what a dying connection swallowed, so acks would go missing.
        let r = Cli::try_parse_from(["x", "fanout", "--ids", "--recover"]);
        assert!(r.is_err());
        let cli = Cli::parse_from(["x", "fanout", "--ids"]);
        assert!(matches!(
            cli.scenario,
            Scenario::Fanout(FanoutArgs { ids: true, .. })
        ));
    }

    #[test]
    fn api_batch_is_bounded() {
        let parse = |b: &str| {
            Cli::try_parse_from(["x", "api", "--api-key", "k", "--batch", b]).map(|c| c.scenario)
        };
        assert!(matches!(
            parse("100"),
            Ok(Scenario::Api(ApiArgs {
                batch: Some(100),
                ..
            }))
        ));
        assert!(parse("0").is_err());
        assert!(parse("10001").is_err());
    }
}
