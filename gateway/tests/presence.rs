//! Presence through node deaths, with real processes: three `ringcast-node` processes on a real
//! Redis behind the real gateway, twelve clients of one room spread over them — and then a
//! node is killed (SIGKILL), frozen (SIGSTOP, later SIGCONT) or drained (SIGTERM).
//!
//! What must hold: within 5 s `presence` lists exactly the clients still connected somewhere;
//! every remaining member gets exactly one `user_left` per client id that is gone, none for a
//! client id that reconnected elsewhere meanwhile; a frozen node that wakes after it was swept
//! closes its clients with 1012 and they come back (one `user_joined` each).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ringcast_testkit::{Client, RedisServer};
use serde_json::{json, Value};
use support::{signal, NodeProcess, TestGateway};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "lobby";
const CLIENTS: usize = 12;
/// Every node's flags: quick probes, no connection announcements, a 3 s presence lease.
const NODE_ARGS: [&str; 5] = [
    "--redis-probe-interval-ms",
    "200",
    "--announce-connections=false",
    "--presence-lease-ms",
    "3000",
];

/// What one client saw, over all its connections.
#[derive(Debug, Default)]
struct Log {
    /// Every event, in order.
    events: Vec<Value>,
    /// Nodes that welcomed it, in order.
    nodes: Vec<String>,
    /// Close codes of its connections.
    closes: Vec<Option<u16>>,
    /// Whether it is in the room now.
    joined: bool,
}

/// What a client does when its connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnClose {
    /// Reconnect at once (the gateway picks the node) and join again.
    Return,
    /// Stay away.
    Leave,
}

struct Member {
    id: String,
    log: Arc<Mutex<Log>>,
    on_close: watch::Sender<OnClose>,
}

/// One client in [`ROOM`]: connects, joins, logs everything; on a close, returns or not.
async fn member(
    url: String,
    log: Arc<Mutex<Log>>,
    on_close: watch::Receiver<OnClose>,
    stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let connect = tokio::time::timeout(Duration::from_secs(3), Client::try_connect(&url));
        let Ok(Ok(mut c)) = connect.await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        c.send_json(json!({"type":"join_room","room":ROOM})).await;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(20), c.inner().next()).await;
            let v: Value = match next {
                Err(_) => {
                    if *stop.borrow() {
                        return;
                    }
                    continue;
                }
                Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str(&t) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                Ok(Some(Ok(Message::Close(f)))) => {
                    let mut log = log.lock().unwrap();
                    log.closes.push(f.map(|f| u16::from(f.code)));
                    log.joined = false;
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => {
                    let mut log = log.lock().unwrap();
                    log.closes.push(None);
                    log.joined = false;
                    break;
                }
            };
            let mut log = log.lock().unwrap();
            if v["event"] == "welcome" {
                log.nodes
                    .push(v["node"].as_str().unwrap_or_default().to_owned());
            }
            if v["event"] == "user_joined" && v["user_id"] == url_id(&url) {
                log.joined = true;
            }
            log.events.push(v);
        }
        if *on_close.borrow() == OnClose::Leave {
            return;
        }
    }
}

fn url_id(url: &str) -> &str {
    url.rsplit("client_id=").next().unwrap_or_default()
}

struct Cluster {
    _redis: RedisServer,
    nodes: Vec<NodeProcess>,
    gw: TestGateway,
    members: Vec<Member>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    async fn start() -> Self {
        let redis = RedisServer::start();
        let (nodes, gw) =
            support::nodes_behind_gateway(&redis.url(), &["p1", "p2", "p3"], &NODE_ARGS, &[]).await;
        let (stop, stop_rx) = watch::channel(false);
        let mut members = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let id = format!("c{i}");
            let log = Arc::new(Mutex::new(Log::default()));
            let (on_close, on_close_rx) = watch::channel(OnClose::Return);
            tasks.push(tokio::spawn(member(
                gw.ws_url(&id),
                log.clone(),
                on_close_rx,
                stop_rx.clone(),
            )));
            members.push(Member { id, log, on_close });
        }
        let cluster = Cluster {
            _redis: redis,
            nodes,
            gw,
            members,
            stop,
            tasks,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cluster.members.iter().all(|m| m.log.lock().unwrap().joined) {
            assert!(Instant::now() < deadline, "not everyone could join");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster
    }

    /// The node holding the most members, and their ids.
    fn busiest(&self) -> (String, Vec<String>) {
        let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
        for m in &self.members {
            let node = m.log.lock().unwrap().nodes.last().cloned().unwrap();
            by_node.entry(node).or_default().push(m.id.clone());
        }
        let (node, ids) = by_node
            .into_iter()
            .max_by_key(|(_, ids)| ids.len())
            .unwrap();
        assert!(
            ids.len() >= 2,
            "the test needs two members on one node: {ids:?}"
        );
        (node, ids)
    }

    fn node(&mut self, id: &str) -> &mut NodeProcess {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    fn member(&self, id: &str) -> &Member {
        self.members.iter().find(|m| m.id == id).unwrap()
    }

    /// Events about `who` that member `to` received since its event number `from`.
    fn about(&self, to: &str, who: &str, from: usize) -> Vec<String> {
        let log = self.member(to).log.lock().unwrap();
        log.events[from.min(log.events.len())..]
            .iter()
            .filter(|v| v["user_id"] == who && v["room"] == ROOM)
            .map(|v| v["event"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn marks(&self) -> HashMap<String, usize> {
        self.members
            .iter()
            .map(|m| (m.id.clone(), m.log.lock().unwrap().events.len()))
            .collect()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Asks `presence` as a client of its own (through the gateway) until it lists exactly
/// `expect` or `limit` passes; returns what it listed last.
async fn presence_until(
    gw: &TestGateway,
    expect: &BTreeSet<String>,
    limit: Duration,
) -> BTreeSet<String> {
    presence_of(gw, ROOM, expect, limit).await
}

/// [`presence_until`] for any room.
async fn presence_of(
    gw: &TestGateway,
    room: &str,
    expect: &BTreeSet<String>,
    limit: Duration,
) -> BTreeSet<String> {
    let deadline = Instant::now() + limit;
    let mut last = BTreeSet::new();
    let (mut probe, _) = Client::connect_welcomed(&gw.ws_url("probe")).await;
    probe
        .send_json(json!({"type":"join_room","room":room}))
        .await;
    probe.recv_event("user_joined").await;
    while Instant::now() < deadline {
        probe
            .send_json(json!({"type":"presence","room":room}))
            .await;
        let Ok(v) = probe.next_json(Duration::from_secs(2)).await else {
            continue;
        };
        if v["event"] != "presence" {
            continue;
        }
        last = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_owned())
            .filter(|m| m != "probe")
            .collect();
        if last == *expect {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    probe.close().await;
    last
}

fn ids(members: &[Member]) -> BTreeSet<String> {
    members.iter().map(|m| m.id.clone()).collect()
}

#[tokio::test]
async fn a_killed_node_s_clients_leave_presence_within_5_s_once_each_unless_they_came_back() {
    let mut c = Cluster::start().await;
    let (victim, lost) = c.busiest();
    let back = lost[0].clone();
    for id in &lost[1..] {
        let _ = c.member(id).on_close.send(OnClose::Leave);
    }
    let marks = c.marks();
    let killed = Instant::now();
    c.node(&victim).kill();
    let expect: BTreeSet<String> = ids(&c.members)
        .into_iter()
        .filter(|id| !lost[1..].contains(id))
        .collect();
    let listed = presence_until(&c.gw, &expect, Duration::from_secs(5)).await;
    assert_eq!(listed, expect, "presence 5 s after the kill");
    assert!(killed.elapsed() < Duration::from_secs(6));
    // Every remaining member: one user_left per lost client id, nothing about the one that
    // came back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in expect.iter().filter(|id| !lost.contains(id)) {
        for gone in &lost[1..] {
            assert_eq!(
                c.about(m, gone, marks[m]),
                ["user_left"],
                "{m} about {gone}"
            );
        }
        assert_eq!(
            c.about(m, &back, marks[m]),
            Vec::<String>::new(),
            "{m} about {back}"
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn a_frozen_node_is_swept_and_when_it_wakes_its_clients_are_closed_and_come_back() {
    let mut c = Cluster::start().await;
    let (victim, frozen) = c.busiest();
    let marks = c.marks();
    // A second tab of a frozen client (same id, same node) whose join the node reads only
    // after it wakes, before it finds out it was swept: it must not stay present for ever.
    let (mut tab, _) = Client::connect_welcomed(&c.gw.ws_url(&frozen[0])).await;
    let pid = c.node(&victim).pid();
    signal(pid, "-STOP");
    tab.send_json(json!({"type":"join_room","room":"side"}))
        .await;
    let expect: BTreeSet<String> = ids(&c.members)
        .into_iter()
        .filter(|id| !frozen.contains(id))
        .collect();
    let listed = presence_until(&c.gw, &expect, Duration::from_secs(5)).await;
    signal(pid, "-CONT");
    assert_eq!(listed, expect, "presence 5 s after the freeze");
    // Awake, the node finds itself swept: its clients are closed with 1012 and come back.
    let everyone = ids(&c.members);
    let listed = presence_until(&c.gw, &everyone, Duration::from_secs(15)).await;
    assert_eq!(listed, everyone, "everyone counted again");
    for id in &frozen {
        let closes = c.member(id).log.lock().unwrap().closes.clone();
        assert!(closes.contains(&Some(1012)), "{id} closes: {closes:?}");
    }
    let nobody = BTreeSet::new();
    let side = presence_of(&c.gw, "side", &nobody, Duration::from_secs(10)).await;
    assert_eq!(
        side, nobody,
        "the tab's join, served after waking, did not stay"
    );
    drop(tab);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in &expect {
        for id in &frozen {
            assert_eq!(
                c.about(m, id, marks[m]),
                ["user_left", "user_joined"],
                "{m} about {id}"
            );
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn a_drain_announces_only_the_clients_that_do_not_come_back() {
    let mut c = Cluster::start().await;
    let (victim, drained) = c.busiest();
    let (back, away) = drained.split_at(drained.len() / 2);
    for id in away {
        let _ = c.member(id).on_close.send(OnClose::Leave);
    }
    let marks = c.marks();
    let pid = c.node(&victim).pid();
    signal(pid, "-TERM");
    let expect: BTreeSet<String> = ids(&c.members)
        .into_iter()
        .filter(|id| !away.contains(id))
        .collect();
    // The drain window (the node exits once its clients are gone) plus 5 s.
    let listed = presence_until(&c.gw, &expect, Duration::from_secs(10)).await;
    assert_eq!(listed, expect, "presence after the drain");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in expect.iter().filter(|id| !drained.contains(id)) {
        for id in away {
            assert_eq!(c.about(m, id, marks[m]), ["user_left"], "{m} about {id}");
        }
        for id in back {
            assert_eq!(
                c.about(m, id, marks[m]),
                Vec::<String>::new(),
                "{m} about {id}"
            );
        }
    }
    for id in back {
        let log = c.member(id).log.lock().unwrap();
        assert!(log.closes.contains(&Some(1012)), "{id}: {:?}", log.closes);
        assert!(
            log.nodes.len() >= 2 && log.nodes.last() != Some(&victim),
            "{id}: {:?}",
            log.nodes
        );
    }
    c.stop().await;
}

/// Rooms without announcements write presence behind (node/src/presence.rs): what a killed node
/// had written is swept the same way, and the survivors' clients stay listed.
#[tokio::test]
async fn a_killed_node_s_clients_leave_a_room_without_announcements_within_5_s() {
    let redis = RedisServer::start();
    let node_args = [&NODE_ARGS[..], &["--room-options", "quiet-*:announce=off"]].concat();
    let (mut nodes, gw) =
        support::nodes_behind_gateway(&redis.url(), &["q1", "q2", "q3"], &node_args, &[]).await;
    let room = "quiet-big";
    let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let id = format!("q{i}");
        let mut c = Client::connect(&gw.ws_url(&id)).await;
        let welcome = c.recv_event("welcome").await;
        c.send_json(json!({"type":"join_room","room":room})).await;
        c.recv_event("user_joined").await;
        let node = welcome["node"].as_str().unwrap().to_owned();
        by_node.entry(node).or_default().push(id.clone());
        clients.push(c);
    }
    let all: BTreeSet<String> = by_node.values().flatten().cloned().collect();
    assert_eq!(
        presence_of(&gw, room, &all, Duration::from_secs(5)).await,
        all
    );
    let (victim, lost) = by_node
        .iter()
        .max_by_key(|(_, ids)| ids.len())
        .map(|(n, ids)| (n.clone(), ids.clone()))
        .unwrap();
    let killed = Instant::now();
    nodes.iter_mut().find(|n| n.id == victim).unwrap().kill();
    let expect: BTreeSet<String> = all
        .iter()
        .filter(|id| !lost.contains(id))
        .cloned()
        .collect();
    assert_eq!(
        presence_of(&gw, room, &expect, Duration::from_secs(5)).await,
        expect,
        "presence 5 s after killing {victim} (which held {lost:?})"
    );
    assert!(killed.elapsed() < Duration::from_secs(6));
}
