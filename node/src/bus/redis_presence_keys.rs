//! Presence's key layout in Redis (see `redis_presence.rs` for what each key holds), and the
//! `EVAL` its scripts go by: shared by the scripts of `redis_presence.rs` and the batched
//! changes of `redis_presence_batch.rs`.

use super::redis_history::room_channel;

pub(super) fn total_key(prefix: &str, room: &str) -> String {
    format!("{}:pr", room_channel(prefix, room))
}

/// A room's presence keys as one instance's scripts take them: totals, the instance's counts,
/// the connections counter.
pub(super) struct RoomKeys([String; 3]);

impl RoomKeys {
    pub(super) fn each(&self) -> [&str; 3] {
        [&self.0[0], &self.0[1], &self.0[2]]
    }

    pub(super) fn into_array(self) -> [String; 3] {
        self.0
    }
}

pub(super) fn room_keys(prefix: &str, room: &str, instance: &str) -> RoomKeys {
    RoomKeys([
        total_key(prefix, room),
        instance_key(prefix, room, instance),
        connections_key(prefix, room),
    ])
}

pub(super) fn connections_key(prefix: &str, room: &str) -> String {
    format!("{}:pc", room_channel(prefix, room))
}

fn instance_key(prefix: &str, room: &str, instance: &str) -> String {
    format!("{}:pn:{instance}", room_channel(prefix, room))
}

pub(super) fn node_key(prefix: &str, instance: &str, what: &str) -> String {
    format!("{{{prefix}:node:{instance}}}:{what}")
}

pub(super) fn index_key(prefix: &str) -> String {
    format!("{prefix}:presence:leases")
}

pub(super) fn eval(script: &str, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}
