//! Presence changes whose answer someone waits for (joins and leaves of rooms that announce: was
//! it the client id's first or last connection?), batched: each caller queues its change and
//! waits for its own answer, and one task writes whatever is queued as one pipeline — the rooms
//! listed under their instances first, then one script call for all of them on one Redis, one
//! per room (slot) on a cluster — while the callers' changes of a room keep their order. A
//! burst of joins then costs Redis one call instead of two commands per join, and the node one
//! request instead of one each.

use std::sync::Arc;

use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::redis_batch::Batch;
use super::redis_conn::Inner;
use super::redis_presence_keys::{eval, node_key, room_keys};
use super::BusError;

/// `KEYS` = [pr, pn, pc] per group (a room and instance); `ARGV` = [group, op, client] per
/// change: the group's number (from 0), op `+` (one connection more) or `-` (one fewer).
/// Returns per change, in order: after a `+` the client's connections in all; after a `-` what
/// is left in all, or -1 when the instance had no such connection (swept meanwhile).
const CHANGES: &str = r#"
local out = {}
-- The connections counters move once per group, by the sum of its changes.
local moved = {}
for i = 0, #ARGV / 3 - 1 do
  local g = 3 * tonumber(ARGV[3 * i + 1])
  local pr, pn = KEYS[g + 1], KEYS[g + 2]
  local op, client = ARGV[3 * i + 2], ARGV[3 * i + 3]
  if op == '+' then
    redis.call('HINCRBY', pn, client, 1)
    moved[g] = (moved[g] or 0) + 1
    out[#out + 1] = redis.call('HINCRBY', pr, client, 1)
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

/// Most changes one pipeline carries (and one script call, at most).
const BATCH: usize = 256;
/// Most changes waiting; callers wait beyond it.
const QUEUE: usize = 4096;

/// One queued change and where its answer goes.
pub(super) struct Change {
    /// One connection more (`true`) or fewer.
    pub add: bool,
    pub room: String,
    pub client: String,
    pub instance: String,
    pub reply: oneshot::Sender<Result<i64, BusError>>,
}

/// Starts the writer; it ends when every sender is gone.
pub(super) fn start(inner: Arc<Inner>) -> (mpsc::Sender<Change>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, tokio::spawn(run(inner, rx)))
}

async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Change>) {
    let mut changes = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut changes, BATCH).await > 0 {
        let batch: Vec<Change> = std::mem::take(&mut changes);
        let answers = write(&inner, &batch).await;
        for (change, answer) in batch.into_iter().zip(answers) {
            let _ = change.reply.send(answer);
        }
    }
}

/// Writes `changes` as one pipeline; an answer per change, in order.
async fn write(inner: &Inner, changes: &[Change]) -> Vec<Result<i64, BusError>> {
    // Groups of one room and instance, in first-seen order; each keeps its changes' order.
    let mut groups: Vec<((&str, &str), Vec<usize>)> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let key = (c.room.as_str(), c.instance.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    let prefix = inner.prefix();
    let mut listing = Batch::new();
    // Listed first (on a cluster the first command's slot group runs first): a sweep finds
    // every room an instance may hold entries in.
    for ((room, instance), list) in &groups {
        if list.iter().any(|i| changes[*i].add) {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(node_key(prefix, instance, "rooms")).arg(*room);
            listing.add(sadd).ignore();
        }
    }
    // One call for every group on one Redis; on a cluster one per group (a room is one slot).
    let calls: Vec<Vec<usize>> = if inner.is_cluster() {
        (0..groups.len()).map(|g| vec![g]).collect()
    } else {
        vec![(0..groups.len()).collect()]
    };
    let scripts: Vec<redis::Cmd> = calls
        .iter()
        .map(|call| {
            let mut keys = Vec::with_capacity(3 * call.len());
            for g in call {
                let ((room, instance), _) = &groups[*g];
                keys.extend(room_keys(prefix, room, instance).into_array());
            }
            let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut cmd = eval(CHANGES, &key_refs);
            for (n, g) in call.iter().enumerate() {
                for i in &groups[*g].1 {
                    let c = &changes[*i];
                    cmd.arg(n).arg(if c.add { "+" } else { "-" }).arg(&c.client);
                }
            }
            cmd
        })
        .collect();
    let replies: Vec<Result<Value, BusError>> = if inner.is_cluster() {
        // The listing first, then each room on its own: a shard that fails fails only the
        // changes of its rooms.
        if let Err(e) = inner.batch(&listing).await {
            return changes.iter().map(|_| Err(e.clone())).collect();
        }
        let sends = scripts.into_iter().map(|cmd| async move {
            let mut one = Batch::new();
            one.add(cmd);
            inner.batch(&one).await.and_then(|mut v| {
                v.pop()
                    .ok_or_else(|| BusError::Unavailable("no presence answer".into()))
            })
        });
        futures_util::future::join_all(sends).await
    } else {
        let mut batch = listing;
        for cmd in scripts {
            batch.add(cmd);
        }
        match inner.batch(&batch).await {
            Ok(values) if values.len() == calls.len() => values.into_iter().map(Ok).collect(),
            Ok(values) => {
                let e = BusError::Unavailable(format!(
                    "Redis answered {} presence calls with {} replies",
                    calls.len(),
                    values.len()
                ));
                return changes.iter().map(|_| Err(e.clone())).collect();
            }
            Err(e) => return changes.iter().map(|_| Err(e.clone())).collect(),
        }
    };
    // Each call answers its changes group by group, as they were passed.
    let mut out: Vec<Option<Result<i64, BusError>>> = (0..changes.len()).map(|_| None).collect();
    for (call, reply) in calls.iter().zip(replies) {
        let order = call.iter().flat_map(|g| groups[*g].1.iter());
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                for i in order {
                    out[*i] = Some(Err(e.clone()));
                }
                continue;
            }
        };
        let values: &[Value] = match &reply {
            Value::Array(v) => v,
            _ => &[],
        };
        for (k, i) in order.enumerate() {
            out[*i] = Some(match values.get(k) {
                Some(Value::Int(n)) => Ok(*n),
                _ => Err(BusError::Unavailable(format!(
                    "unexpected answer from the presence script: {reply:?}"
                ))),
            });
        }
    }
    out.into_iter()
        .map(|a| a.unwrap_or_else(|| Err(BusError::Unavailable("no answer".into()))))
        .collect()
}
