//! The drop guard of a session: however it ends, its connection leaves the hub.
//!
//! A session normally withdraws in `finish` (after lingering for the client's close reply). If it
//! never gets there, because it panicked or its task was cancelled, the hub would keep the
//! connection forever: `/stats` counting it, broadcasts queued for it, a shutdown waiting the whole
//! grace period for it. Dropping the session therefore withdraws it too, closes it with 1011 so
//! its writer ends (after what was already queued), and tells the rooms' members from a task of
//! its own (a drop cannot wait), under the node's drain so that a shutdown waits for it.

use tracing::{debug, warn};

use super::handlers::announce_gone;
use super::Session;
use crate::outbound::Closing;

/// The server failed while serving the connection. Draining, as every other server close
/// that is not about the client's own sending: the frames already queued are intact (the
/// writer is a task of its own), and the client should not lose them because of our bug.
const INTERNAL_ERROR: Closing = Closing::Server {
    code: 1011,
    reason: "internal error",
    drain: true,
};

impl Drop for Session {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        if std::thread::panicking() {
            warn!(
                client_id = %self.out.client_id,
                conn = self.out.id,
                "session panicked; removing its connection"
            );
        } else {
            // Cancelled: the runtime is going away, or the node gave up waiting at shutdown.
            debug!(client_id = %self.out.client_id, conn = self.out.id, "session cancelled");
        }
        self.out.close(INTERNAL_ERROR);
        let (rooms, last) = self.withdraw();
        if rooms.is_empty() && !(last && self.shared.config.announce_connections) {
            return;
        }
        // Under the node's drain, so that a shutdown waits for these announcements too.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.shared.drain.spawn(announce_gone(
                self.shared.clone(),
                self.out.client_id.clone(),
                rooms,
                last,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringcast_testkit::{http_get, wait_until, Client};
    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio::sync::watch;
    use tokio_tungstenite::tungstenite::Message;

    use super::super::handlers::PANIC_FRAME;
    use crate::Config;

    /// `/stats` `connections` of the node at `addr`.
    async fn connections(addr: std::net::SocketAddr) -> u64 {
        let (_, body) = http_get(addr, "/stats").await;
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        stats["local_connections"].as_u64().unwrap_or(u64::MAX)
    }

    /// Broadcast frames queued to clients so far.
    async fn broadcasts_queued(addr: std::net::SocketAddr) -> f64 {
        let (_, body) = http_get(addr, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix("ringcast_node_messages_out_total{route=\"broadcast\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn a_panicking_session_leaves_the_hub_and_does_not_hold_up_shutdown() {
        let mut config = Config::for_tests();
        config.announce_connections = false;
        // A connection left in the hub would hold the shutdown up for an hour.
        config.shutdown_grace_secs = 3600;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = watch::channel(false);
        let node = tokio::spawn(crate::run(listener, config, stop_rx));
        let url = |id: &str| format!("ws://{addr}/ws?client_id={id}");
        let (mut victim, _) = Client::connect_welcomed(&url("victim")).await;
        let (mut member, _) = Client::connect_welcomed(&url("member")).await;
        let (mut other, _) = Client::connect_welcomed(&url("other")).await;
        for c in [&mut victim, &mut member] {
            c.send_json(json!({"type":"join_room","room":"r"})).await;
            assert_eq!(c.recv_event("user_joined").await["room"], "r");
        }
        assert_eq!(connections(addr).await, 3);

        victim.send(Message::text(PANIC_FRAME)).await;
        assert_eq!(
            victim.expect_close(Duration::from_secs(10)).await,
            Some(1011),
            "the panicking session's client is told"
        );
        let left = member.recv_event("user_left").await;
        assert_eq!(
            (&left["user_id"], &left["room"]),
            (&json!("victim"), &json!("r"))
        );
        wait_until(Duration::from_secs(10), "/stats back to 2", || async {
            connections(addr).await == 2
        })
        .await;

        // A broadcast is queued for the two live clients only.
        let before = broadcasts_queued(addr).await;
        other.send_json(json!({"type":"chat","content":"hi"})).await;
        assert_eq!(member.recv_event("chat").await["content"], "hi");
        wait_until(Duration::from_secs(10), "the broadcast counted", || async {
            broadcasts_queued(addr).await > before
        })
        .await;
        assert_eq!(broadcasts_queued(addr).await, before + 1.0, "only `member`");

        // Shutdown waits for the live clients only.
        stop_tx.send(true).expect("node running");
        assert_eq!(
            member.expect_close(Duration::from_secs(10)).await,
            Some(1012)
        );
        assert_eq!(
            other.expect_close(Duration::from_secs(10)).await,
            Some(1012)
        );
        let ended = tokio::time::timeout(Duration::from_secs(20), node).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "the node did not finish its shutdown: {ended:?}"
        );
    }

    /// What the README promises for 1011: the frames already queued come before the close, a
    /// session that fails included (its writer is a task of its own and is not affected).
    #[tokio::test]
    async fn a_panicking_session_s_queued_frames_come_before_its_1011() {
        let mut config = Config::for_tests();
        config.announce_connections = false;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(crate::run(listener, config, stop_rx));
        let (mut victim, _) =
            Client::connect_welcomed(&format!("ws://{addr}/ws?client_id=victim")).await;
        // One write: the pong is queued and the session panics on the next frame before its
        // writer (on this same single-threaded runtime) has taken it.
        victim
            .feed(Message::text(json!({"type":"ping"}).to_string()))
            .await;
        victim.feed(Message::text(PANIC_FRAME)).await;
        victim.flush().await;
        assert_eq!(
            victim.next_json(Duration::from_secs(10)).await,
            Ok(json!({"event":"pong"}))
        );
        assert_eq!(
            victim.expect_close(Duration::from_secs(10)).await,
            Some(1011)
        );
    }
}
