//! `resume` against a real node (memory bus) in this process: every client rejoins with
//! `since` and gets exactly what it missed; a node that keeps too little history is reported
//! as clients not recovered, with exit status 3. Never asserts speed.

mod support;

use support::{loadtest, node_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_exactly_what_it_missed() {
    let (node, url) = node_with(|_| {}).await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "resume",
        "--clients",
        "50",
        "--missed",
        "20",
    ])
    .await;
    let v = run.ok_json();
    assert_eq!(v["scenario"], "resume");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["clients"], 50);
    assert_eq!(v["rooms"], 1);
    assert_eq!(v["missed_per_client"], 20);
    assert_eq!(v["expected_replayed"], 1000);
    assert_eq!(v["replayed"], 1000, "{v}");
    assert_eq!(v["caught_up"], 50, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["failures"], serde_json::json!({}));
    for lat in ["catch_up_from_join", "catch_up_from_connect"] {
        let l = &v[lat];
        assert_eq!(l["count"], 50, "{lat} in {v}");
        assert!(l["p50_us"].as_u64() <= l["p99_us"].as_u64(), "{v}");
        assert!(l["p99_us"].as_u64() <= l["p999_us"].as_u64(), "{v}");
        assert!(l["p999_us"].as_u64() <= l["max_us"].as_u64(), "{v}");
    }
    // The connect comes before the join, so its wait is the longer one.
    assert!(
        v["catch_up_from_connect"]["max_us"].as_u64() >= v["catch_up_from_join"]["max_us"].as_u64(),
        "{v}"
    );
    assert!(v["all_caught_up_secs"].as_f64().unwrap() > 0.0, "{v}");
    node.stop().await.expect("node stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_rooms_get_only_their_rooms_messages() {
    let (_node, url) = node_with(|c| c.announce_connections = false).await;
    let run = loadtest(&[
        "--url",
        &url,
        "resume",
        "--clients",
        "10",
        "--rooms",
        "3",
        "--missed",
        "15",
        "--catch-up-timeout-secs",
        "5",
    ])
    .await;
    assert_eq!(
        run.code, 0,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    assert!(
        run.stdout.contains("caught up 10, failed 0"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("replayed 150 of 150"), "{}", run.stdout);
    assert!(run.stdout.contains("p99.9"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_too_short_for_what_was_missed_fails_as_not_recovered() {
    let (_node, url) = node_with(|c| c.history_size = 5).await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "resume",
        "--clients",
        "8",
        "--missed",
        "20",
    ])
    .await;
    assert_eq!(
        run.code, 3,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let v = run.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["caught_up"], 0, "{v}");
    assert_eq!(v["failed"], 8, "{v}");
    assert_eq!(v["failures"]["not_recovered"]["count"], 8, "{v}");
    assert!(run.stderr.contains("not_recovered"), "{}", run.stderr);
}
