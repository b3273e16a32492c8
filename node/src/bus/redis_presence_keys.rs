//! Presence's key layout in Redis (see `redis_presence.rs` for what each key holds), and the
//! `EVAL` its scripts go by: shared by the scripts of `redis_presence.rs` and the batched
//! changes of `redis_presence_batch.rs`.

use super::redis_history::room_channel;

pub(super) fn total_key(prefix: &str, room: &str) -> String {
    format!("{}:pr", room_channel(prefix, room))
}

/// A room's presence keys as one instance's scripts take them: totals, the instance's counts,
/// the extra-connections counter.
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
        extra_key(prefix, room),
    ])
}

/// The room's connections beyond each client id's first: Σ (connections − 1) over its client
/// ids, absent at 0. The connections in all are the totals hash's length plus this, so a
/// client id's only connection joining or leaving — the common case — moves no counter.
pub(super) fn extra_key(prefix: &str, room: &str) -> String {
    format!("{}:px", room_channel(prefix, room))
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
