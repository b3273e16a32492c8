//! Which node serves each client of a run, as its `welcome` said, so a fault drill can pick the
//! node whose loss moves the most clients.

use std::sync::{Arc, Mutex};

/// The node serving each client, by client index (`None` while it has no connection).
#[derive(Debug, Clone, Default)]
pub struct Placement(Arc<Mutex<Vec<Option<String>>>>);

impl Placement {
    /// Room for `clients` clients.
    pub fn new(clients: usize) -> Self {
        Placement(Arc::new(Mutex::new(vec![None; clients])))
    }

    /// Notes that client `index` is served by `node`.
    pub fn set(&self, index: usize, node: Option<String>) {
        if let Ok(mut p) = self.0.lock() {
            if let Some(slot) = p.get_mut(index) {
                *slot = node;
            }
        }
    }

    /// The node serving client `index` right now, if it has a connection.
    pub fn node_of(&self, index: usize) -> Option<String> {
        self.0.lock().ok()?.get(index).cloned().flatten()
    }

    /// The node serving the most clients right now, if any is known; with `spare`, a node that
    /// does not serve client `spare` (a fault there leaves that client — the publisher — going),
    /// unless it is the only one serving anybody.
    pub fn busiest(&self, spare: Option<usize>) -> Option<String> {
        let p = self.0.lock().ok()?;
        let spared = spare.and_then(|i| p.get(i)).cloned().flatten();
        let others = p
            .iter()
            .flatten()
            .filter(|n| Some(*n) != spared.as_ref())
            .count();
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for node in p.iter().flatten() {
            if others > 0 && Some(node) == spared.as_ref() {
                continue;
            }
            match counts.iter_mut().find(|(n, _)| *n == node.as_str()) {
                Some((_, c)) => *c += 1,
                None => counts.push((node.as_str(), 1)),
            }
        }
        // Ties go to the smallest name, so the choice is stable.
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        counts.first().map(|(n, _)| (*n).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_node_is_the_one_serving_most_clients() {
        let p = Placement::new(6);
        assert_eq!(p.busiest(None), None);
        for (i, n) in ["node-2", "node-1", "node-2", "node-1"].iter().enumerate() {
            p.set(i, Some((*n).into()));
        }
        assert_eq!(
            p.busiest(None).as_deref(),
            Some("node-1"),
            "a tie goes to the smaller name"
        );
        p.set(4, Some("node-2".into()));
        p.set(99, Some("node-3".into())); // out of range: ignored
        assert_eq!(p.busiest(None).as_deref(), Some("node-2"));
        // Client 5 (the publisher) is on node-2: spare it while anyone else is elsewhere.
        p.set(5, Some("node-2".into()));
        assert_eq!(p.busiest(Some(5)).as_deref(), Some("node-1"));
        p.set(1, None);
        p.set(3, None);
        assert_eq!(
            p.busiest(Some(5)).as_deref(),
            Some("node-2"),
            "nobody elsewhere"
        );
        assert_eq!(p.node_of(5).as_deref(), Some("node-2"));
        p.set(5, None);
        assert_eq!(p.busiest(Some(5)).as_deref(), Some("node-2"));
        assert_eq!(p.node_of(5), None);
        assert_eq!(p.node_of(99), None);
    }
}
