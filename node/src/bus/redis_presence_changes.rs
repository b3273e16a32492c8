//! Presence changes as steps of a publish pipeline (`redis.rs`): a run of consecutive changes
//! (joins and leaves of rooms that announce, whose callers wait to know whether it was the
//! client id's first or last connection) becomes one script call that writes every change and
//! publishes each one's announcement when it is due — no second round trip to publish it, and
//! its place among the session's other publishes is kept by the pipeline's order.
//!
//! A room is listed under the instance (`SADD` to the instance's room set) before its counts
//! change, so a sweep always finds what the instance may hold: in the same pipeline on one
//! Redis, as a batch of its own before the rooms' pipelines on a cluster (the set lives in the
//! instance's slot, not the room's).

use redis::Value;

use super::redis_batch::Batch;
use super::redis_history::room_channel;
use super::redis_presence_keys::{node_key, room_keys};
use super::{BusError, PresenceChange};

/// `KEYS` = [pr, pn, pc, channel] per group (a room and instance); `ARGV[1]` the publish
/// command (`PUBLISH`, or `SPUBLISH` on a cluster), then [group, op, client, announcement] per
/// change: the group's number (from 0), op `+` (one connection more) or `-` (one fewer), the
/// envelope to publish on the group's channel when the change was the client's first (`+`) or
/// last (`-`) connection anywhere, or `''`. Returns per change, in order: after a `+` the
/// client's connections in all; after a `-` what is left in all, or -1 when the instance had
/// no such connection (swept meanwhile).
const CHANGES: &str = r#"
local pub = ARGV[1]
local out = {}
-- The connections counters move once per group, by the sum of its changes.
local moved = {}
for i = 0, (#ARGV - 1) / 4 - 1 do
  local a = 4 * i + 1
  local g = 4 * tonumber(ARGV[a + 1])
  local pr, pn = KEYS[g + 1], KEYS[g + 2]
  local op, client, say = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if op == '+' then
    redis.call('HINCRBY', pn, client, 1)
    moved[g] = (moved[g] or 0) + 1
    local t = redis.call('HINCRBY', pr, client, 1)
    if t == 1 and say ~= '' then redis.call(pub, KEYS[g + 4], say) end
    out[#out + 1] = t
  else
    local c = redis.call('HINCRBY', pn, client, -1)
    if c <= 0 then redis.call('HDEL', pn, client) end
    if c < 0 then
      out[#out + 1] = -1
    else
      moved[g] = (moved[g] or 0) - 1
      local t = redis.call('HINCRBY', pr, client, -1)
      if t <= 0 then
        redis.call('HDEL', pr, client)
        t = 0
        if say ~= '' then redis.call(pub, KEYS[g + 4], say) end
      end
      out[#out + 1] = t
    end
  end
end
for g, n in pairs(moved) do
  if n ~= 0 and redis.call('INCRBY', KEYS[g + 3], n) <= 0 then redis.call('DEL', KEYS[g + 3]) end
end
return out
"#;

/// Most changes one script call carries: Redis serves no one else while a script runs.
pub(super) const CHANGES_RUN: usize = 256;

/// The `SADD`s that list the rooms `changes` add to under their instances (one per room and
/// instance), to send before the changes.
pub(super) fn listing<'a>(
    prefix: &str,
    changes: impl IntoIterator<Item = &'a PresenceChange>,
) -> Batch {
    let mut listed: Vec<(&str, &str)> = Vec::new();
    let mut batch = Batch::new();
    for c in changes {
        let key = (c.instance.as_ref(), c.room.as_str());
        if !c.add || listed.contains(&key) {
            continue;
        }
        listed.push(key);
        let mut sadd = redis::cmd("SADD");
        sadd.arg(node_key(prefix, key.0, "rooms")).arg(key.1);
        batch.add(sadd).ignore();
    }
    batch
}

/// The script call that writes a run of changes, in order, and publishes their announcements
/// with `publish` (`PUBLISH` or `SPUBLISH`). On a cluster every change of one call must be in
/// one slot (the caller's pipelines are per slot).
pub(super) fn changes_cmd(prefix: &str, run: &[&PresenceChange], publish: &str) -> redis::Cmd {
    // Groups of one room and instance, in first-seen order.
    let mut groups: Vec<(&str, &str)> = Vec::new();
    let mut of_change = Vec::with_capacity(run.len());
    for c in run {
        let key = (c.room.as_str(), c.instance.as_ref());
        let g = match groups.iter().position(|k| *k == key) {
            Some(g) => g,
            None => {
                groups.push(key);
                groups.len() - 1
            }
        };
        of_change.push(g);
    }
    let mut keys: Vec<String> = Vec::with_capacity(4 * groups.len());
    for (room, instance) in &groups {
        keys.extend(room_keys(prefix, room, instance).into_array());
        keys.push(room_channel(prefix, room));
    }
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(CHANGES).arg(keys.len()).arg(keys).arg(publish);
    for (c, g) in run.iter().zip(of_change) {
        cmd.arg(g)
            .arg(if c.add { "+" } else { "-" })
            .arg(c.client.as_bytes())
            .arg(c.announce.as_deref().unwrap_or_default());
    }
    cmd
}

/// Reads [`CHANGES`]'s answer for `run`: per change, whether it was the client's first (add)
/// or last (remove) connection anywhere.
pub(super) fn parse_changes(value: &Value, run: &[&PresenceChange]) -> Vec<Result<bool, BusError>> {
    let values: &[Value] = match value {
        Value::Array(v) => v,
        _ => &[],
    };
    run.iter()
        .enumerate()
        .map(|(k, c)| match values.get(k) {
            Some(Value::Int(n)) => Ok(if c.add { *n == 1 } else { *n == 0 }),
            _ => Err(BusError::Unavailable(format!(
                "unexpected answer from the presence script: {value:?}"
            ))),
        })
        .collect()
}
