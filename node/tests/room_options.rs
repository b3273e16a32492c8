//! Room options by pattern (`--room-options`), seen from clients: who may post, whether joins
//! and leaves are announced, how many members a room takes, which entry wins, the built-in
//! default, the admin view, and the start-up errors of the real binary.
//!
//! Where a test shows that something is *not* sent, it does so by order where it can: a
//! message sent after the event in question must be the next thing the watcher sees.

use std::process::Command;
use std::time::Duration;

use ringcast_node::room_options::parse_entry;
use ringcast_node::{Config, MemoryBroker};
use ringcast_protocol::auth::{mint_hs256, now_secs, Claims};
use ringcast_testkit::{unnumbered, wait_until, Client, TestNode};
use serde_json::{json, Value};

fn config(id: &str, entries: &[&str]) -> Config {
    let mut c = Config::for_tests();
    c.node_id = Some(id.into());
    c.announce_connections = false;
    c.room_options = entries.iter().map(|e| parse_entry(e).unwrap()).collect();
    c
}

async fn join(c: &mut Client, room: &str) -> Value {
    c.send_json(json!({"type":"join_room","room":room})).await;
    c.recv().await
}

async fn post(c: &mut Client, room: &str, content: &str) {
    c.send_json(json!({"type":"room_message","room":room,"content":content}))
        .await;
}

#[tokio::test]
async fn post_anyone_lets_a_tutorial_client_post_without_joining_and_members_is_the_default() {
    let broker = MemoryBroker::new();
    let entries = ["open:*:post=anyone"];
    let n1 = TestNode::start_on(config("n1", &entries), broker.clone()).await;
    let n2 = TestNode::start_on(config("n2", &entries), broker).await;
    let (mut member, _) = Client::connect_welcomed(&n1.ws_url("member")).await;
    let (mut poster, _) = Client::connect_welcomed(&n2.ws_url("poster")).await;
    for room in ["open:1", "closed"] {
        assert_eq!(join(&mut member, room).await["event"], "user_joined");
    }

    // Written the tutorial's way: straight to room_message, no join_room first.
    post(&mut poster, "closed", "refused").await;
    let err = poster.recv().await;
    assert_eq!(err["code"], "not_in_room", "{err}");
    post(&mut poster, "open:1", "hello").await;
    assert_eq!(
        unnumbered(&member.recv().await),
        json!({"event":"chat","from":"poster","room":"open:1","content":"hello"}),
        "the refused post to `closed` reached nobody; the open one reached the member"
    );
    // Posting does not make the poster a member: it gets no room traffic.
    post(&mut member, "open:1", "members only hear this").await;
    assert_eq!(member.recv().await["content"], "members only hear this");
    poster.send_json(json!({"type":"ping"})).await;
    assert_eq!(poster.recv().await["event"], "pong");
}

#[tokio::test]
async fn post_anyone_still_applies_the_tokens_room_permissions() {
    const SECRET: &str = "test-secret-0123456789abcdef";
    let mut c = config("n1", &["*:post=anyone"]);
    c.auth.jwt_secret = Some(SECRET.into());
    let node = TestNode::start(c).await;
    let token = |sub: &str, rooms: Option<Vec<String>>| {
        let claims = Claims {
            sub: sub.into(),
            exp: now_secs() + 3600,
            nbf: None,
            aud: None,
            iss: None,
            rooms,
            chat: None,
        };
        mint_hs256(SECRET, &claims).unwrap()
    };
    let url = |t: String| format!("ws://{}/ws?token={t}", node.addr);
    let (mut member, _) = Client::connect_welcomed(&url(token("m", None))).await;
    let (mut poster, _) =
        Client::connect_welcomed(&url(token("p", Some(vec!["public".into()])))).await;
    for room in ["secret", "public"] {
        assert_eq!(join(&mut member, room).await["event"], "user_joined");
    }
    post(&mut poster, "secret", "x").await;
    assert_eq!(poster.recv().await["code"], "forbidden");
    post(&mut poster, "public", "y").await;
    assert_eq!(member.recv().await["content"], "y");
}

/// Two members on two nodes; `alice` joins, posts, leaves, rejoins and posts again. Returns
/// what `bob` saw.
async fn announce_round(entries: &[&str], room: &str) -> Vec<Value> {
    let broker = MemoryBroker::new();
    let n1 = TestNode::start_on(config("n1", entries), broker.clone()).await;
    let n2 = TestNode::start_on(config("n2", entries), broker).await;
    let (mut bob, _) = Client::connect_welcomed(&n2.ws_url("bob")).await;
    assert_eq!(join(&mut bob, room).await["user_id"], "bob");
    let (mut alice, _) = Client::connect_welcomed(&n1.ws_url("alice")).await;
    // The joiner's own ack comes either way.
    assert_eq!(
        unnumbered(&join(&mut alice, room).await),
        json!({"event":"user_joined","user_id":"alice","room":room})
    );
    post(&mut alice, room, "one").await;
    alice
        .send_json(json!({"type":"leave_room","room":room}))
        .await;
    assert_eq!(
        alice.recv_event("user_left").await,
        json!({"event":"user_left","user_id":"alice","room":room}),
        "the leaver's own user_left comes either way"
    );
    assert_eq!(join(&mut alice, room).await["event"], "user_joined");
    post(&mut alice, room, "two").await;
    let mut seen = Vec::new();
    loop {
        let v = bob.recv().await;
        let last = v["content"] == "two";
        seen.push(v);
        if last {
            break;
        }
    }
    // And the disconnect: announced as a user_left, or nothing at all.
    alice.close().await;
    wait_until(Duration::from_secs(5), "alice gone from n1", || async {
        n1.stats().await["clients"] == 0
    })
    .await;
    if let Ok(v) = bob.next_json(Duration::from_millis(300)).await {
        seen.push(v);
    }
    seen
}

#[tokio::test]
async fn announce_off_tells_only_the_joiner_and_leaver_and_on_tells_everyone() {
    let events = |seen: &[Value]| -> Vec<String> {
        seen.iter()
            .map(|v| {
                let e = v["event"].as_str().unwrap_or_default();
                let what = v["content"].as_str().or(v["user_id"].as_str());
                format!("{e}:{}", what.unwrap_or_default())
            })
            .collect()
    };
    let entries = ["live:*:announce=off", "chat:*:announce=on"];
    assert_eq!(
        events(&announce_round(&entries, "live:final").await),
        ["chat:one", "chat:two"]
    );
    assert_eq!(
        events(&announce_round(&entries, "chat:1").await),
        [
            "user_joined:alice",
            "chat:one",
            "user_left:alice",
            "user_joined:alice",
            "chat:two",
            "user_left:alice"
        ]
    );
}

#[tokio::test]
async fn max_members_refuses_joins_past_it_with_room_full_until_a_place_frees() {
    let node = TestNode::start(config("n1", &["small:*:max_members=2"])).await;
    let mut clients = Vec::new();
    for id in ["a", "b", "c"] {
        let (c, _) = Client::connect_welcomed(&node.ws_url(id)).await;
        clients.push(c);
    }
    assert_eq!(
        join(&mut clients[0], "small:1").await["event"],
        "user_joined"
    );
    assert_eq!(
        join(&mut clients[1], "small:1").await["event"],
        "user_joined"
    );
    // a sees b join, then nothing from c's refused attempt.
    assert_eq!(clients[0].recv().await["user_id"], "b");
    let refused = join(&mut clients[2], "small:1").await;
    assert_eq!(refused["event"], "error");
    assert_eq!(refused["code"], "room_full", "{refused}");
    assert_eq!(
        refused["room"], "small:1",
        "a refused join names its room: {refused}"
    );
    // A member joining again is not a new member.
    assert_eq!(
        join(&mut clients[1], "small:1").await["event"],
        "user_joined"
    );
    // Another room of the pattern has its own count; a room outside it has no limit.
    assert_eq!(
        join(&mut clients[2], "small:2").await["event"],
        "user_joined"
    );
    for c in clients.iter_mut() {
        assert_eq!(join(c, "big").await["event"], "user_joined");
    }
    // c was refused, not half-joined: it may not post there.
    post(&mut clients[2], "small:1", "x").await;
    assert_eq!(clients[2].recv_event("error").await["code"], "not_in_room");
    // A place frees: c gets in.
    clients[1]
        .send_json(json!({"type":"leave_room","room":"small:1"}))
        .await;
    clients[1].recv_event("user_left").await;
    let joined = join(&mut clients[2], "small:1").await;
    assert_eq!(joined["event"], "user_joined", "{joined}");
    assert_eq!(joined["user_id"], "c");
}

#[tokio::test]
async fn the_first_matching_entry_wins_whole_and_unmatched_rooms_get_the_default() {
    let entries = [
        "vip:*:max_members=1",
        "*:*:announce=off,max_members=5",
        "vip:gold:post=anyone",
    ];
    let node = TestNode::start(config("n1", &entries)).await;
    let (mut a, _) = Client::connect_welcomed(&node.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&node.ws_url("b")).await;
    // vip:gold matches the first entry (limit 1; announce and post the defaults), not the
    // third, which comes too late, nor the second, whose announce=off it does not inherit.
    assert_eq!(join(&mut a, "vip:gold").await["event"], "user_joined");
    assert_eq!(join(&mut b, "vip:gold").await["code"], "room_full");
    post(&mut b, "vip:gold", "x").await;
    let refused = b.recv().await;
    assert_eq!(refused["code"], "not_in_room");
    assert!(
        refused.get("room").is_none(),
        "a post's error is named by its id, not its room: {refused}"
    );
    // team:1 matches the second entry: no announcement reaches a when b joins.
    assert_eq!(join(&mut a, "team:1").await["event"], "user_joined");
    assert_eq!(join(&mut b, "team:1").await["event"], "user_joined");
    post(&mut b, "team:1", "first").await;
    assert_eq!(a.recv().await["content"], "first");
    assert_eq!(b.recv().await["content"], "first", "the sender's echo");
    // lobby matches no entry: the built-in default (announced, members post, no limit).
    assert_eq!(join(&mut a, "lobby").await["event"], "user_joined");
    assert_eq!(join(&mut b, "lobby").await["event"], "user_joined");
    assert_eq!(a.recv().await["event"], "user_joined");

    let (status, body) = node.get("/rooms").await;
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    let room = |name: &str| {
        view["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {view}"))
    };
    assert_eq!(room("vip:gold")["pattern"], "vip:*");
    assert_eq!(room("vip:gold")["members"], 1);
    assert_eq!(room("vip:gold")["options"]["max_members"], 1);
    assert_eq!(room("team:1")["pattern"], "*:*");
    assert_eq!(room("team:1")["options"]["announce"], false);
    assert_eq!(room("team:1")["members"], 2);
    assert_eq!(room("lobby")["pattern"], "*");
    assert_eq!(
        room("lobby")["options"],
        json!({"post":"members","announce":true,"max_members":null,"history":null,
               "history_ttl_ms":null,"presence":null})
    );
    assert_eq!(view["total"], 3);
    assert_eq!(view["truncated"], false);
}

#[tokio::test]
async fn the_admin_views_show_options_bounded_and_the_hash_follows_the_options() {
    let entries = ["news:*:history=500,history_ttl=2h,presence=off,announce=off"];
    let node = TestNode::start(config("n1", &entries)).await;
    let (mut a, _) = Client::connect_welcomed(&node.ws_url("a")).await;
    let (mut b, _) = Client::connect_welcomed(&node.ws_url("b")).await;
    for room in ["news:1", "news:2", "other"] {
        join(&mut a, room).await;
    }
    join(&mut b, "news:2").await;

    let (status, body) = node.get("/rooms?limit=1").await;
    assert_eq!(status, 200);
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["total"], 3);
    assert_eq!(view["truncated"], true);
    assert_eq!(
        view["rooms"],
        json!([{"room":"news:2","members":2,"pattern":"news:*","options":{
            "post":"members","announce":false,"max_members":null,"history":500,
            "history_ttl_ms":7_200_000,"presence":false}}]),
        "the most members first"
    );
    for bad in ["/rooms?limit=0", "/rooms?limit=1001", "/rooms?limit=x"] {
        let (status, body) = node.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("bad_request"), "{body}");
    }

    let stats = node.stats().await;
    assert_eq!(stats["room_options"][0]["pattern"], "news:*");
    assert_eq!(
        stats["room_options"][1]["pattern"], "*",
        "the default comes last"
    );
    let hash = stats["room_options_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 16);
    let (_, health) = node.get("/healthz").await;
    assert_eq!(
        serde_json::from_str::<Value>(&health).unwrap()["room_options"],
        hash.as_str()
    );
    // The same options written another way hash the same; other options do not.
    let same = TestNode::start(config(
        "n2",
        &["news:*: presence=off, announce=off,history_ttl=120m,history=500,post=members"],
    ))
    .await;
    assert_eq!(same.stats().await["room_options_hash"], hash.as_str());
    let other = TestNode::start(config("n3", &[])).await;
    assert_ne!(other.stats().await["room_options_hash"], hash.as_str());
}

#[tokio::test]
async fn too_many_entries_stop_the_node_at_start() {
    let entries: Vec<String> = (0..65).map(|i| format!("r{i}:announce=off")).collect();
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = ringcast_node::run(listener, config("n1", &refs), rx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 64"), "{err}");
}

/// The node binary with `args` and `env`, `--check-config`: exit code and stderr.
fn check_config(args: &[&str], env: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast-node"));
    cmd.arg("--check-config")
        .args(args)
        .env_remove("RINGCAST_ROOM_OPTIONS");
    if let Some(v) = env {
        cmd.env("RINGCAST_ROOM_OPTIONS", v);
    }
    let out = cmd.output().expect("run ringcast-node");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_options_fail_at_start_naming_the_entry_and_good_ones_pass() {
    let (code, out, err) = check_config(
        &[
            "--room-options",
            "support:*:post=anyone,announce=off",
            "--room-options",
            "live:*:announce=off,max_members=50000,history=100,history_ttl=10m,presence=off",
        ],
        None,
    );
    assert_eq!((code, out.trim()), (0, "config ok"), "{err}");
    let (code, out, err) = check_config(&[], Some("support:*:post=anyone;live:*:announce=off"));
    assert_eq!((code, out.trim()), (0, "config ok"), "{err}");

    for (entry, says) in [
        ("support:*:colour=red", "unknown key"),
        ("support:*:announce=loud", "on or off"),
        ("support:*:max_members=0", "max_members"),
        ("support:*:history_ttl=forever", "history_ttl"),
        ("a b:announce=off", "whitespace"),
        ("justaword", "PATTERN:key=value"),
    ] {
        for via_env in [false, true] {
            let (code, _, err) = if via_env {
                check_config(&[], Some(&format!("ok:*:announce=off;{entry}")))
            } else {
                check_config(&["--room-options", entry], None)
            };
            assert_eq!(code, 2, "{entry}: {err}");
            assert!(err.contains(entry), "{entry} not named: {err}");
            assert!(err.contains(says), "{entry}: {err}");
        }
    }
    let many: Vec<String> = (0..65).map(|i| format!("r{i}:")).collect();
    let (code, _, err) = check_config(&[], Some(&many.join(";")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at most 64"), "{err}");
}
