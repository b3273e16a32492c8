//! `presence` against real nodes (memory bus) in this process: the count and list every answer
//! gives, across nodes, truncated, and a node that keeps no presence.

mod support;

use ringcast_node::{Config, MemoryBroker};
use ringcast_testkit::TestNode;
use support::{loadtest, node_with};

/// A node config whose rate limit does not stop back-to-back requests.
fn unlimited(c: &mut Config) {
    c.rate_limit_per_sec = 1_000_000.0;
    c.rate_limit_burst = 1_000_000.0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_every_member_and_asker() {
    let (_node, url) = node_with(unlimited).await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "presence",
        "--members",
        "6",
        "--askers",
        "2",
        "--duration-secs",
        "0.3",
    ])
    .await;
    let v = run.ok_json();
    assert_eq!(v["scenario"], "presence");
    assert_eq!(v["expected_count"], 8, "{v}");
    assert_eq!(v["count"], 8, "{v}");
    assert_eq!(v["first_answer"]["count"], 8, "{v}");
    assert_eq!(v["listed"], 8, "{v}");
    assert_eq!(v["truncated"], false, "{v}");
    assert_eq!(v["wrong_answers"], 0, "{v}");
    assert!(v["answers"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["latency"]["count"], v["answers"], "{v}");
    assert_eq!(v["members_dropped"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_two_nodes_is_truncated_past_the_limit() {
    let broker = MemoryBroker::new();
    let mut config = Config::for_tests();
    unlimited(&mut config);
    config.presence_max_members = 3;
    let a = TestNode::start_on(config.clone(), broker.clone()).await;
    let b = TestNode::start_on(config, broker).await;
    let urls = format!("{},{}", a.ws_url(""), b.ws_url(""));
    let run = loadtest(&[
        "--url",
        &urls,
        "--json",
        "presence",
        "--members",
        "5",
        "--rate",
        "50",
        "--duration-secs",
        "0.3",
    ])
    .await;
    let v = run.ok_json();
    assert_eq!(v["count"], 6, "{v}");
    assert_eq!(v["listed"], 3, "{v}");
    assert_eq!(v["truncated"], true, "{v}");
    assert_eq!(v["truncated_answers"], v["answers"], "{v}");
    assert!(v["answers"].as_u64().unwrap() >= 10, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_presence_is_reported_and_joins_still_count() {
    let (_node, url) = node_with(|c| {
        unlimited(c);
        c.presence = false;
    })
    .await;
    let args = ["--url", &url, "--json", "presence", "--members", "4"];
    let run = loadtest(&[&args[..], &["--duration-secs", "0.2"]].concat()).await;
    assert_eq!(
        run.code, 3,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let v = run.json();
    assert!(
        v["errors"]["presence_disabled"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["answers"], 0, "{v}");
    assert!(
        run.stderr.contains("answered with an error"),
        "{}",
        run.stderr
    );

    // With no askers only the join rate is measured, and that works without presence.
    let v = loadtest(&[&args[..], &["--askers", "0"]].concat())
        .await
        .ok_json();
    assert_eq!(v["requests"], 0, "{v}");
    assert!(v["joins_per_sec"].as_f64().unwrap() > 0.0, "{v}");
}
