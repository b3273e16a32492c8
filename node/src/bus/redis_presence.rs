//! Presence in Redis: the key layout, the scripts, and [`Presence`] for the Redis bus.
//!
//! A room `R` under prefix `P` has a hash `{P:room:R}:pr` (client id → connections in all) and,
//! per node instance `I` with members there, `{P:room:R}:pn:I` (client id → connections on
//! `I`) and `{P:room:R}:px` (connections beyond each client id's first, so the room's
//! connections are `HLEN` of the totals plus it): all in the room's slot, so each script
//! touches one slot. An instance has
//! `{P:node:I}:lease` (refreshed by its heartbeat), `{P:node:I}:swept` (the sweep claim, then
//! `done`) and `{P:node:I}:rooms` (rooms it may have entries in), in the instance's slot; the
//! index `P:presence:leases` (instance → lease expiry, ms) is what survivors poll. Keyspace
//! notifications would be lazy and per shard; a sorted set by expiry is one range read.

use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

use super::presence::{Change, Entry, Presence, PresenceList, Renewal};
use super::redis::RedisBus;
use super::redis_batch::Batch;
use super::redis_presence_keys::{eval, extra_key, index_key, node_key, room_keys, total_key};
use super::{Bus, BusError, PresenceChange, Publish, Published};

/// How long a finished sweep is remembered: a node frozen for less than this finds out, when
/// it wakes, that its clients were removed.
const SWEPT_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How long a claim protects a sweep in progress; a sweeper that dies or fails leaves it to
/// another node (or itself) after this.
const CLAIM: Duration = Duration::from_secs(30);

/// `KEYS` = [pr, px]; `ARGV` = [max]. Returns `{clients, connections, id...}`: the counts are
/// one read each and the ids a bounded scan, so an answer costs what it lists, not the room's
/// size.
const LIST: &str = r#"
local clients = redis.call('HLEN', KEYS[1])
local out = {clients, clients + (tonumber(redis.call('GET', KEYS[2])) or 0)}
local max = tonumber(ARGV[1])
local cursor = '0'
while #out - 2 < max do
  local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', math.min(max - (#out - 2), 1000))
  cursor = page[1]
  local kv = page[2]
  for i = 1, #kv, 2 do
    if #out - 2 < max then out[#out + 1] = kv[i] end
  end
  if cursor == '0' then break end
end
return out
"#;

/// `KEYS` = [pr, pn, px]; `ARGV` = [client, connections]: sets the instance's count, and the
/// totals by the difference. Returns 1 when that left the client with no connection anywhere, 2 when
/// it gave a client that had none its first, else 0.
const RESYNC: &str = r#"
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
local new = tonumber(ARGV[2])
if new > 0 then redis.call('HSET', KEYS[2], ARGV[1], new) else redis.call('HDEL', KEYS[2], ARGV[1]) end
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0
local t = redis.call('HINCRBY', KEYS[1], ARGV[1], new - old)
local x = math.max(t - 1, 0) - math.max(before - 1, 0)
if x ~= 0 and redis.call('INCRBY', KEYS[3], x) <= 0 then redis.call('DEL', KEYS[3]) end
if t <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if before > 0 then return 1 end
elseif before <= 0 then
  return 2
end
return 0
"#;

/// `KEYS` = [pr, pn, px] of one room; `ARGV` = [client, connections] per entry: as [`RESYNC`]
/// for each, without the reads that only tell what to announce. Returns nothing.
const WRITE_QUIET: &str = r#"
local pr, pn, px = KEYS[1], KEYS[2], KEYS[3]
local extra = 0
for i = 0, #ARGV / 2 - 1 do
  local client, new = ARGV[2 * i + 1], tonumber(ARGV[2 * i + 2])
  local old = tonumber(redis.call('HGET', pn, client)) or 0
  if new ~= old then
    if new > 0 then redis.call('HSET', pn, client, new) else redis.call('HDEL', pn, client) end
    local t = redis.call('HINCRBY', pr, client, new - old)
    extra = extra + math.max(t - 1, 0) - math.max(t - (new - old) - 1, 0)
    if t <= 0 then redis.call('HDEL', pr, client) end
  end
end
if extra ~= 0 and redis.call('INCRBY', px, extra) <= 0 then redis.call('DEL', px) end
return 0
"#;

/// Most entries one [`WRITE_QUIET`] call writes: Redis serves no one else while a script runs.
const WRITE_QUIET_RUN: usize = 256;

/// Milliseconds on Redis's clock, in a script (every node's lease is timed by the same clock).
const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// `KEYS` = [index]; `ARGV` = [instance, ttl ms]: the instance's lease expiry in the index.
fn index_script() -> String {
    format!("{NOW} return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])")
}

/// `KEYS` = [index]; `ARGV` = [limit]: instances whose lease expiry has passed.
fn expired_script() -> String {
    format!("{NOW} return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])")
}

/// `KEYS` = [lease, swept]; `ARGV` = [ttl ms, the node's connections (the lease's value, for
/// the API's `info`)]. Returns 0 swept (or being swept), 1 held, 2
/// taken anew.
const RENEW: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
if had == 1 then return 1 end
return 2
"#;

/// `KEYS` = [lease, swept]; `ARGV` = [sweeper, claim ms, memory ms]. Returns 1 claimed, 2
/// swept already, 0 live again or claimed by another within `claim ms`. A claim stays (for
/// `memory ms`, like a finished sweep), so the instance can never renew its lease behind a
/// sweep that failed half-way; another sweeper takes over a claim older than `claim ms`.
fn claim_script() -> String {
    format!(
        "{NOW}
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local v = redis.call('GET', KEYS[2])
if v == 'done' then return 2 end
if v then
  local at = tonumber(string.match(v, '^(%d+):'))
  if at and now - at < tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[2], now .. ':' .. ARGV[1], 'PX', ARGV[3])
return 1"
    )
}

/// `KEYS` = [pr, pn, px]. Removes the instance's connections from the room; returns the client ids
/// left with none.
const SWEEP: &str = r#"
local e = redis.call('HGETALL', KEYS[2])
local gone = {}
for i = 1, #e, 2 do
  local n = tonumber(e[i + 1])
  local t = redis.call('HINCRBY', KEYS[1], e[i], -n)
  local x = math.max(t - 1, 0) - math.max(t + n - 1, 0)
  if x ~= 0 and redis.call('INCRBY', KEYS[3], x) <= 0 then redis.call('DEL', KEYS[3]) end
  if t <= 0 then
    redis.call('HDEL', KEYS[1], e[i])
    gone[#gone + 1] = e[i]
  end
end
redis.call('DEL', KEYS[2])
return gone
"#;

/// Lists `room` under `instance` in `pipe` (first: a sweep always finds what the instance may
/// hold there) and returns `script` on the room's totals and the instance's counts, for the
/// caller's arguments.
fn listed_write(
    batch: &mut Batch,
    prefix: &str,
    instance: &str,
    room: &str,
    script: &str,
) -> redis::Cmd {
    let mut sadd = redis::cmd("SADD");
    sadd.arg(node_key(prefix, instance, "rooms")).arg(room);
    batch.add(sadd).ignore();
    eval(script, &room_keys(prefix, room, instance).each())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
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
    /// One presence change, announcing nothing, as a pipeline of its own (the node's sessions
    /// queue theirs with their publishes instead: `publisher.rs`).
    async fn change_alone(
        &self,
        add: bool,
        room: &str,
        client: &str,
        instance: &str,
    ) -> Result<bool, BusError> {
        let change = PresenceChange {
            add,
            room: room.to_owned(),
            client: client.into(),
            instance: instance.into(),
            announce: None,
        };
        match self.publish_all(&[Publish::Presence(change)]).await.pop() {
            Some(Ok(Published::Presence(changed))) => Ok(changed),
            Some(Err(e)) => Err(e),
            _ => Err(bad("presence change")),
        }
    }

    /// The instances whose lease has not run out (at most 10 000).
    async fn live(&self) -> Result<Vec<String>, BusError> {
        let index = index_key(self.prefix());
        let live = format!(
            "{NOW} return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'LIMIT', 0, 10000)"
        );
        texts(&self.query(&eval(&live, &[&index])).await?)
    }

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
            let keys = room_keys(prefix, &room, dead);
            let gone = texts(&self.query(&eval(SWEEP, &keys.each())).await?)?;
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
        self.change_alone(true, room, client, instance).await
    }

    async fn remove(&self, room: &str, client: &str, instance: &str) -> Result<bool, BusError> {
        self.change_alone(false, room, client, instance).await
    }

    async fn absent(&self, room: &str, ids: &[String]) -> Result<Vec<String>, BusError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(total_key(self.prefix(), room)).arg(ids);
        match self.query(&hmget).await? {
            Value::Array(counts) if counts.len() == ids.len() => Ok(ids
                .iter()
                .zip(counts)
                .filter(|(_, n)| matches!(n, Value::Nil))
                .map(|(id, _)| id.clone())
                .collect()),
            other => Err(bad(&format!("HMGET: {other:?}"))),
        }
    }

    async fn nodes(&self) -> Result<Vec<(String, u64)>, BusError> {
        let instances = self.live().await?;
        let mut nodes = Vec::with_capacity(instances.len());
        for instance in instances {
            let mut get = redis::cmd("GET");
            get.arg(node_key(self.prefix(), &instance, "lease"));
            if let Some(n) = int(&self.query(&get).await?) {
                nodes.push((instance, n.max(0) as u64));
            }
        }
        Ok(nodes)
    }

    async fn rooms(&self, max: usize) -> Result<(Vec<(String, u64)>, bool), BusError> {
        // The live instances (timed by Redis's clock), then the rooms each lists, then each
        // room's count: bounded by `max` rooms, never a scan of the keyspace.
        let instances = self.live().await?;
        let mut names = std::collections::BTreeSet::new();
        for instance in &instances {
            let mut smembers = redis::cmd("SMEMBERS");
            smembers.arg(node_key(self.prefix(), instance, "rooms"));
            names.extend(texts(&self.query(&smembers).await?)?);
        }
        let mut rooms = Vec::new();
        let mut more = false;
        for room in names {
            let mut hlen = redis::cmd("HLEN");
            hlen.arg(total_key(self.prefix(), &room));
            let n = int(&self.query(&hlen).await?).unwrap_or(0).max(0) as u64;
            if n == 0 {
                continue;
            }
            if rooms.len() == max {
                more = true;
                break;
            }
            rooms.push((room, n));
        }
        Ok((rooms, more))
    }

    async fn list(&self, room: &str, max: usize) -> Result<PresenceList, BusError> {
        let (pr, pc) = (
            total_key(self.prefix(), room),
            extra_key(self.prefix(), room),
        );
        let v = self.query(eval(LIST, &[&pr, &pc]).arg(max)).await?;
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

    async fn renew(
        &self,
        instance: &str,
        ttl: Duration,
        connections: usize,
    ) -> Result<Renewal, BusError> {
        let prefix = self.prefix();
        let (lease, swept) = (
            node_key(prefix, instance, "lease"),
            node_key(prefix, instance, "swept"),
        );
        let mut batch = Batch::new();
        batch.add(
            eval(RENEW, &[&lease, &swept])
                .arg(ms(ttl))
                .arg(connections)
                .to_owned(),
        );
        let index = index_key(prefix);
        batch
            .add(
                eval(&index_script(), &[&index])
                    .arg(instance)
                    .arg(ms(ttl))
                    .to_owned(),
            )
            .ignore();
        let values = self.batch(&batch).await?;
        match values.first().and_then(int) {
            Some(0) => Ok(Renewal::Swept),
            Some(1) => Ok(Renewal::Held),
            Some(2) => {
                // Redis may have lost the room lists with the lease.
                self.forget_listed(None);
                Ok(Renewal::Taken)
            }
            _ => Err(bad("renew")),
        }
    }

    async fn resync(
        &self,
        instance: &str,
        entries: &[Entry],
    ) -> Result<Vec<(usize, Change)>, BusError> {
        let prefix = self.prefix();
        let mut changed = Vec::new();
        for (c, chunk) in entries.chunks(256).enumerate() {
            let mut batch = Batch::new();
            for (room, client, n) in chunk {
                let mut resync = listed_write(&mut batch, prefix, instance, room, RESYNC);
                batch.add(resync.arg(&**client).arg(*n).to_owned());
            }
            let answers = self.batch(&batch).await?;
            for (i, v) in answers.iter().enumerate() {
                match int(v) {
                    Some(1) => changed.push((c * 256 + i, Change::Gone)),
                    Some(2) => changed.push((c * 256 + i, Change::Appeared)),
                    _ => {}
                }
            }
        }
        Ok(changed)
    }

    async fn write_quiet(&self, instance: &str, entries: &[Entry]) -> Result<(), BusError> {
        let prefix = self.prefix();
        // One script call per room (one slot) and run; each room listed under the instance
        // first, as every presence write does.
        let mut by_room: Vec<(&str, Vec<&Entry>)> = Vec::new();
        for entry in entries {
            match by_room.iter_mut().find(|(room, _)| *room == entry.0) {
                Some((_, list)) => list.push(entry),
                None => by_room.push((&entry.0, vec![entry])),
            }
        }
        let instance_id: std::sync::Arc<str> = instance.into();
        let adds = by_room
            .iter()
            .filter(|(_, list)| list.iter().any(|(_, _, n)| *n > 0))
            .map(|(room, _)| (&instance_id, *room));
        let mut listing = self.listing(adds);
        // (The listing's replies come back with the scripts'; any error fails the batch.)
        let mut batch = std::mem::take(&mut listing.batch);
        for (room, list) in &by_room {
            for run in list.chunks(WRITE_QUIET_RUN) {
                let keys = room_keys(prefix, room, instance);
                let mut cmd = eval(WRITE_QUIET, &keys.each());
                for (_, client, n) in run.iter() {
                    cmd.arg(&**client).arg(*n);
                }
                batch.add(cmd);
            }
        }
        self.batch(&batch).await?;
        self.listed_ok(listing);
        Ok(())
    }

    async fn expired(&self, limit: usize) -> Result<Vec<String>, BusError> {
        let index = index_key(self.prefix());
        texts(
            &self
                .query(eval(&expired_script(), &[&index]).arg(limit))
                .await?,
        )
    }

    async fn sweep(
        &self,
        dead: &str,
        by: &str,
    ) -> Result<Option<Vec<(String, Vec<String>)>>, BusError> {
        let prefix = self.prefix();
        let (lease, swept) = (
            node_key(prefix, dead, "lease"),
            node_key(prefix, dead, "swept"),
        );
        let claim = eval(&claim_script(), &[&lease, &swept])
            .arg(by)
            .arg(ms(CLAIM))
            .arg(ms(SWEPT_MEMORY))
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
        // A failure here leaves the claim: another poll takes it over once it is old.
        self.purge(dead, true).await.map(Some)
    }

    async fn listed_rooms(
        &self,
        instance: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<String>), BusError> {
        let mut sscan = redis::cmd("SSCAN");
        sscan
            .arg(node_key(self.prefix(), instance, "rooms"))
            .arg(cursor)
            .arg("COUNT")
            .arg(100);
        let Value::Array(parts) = self.query(&sscan).await? else {
            return Err(bad("sscan"));
        };
        let [next, rooms] = parts.as_slice() else {
            return Err(bad("sscan length"));
        };
        let next = text(next)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("cursor"))?;
        Ok((next, texts(rooms)?))
    }

    fn relist(&self) {
        self.forget_listed(None);
    }

    async fn unlist_rooms(&self, instance: &str, rooms: &[String]) -> Result<(), BusError> {
        if rooms.is_empty() {
            return Ok(());
        }
        // Forgotten first: an add from now on lists its room again.
        self.forget_listed(Some(rooms));
        let mut srem = redis::cmd("SREM");
        srem.arg(node_key(self.prefix(), instance, "rooms"))
            .arg(rooms);
        self.query(&srem).await.map(|_| ())
    }

    async fn purge(
        &self,
        instance: &str,
        finished: bool,
    ) -> Result<Vec<(String, Vec<String>)>, BusError> {
        let prefix = self.prefix();
        let rooms_key = node_key(prefix, instance, "rooms");
        let gone = self.sweep_rooms(instance, &rooms_key).await?;
        if finished {
            // The instance's list goes (whichever instance it is: forgetting is safe).
            self.forget_listed(None);
            let mut batch = Batch::new();
            let mut set = redis::cmd("SET");
            set.arg(node_key(prefix, instance, "swept"))
                .arg("done")
                .arg("PX")
                .arg(ms(SWEPT_MEMORY));
            batch.add(set).ignore();
            batch
                .add(redis::cmd("DEL").arg(&rooms_key).to_owned())
                .ignore();
            batch
                .add(
                    redis::cmd("DEL")
                        .arg(node_key(prefix, instance, "lease"))
                        .to_owned(),
                )
                .ignore();
            batch
                .add(
                    redis::cmd("ZREM")
                        .arg(index_key(prefix))
                        .arg(instance)
                        .to_owned(),
                )
                .ignore();
            self.batch(&batch).await?;
        }
        Ok(gone)
    }
}
