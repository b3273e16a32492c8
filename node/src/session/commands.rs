//! What a session does when the server API asks (`subscribe`, `unsubscribe`, `disconnect`):
//! the same as when its client asks, with the backend trusted past the token's room list.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use ringcast_protocol::ClientCommand;

use super::Session;
use crate::outbound::Closing;

/// Most distinct close reasons a node keeps (a close reason must outlive the connection);
/// past it the default one is sent.
const MAX_REASONS: usize = 256;
/// The reason sent when the call gave none, or too many distinct ones were used.
const DEFAULT_REASON: &str = "disconnected by the server";

/// `reason` as a string that lives for the process, from a bounded set.
fn interned(reason: &str) -> &'static str {
    static REASONS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    if reason.is_empty() {
        return DEFAULT_REASON;
    }
    let mut set = REASONS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = set.get(reason) {
        return known;
    }
    if set.len() >= MAX_REASONS {
        return DEFAULT_REASON;
    }
    let leaked: &'static str = Box::leak(reason.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

impl Session {
    /// Does what the server API asked of this connection.
    pub(super) async fn command(&mut self, command: ClientCommand) {
        match command {
            ClientCommand::Subscribe(room) => self.join_trusted(&room).await,
            ClientCommand::Unsubscribe(room) => {
                if self.rooms.contains_key(&room) {
                    self.leave(&room).await;
                }
            }
            ClientCommand::Disconnect { code, reason } => {
                let closing = Closing::Server {
                    code,
                    reason: interned(&reason),
                    drain: true,
                };
                if self.out.close(closing) {
                    self.shared
                        .metrics
                        .closes
                        .with_label_values(&["api_disconnect"])
                        .inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_kept_once_and_bounded() {
        let a = interned("maintenance");
        assert!(std::ptr::eq(a, interned("maintenance")), "kept once");
        assert_eq!(interned(""), DEFAULT_REASON);
        for i in 0..2 * MAX_REASONS {
            let _ = interned(&format!("r{i}"));
        }
        assert_eq!(interned("one more"), DEFAULT_REASON, "bounded");
    }
}
