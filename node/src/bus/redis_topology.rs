//! Which primary owns which hash slots: `CLUSTER SHARDS` read into a slot map (pure), and the
//! URL of a shard's primary made from a seed's (same scheme and credentials).

use redis::Value;

/// Slot ranges and the address (`host:port`) of the primary serving each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Topology {
    /// `(first, last, address)`, inclusive.
    ranges: Vec<(u16, u16, String)>,
}

impl Topology {
    /// The address of the primary that owns `slot`.
    pub(super) fn owner(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, addr)| addr.as_str())
    }

    /// The primaries that own slots, each once, in slot order.
    pub(super) fn primaries(&self) -> Vec<&str> {
        let mut sorted: Vec<&(u16, u16, String)> = self.ranges.iter().collect();
        sorted.sort();
        let mut out: Vec<&str> = Vec::new();
        for (_, _, addr) in sorted {
            if !out.contains(&addr.as_str()) {
                out.push(addr);
            }
        }
        out
    }

    /// Reads a `CLUSTER SHARDS` answer (RESP3 maps or RESP2 flat arrays): for each shard its
    /// slot ranges and its primary that is online. A shard without one (mid-failover) owns
    /// nothing here, so its channels wait for the next read.
    pub(super) fn parse(v: &Value) -> Result<Topology, String> {
        let Value::Array(shards) = v else {
            return Err(format!("CLUSTER SHARDS: not an array: {v:?}"));
        };
        let mut ranges = Vec::new();
        for shard in shards {
            let fields = pairs(shard).ok_or("CLUSTER SHARDS: a shard is not a map")?;
            let slots = field(&fields, "slots").ok_or("CLUSTER SHARDS: no slots")?;
            let nodes = field(&fields, "nodes").ok_or("CLUSTER SHARDS: no nodes")?;
            let Value::Array(nodes) = nodes else {
                return Err("CLUSTER SHARDS: nodes is not an array".into());
            };
            let primary = nodes.iter().filter_map(pairs).find(|n| {
                field(n, "role").and_then(text).as_deref() == Some("master")
                    && field(n, "health").and_then(text).as_deref() == Some("online")
            });
            let Some(primary) = primary else { continue };
            let host = field(&primary, "ip")
                .and_then(text)
                .filter(|h| !h.is_empty() && h != "?")
                .or_else(|| field(&primary, "endpoint").and_then(text))
                .ok_or("CLUSTER SHARDS: a primary without an address")?;
            let port = field(&primary, "port")
                .and_then(int)
                .or_else(|| field(&primary, "tls-port").and_then(int))
                .ok_or("CLUSTER SHARDS: a primary without a port")?;
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let Value::Array(bounds) = slots else {
                return Err("CLUSTER SHARDS: slots is not an array".into());
            };
            for pair in bounds.chunks_exact(2) {
                let (Some(a), Some(b)) = (int(&pair[0]), int(&pair[1])) else {
                    return Err("CLUSTER SHARDS: a slot bound is not a number".into());
                };
                let (Ok(a), Ok(b)) = (u16::try_from(a), u16::try_from(b)) else {
                    return Err("CLUSTER SHARDS: a slot bound out of range".into());
                };
                ranges.push((a, b, addr.clone()));
            }
        }
        Ok(Topology { ranges })
    }
}

/// `seed` (`redis[s]://[user:pass@]host:port[/db]`) with its host and port replaced by `addr`.
pub(super) fn shard_url(seed: &str, addr: &str) -> String {
    let (scheme, rest) = seed.split_once("://").unwrap_or(("redis", seed));
    let (creds, hostpart) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let tail = hostpart.find(['/', '?']).map_or("", |i| &hostpart[i..]);
    format!("{scheme}://{creds}{addr}{tail}")
}

fn pairs(v: &Value) -> Option<Vec<(String, Value)>> {
    match v {
        Value::Map(m) => Some(
            m.iter()
                .filter_map(|(k, v)| Some((text(k)?, v.clone())))
                .collect(),
        ),
        Value::Array(flat) => Some(
            flat.chunks_exact(2)
                .filter_map(|kv| Some((text(&kv[0])?, kv[1].clone())))
                .collect(),
        ),
        _ => None,
    }
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    fn node(port: i64, role: &str, health: &str) -> Value {
        Value::Map(vec![
            (s("id"), s("abc")),
            (s("port"), Value::Int(port)),
            (s("ip"), s("127.0.0.1")),
            (s("endpoint"), s("127.0.0.1")),
            (s("role"), s(role)),
            (s("health"), s(health)),
        ])
    }

    #[test]
    fn each_slot_belongs_to_its_shards_online_primary() {
        let shards = Value::Array(vec![
            Value::Map(vec![
                (
                    s("slots"),
                    Value::Array(vec![
                        Value::Int(0),
                        Value::Int(5460),
                        Value::Int(10923),
                        Value::Int(10930),
                    ]),
                ),
                (
                    s("nodes"),
                    Value::Array(vec![
                        node(7001, "replica", "online"),
                        node(7000, "master", "online"),
                    ]),
                ),
            ]),
            // RESP2 shape: flat key/value arrays; the failed old primary is skipped.
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(5461), Value::Int(10922)]),
                s("nodes"),
                Value::Array(vec![
                    Value::Array(vec![
                        s("port"),
                        Value::Int(7002),
                        s("ip"),
                        s("127.0.0.1"),
                        s("role"),
                        s("master"),
                        s("health"),
                        s("fail"),
                    ]),
                    Value::Array(vec![
                        s("port"),
                        Value::Int(7003),
                        s("ip"),
                        s("127.0.0.1"),
                        s("role"),
                        s("master"),
                        s("health"),
                        s("online"),
                    ]),
                ]),
            ]),
            // No online primary: owns nothing for now.
            Value::Map(vec![
                (
                    s("slots"),
                    Value::Array(vec![Value::Int(10931), Value::Int(16383)]),
                ),
                (s("nodes"), Value::Array(vec![node(7004, "master", "fail")])),
            ]),
        ]);
        let t = Topology::parse(&shards).expect("parses");
        assert_eq!(t.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(t.owner(10925), Some("127.0.0.1:7000"));
        assert_eq!(t.owner(5461), Some("127.0.0.1:7003"));
        assert_eq!(t.owner(12000), None);
        assert_eq!(t.primaries(), ["127.0.0.1:7000", "127.0.0.1:7003"]);
        assert!(Topology::parse(&Value::Int(1)).is_err());
        assert!(Topology::parse(&Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn a_shard_url_keeps_the_seeds_scheme_credentials_and_database() {
        assert_eq!(shard_url("redis://a:1", "b:2"), "redis://b:2");
        assert_eq!(
            shard_url("rediss://u:p@a:1/0", "10.0.0.2:7000"),
            "rediss://u:p@10.0.0.2:7000/0"
        );
        assert_eq!(
            shard_url("redis://:p@a:1?x=1", "[::1]:7"),
            "redis://:p@[::1]:7?x=1"
        );
    }
}
