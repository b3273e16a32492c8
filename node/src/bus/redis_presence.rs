//! Presence in Redis: the key layout, the scripts, and [`Presence`] for the Redis bus.
//!
//! A room `R` under prefix `P` has a hash `{P:room:R}:pr` (client id → connections in all) and,
//! per node instance `I` with members there, `{P:room:R}:pn:I` (client id → connections on
//! `I`): both in the room's slot, so each script touches one slot. An instance has
//! `{P:node:I}:lease` (refreshed by its heartbeat), `{P:node:I}:swept` (the sweep claim, then
//! `done`) and `{P:node:I}:rooms` (rooms it may have entries in), in the instance's slot; the
//! index `P:presence:leases` (instance → lease expiry, ms) is what survivors poll. Keyspace
//! notifications would be lazy and per shard; a sorted set by expiry is one range read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::Value;

use super::presence::{Entry, Presence, PresenceList, Renewal};
use super::redis::RedisBus;
use super::redis_history::room_channel;
use super::BusError;

/// How long a finished sweep is remembered: a node frozen for less than this finds out, when
/// it wakes, that its clients were removed.
const SWEPT_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How long a claim protects a sweep in progress; a sweeper that dies leaves it to another
/// node after this.
const CLAIM: Duration = Duration::from_secs(30);

/// `KEYS` = [pr, pn]; `ARGV` = [client]. Returns the client's connections in all.
const ADD: &str = r#"
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"#;

/// `KEYS` = [pr, pn]; `ARGV` = [client]. Returns what is left in all, or -1 when the instance
/// had no such connection (swept meanwhile).
const REMOVE: &str = r#"
local c = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if c <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
if c < 0 then return -1 end
local t = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if t <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) return 0 end
return t
"#;

/// `KEYS` = [pr]; `ARGV` = [max]. Returns `{clients, connections, id...}`.
const LIST: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {#all / 2, 0}
local max = tonumber(ARGV[1])
for i = 1, #all, 2 do
  out[2] = out[2] + tonumber(all[i + 1])
  if (i + 1) / 2 <= max then out[#out + 1] = all[i] end
end
return out
"#;

/// `KEYS` = [pr, pn]; `ARGV` = [client, connections]: sets the instance's count, and the total
/// by the difference. Returns 1 when that left the client with no connection anywhere.
const RESYNC: &str = r#"
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
local new = tonumber(ARGV[2])
if new > 0 then redis.call('HSET', KEYS[2], ARGV[1], new) else redis.call('HDEL', KEYS[2], ARGV[1]) end
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0
local t = redis.call('HINCRBY', KEYS[1], ARGV[1], new - old)
if t <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if before > 0 then return 1 end
end
return 0
"#;

/// `KEYS` = [lease, swept]; `ARGV` = [ttl ms]. Returns 0 swept, 1 held, 2 taken anew.
const RENEW: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
if had == 1 then return 1 end
return 2
"#;

/// `KEYS` = [lease, swept]; `ARGV` = [sweeper, claim ms]. Returns 1 claimed, 2 swept already,
/// 0 live again or claimed by another.
const CLAIM_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[2]) == 'done' then return 2 end
return 0
"#;

/// `KEYS` = [swept]; `ARGV` = [sweeper]: gives up a claim that is still the sweeper's.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// `KEYS` = [pr, pn]. Removes the instance's connections from the room; returns the client ids
/// left with none.
const SWEEP: &str = r#"
local e = redis.call('HGETALL', KEYS[2])
local gone = {}
for i = 1, #e, 2 do
  local t = redis.call('HINCRBY', KEYS[1], e[i], -tonumber(e[i + 1]))
  if t <= 0 then
    redis.call('HDEL', KEYS[1], e[i])
    gone[#gone + 1] = e[i]
  end
end
redis.call('DEL', KEYS[2])
return gone
"#;

fn total_key(prefix: &str, room: &str) -> String {
    format!("{}:pr", room_channel(prefix, room))
}

fn instance_key(prefix: &str, room: &str, instance: &str) -> String {
    format!("{}:pn:{instance}", room_channel(prefix, room))
}

fn node_key(prefix: &str, instance: &str, what: &str) -> String {
    format!("{{{prefix}:node:{instance}}}:{what}")
}

fn index_key(prefix: &str) -> String {
    format!("{prefix}:presence:leases")
}

fn eval(script: &str, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn bad(what: &str) -> BusError {
    BusError::Unavailable(format!("unexpected answer from a presence script: {what}"))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn texts(v: &Value) -> Result<Vec<String>, BusError> {
    match v {
        // RESP3 answers SMEMBERS with a set.
        Value::Array(items) | Value::Set(items) => items
            .iter()
            .map(|i| text(i).ok_or_else(|| bad("id")))
            .collect(),
        other => Err(bad(&format!("not an array: {other:?}"))),
    }
}

impl RedisBus {
    /// Removes instance `dead`'s connections from every room it listed; returns, per room, the
    /// client ids left with none.
    async fn sweep_rooms(
        &self,
        dead: &str,
        rooms_key: &str,
    ) -> Result<Vec<(String, Vec<String>)>, BusError> {
        let prefix = self.prefix();
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(rooms_key);
        let rooms = texts(&self.query(&smembers).await?)?;
        let mut gone_by_room = Vec::with_capacity(rooms.len());
        for room in rooms {
            let (pr, pn) = (total_key(prefix, &room), instance_key(prefix, &room, dead));
            let gone = texts(&self.query(&eval(SWEEP, &[&pr, &pn])).await?)?;
            if !gone.is_empty() {
                gone_by_room.push((room, gone));
            }
        }
        Ok(gone_by_room)
    }
}

#[async_trait]
impl Presence for RedisBus {
    async fn add(&self, room: &str, client: &str, instance: &str) -> Result<bool, BusError> {
        let prefix = self.prefix();
        let mut pipe = redis::pipe();
        // The room is listed under the instance first: a sweep always finds what it may hold.
        pipe.cmd("SADD")
            .arg(node_key(prefix, instance, "rooms"))
            .arg(room)
            .ignore();
        let (pr, pn) = (
            total_key(prefix, room),
            instance_key(prefix, room, instance),
        );
        pipe.add_command(eval(ADD, &[&pr, &pn]).arg(client).to_owned());
        let values = self.pipeline(&pipe).await?;
        let total = values.first().and_then(int).ok_or_else(|| bad("add"))?;
        Ok(total == 1)
    }

    async fn remove(&self, room: &str, client: &str, instance: &str) -> Result<bool, BusError> {
        let prefix = self.prefix();
        let (pr, pn) = (
            total_key(prefix, room),
            instance_key(prefix, room, instance),
        );
        let left = self.query(eval(REMOVE, &[&pr, &pn]).arg(client)).await?;
        Ok(int(&left).ok_or_else(|| bad("remove"))? == 0)
    }

    async fn list(&self, room: &str, max: usize) -> Result<PresenceList, BusError> {
        let pr = total_key(self.prefix(), room);
        let v = self.query(eval(LIST, &[&pr]).arg(max)).await?;
        let Value::Array(items) = v else {
            return Err(bad("list"));
        };
        let [clients, connections, ids @ ..] = items.as_slice() else {
            return Err(bad("list length"));
        };
        Ok(PresenceList {
            members: ids.iter().filter_map(text).collect(),
            clients: int(clients).ok_or_else(|| bad("clients"))?.max(0) as u64,
            connections: int(connections).ok_or_else(|| bad("connections"))?.max(0) as u64,
        })
    }

    fn has_leases(&self) -> bool {
        true
    }

    async fn renew(&self, instance: &str, ttl: Duration) -> Result<Renewal, BusError> {
        let prefix = self.prefix();
        let (lease, swept) = (
            node_key(prefix, instance, "lease"),
            node_key(prefix, instance, "swept"),
        );
        let mut pipe = redis::pipe();
        pipe.add_command(eval(RENEW, &[&lease, &swept]).arg(ms(ttl)).to_owned());
        pipe.cmd("ZADD")
            .arg(index_key(prefix))
            .arg(now_ms() + ms(ttl))
            .arg(instance)
            .ignore();
        let values = self.pipeline(&pipe).await?;
        match values.first().and_then(int) {
            Some(0) => Ok(Renewal::Swept),
            Some(1) => Ok(Renewal::Held),
            Some(2) => Ok(Renewal::Taken),
            _ => Err(bad("renew")),
        }
    }

    async fn resync(&self, instance: &str, entries: &[Entry]) -> Result<Vec<usize>, BusError> {
        let prefix = self.prefix();
        let mut gone = Vec::new();
        for (c, chunk) in entries.chunks(256).enumerate() {
            let mut pipe = redis::pipe();
            for (room, client, n) in chunk {
                pipe.cmd("SADD")
                    .arg(node_key(prefix, instance, "rooms"))
                    .arg(room)
                    .ignore();
                let (pr, pn) = (
                    total_key(prefix, room),
                    instance_key(prefix, room, instance),
                );
                pipe.add_command(eval(RESYNC, &[&pr, &pn]).arg(&**client).arg(*n).to_owned());
            }
            let answers = self.pipeline(&pipe).await?;
            let left = answers
                .iter()
                .enumerate()
                .filter(|(_, v)| int(v) == Some(1));
            gone.extend(left.map(|(i, _)| c * 256 + i));
        }
        Ok(gone)
    }

    async fn expired(&self, limit: usize) -> Result<Vec<String>, BusError> {
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(index_key(self.prefix()))
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        texts(&self.query(&cmd).await?)
    }

    async fn sweep(
        &self,
        dead: &str,
        by: &str,
    ) -> Result<Option<Vec<(String, Vec<String>)>>, BusError> {
        let prefix = self.prefix();
        let (lease, swept, rooms_key) = (
            node_key(prefix, dead, "lease"),
            node_key(prefix, dead, "swept"),
            node_key(prefix, dead, "rooms"),
        );
        let claim = eval(CLAIM_SCRIPT, &[&lease, &swept])
            .arg(by)
            .arg(ms(CLAIM))
            .to_owned();
        match int(&self.query(&claim).await?) {
            Some(1) => {}
            Some(2) => {
                // Swept before; only its index entry was left.
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(index_key(prefix)).arg(dead);
                self.query(&zrem).await?;
                return Ok(None);
            }
            _ => return Ok(None),
        }
        let gone_by_room = match self.sweep_rooms(dead, &rooms_key).await {
            Ok(gone) => gone,
            Err(e) => {
                // Give the claim up at once, so the next poll (here or elsewhere) retries
                // rather than wait out the claim. Sweeping a room twice is harmless.
                let release = eval(RELEASE, &[&swept]).arg(by).to_owned();
                let _ = self.query(&release).await;
                return Err(e);
            }
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&swept)
            .arg("done")
            .arg("PX")
            .arg(ms(SWEPT_MEMORY))
            .ignore();
        pipe.cmd("DEL").arg(&rooms_key).ignore();
        pipe.cmd("ZREM").arg(index_key(prefix)).arg(dead).ignore();
        self.pipeline(&pipe).await?;
        Ok(Some(gone_by_room))
    }
}
