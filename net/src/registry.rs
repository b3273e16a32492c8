//! The node registry's layout in Redis, shared by the nodes that write it and the gateways that
//! read it: key names, the Lua scripts, and the value a node registers.
//!
//! The index is two keys in one hash slot (hash tag `{PREFIX:nodes}`, so it works on Redis
//! Cluster): a sorted set of node ids scored by their lease's expiry in milliseconds
//! ([`index_key`]) and a hash from node id to `HOST:PORT` (`HOST:PORT*WEIGHT` with a `--weight`
//! other than 1, as a gateway's `--node` is written; [`addrs_key`]). Gateways read both in one
//! script ([`READ_SCRIPT`]) and never scan the keyspace, so a shared Redis full of other keys
//! cannot hide a node. Expiry is computed on the Redis clock (`TIME` inside the scripts), so
//! node and gateway clocks never need to agree; every heartbeat also prunes a few lapsed leases.
//!
//! For gateways that predate the index, a node also keeps the old key [`legacy_key`] (same
//! value, server-side TTL) alive; gateways of this version ignore it.

/// The sorted set of registered node ids, scored by lease expiry (Redis time, milliseconds).
pub fn index_key(prefix: &str) -> String {
    format!("{{{prefix}:nodes}}")
}

/// The hash from registered node id to its registry value (see [`registry_value`]); in the
/// same hash slot as [`index_key`].
pub fn addrs_key(prefix: &str) -> String {
    format!("{{{prefix}:nodes}}:addrs")
}

/// The key a node of an earlier version registered under, still written for older gateways.
pub fn legacy_key(prefix: &str, node_id: &str) -> String {
    format!("{prefix}:node:{node_id}")
}

/// `EVAL script 2 index addrs`, ready for its `ARGV`. The scripts are a few hundred bytes, so
/// sending them whole each time costs little and survives a Redis restart (no `NOSCRIPT`).
pub fn eval(script: &str, index: &str, addrs: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(2).arg(index).arg(addrs);
    cmd
}

/// Most lapsed leases one heartbeat prunes (bounds the script's work).
pub const PRUNE_BATCH: usize = 64;

/// Renews a lease: `KEYS` = [index, addrs], `ARGV` = [id, value, ttl ms, prune batch]. Prunes
/// up to a batch of lapsed leases first, then writes this node's entry. (Redis before 5 must be
/// told to replicate the writes rather than the script, which reads the clock.)
pub const REGISTER_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now), 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[1])
return #lapsed
";

/// Gives a lease up: `KEYS` = [index, addrs], `ARGV` = [id].
pub const DEREGISTER_SCRIPT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// Reads every live lease in one command: `KEYS` = [index, addrs], `ARGV` = [most entries];
/// returns `[id1, value1, id2, value2, …]` for leases that expire after now (Redis time).
pub const READ_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
if #ids == 0 then return out end
local values = redis.call('HMGET', KEYS[2], unpack(ids))
for i, id in ipairs(ids) do
  if values[i] then
    out[#out + 1] = id
    out[#out + 1] = values[i]
  end
end
return out
";

/// What a node registers: `HOST:PORT`, with `*WEIGHT` when its weight is not 1 (so gateways
/// that predate weights still read a node of weight 1).
pub fn registry_value(advertise: &str, weight: usize) -> String {
    if weight == 1 {
        advertise.to_owned()
    } else {
        format!("{advertise}*{weight}")
    }
}

/// Checks an `--advertise` value: `HOST:PORT` with a non-empty host and a valid port.
pub fn parse_advertise(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!("{s:?}: expected HOST:PORT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_is_a_host_port() {
        assert!(parse_advertise("10.0.0.7:9001").is_ok());
        assert!(parse_advertise("node-a.internal:9001").is_ok());
        assert!(parse_advertise("node-a").is_err());
        assert!(parse_advertise(":9001").is_err());
        assert!(parse_advertise("h:0").is_err());
        assert!(parse_advertise("a b:1").is_err());
    }

    #[test]
    fn keys_share_one_hash_slot() {
        assert_eq!(legacy_key("ringcast", "x"), "ringcast:node:x");
        assert_eq!(index_key("ringcast"), "{ringcast:nodes}");
        assert_eq!(addrs_key("ringcast"), "{ringcast:nodes}:addrs");
    }

    #[test]
    fn weight_one_is_written_bare() {
        assert_eq!(registry_value("h:1", 1), "h:1");
        assert_eq!(registry_value("h:1", 3), "h:1*3");
    }
}
