//! Presence changes as steps of a publish pipeline (`redis.rs`): a run of consecutive changes
//! (joins and leaves of rooms that announce, whose callers wait to know whether it was the
//! client id's first or last connection) becomes one script call that writes every change and
//! publishes each one's announcement when it is due — no second round trip to publish it, and
//! its place among the session's other publishes is kept by the pipeline's order.
//!
//! A room is listed under the instance (`SADD` to the instance's room set) before its counts
//! change, so a sweep always finds what the instance may hold: in the same pipeline on one
//! Redis, as a batch of its own before the rooms' pipelines on a cluster (the set lives in the
//! instance's slot, not the room's). [`ListedRooms`] remembers what is listed already, so a
//! busy room is listed once, not once per join.

use std::collections::HashSet;
use std::sync::Arc;

use redis::Value;

use super::redis_batch::Batch;
use super::redis_history::room_channel;
use super::redis_presence_keys::{node_key, room_keys};
use super::{BusError, PresenceChange};

/// `KEYS` = [pr, pn, px, channel] per group (a room and instance); `ARGV[1]` the publish
/// command (`PUBLISH`, or `SPUBLISH` on a cluster), then [group, op, client, announcement] per
/// change: the group's number (from 0), op `+` (one connection more) or `-` (one fewer), the
/// envelope to publish on the group's channel when the change was the client's first (`+`) or
/// last (`-`) connection anywhere, or `''`. Returns per change, in order: after a `+` the
/// client's connections in all; after a `-` what is left in all, or -1 when the instance had
/// no such connection (swept meanwhile).
const CHANGES: &str = r#"
local pub = ARGV[1]
local out = {}
-- Each extra-connections counter moves once, by the sum of its room's changes (over all the
-- room's groups); a client id's first connection coming or its only one going moves none.
local extra = {}
for i = 0, (#ARGV - 1) / 4 - 1 do
  local a = 4 * i + 1
  local g = 4 * tonumber(ARGV[a + 1])
  local pr, pn = KEYS[g + 1], KEYS[g + 2]
  local op, client, say = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if op == '+' then
    redis.call('HINCRBY', pn, client, 1)
    local t = redis.call('HINCRBY', pr, client, 1)
    if t == 1 then
      if say ~= '' then redis.call(pub, KEYS[g + 4], say) end
    elseif t > 1 then
      extra[KEYS[g + 3]] = (extra[KEYS[g + 3]] or 0) + 1
    end
    out[#out + 1] = t
  else
    local c = redis.call('HINCRBY', pn, client, -1)
    if c <= 0 then redis.call('HDEL', pn, client) end
    if c < 0 then
      out[#out + 1] = -1
    else
      local t = redis.call('HINCRBY', pr, client, -1)
      if t <= 0 then
        redis.call('HDEL', pr, client)
        t = 0
        if say ~= '' then redis.call(pub, KEYS[g + 4], say) end
      else
        extra[KEYS[g + 3]] = (extra[KEYS[g + 3]] or 0) - 1
      end
      out[#out + 1] = t
    end
  end
end
for px, n in pairs(extra) do
  if n ~= 0 and redis.call('INCRBY', px, n) <= 0 then redis.call('DEL', px) end
end
return out
"#;

/// Most changes one script call carries: Redis serves no one else while a script runs.
pub(super) const CHANGES_RUN: usize = 256;

/// Most rooms [`ListedRooms`] remembers; past it, it starts over (and lists again).
const LISTED_MAX: usize = 100_000;

/// The rooms this node's current instance has listed in Redis and not taken off since: an add
/// to one of them needs no `SADD`. Forgetting is the safe direction (a room is listed again),
/// so anything that may have unlisted a room forgets, and bumps the epoch (a listing that was
/// on its way meanwhile is not remembered): a compaction; Redis losing its data (the lease was
/// gone); any new connection to Redis (a restart or a failover may have lost the last writes
/// while the lease survived), told by the bus's connection generation; and each full pass of
/// the compaction over the list, so whatever else took a room off heals within a pass.
#[derive(Default)]
pub(super) struct ListedRooms {
    instance: Option<Arc<str>>,
    rooms: HashSet<String>,
    epoch: u64,
    /// The connection generation the rooms were listed under.
    generation: u64,
}

/// What a listing sent: the epoch and connection generation it saw, and the (instance, room)s
/// it listed, one `SADD` each in `batch`, in order.
pub(super) struct Listing {
    pub batch: Batch,
    epoch: u64,
    generation: u64,
    listed: Vec<(Arc<str>, String)>,
}

impl Listing {
    /// How many `SADD`s it holds (each with a reply).
    pub(super) fn len(&self) -> usize {
        self.listed.len()
    }
}

impl ListedRooms {
    /// The `SADD`s that list `adds`' rooms under their instances, those not listed already
    /// (one per room and instance), to send before the adds; `generation` is the bus's
    /// connection generation now.
    pub(super) fn listing<'a>(
        &self,
        prefix: &str,
        adds: impl IntoIterator<Item = (&'a Arc<str>, &'a str)>,
        generation: u64,
    ) -> Listing {
        let mut listed: Vec<(Arc<str>, String)> = Vec::new();
        let mut batch = Batch::new();
        let current = self.generation == generation;
        for (instance, room) in adds {
            let known = current
                && self.instance.as_deref() == Some(&**instance)
                && self.rooms.contains(room);
            if known || listed.iter().any(|(i, r)| *i == *instance && r == room) {
                continue;
            }
            let mut sadd = redis::cmd("SADD");
            sadd.arg(node_key(prefix, instance, "rooms")).arg(room);
            batch.add(sadd);
            listed.push((instance.clone(), room.to_owned()));
        }
        Listing {
            batch,
            epoch: self.epoch,
            generation,
            listed,
        }
    }

    /// Remembers what `listing` listed, once Redis took it — unless something was forgotten
    /// since it was made, or the bus connected anew meanwhile (`generation`: now).
    pub(super) fn listed(&mut self, listing: Listing, generation: u64) {
        if listing.epoch != self.epoch || listing.generation != generation {
            return;
        }
        if self.generation != generation {
            self.generation = generation;
            self.rooms.clear();
        }
        for (instance, room) in listing.listed {
            if self.instance.as_deref() != Some(&*instance) {
                self.instance = Some(instance);
                self.rooms.clear();
            }
            if self.rooms.len() >= LISTED_MAX {
                self.rooms.clear();
            }
            self.rooms.insert(room);
        }
    }

    /// Forgets `rooms` (about to be taken off the list).
    pub(super) fn forget(&mut self, rooms: &[String]) {
        self.epoch += 1;
        for room in rooms {
            self.rooms.remove(room);
        }
    }

    /// Forgets everything (Redis may have lost the lists).
    pub(super) fn clear(&mut self) {
        self.epoch += 1;
        self.rooms.clear();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// How many `SADD`s a listing of (instance, room) would send under `generation`.
    fn sadds(rooms: &ListedRooms, instance: &Arc<str>, room: &str, generation: u64) -> usize {
        let pair = [(instance.clone(), room)];
        rooms
            .listing("p", pair.iter().map(|(i, r)| (i, *r)), generation)
            .len()
    }

    fn listing(rooms: &ListedRooms, instance: &Arc<str>, room: &str, generation: u64) -> Listing {
        let pair = [(instance.clone(), room)];
        rooms.listing("p", pair.iter().map(|(i, r)| (i, *r)), generation)
    }

    #[test]
    fn a_room_is_listed_once_until_it_may_have_been_taken_off() {
        let (i1, i2): (Arc<str>, Arc<str>) = ("i1".into(), "i2".into());
        let mut rooms = ListedRooms::default();
        let twice = [(i1.clone(), "r"), (i1.clone(), "r")];
        let first = rooms.listing("p", twice.iter().map(|(i, r)| (i, *r)), 1);
        assert_eq!(first.len(), 1, "one SADD per room and instance");
        assert_eq!(
            sadds(&rooms, &i1, "r", 1),
            1,
            "not remembered until Redis took it"
        );
        rooms.listed(first, 1);
        assert_eq!(sadds(&rooms, &i1, "r", 1), 0);
        assert_eq!(
            sadds(&rooms, &i2, "r", 1),
            1,
            "another instance (the node was swept)"
        );
        // A listing on its way while the room was taken off is not remembered.
        let late = listing(&rooms, &i1, "s", 1);
        rooms.forget(&["r".to_owned()]);
        rooms.listed(late, 1);
        assert_eq!(sadds(&rooms, &i1, "s", 1), 1);
        assert_eq!(sadds(&rooms, &i1, "r", 1), 1);
        // Forgetting everything (Redis lost its data).
        rooms.listed(listing(&rooms, &i1, "r", 1), 1);
        rooms.clear();
        assert_eq!(sadds(&rooms, &i1, "r", 1), 1);
        // A new connection to Redis (generation 2): what was listed before may be lost.
        rooms.listed(listing(&rooms, &i1, "r", 1), 1);
        assert_eq!(sadds(&rooms, &i1, "r", 1), 0);
        assert_eq!(sadds(&rooms, &i1, "r", 2), 1);
        // A listing made before the reconnection and answered after it is not remembered.
        let stale = listing(&rooms, &i1, "t", 1);
        rooms.listed(stale, 2);
        assert_eq!(sadds(&rooms, &i1, "t", 2), 1);
        rooms.listed(listing(&rooms, &i1, "t", 2), 2);
        assert_eq!(sadds(&rooms, &i1, "t", 2), 0);
        assert_eq!(
            sadds(&rooms, &i1, "r", 2),
            1,
            "listed under the old connection: forgotten"
        );
    }
}
