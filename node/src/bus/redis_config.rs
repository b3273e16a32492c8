//! The settings of the Redis bus, taken from a node's configuration; shared by the bus
//! (`redis.rs`) and its connections (`redis_conn.rs`, `redis_shards.rs`).

use std::time::Duration;

use ringcast_net::redis_target::RedisTarget;

use crate::config::Config;

/// Settings of the Redis bus (`RedisBus`). Its `Debug` output hides the URLs' credentials.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// One Redis or a Redis Cluster.
    pub target: RedisTarget,
    /// Prefix of every channel name.
    pub prefix: String,
    /// This node's id (part of its probe channel's name).
    pub node_id: String,
    /// Pause between starvation probes.
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the subscriber is rebuilt.
    pub probe_timeout: Duration,
    /// Longest pause between reconnection attempts.
    pub reconnect_max: Duration,
    /// Time limit of one Redis command (and of connecting).
    pub command_timeout: Duration,
}

impl RedisBusConfig {
    /// The Redis settings of a node configuration; `None` without `--redis-url` or
    /// `--redis-cluster`.
    pub fn from_config(config: &Config) -> Option<Self> {
        Some(RedisBusConfig {
            target: config.redis_target()?,
            prefix: config.redis_prefix.clone(),
            node_id: config.resolved_node_id(),
            probe_interval: Duration::from_millis(config.redis_probe_interval_ms.max(10)),
            probe_timeout: Duration::from_millis(config.redis_probe_timeout_ms.max(10)),
            reconnect_max: Duration::from_millis(config.redis_reconnect_max_ms.max(50)),
            command_timeout: Duration::from_millis(config.redis_command_timeout_ms.max(10)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RedisBusConfig {
        let mut c = Config::for_tests();
        c.redis_url = Some(url.into());
        c.node_id = Some("n1".into());
        RedisBusConfig::from_config(&c).expect("url set")
    }

    #[test]
    fn debug_output_hides_credentials() {
        let shown = format!(
            "{:?}",
            settings("rediss://user:s3cret@redis.example:6380/0")
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("user"),
            "{shown}"
        );
        assert!(
            shown.contains("rediss://***@redis.example:6380/0"),
            "{shown}"
        );
    }

    #[test]
    fn cluster_seeds_come_from_the_flag_or_the_variable() {
        use clap::Parser;
        let c = Config::try_parse_from([
            "n",
            "--redis-cluster",
            "redis://a:1",
            "--redis-cluster",
            "redis://b:2,redis://c:3",
        ])
        .expect("valid");
        assert_eq!(
            c.redis_target(),
            Some(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into(),
                "redis://c:3".into()
            ]))
        );
        let both = Config::try_parse_from([
            "n",
            "--redis-cluster",
            "redis://a:1",
            "--redis-url",
            "redis://b:2",
        ]);
        assert!(
            both.is_err(),
            "--redis-url and --redis-cluster exclude each other"
        );
        let advertised =
            Config::try_parse_from(["n", "--redis-cluster", "redis://a:1", "--advertise", "h:1"]);
        assert!(advertised.is_ok(), "--advertise works with a cluster");
    }
}
