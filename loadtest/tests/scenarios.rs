//! `connections`, `direct` and `churn` against real nodes (memory bus) in this process.

mod support;

use ringcast_node::{Config, MemoryBroker};
use ringcast_testkit::TestNode;
use support::{loadtest, node_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opens_holds_and_measures_memory() {
    let (_node, url) = node_with(|_| {}).await;
    // The node runs in this test process, so its PID is ours.
    let pid = std::process::id().to_string();
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "connections",
        "--connections",
        "40",
        "--connect-rate",
        "400",
        "--hold-secs",
        "0.3",
        "--server-pid",
        &pid,
    ])
    .await;
    let v = run.ok_json();
    assert_eq!(v["scenario"], "connections");
    assert_eq!(v["opened"], 40, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["dropped_while_held"], 0, "{v}");
    assert_eq!(v["connect_latency"]["count"], 40, "{v}");
    assert!(v["server_bytes_per_connection"].is_number(), "{v}");
    assert!(v["connects_per_sec"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reports_a_full_server_as_failures() {
    let (_node, url) = node_with(|c| {
        c.max_connections = 10;
    })
    .await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        // One attempt at a time: the node counts a connection only once its session runs, so
        // concurrent upgrades can overshoot --max-connections (reported to the lead).
        "--connect-concurrency",
        "1",
        "connections",
        "--connections",
        "15",
        "--connect-rate",
        "0",
        "--hold-secs",
        "0.2",
    ])
    .await;
    assert_eq!(
        run.code, 3,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let v = run.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["opened"], 10, "{v}");
    assert_eq!(v["failed"], 5, "{v}");
    assert_eq!(v["failures"]["http_status"]["count"], 5, "{v}");
    assert!(run.stderr.contains("connections failed"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_pairs_across_two_nodes_lose_nothing() {
    let broker = MemoryBroker::new();
    let a = TestNode::start_on(Config::for_tests(), broker.clone()).await;
    let b = TestNode::start_on(Config::for_tests(), broker).await;
    let urls = format!("{},{}", a.ws_url(""), b.ws_url(""));
    let run = loadtest(&[
        "--url",
        &urls,
        "--json",
        "direct",
        "--pairs",
        "6",
        "--rate",
        "20",
        "--duration-secs",
        "0.5",
    ])
    .await;
    let v = run.ok_json();
    assert_eq!(v["scenario"], "direct");
    assert!(v["sent"].as_u64().unwrap() >= 12, "{v}");
    assert_eq!(v["received"], v["sent"], "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["target_offline"], 0, "{v}");
    assert_eq!(v["latency"]["count"], v["received"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_connections_or_rooms_behind() {
    let (_node, url) = node_with(|_| {}).await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "churn",
        "--workers",
        "6",
        "--cycles",
        "4",
        "--rooms",
        "2",
    ])
    .await;
    let v = run.ok_json();
    assert_eq!(v["completed"], 24, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["leak_free"], true, "{v}");
    let stats = v["final_stats"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(stats["local_connections"], 0, "{v}");
    assert_eq!(stats["rooms"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_reports_a_server_that_does_not_settle() {
    // A client the loadtest does not know about stays connected: /stats never reaches zero.
    let (node, url) = node_with(|_| {}).await;
    let (_other, _) = ringcast_testkit::Client::connect_welcomed(&node.ws_url("bystander")).await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "churn",
        "--workers",
        "2",
        "--cycles",
        "2",
        "--settle-timeout-secs",
        "0.5",
    ])
    .await;
    assert_eq!(
        run.code, 3,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let v = run.json();
    assert_eq!(v["leak_free"], false, "{v}");
    assert!(
        run.stderr.contains("did not return to zero"),
        "{}",
        run.stderr
    );
}
