//! A batch of Redis commands that may touch several hash slots: one pipeline on one Redis, one
//! pipeline per slot on a Redis Cluster (which refuses a pipeline across slots), with the
//! replies put back in the batch's order either way.
//!
//! Presence writes, for one, list a room under the node's own key (the node's slot) and then
//! change the room's counts (the room's slot). On a cluster the slots' pipelines run one after
//! the other in the order their first command appears, so "listed before written" still holds.

use redis::{Cmd, Pipeline, Value};
use ringcast_net::redis_target::slot_of;

/// Commands to send together, each with whether its reply is wanted.
#[derive(Debug, Default, Clone)]
pub(super) struct Batch {
    cmds: Vec<Cmd>,
    ignored: Vec<bool>,
}

impl Batch {
    /// An empty batch.
    pub(super) fn new() -> Self {
        Batch::default()
    }

    /// Adds a command whose reply is returned.
    pub(super) fn add(&mut self, cmd: Cmd) -> &mut Self {
        self.cmds.push(cmd);
        self.ignored.push(false);
        self
    }

    /// The last command's reply is not returned (its error still fails the batch).
    pub(super) fn ignore(&mut self) -> &mut Self {
        if let Some(last) = self.ignored.last_mut() {
            *last = true;
        }
        self
    }

    /// Whether it holds no command.
    pub(super) fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Appends the batch's commands to `pipe` (one Redis), ignored replies ignored.
    pub(super) fn add_to(&self, pipe: &mut Pipeline) {
        for (cmd, ignored) in self.cmds.iter().zip(&self.ignored) {
            pipe.add_command(cmd.clone());
            if *ignored {
                pipe.ignore();
            }
        }
    }

    /// The whole batch as one pipeline (one Redis).
    pub(super) fn pipeline(&self) -> Pipeline {
        self.pipeline_of(&(0..self.cmds.len()).collect::<Vec<_>>())
    }

    /// The commands at `indices` as one pipeline.
    pub(super) fn pipeline_of(&self, indices: &[usize]) -> Pipeline {
        let mut pipe = redis::pipe();
        for &i in indices {
            pipe.add_command(self.cmds[i].clone());
            if self.ignored[i] {
                pipe.ignore();
            }
        }
        pipe
    }

    /// The batch cut per hash slot, in the order each slot's first command appears; a command
    /// without a key (e.g. `SCRIPT LOAD`) goes with the next command that has one (or the
    /// last group).
    pub(super) fn slot_groups(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<(Option<u16>, Vec<usize>)> = Vec::new();
        let mut keyless: Vec<usize> = Vec::new();
        for (i, cmd) in self.cmds.iter().enumerate() {
            let Some(slot) = key_of(cmd).map(|k| slot_of(&k)) else {
                keyless.push(i);
                continue;
            };
            let at = match groups.iter().position(|(s, _)| *s == Some(slot)) {
                Some(at) => at,
                None => {
                    groups.push((Some(slot), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[at].1.append(&mut keyless);
            groups[at].1.push(i);
        }
        if !keyless.is_empty() {
            match groups.last_mut() {
                Some((_, g)) => g.append(&mut keyless),
                None => groups.push((None, keyless)),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// Puts per-group replies (each in its group's order, ignored ones left out, as Redis
    /// answers a pipeline) back into the batch's order; `None` when a group's count is off.
    pub(super) fn merge(
        &self,
        groups: &[Vec<usize>],
        replies: Vec<Vec<Value>>,
    ) -> Option<Vec<Value>> {
        let mut slots: Vec<Option<Value>> = vec![None; self.cmds.len()];
        for (group, values) in groups.iter().zip(replies) {
            let wanted: Vec<usize> = group
                .iter()
                .copied()
                .filter(|i| !self.ignored[*i])
                .collect();
            if wanted.len() != values.len() {
                return None;
            }
            for (i, v) in wanted.into_iter().zip(values) {
                slots[i] = Some(v);
            }
        }
        let out: Vec<Value> = (0..self.cmds.len())
            .filter(|i| !self.ignored[*i])
            .map(|i| slots[i].take())
            .collect::<Option<_>>()?;
        Some(out)
    }
}

/// The key a cluster routes `cmd` by: the first key of `EVAL`/`EVALSHA` (none when it has
/// none), else the first argument after the name; `None` for `SCRIPT ...` and the like.
fn key_of(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => b,
            _ => &b""[..],
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"FCALL" => {
            let n: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            (n > 0).then(|| args.get(3).map(|k| k.to_vec()))?
        }
        b"SCRIPT" | b"PING" | b"INFO" | b"CLUSTER" => None,
        _ => args.get(1).map(|k| k.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Cmd {
        let mut c = redis::cmd(parts[0]);
        for p in &parts[1..] {
            c.arg(*p);
        }
        c
    }

    #[test]
    fn commands_are_grouped_by_the_slot_of_their_key_in_first_seen_order() {
        let mut b = Batch::new();
        b.add(cmd(&["SADD", "{p:node:n1}:rooms", "r"])).ignore();
        b.add(cmd(&[
            "EVAL",
            "s",
            "2",
            "{p:room:r}:a",
            "{p:room:r}:b",
            "x",
        ]));
        b.add(cmd(&["SCRIPT", "LOAD", "s"])).ignore();
        b.add(cmd(&["EVALSHA", "h", "1", "{p:node:n1}:lease"]));
        b.add(cmd(&["EVAL", "s", "0"]));
        assert_eq!(b.slot_groups(), vec![vec![0, 2, 3], vec![1, 4]]);
        let merged = b.merge(
            &b.slot_groups(),
            vec![vec![Value::Int(3)], vec![Value::Int(1), Value::Int(4)]],
        );
        assert_eq!(
            merged,
            Some(vec![Value::Int(1), Value::Int(3), Value::Int(4)])
        );
        assert_eq!(b.merge(&b.slot_groups(), vec![vec![], vec![]]), None);
        assert!(Batch::new().slot_groups().is_empty());
        let mut keyless = Batch::new();
        keyless.add(cmd(&["PING"]));
        assert_eq!(keyless.slot_groups(), vec![vec![0]]);
    }

    #[test]
    fn one_pipeline_keeps_every_command_and_which_are_ignored() {
        let mut b = Batch::new();
        b.add(cmd(&["SET", "a", "1"])).ignore();
        b.add(cmd(&["GET", "a"]));
        let packed = String::from_utf8(b.pipeline().get_packed_pipeline()).unwrap();
        assert!(packed.contains("SET") && packed.contains("GET"), "{packed}");
        assert_eq!(b.pipeline().len(), 2);
    }
}
