//! The settings of the Redis bus, taken from a node's configuration; shared by the bus
//! (`redis.rs`) and its connections (`redis_conn.rs`).

use std::time::Duration;

use crate::config::Config;

/// Settings of the Redis bus (`RedisBus`). Its `Debug` output hides the URL's credentials.
#[derive(Clone)]
pub struct RedisBusConfig {
    /// `redis://` or `rediss://` URL, with credentials if needed.
    pub url: String,
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
    /// The Redis settings of a node configuration; `None` without `--redis-url`.
    pub fn from_config(config: &Config) -> Option<Self> {
        Some(RedisBusConfig {
            url: config.redis_url.clone()?,
            prefix: config.redis_prefix.clone(),
            node_id: config.resolved_node_id(),
            probe_interval: Duration::from_millis(config.redis_probe_interval_ms.max(10)),
            probe_timeout: Duration::from_millis(config.redis_probe_timeout_ms.max(10)),
            reconnect_max: Duration::from_millis(config.redis_reconnect_max_ms.max(50)),
            command_timeout: Duration::from_millis(config.redis_command_timeout_ms.max(10)),
        })
    }
}

impl std::fmt::Debug for RedisBusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBusConfig")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("node_id", &self.node_id)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("reconnect_max", &self.reconnect_max)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// The URL with any `user:password@` replaced by `***@`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
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
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
