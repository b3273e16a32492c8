//! Where Redis is — one server (`--redis-url`) or a Redis Cluster (`--redis-cluster` seeds) —
//! and one command connection to it that works the same either way.
//!
//! Nodes and gateways both talk to Redis (the bus, the node registry), so the choice and the
//! connection live here, in the crate both depend on. Every key ringcast writes carries a hash
//! tag that keeps what one command touches in one slot; [`slot_of`] is the cluster's own
//! mapping (CRC16/XMODEM of the tag, mod 16384), for code that must group commands per slot.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion,
    RedisError, RedisFuture, RedisResult, Value,
};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://` or `rediss://` URL.
    Single(String),
    /// A cluster, found through these seed URLs (any live node will do).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The target the flags name: `--redis-url`, or `--redis-cluster` seeds (clap keeps them
    /// exclusive); `None` without either.
    pub fn from_flags(url: Option<&str>, cluster: &[String]) -> Option<Self> {
        match (url, cluster) {
            (Some(url), _) => Some(RedisTarget::Single(url.to_owned())),
            (None, []) => None,
            (None, seeds) => Some(RedisTarget::Cluster(seeds.to_vec())),
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    /// The URLs, for checking them and for logs (with credentials: see `Debug` for the
    /// redacted form).
    pub fn urls(&self) -> &[String] {
        match self {
            RedisTarget::Single(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(seeds) => seeds,
        }
    }

    /// Checks every URL parses; the error names the bad one (redacted).
    pub fn validate(&self) -> Result<(), String> {
        // redis-rs reads some other schemes (`http://…`) as a host: refuse them here, so a
        // typo fails at startup rather than as a connection error much later. A cluster is
        // reached over TCP only.
        let schemes: &[&str] = match self {
            RedisTarget::Single(_) => &["redis://", "rediss://", "unix://", "redis+unix://"],
            RedisTarget::Cluster(_) => &["redis://", "rediss://"],
        };
        for url in self.urls() {
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(format!(
                    "invalid Redis URL {}: the scheme must be one of {}",
                    redacted(url),
                    schemes.join(" ")
                ));
            }
            url.as_str()
                .into_connection_info()
                .map_err(|e| format!("invalid Redis URL {}: {e}", redacted(url)))?;
        }
        Ok(())
    }

    /// Opens a command connection (RESP3) whose connect and each reply are bounded by
    /// `timeout`. On a cluster it follows `-MOVED` / `-ASK` and the topology by itself.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<RedisConn> {
        let connecting = async {
            match self {
                RedisTarget::Single(url) => {
                    let client = single_client(url)?;
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(RedisConn::Single)
                }
                RedisTarget::Cluster(seeds) => {
                    let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                        .use_protocol(ProtocolVersion::RESP3)
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(3)
                        .build()?;
                    client
                        .get_async_connection()
                        .await
                        .map(|c| RedisConn::Cluster(Box::new(c)))
                }
            }
        };
        match tokio::time::timeout(timeout * 2, connecting).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((ErrorKind::Io, "connect timed out"))),
        }
    }
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Single(url) => f.debug_tuple("Single").field(&redacted(url)).finish(),
            RedisTarget::Cluster(seeds) => f
                .debug_tuple("Cluster")
                .field(&seeds.iter().map(|s| redacted(s)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A client for one server, speaking RESP3 (pushes on the connection itself).
pub fn single_client(url: &str) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings))
}

/// A URL with any `user:password@` replaced by `***@`, for logs and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        // No scheme before the credentials (a malformed URL): hide everything before the `@`.
        (_, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

/// A command connection to a [`RedisTarget`].
#[derive(Clone)]
pub enum RedisConn {
    /// To one server.
    Single(MultiplexedConnection),
    /// To a cluster (routes each command by its key's slot; a pipeline must stay in one slot).
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The cluster hash slot of `key`: CRC16/XMODEM of its hash tag (the part between the first
/// `{` and the next `}`, when not empty) or of the whole key, mod 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(key)) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_as_redis_cluster_does() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"{user1000}.followers"), slot_of(b"user1000"));
        // An empty tag is no tag; only the first `{...}` counts.
        assert_eq!(slot_of(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"{x"), slot_of(b"{x"));
        assert!(slot_of(b"") < SLOTS);
    }

    #[test]
    fn the_flags_choose_the_target_and_debug_hides_credentials() {
        assert_eq!(RedisTarget::from_flags(None, &[]), None);
        let single = RedisTarget::from_flags(Some("redis://a:1"), &[]).unwrap();
        assert!(!single.is_cluster());
        let seeds = vec!["redis://u:secret@a:1".to_owned(), "redis://b:2".to_owned()];
        let cluster = RedisTarget::from_flags(None, &seeds).unwrap();
        assert!(cluster.is_cluster());
        let shown = format!("{cluster:?}");
        assert!(
            !shown.contains("secret") && shown.contains("redis://***@a:1"),
            "{shown}"
        );
        assert!(cluster.validate().is_ok());
        let bad = RedisTarget::Cluster(vec!["redis://a:1".into(), "http://x".into()]);
        let err = bad.validate().unwrap_err();
        assert!(err.contains("http://x"), "{err}");
    }

    #[test]
    fn urls_of_other_schemes_are_refused() {
        let cluster = |u: &str| RedisTarget::Cluster(vec!["redis://a:1".into(), u.into()]);
        assert!(cluster("rediss://u:p@b:2").validate().is_ok());
        let err = cluster("http://u:secret@b:2").validate().unwrap_err();
        assert!(err.contains("scheme") && !err.contains("secret"), "{err}");
        assert!(cluster("unix:///tmp/r.sock").validate().is_err());
        assert!(RedisTarget::Single("unix:///tmp/r.sock".into())
            .validate()
            .is_ok());
        assert!(RedisTarget::Single("redis://a:1/0".into())
            .validate()
            .is_ok());
        assert!(RedisTarget::Single("127.0.0.1:6379".into())
            .validate()
            .is_err());
    }

    #[test]
    fn a_malformed_url_with_credentials_is_redacted_whole() {
        for url in [
            ":s3cret@redis:6379",
            "redis:/:s3cret@h:1",
            "user:s3cret@h:1",
        ] {
            let shown = redacted(url);
            assert!(!shown.contains("s3cret"), "{shown}");
            let err = RedisTarget::Cluster(vec![url.into()])
                .validate()
                .unwrap_err();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
