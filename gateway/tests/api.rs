//! The server API through the real gateway to two `ringcast-node` processes on a real Redis:
//! every method and error a backend can meet, keys (none, wrong, rotated), the API on its own
//! listener, publishes delivered to members on both nodes with offsets recovery understands,
//! and a batch whose failing command fails alone. Every answer is recorded and checked against
//! the OpenAPI document (`docs/api/openapi.json`) by `check_openapi` at the end.

mod support;

use std::net::SocketAddr;
use std::sync::Mutex;

use ringcast_testkit::{http_raw, Client, RedisServer};
use serde_json::{json, Value};
use support::{NodeProcess, TestGateway};

/// Every (method path, status, body) answered in this file, for the OpenAPI check.
static SEEN: Mutex<Vec<(String, u16, Value)>> = Mutex::new(Vec::new());

async fn call_with(
    addr: SocketAddr,
    verb: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = auth.map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    let req = format!(
        "{verb} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http_raw(addr, &req).await;
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    SEEN.lock()
        .unwrap()
        .push((path.to_owned(), status, v.clone()));
    (status, v)
}

async fn call(addr: SocketAddr, method: &str, params: Value) -> (u16, Value) {
    call_with(
        addr,
        "POST",
        &format!("/api/{method}"),
        Some("k2"),
        &params.to_string(),
    )
    .await
}

struct Cluster {
    redis: RedisServer,
    _nodes: Vec<NodeProcess>,
    gw: TestGateway,
}

async fn cluster(gateway_args: &[&str]) -> Cluster {
    let redis = RedisServer::start();
    let node_args = [
        "--api-key",
        "k1,k2",
        "--announce-connections=false",
        "--room-options",
        "nohist*:history=0;quiet*:presence=off",
    ];
    let (nodes, gw) =
        support::nodes_behind_gateway(&redis.url(), &["a1", "a2"], &node_args, gateway_args).await;
    Cluster {
        redis,
        _nodes: nodes,
        gw,
    }
}

/// Members of `room` through the gateway, until one lands on each node.
async fn members_on_both_nodes(gw: &TestGateway, room: &str) -> Vec<Client> {
    let mut members = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..40 {
        let id = format!("m{i}");
        let mut c = Client::connect(&gw.ws_url(&id)).await;
        let node = c.recv_event("welcome").await["node"].to_string();
        c.send_json(json!({"type":"join_room","room":room})).await;
        let ack = c.recv_event("user_joined").await;
        assert_eq!(ack["user_id"], id.as_str());
        members.push(c);
        nodes.insert(node);
        if members.len() >= 6 && nodes.len() == 2 {
            return members;
        }
    }
    panic!("40 clients, and not on both nodes: {nodes:?}");
}

/// Reads until a chat arrives; returns it.
async fn chat(c: &mut Client) -> Value {
    c.recv_event("chat").await
}

#[tokio::test]
async fn every_method_and_error_through_the_gateway() {
    let c = cluster(&["--api-key", "k1", "--api-key", "k2"]).await;
    let gw = c.gw.addr;
    let mut members = members_on_both_nodes(&c.gw, "news").await;

    // Keys: none, wrong, either of the rotated pair.
    let (s, e) = call_with(gw, "POST", "/api/info", None, "{}").await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (401, &json!("unauthorized")),
        "{e}"
    );
    let (s, _) = call_with(gw, "POST", "/api/info", Some("nope"), "{}").await;
    assert_eq!(s, 401);
    for key in ["k1", "k2"] {
        // No body is no params.
        let (s, v) = call_with(gw, "POST", "/api/info", Some(key), "").await;
        assert_eq!(s, 200, "{v}");
        assert!(v["result"]["version"].is_string(), "{v}");
    }

    // publish: delivered on both nodes as a room chat from "server", numbered.
    let (s, v) = call(gw, "publish", json!({"room":"news","data":{"headline":1}})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["offset"], 1, "{v}");
    let epoch = v["result"]["epoch"].clone();
    for m in &mut members {
        let got = chat(m).await;
        assert_eq!(
            (&got["from"], &got["content"], &got["offset"], &got["epoch"]),
            (&json!("server"), &json!({"headline":1}), &json!(1), &epoch)
        );
    }
    // With an id and a from: a retry is stored once.
    let p = json!({"room":"news","data":"x","from":"backend","id":"order-7"});
    let (_, first) = call(gw, "publish", p.clone()).await;
    let (_, again) = call(gw, "publish", p).await;
    assert_eq!(first["result"], again["result"], "{first} {again}");
    assert_eq!(first["result"]["offset"], 2);
    for m in &mut members {
        let got = chat(m).await;
        assert_eq!(
            (&got["from"], &got["offset"]),
            (&json!("backend"), &json!(2))
        );
    }
    // A room without history: published, no offset.
    let (s, v) = call(gw, "publish", json!({"room":"nohist-1","data":1})).await;
    assert_eq!((s, &v["result"]), (200, &json!({})), "{v}");

    // broadcast reaches everyone; send reaches one client id, or is 404 when it is offline.
    let (s, _) = call(gw, "broadcast", json!({"data":"all"})).await;
    assert_eq!(s, 200);
    for m in &mut members {
        let got = chat(m).await;
        assert_eq!((&got["content"], got.get("room")), (&json!("all"), None));
    }
    let (s, _) = call(gw, "send", json!({"client_id":"m0","data":"dm"})).await;
    assert_eq!(s, 200);
    let dm = members[0].recv_event("direct_message").await;
    assert_eq!(
        (&dm["from"], &dm["content"]),
        (&json!("server"), &json!("dm"))
    );
    let (s, e) = call(gw, "send", json!({"client_id":"nobody","data":"dm"})).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (404, &json!("target_offline")),
        "{e}"
    );

    // presence, presence_stats, history: the WebSocket shapes.
    let (_, p) = call(gw, "presence", json!({"room":"news"})).await;
    assert_eq!(p["result"]["count"], members.len(), "{p}");
    let (_, p) = call(gw, "presence_stats", json!({"room":"news"})).await;
    assert_eq!(p["result"]["clients"], members.len(), "{p}");
    let (_, h) = call(
        gw,
        "history",
        json!({"room":"news","since":{"offset":0,"epoch":epoch}}),
    )
    .await;
    let offsets: Vec<&Value> = h["result"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["offset"])
        .collect();
    assert_eq!(offsets, [&json!(1), &json!(2)], "{h}");
    assert_eq!(h["result"]["complete"], true);

    // batch: in order, the failing command alone.
    let batch = json!({"commands":[
        {"method":"publish","params":{"room":"news","data":"b1"}},
        {"method":"publish","params":{"data":"no room"}},
        {"method":"nosuch","params":{}},
        {"method":"publish","params":{"room":"news","data":"b3"}},
    ]});
    let (s, b) = call(gw, "batch", batch).await;
    assert_eq!(s, 200, "{b}");
    let r = b["replies"].as_array().unwrap();
    assert_eq!(r[0]["result"]["offset"], 3, "{b}");
    assert_eq!(r[1]["error"]["code"], "bad_request", "{b}");
    assert!(
        r[1]["error"]["message"].as_str().unwrap().contains("room"),
        "{b}"
    );
    assert_eq!(r[2]["error"]["code"], "unknown_method", "{b}");
    assert_eq!(r[3]["result"]["offset"], 4, "{b}");
    for m in &mut members {
        assert_eq!(chat(m).await["content"], "b1");
        assert_eq!(chat(m).await["content"], "b3");
    }

    // subscribe / unsubscribe: server-side membership, with the usual ack and announcements.
    let (s, v) = call(gw, "subscribe", json!({"client_id":"m0","room":"vip"})).await;
    assert_eq!(s, 200, "{v}");
    let ack = members[0].recv_event("user_joined").await;
    assert_eq!(
        (&ack["user_id"], &ack["room"]),
        (&json!("m0"), &json!("vip"))
    );
    let (s, _) = call(gw, "publish", json!({"room":"vip","data":"for vip"})).await;
    assert_eq!(s, 200);
    assert_eq!(chat(&mut members[0]).await["content"], "for vip");
    let (_, r) = call(gw, "rooms", json!({"pattern":"v*"})).await;
    assert_eq!(
        r["result"],
        json!({"rooms":[{"room":"vip","members":1}],"truncated":false}),
        "{r}"
    );
    let (_, r) = call(gw, "rooms", json!({})).await;
    assert_eq!(
        r["result"]["rooms"].as_array().unwrap().len(),
        2,
        "news and vip: {r}"
    );
    let (s, _) = call(gw, "unsubscribe", json!({"client_id":"m0","room":"vip"})).await;
    assert_eq!(s, 200);
    let left = members[0].recv_event("user_left").await;
    assert_eq!(
        (&left["user_id"], &left["room"]),
        (&json!("m0"), &json!("vip"))
    );
    for method in ["subscribe", "unsubscribe"] {
        let (s, e) = call(gw, method, json!({"client_id":"nobody","room":"vip"})).await;
        assert_eq!(
            (s, &e["error"]["code"]),
            (404, &json!("target_offline")),
            "{e}"
        );
    }
    // info: every node and the connections on each (as of its last renewal).
    let (_, i) = call(gw, "info", json!({})).await;
    let nodes = i["result"]["nodes"].as_array().unwrap();
    let mut ids: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a1", "a2"], "{i}");
    // disconnect: closed with the code and reason given; bad codes refused.
    let (s, e) = call(gw, "disconnect", json!({"client_id":"m1","code":3000})).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (400, &json!("bad_request")),
        "{e}"
    );
    let (s, _) = call(
        gw,
        "disconnect",
        json!({"client_id":"m1","code":4321,"reason":"banned"}),
    )
    .await;
    assert_eq!(s, 200);
    let mut m1 = members.remove(1);
    assert_eq!(
        m1.expect_close(std::time::Duration::from_secs(5)).await,
        Some(4321)
    );
    let (s, e) = call(gw, "disconnect", json!({"client_id":"nobody"})).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (404, &json!("target_offline")),
        "{e}"
    );

    // Errors.
    let (s, e) = call(gw, "nosuch", json!({})).await;
    assert_eq!((s, &e["error"]["code"]), (404, &json!("unknown_method")));
    let (s, e) = call(gw, "presence", json!({"room":"quiet-1"})).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (400, &json!("presence_disabled")),
        "{e}"
    );
    let since = json!({"offset":999,"epoch":epoch});
    let (s, e) = call(gw, "history", json!({"room":"news","since":since})).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (400, &json!("bad_request")),
        "{e}"
    );
    let (s, e) = call(gw, "publish", json!({"room":"news"})).await;
    assert_eq!((s, &e["error"]["code"]), (400, &json!("bad_request")));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("data"),
        "{e}"
    );
    let (s, _) = call_with(gw, "POST", "/api/publish", Some("k1"), "not json").await;
    assert_eq!(s, 400);
    let (s, e) = call_with(gw, "GET", "/api/info", Some("k1"), "").await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (405, &json!("method_not_allowed"))
    );
    let big = json!({"room":"news","data":"x".repeat(2 << 20)}).to_string();
    let (s, e) = call_with(gw, "POST", "/api/publish", Some("k1"), &big).await;
    assert_eq!((s, &e["error"]["code"]), (413, &json!("too_large")));
    let over = json!({"room":"news","data":"x".repeat(70_000)});
    let (s, e) = call(gw, "publish", over).await;
    assert_eq!(s, 400, "data over --max-message-bytes: {e}");

    // Redis down: 503, and the members stay served once it is back.
    let mut redis = c.redis;
    redis.kill();
    let (s, e) = call(gw, "publish", json!({"room":"news","data":"lost"})).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (503, &json!("bus_unavailable")),
        "{e}"
    );
    drop(redis);
    check_openapi();
}

#[tokio::test]
async fn no_key_means_no_api_and_api_listen_keeps_it_off_the_public_port() {
    let off = cluster(&[]).await;
    let (s, e) = call(off.gw.addr, "info", json!({})).await;
    assert_eq!((s, &e["error"]["code"]), (404, &json!("not_found")), "{e}");

    let port = ringcast_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let apart = cluster(&["--api-key", "k2", "--api-listen", &listen]).await;
    let (s, _) = call(apart.gw.addr, "info", json!({})).await;
    assert_eq!(s, 404, "not on the public port");
    let api: SocketAddr = listen.parse().unwrap();
    let (s, v) = call(api, "info", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = call_with(api, "GET", "/healthz", None, "").await;
    assert_eq!(s, 404, "the API listener serves the API only");

    // No node to take the call: 502, said to be the node side's fault.
    let lonely = TestGateway::start(&["--node", "x=127.0.0.1:1", "--api-key", "k2"]).await;
    let (s, e) = call(lonely.addr, "info", json!({})).await;
    assert_eq!(
        (s, &e["error"]["code"]),
        (502, &json!("node_unavailable")),
        "{e}"
    );
    check_openapi();
}

/// Checks every recorded answer against the OpenAPI document with a real validator
/// (`openapi-core`, from PyPI), and that every path answered is in the document.
fn check_openapi() {
    let seen = SEEN.lock().unwrap().clone();
    let cases: Vec<Value> = seen
        .iter()
        .filter(|(path, _, _)| path.starts_with("/api/"))
        .map(|(path, status, body)| json!({"path": path, "status": status, "body": body}))
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("ringcast-api-{}-{n}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .arg(dir.join("docs/api/check_openapi.py"))
        .arg(dir.join("docs/api/openapi.json"))
        .arg(&file)
        .output()
        .expect("python3 is needed (the README's test command installs openapi-core)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "answers that break the OpenAPI document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
