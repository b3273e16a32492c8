//! Recovery through the routine faults of a sharded deployment, end to end: a numbered stream in
//! one room, subscribers behind the real gateway that reconnect on any close and rejoin with
//! `since`, three `ringcast-node` processes on a real Redis — and then a node drains (SIGTERM),
//! a node dies (SIGKILL), or Redis dies and comes back with `appendfsync always`.
//!
//! What must hold: every subscriber ends with exactly what the publisher saw stored (its own
//! echoes, which it also recovers), once each and in order; every rejoin says `recovered:true`
//! and nobody is told `history_reset`. Publishes refused with `bus_unavailable` were not stored
//! and show up nowhere; a publish sent into a dying connection may or may not have been stored,
//! and counts only when the publisher saw it — unless the publisher gives its messages ids: then
//! it resends every unacknowledged one after reconnecting, and with its own node killed
//! mid-stream every member still ends with every message, exactly once.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringcast_testkit::{Client, RedisServer};
use serde_json::{json, Value};
use support::{signal, NodeProcess, TestGateway};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "live";
/// Messages published, one every [`EVERY`] (200 a second, as in the measurement).
const SENT: u64 = 800;
const EVERY: Duration = Duration::from_millis(5);
const MEMBERS: usize = 12;
/// Acknowledged messages a publisher with ids sends again after a reconnect anyway.
const DISTRUSTED: usize = 20;

/// What one client saw over all its connections.
#[derive(Debug, Default)]
struct Log {
    /// Chat contents, in arrival order.
    contents: Vec<u64>,
    /// Their offsets.
    offsets: Vec<u64>,
    /// The acks of rejoins with `since`.
    rejoins: Vec<Value>,
    /// `history_reset` events.
    resets: usize,
    /// Error codes.
    errors: Vec<String>,
    /// Nodes that welcomed it, in order.
    nodes: Vec<String>,
    /// Whether its first join was acknowledged.
    joined: bool,
    /// A publisher with ids: each acknowledged message's offset, how many it sent again, and
    /// acks of one message that named different offsets.
    acked: std::collections::BTreeMap<u64, u64>,
    resent: usize,
    ack_conflicts: Vec<(u64, u64, u64)>,
}

/// How the member publishes, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publishes {
    No,
    /// Posts `1..=SENT` without ids.
    Plain,
    /// Posts `1..=SENT` with ids (`p-N`), and after every reconnect (once its rejoin is acked)
    /// first sends again every message not acknowledged yet — and, as a client that does not
    /// trust acks read just before a crash would, the last [`DISTRUSTED`] acknowledged ones.
    WithIds,
}

/// A client that stays in [`ROOM`] through any close: it reconnects (the gateway picks the
/// node) and rejoins with `since` = the last message it got. A publisher also posts `1..=SENT`.
async fn member(
    url: String,
    me: String,
    publishes: Publishes,
    log: Arc<Mutex<Log>>,
    go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    let publish = publishes != Publishes::No;
    let mut since: Option<Value> = None;
    let mut next = 1u64;
    let mut due = Instant::now();
    // Sent with an id and not acknowledged yet; what to send again once rejoined.
    let mut unacked = std::collections::BTreeSet::<u64>::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let connect = tokio::time::timeout(Duration::from_secs(3), Client::try_connect(&url));
        let Ok(Ok(mut c)) = connect.await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut join = json!({"type":"join_room","room":ROOM});
        if let Some(s) = &since {
            join["since"] = s.clone();
        }
        if !send(&mut c, join).await {
            continue;
        }
        let mut rejoined = false;
        let mut resend: std::collections::VecDeque<u64> = {
            let log = log.lock().unwrap();
            let acked = log.acked.keys().rev().take(DISTRUSTED).copied();
            let mut again: Vec<u64> = acked.chain(unacked.iter().copied()).collect();
            again.sort_unstable();
            again.into()
        };
        loop {
            if next == 1 && !*go.borrow() {
                due = Instant::now();
            }
            let ready = rejoined || publishes != Publishes::WithIds;
            if ready && !resend.is_empty() {
                let n = resend[0];
                let post =
                    json!({"type":"room_message","room":ROOM,"content":n,"id":format!("p-{n}")});
                if !send(&mut c, post).await {
                    break;
                }
                resend.pop_front();
                log.lock().unwrap().resent += 1;
            } else if ready && publish && *go.borrow() && next <= SENT && Instant::now() >= due {
                let mut post = json!({"type":"room_message","room":ROOM,"content":next});
                if publishes == Publishes::WithIds {
                    post["id"] = json!(format!("p-{next}"));
                    unacked.insert(next);
                }
                if !send(&mut c, post).await {
                    break;
                }
                next += 1;
                due += EVERY;
            }
            let v = match c.next_json(Duration::from_millis(2)).await {
                Ok(v) => v,
                Err(e) if e.starts_with("nothing within") => {
                    if *stop.borrow() {
                        return;
                    }
                    continue;
                }
                // Closed (1012 drain, a dead node): reconnect and rejoin.
                Err(_) => break,
            };
            let mut log = log.lock().unwrap();
            match v["event"].as_str().unwrap_or_default() {
                "welcome" => log
                    .nodes
                    .push(v["node"].as_str().unwrap_or_default().to_owned()),
                "chat" => {
                    log.contents.push(v["content"].as_u64().unwrap());
                    log.offsets.push(v["offset"].as_u64().unwrap());
                    since = Some(json!({"offset": v["offset"], "epoch": v["epoch"]}));
                }
                "ack" => {
                    let n = v["id"].as_str().and_then(|id| id.strip_prefix("p-"));
                    if let (Some(n), Some(offset)) =
                        (n.and_then(|n| n.parse().ok()), v["offset"].as_u64())
                    {
                        unacked.remove(&n);
                        if let Some(first) = log.acked.insert(n, offset) {
                            if first != offset {
                                log.ack_conflicts.push((n, first, offset));
                            }
                        }
                    }
                }
                "error" if v["id"].is_string() => {
                    // Not stored (the bus was down, the rate limit): send it again.
                    let n = v["id"].as_str().and_then(|id| id.strip_prefix("p-"));
                    if let Some(n) = n.and_then(|n| n.parse().ok()) {
                        resend.push_back(n);
                    }
                    log.errors
                        .push(v["code"].as_str().unwrap_or_default().to_owned());
                }
                "user_joined" if v["user_id"] == me.as_str() => {
                    log.joined = true;
                    rejoined = true;
                    if v.get("recovered").is_some() {
                        log.rejoins.push(v.clone());
                    }
                    if v["offset"].as_u64().is_some_and(|o| {
                        o >= since
                            .as_ref()
                            .map_or(0, |s| s["offset"].as_u64().unwrap_or(0))
                    }) {
                        since = Some(json!({"offset": v["offset"], "epoch": v["epoch"]}));
                    }
                }
                "history_reset" => log.resets += 1,
                "error" => log
                    .errors
                    .push(v["code"].as_str().unwrap_or_default().to_owned()),
                _ => {}
            }
        }
    }
}

/// Sends `v`; false when the connection is gone or stuck.
async fn send(c: &mut Client, v: Value) -> bool {
    let sent = async { c.feed(Message::text(v.to_string())).await && c.flush().await };
    tokio::time::timeout(Duration::from_secs(2), sent)
        .await
        .unwrap_or(false)
}

/// The cluster: Redis, three node processes on it, a gateway over them.
struct Cluster {
    redis: RedisServer,
    nodes: Vec<NodeProcess>,
    gw: TestGateway,
}

async fn cluster(redis_args: &[&str]) -> Cluster {
    let redis = RedisServer::start_with_args(redis_args);
    let node_args = [
        "--redis-probe-interval-ms",
        "200",
        "--rate-limit-per-sec",
        "10000",
        "--rate-limit-burst",
        "10000",
    ];
    let (nodes, gw) =
        support::nodes_behind_gateway(&redis.url(), &["r1", "r2", "r3"], &node_args, &[]).await;
    Cluster { redis, nodes, gw }
}

/// Runs the stream with `fault` applied a second in; returns the publisher's log and each
/// member's.
async fn stream_through<F>(cluster: &mut Cluster, fault: F) -> (Log, Vec<Log>)
where
    F: FnOnce(&mut Cluster, &[Arc<Mutex<Log>>]),
{
    stream_with(cluster, Publishes::Plain, fault).await
}

/// [`stream_through`] with the publisher publishing as `publishes` says.
async fn stream_with<F>(cluster: &mut Cluster, publishes: Publishes, fault: F) -> (Log, Vec<Log>)
where
    F: FnOnce(&mut Cluster, &[Arc<Mutex<Log>>]),
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(false);
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..=MEMBERS {
        let me = if i == 0 {
            "publisher".to_owned()
        } else {
            format!("m{i}")
        };
        let log = Arc::new(Mutex::new(Log::default()));
        let url = cluster.gw.ws_url(&me);
        tasks.push(tokio::spawn(member(
            url,
            me,
            if i == 0 { publishes } else { Publishes::No },
            log.clone(),
            go_rx.clone(),
            stop_rx.clone(),
        )));
        logs.push(log);
    }
    // Everyone is in the room before the first message.
    let everyone_in = Instant::now() + Duration::from_secs(10);
    while !logs.iter().all(|l| l.lock().unwrap().joined) {
        assert!(Instant::now() < everyone_in, "not everyone could join");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = go_tx.send(true);
    let due = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fault(cluster, &logs);
    // The stream ends after SENT × EVERY; then everyone has until the deadline to catch up with
    // the last message the publisher saw.
    tokio::time::sleep_until(due + EVERY * SENT as u32).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let caught_up = {
            let last = logs[0].lock().unwrap().contents.last().copied();
            last.is_some_and(|last| last >= SENT - 10)
                && logs
                    .iter()
                    .all(|l| l.lock().unwrap().contents.last().copied() == last)
        };
        if caught_up || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A little longer, so a late duplicate would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut logs: Vec<Log> = logs
        .into_iter()
        .map(|l| std::mem::take(&mut *l.lock().unwrap()))
        .collect();
    let publisher = logs.remove(0);
    (publisher, logs)
}

/// The node most members were welcomed by last.
fn busiest(logs: &[Arc<Mutex<Log>>]) -> String {
    let mut count = std::collections::HashMap::<String, usize>::new();
    for log in logs {
        if let Some(n) = log.lock().unwrap().nodes.last() {
            *count.entry(n.clone()).or_default() += 1;
        }
    }
    count
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(id, _)| id)
        .unwrap()
}

fn assert_everyone_got_exactly_what_was_stored(
    fault: &str,
    publisher: &Log,
    members: &[Log],
    must_move: bool,
) {
    let stored = &publisher.contents;
    let refused = publisher
        .errors
        .iter()
        .filter(|c| *c == "bus_unavailable")
        .count();
    assert!(
        stored.len() as u64 >= SENT / 2,
        "{fault}: only {} of {SENT} stored ({refused} refused): {:?}",
        stored.len(),
        publisher.errors
    );
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "{fault}: publisher's echoes out of order"
    );
    let mut moved = 0;
    for (i, m) in std::iter::once(publisher).chain(members).enumerate() {
        let who = if i == 0 {
            "publisher".to_owned()
        } else {
            format!("m{i}")
        };
        assert_eq!(
            &m.contents, stored,
            "{fault}: {who} (welcomed by {:?})",
            m.nodes
        );
        let first = m.offsets.first().copied().unwrap_or(1);
        let expect: Vec<u64> = (first..first + m.offsets.len() as u64).collect();
        assert_eq!(m.offsets, expect, "{fault}: {who}'s offsets");
        assert_eq!(m.resets, 0, "{fault}: {who} was told history_reset");
        for ack in &m.rejoins {
            assert_eq!(ack["recovered"], true, "{fault}: {who} rejoined with {ack}");
        }
        moved += usize::from(!m.rejoins.is_empty());
    }
    if must_move {
        assert!(
            moved > 0,
            "{fault}: the fault must move someone to mean anything"
        );
    }
}

#[tokio::test]
async fn a_node_drain_loses_no_message_for_anyone() {
    let mut c = cluster(&[]).await;
    let (publisher, members) = stream_through(&mut c, |c, logs| {
        let victim = busiest(logs);
        let node = c.nodes.iter().find(|n| n.id == victim).unwrap();
        signal(node.pid(), "-TERM");
    })
    .await;
    assert_everyone_got_exactly_what_was_stored("SIGTERM", &publisher, &members, true);
}

#[tokio::test]
async fn a_node_crash_loses_no_message_for_anyone() {
    let mut c = cluster(&[]).await;
    let (publisher, members) = stream_through(&mut c, |c, logs| {
        let victim = busiest(logs);
        c.nodes.iter_mut().find(|n| n.id == victim).unwrap().kill();
    })
    .await;
    assert_everyone_got_exactly_what_was_stored("SIGKILL", &publisher, &members, true);
}

#[tokio::test]
async fn a_redis_crash_with_appendfsync_always_loses_no_message_for_anyone() {
    let mut c = cluster(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let (publisher, members) = stream_through(&mut c, |c, _| c.redis.restart()).await;
    // Nobody reconnects: the nodes keep their clients through the outage and fill the gap.
    assert_everyone_got_exactly_what_was_stored("Redis SIGKILL", &publisher, &members, false);
    // Whether anything was published inside a node's resubscribe window depends on timing
    // (all publishes may have been refused meanwhile); node/tests/history.rs forces that case.
}

#[tokio::test]
async fn a_publisher_whose_node_is_killed_resends_what_was_not_acked_and_everyone_gets_it_once() {
    let mut c = cluster(&[]).await;
    let (publisher, members) = stream_with(&mut c, Publishes::WithIds, |c, logs| {
        let victim = logs[0].lock().unwrap().nodes.last().cloned().unwrap();
        c.nodes.iter_mut().find(|n| n.id == victim).unwrap().kill();
    })
    .await;
    // With ids nothing is lost on the publisher's side either: every message was acked and
    // stored once, so everyone has all of 1..=SENT, in order, once each.
    let all: Vec<u64> = (1..=SENT).collect();
    assert_eq!(
        publisher.acked.len() as u64,
        SENT,
        "acked: {}",
        publisher.acked.len()
    );
    assert_eq!(publisher.contents, all, "publisher's echoes");
    assert!(
        publisher.nodes.len() >= 2,
        "the publisher must have moved: {:?}",
        publisher.nodes
    );
    assert!(
        publisher.resent >= DISTRUSTED,
        "after the kill the publisher sends at least its last {DISTRUSTED} acked messages again"
    );
    assert_eq!(
        publisher.ack_conflicts,
        [],
        "a retry is acked with the first one's offset: (message, first, retry)"
    );
    assert_everyone_got_exactly_what_was_stored(
        "SIGKILL publisher's node",
        &publisher,
        &members,
        true,
    );
}
