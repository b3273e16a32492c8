//! Room history in Redis: the key layout and the two scripts, and reading their answers.
//!
//! A room `R` under prefix `P` has its channel `{P:room:R}`, a hash `{P:room:R}:meta` (`epoch`,
//! `top`), a stream `{P:room:R}:log` whose entry ids are `OFFSET-0` and a sorted set
//! `{P:room:R}:ids` of the dedupe keys of the messages in the log, scored by offset. The braces
//! are a hash tag: a room's keys and channel share one slot, so each message's part of the
//! publish script touches one shard and can `SPUBLISH` from within. One call stores a *run* of
//! messages, which may be of several rooms: on Redis Cluster a run must be cut where the slot
//! changes (the Cluster issue; one Redis takes any run).
//!
//! [`PUBLISH_SCRIPT`] numbers, keeps and publishes a message in one step, so offset order is
//! delivery order on every subscriber. The counter and epoch outlive the log (`meta_ttl` vs
//! `ttl`), so a quiet room whose messages expired still tells a client that missed nothing
//! `recovered:true`. When the meta hash is gone (expired, or Redis lost it) the next publish
//! or read starts a new epoch with a fresh log, so offsets are never reissued under an epoch a
//! client already holds — as long as Redis keeps what it acknowledged (README: persistence).
//!
//! On Redis Cluster ([`Mode::Cluster`]) a failover can lose what the old primary acknowledged
//! but had not replicated, so the epoch follows the shard's replication id: the meta hash also
//! keeps `rid`, the `master_replid` of the primary that last wrote it. A meta written under the
//! id the current primary took over from (its `master_replid2`: a failover since) starts a new
//! epoch; one written under an unknown id came with its keys from another shard (a slot
//! migration, which loses nothing) and is adopted. Publishes use `SPUBLISH` there.

use std::sync::Arc;

use redis::Value;
use ringcast_protocol::stored::STORED_TAG;

use super::{BusError, HistoryPage, HistoryQuery, Keep, Stored, StoredPublish};

/// The room's channel name.
pub(super) fn room_channel(prefix: &str, room: &str) -> String {
    format!("{{{prefix}:room:{room}}}")
}

fn meta_key(prefix: &str, room: &str) -> String {
    format!("{}:meta", room_channel(prefix, room))
}

fn log_key(prefix: &str, room: &str) -> String {
    format!("{}:log", room_channel(prefix, room))
}

fn ids_key(prefix: &str, room: &str) -> String {
    format!("{}:ids", room_channel(prefix, room))
}

/// Stores and publishes a run of room messages, in order. Message `i` (from 0) has `KEYS` meta,
/// log, ids at `3i+1..=3i+3` and `ARGV` [`ARGS_PER_MESSAGE`] values from `3+8i`: frame head,
/// size, ttl ms, meta ttl ms, channel, sent-at micros, room, dedupe key or `''`; `ARGV[1]` is
/// a random candidate epoch (suffixed with `i`, so no two fresh starts in one call share one),
/// `ARGV[2]` the [`Mode`] (`c` on a cluster: see the module's note on failovers).
/// Returns `{offset, epoch, subscribers, outcome}` per message, flattened; outcome 0 stored,
/// 1 a duplicate (`offset` the first one's), 2 failed (`epoch` holds Redis's error). Each
/// message runs under `pcall`: Redis does not undo a script, so one that fails (a key of the
/// wrong type) must not make the messages before it, already published, look failed too.
///
/// One call per run, not per message: a call's own cost (argument vectors, the script's entry
/// and its reply) is paid once for up to [`SCRIPT_RUN`] messages. An `XADD` refused because the
/// log holds higher ids than the counter (restored from an older snapshot) starts a new epoch
/// rather than fail or reuse offsets. The dedupe keys of a room sit in a sorted set scored by
/// offset; a record counts only while the log still holds its offset (checked on a hit only),
/// so a repeat is caught exactly while its first is kept, and the set is trimmed every 32
/// offsets (at most `size` + 32 records) and expires with the room's counter. Every new
/// epoch (here and in [`READ_SCRIPT`]) deletes the records with the log.
pub(super) const PUBLISH_SCRIPT: &str = r#"
local out = {}
local cluster = ARGV[2] == 'c'
local rid, rid2 = '', ''
if cluster then
  local info = redis.call('INFO', 'replication')
  rid = string.match(info, 'master_replid:(%w+)') or ''
  rid2 = string.match(info, 'master_replid2:(%w+)') or ''
end
local pub = cluster and 'SPUBLISH' or 'PUBLISH'
local function one(i)
  local meta, log, ids = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local a = 8 * i + 2
  local head, size, ttl, mttl = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local key = ARGV[a + 8]
  local function fresh()
    redis.call('DEL', log, ids)
    local e = ARGV[1] .. i
    redis.call('HSET', meta, 'epoch', e, 'top', 0)
    if cluster then redis.call('HSET', meta, 'rid', rid) end
    return e
  end
  local m = redis.call('HMGET', meta, 'epoch', 'rid')
  local epoch = m[1]
  if epoch and cluster and m[2] ~= rid then
    if not m[2] or m[2] == rid2 then
      epoch = false
    else
      redis.call('HSET', meta, 'rid', rid)
    end
  end
  if not epoch then epoch = fresh() end
  if key ~= '' then
    local first = redis.call('ZSCORE', ids, key)
    if first then
      -- Live only while the log still holds it (trimmed by messages without ids, or a log
      -- that expired before its records: stale).
      local id = first .. '-0'
      if #redis.call('XRANGE', log, id, id) > 0 then
        return {tonumber(first), epoch, 0, 1}
      end
    end
  end
  local top = redis.call('HINCRBY', meta, 'top', 1)
  local frame = head .. top .. ',"epoch":"' .. epoch .. '"}'
  local added = redis.pcall('XADD', log, 'MAXLEN', size, top .. '-0', 'f', frame)
  if type(added) == 'table' and added.err then
    epoch = fresh()
    top = redis.call('HINCRBY', meta, 'top', 1)
    frame = head .. top .. ',"epoch":"' .. epoch .. '"}'
    redis.call('XADD', log, 'MAXLEN', size, top .. '-0', 'f', frame)
  end
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', meta, mttl)
  if key ~= '' then
    -- A record counts only while the log holds its offset (checked on a hit), so the set may
    -- outlive the log and be trimmed now and then: it holds at most size + 32 records and
    -- expires with the room's counter. Messages without ids touch it not at all.
    redis.call('ZADD', ids, top, key)
    if top % 32 == 0 then
      redis.call('ZREMRANGEBYSCORE', ids, '-inf', top - tonumber(size))
    end
    redis.call('PEXPIRE', ids, mttl)
  end
  local n = redis.call(pub, ARGV[a + 5],
    '\2' .. top .. '\n' .. epoch .. '\n' .. ARGV[a + 6] .. '\n' .. ARGV[a + 7] .. '\n' .. frame)
  return {top, epoch, n, 0}
end
for i = 0, #KEYS / 3 - 1 do
  local ok, r = pcall(one, i)
  if not ok then
    local why = type(r) == 'table' and r.err or tostring(r)
    r = {0, why, 0, 2}
  end
  for _, v in ipairs(r) do out[#out + 1] = v end
end
return out
"#;

/// Whether the scripts run on one Redis or on a Redis Cluster (`SPUBLISH`, and the epoch follows
/// the shard's replication id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// One Redis.
    Single,
    /// A Redis Cluster.
    Cluster,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Single => "",
            Mode::Cluster => "c",
        }
    }
}

/// Values of `ARGV` per message in [`PUBLISH_SCRIPT`].
const ARGS_PER_MESSAGE: usize = 8;

/// Most messages one [`PUBLISH_SCRIPT`] call stores: Redis runs a script to its end, serving
/// no one else meanwhile, so a run is cut to keep that pause well under a millisecond or two.
pub(super) const SCRIPT_RUN: usize = 64;

/// `KEYS` = [meta, log, ids]; `ARGV` = [`after` or `newest`, offset, limit, candidate epoch, meta
/// ttl ms, [`Mode`]]. Returns `{top, epoch, oldest id or '', id1, frame1, …}` (newest:
/// descending). On a cluster it checks the meta's `rid` as [`PUBLISH_SCRIPT`] does.
pub(super) const READ_SCRIPT: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'rid')
local epoch = meta[1]
local top = tonumber(meta[2]) or 0
local rid = ''
if ARGV[6] == 'c' then
  local info = redis.call('INFO', 'replication')
  rid = string.match(info, 'master_replid:(%w+)') or ''
  local rid2 = string.match(info, 'master_replid2:(%w+)') or ''
  if epoch and meta[3] ~= rid then
    if not meta[3] or meta[3] == rid2 then
      epoch = false
    else
      redis.call('HSET', KEYS[1], 'rid', rid)
    end
  end
end
if not epoch then
  epoch = ARGV[4]
  top = 0
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
  if rid ~= '' then redis.call('HSET', KEYS[1], 'rid', rid) end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local entries = {}
if tonumber(ARGV[3]) == 0 then
  entries = {}
elseif ARGV[1] == 'after' then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+', 'COUNT', ARGV[3])
else
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local out = {top, epoch, first[1] and first[1][1] or ''}
for _, e in ipairs(entries) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return out
"#;

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

/// The `EVALSHA` that stores and publishes a run of messages, in order (the script must be
/// loaded: see `redis.rs`).
pub(super) fn publish_cmd(
    prefix: &str,
    run: &[&StoredPublish],
    epoch: &str,
    mode: Mode,
) -> redis::Cmd {
    let mut keys = Vec::with_capacity(3 * run.len());
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(ARGS_PER_MESSAGE * run.len() + 2);
    args.push(epoch.as_bytes().to_vec());
    args.push(mode.arg().as_bytes().to_vec());
    for msg in run {
        let Keep {
            size,
            ttl,
            meta_ttl,
        } = msg.keep;
        keys.push(meta_key(prefix, &msg.room));
        keys.push(log_key(prefix, &msg.room));
        keys.push(ids_key(prefix, &msg.room));
        args.push(msg.head.to_vec());
        args.push(size.max(1).to_string().into_bytes());
        args.push(ms(ttl).to_string().into_bytes());
        args.push(ms(meta_ttl.max(ttl)).to_string().into_bytes());
        args.push(room_channel(prefix, &msg.room).into_bytes());
        args.push(msg.sent_at_micros.to_string().into_bytes());
        args.push(msg.room.as_bytes().to_vec());
        args.push(msg.dedupe.as_deref().unwrap_or("").as_bytes().to_vec());
    }
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(PUBLISH_SHA.as_str())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    cmd
}

/// [`PUBLISH_SCRIPT`]'s SHA-1, for `EVALSHA`: the script's 1 KB are not sent (nor hashed by
/// Redis) with every message; the publisher loads it once per batch (`redis.rs`).
static PUBLISH_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| redis::Script::new(PUBLISH_SCRIPT).get_hash().to_owned());

/// The `EVAL` that reads a page.
pub(super) fn read_cmd(
    prefix: &str,
    room: &str,
    query: HistoryQuery,
    limit: usize,
    epoch: &str,
    meta_ttl: std::time::Duration,
    mode: Mode,
) -> redis::Cmd {
    let (how, after) = match query {
        HistoryQuery::After(n) => ("after", n),
        HistoryQuery::Newest => ("newest", 0),
    };
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(READ_SCRIPT)
        .arg(3)
        .arg(meta_key(prefix, room))
        .arg(log_key(prefix, room))
        .arg(ids_key(prefix, room))
        .arg(how)
        .arg(after)
        .arg(limit)
        .arg(epoch)
        .arg(ms(meta_ttl))
        .arg(mode.arg());
    cmd
}

fn bad(what: &str) -> BusError {
    BusError::Unavailable(format!("unexpected answer from the history script: {what}"))
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An entry id `OFFSET-0` as its offset.
fn id_offset(id: &str) -> Option<u64> {
    id.strip_suffix("-0")?.parse().ok()
}

/// Reads [`PUBLISH_SCRIPT`]'s answer for a run of `n` messages: one result each.
pub(super) fn parse_stored(v: &Value, n: usize) -> Vec<Result<Stored, BusError>> {
    let items = match v {
        Value::Array(items) if items.len() == 4 * n => items,
        Value::Array(_) => return vec![Err(bad("length")); n],
        Value::ServerError(e) => {
            let e = BusError::Unavailable(format!("the publish script failed: {e:?}"));
            return vec![Err(e); n];
        }
        _ => return vec![Err(bad("not an array")); n],
    };
    items
        .chunks_exact(4)
        .map(|one| {
            let outcome = int(&one[3]).ok_or_else(|| bad("outcome"))?;
            if outcome == 2 {
                let why = text(&one[1]).unwrap_or("unknown");
                return Err(BusError::Unavailable(format!(
                    "the publish script failed for this message: {why}"
                )));
            }
            Ok(Stored {
                offset: int(&one[0]).ok_or_else(|| bad("offset"))?,
                epoch: Arc::from(text(&one[1]).ok_or_else(|| bad("epoch"))?),
                subscribers: int(&one[2]).ok_or_else(|| bad("count"))? as usize,
                duplicate: outcome == 1,
            })
        })
        .collect()
}

/// Reads [`READ_SCRIPT`]'s answer.
pub(super) fn parse_page(v: &Value, query: HistoryQuery) -> Result<HistoryPage, BusError> {
    let Value::Array(items) = v else {
        return Err(bad("not an array"));
    };
    let [top, epoch, first, rest @ ..] = items.as_slice() else {
        return Err(bad("length"));
    };
    let mut messages = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        let offset = text(&pair[0])
            .and_then(id_offset)
            .ok_or_else(|| bad("id"))?;
        let frame = text(&pair[1]).ok_or_else(|| bad("frame"))?;
        messages.push((offset, frame.to_owned()));
    }
    if query == HistoryQuery::Newest {
        messages.reverse();
    }
    Ok(HistoryPage {
        top: int(top).ok_or_else(|| bad("top"))?,
        epoch: Arc::from(text(epoch).ok_or_else(|| bad("epoch"))?),
        first: text(first).and_then(id_offset),
        messages,
    })
}

/// The tag byte the script writes, checked against the codec's at compile time.
const _: () = assert!(STORED_TAG == 2, "PUBLISH_SCRIPT writes '\\2'");
