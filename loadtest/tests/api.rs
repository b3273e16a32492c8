//! `api` against a node in this process (memory bus, server API on): messages published over
//! kept-alive HTTP/1.1, one `publish` or a `batch` per call, reach every WebSocket member of
//! their room, with history on and off; a wrong key shows as refused calls.

mod support;

use ringcast_testkit::TestNode;
use support::{loadtest, node_with, Run};

const KEY: &str = "test-key";

/// A node with the API on (key [`KEY`]) whose `nohist*` rooms keep no history; its WebSocket
/// URL and its API's base URL.
async fn api_node() -> (TestNode, String, String) {
    let (node, url) = node_with(|c| {
        c.api.api_keys = vec![KEY.into()];
        c.room_options = vec![
            ringcast_node::room_options::parse_entry("nohist*:history=0")
                .expect("a valid room option"),
        ];
    })
    .await;
    let api = format!("http://{}", node.addr);
    (node, url, api)
}

/// Runs `api` with `extra` flags after the common ones.
async fn api_run(url: &str, api: &str, key: &str, global: &[&str], extra: &[&str]) -> Run {
    let mut args = vec!["--url", url, "--json"];
    args.extend_from_slice(global);
    args.extend_from_slice(&[
        "api",
        "--api-url",
        api,
        "--api-key",
        key,
        "--rooms",
        "3",
        "--members",
        "4",
        "--connections",
        "2",
        "--duration-secs",
        "0.5",
    ]);
    args.extend_from_slice(extra);
    loadtest(&args).await
}

/// Every accepted message reached each of the 4 members of its room, once, in order.
fn assert_delivered_to_all(v: &serde_json::Value) {
    let accepted = v["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{v}");
    assert_eq!(v["accepted"], v["sent"], "{v}");
    assert_eq!(v["calls_ok"], v["calls"], "{v}");
    assert_eq!(v["expected"], accepted * 4, "{v}");
    assert_eq!(v["received"], v["expected"], "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["reordered"], 0, "{v}");
    assert_eq!(v["latency"]["count"], v["received"], "{v}");
    assert_eq!(v["call_latency"]["count"], v["calls"], "{v}");
    assert_eq!(v["refused"], serde_json::json!({}), "{v}");
    assert!(v["calls_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_calls_reach_every_member_of_rooms_with_history() {
    let (_node, url, api) = api_node().await;
    let run = api_run(&url, &api, KEY, &[], &[]).await;
    let v = run.ok_json();
    assert_eq!(v["scenario"], "api");
    assert_eq!(v["method"], "publish");
    assert_eq!(v["subscribers"], 12, "{v}");
    // One message per call, each stored.
    assert_eq!(v["accepted"], v["calls"], "{v}");
    assert_eq!(v["with_offset"], v["accepted"], "{v}");
    assert_delivered_to_all(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_calls_reach_every_member_of_rooms_without_history() {
    let (_node, url, api) = api_node().await;
    let run = api_run(
        &url,
        &api,
        KEY,
        &["--id-prefix", "nohist-lt"],
        &["--batch", "25", "--rate", "40"],
    )
    .await;
    let v = run.ok_json();
    assert_eq!(v["method"], "batch");
    assert_eq!(v["batch"], 25);
    let calls = v["calls"].as_u64().unwrap();
    // 40 calls/s for 0.5 s: about 20, never more than the schedule allows.
    assert!((5..=21).contains(&calls), "{v}");
    assert_eq!(v["accepted"], calls * 25, "{v}");
    assert_eq!(v["with_offset"], 0, "{v}");
    assert_delivered_to_all(&v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_reported_as_refused_calls() {
    let (_node, url, api) = api_node().await;
    let run = api_run(&url, &api, "not-the-key", &[], &["--rate", "20"]).await;
    assert_eq!(
        run.code, 3,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let v = run.json();
    assert!(v["calls"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["refused"]["401 unauthorized"]["count"], v["calls"], "{v}");
    assert_eq!(v["accepted"], 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert!(
        run.stderr
            .contains("calls answered other than 200: 401 unauthorized"),
        "{}",
        run.stderr
    );
}
