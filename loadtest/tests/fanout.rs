//! `fanout` against a real node (memory bus) in this process: counts add up, nothing is lost,
//! and the JSON result has the documented shape. Never asserts speed.

mod support;

use support::{loadtest, node_with};

fn assert_clean(v: &serde_json::Value) {
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]));
    assert!(v["sent"].as_u64().unwrap() > 0, "{v}");
    assert!(v["expected"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["received"], v["expected"], "{v}");
    assert_eq!(v["distinct"], v["expected"], "{v}");
    for zero in [
        "lost",
        "duplicates",
        "reordered",
        "subscribers_with_loss",
        "disconnected_subscribers",
        "rate_limited",
    ] {
        assert_eq!(v[zero], 0, "{zero} in {v}");
    }
    let lat = &v["latency"];
    assert_eq!(lat["count"], v["received"], "{v}");
    for k in ["p50_us", "p99_us", "p999_us", "max_us", "mean_us"] {
        assert!(lat[k].is_number(), "latency.{k} in {v}");
    }
    assert!(lat["p50_us"].as_u64() <= lat["p99_us"].as_u64());
    assert!(lat["p99_us"].as_u64() <= lat["max_us"].as_u64());
    assert!(v["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_fanout_loses_nothing_with_announcements_on() {
    // Default config: every connect is announced to everyone, which the loadtest must ignore.
    let (node, url) = node_with(|_| {}).await;
    let run = loadtest(&["--url", &url, "--json", "fanout", "--quick"]).await;
    let v = run.ok_json();
    assert_clean(&v);
    assert_eq!(v["subscribers"], 20);
    assert_eq!(v["urls"], serde_json::json!([url]));
    assert_eq!(v["rooms"], 2);
    assert_eq!(v["publishers"], 2);
    // Each publisher's messages reach the 10 subscribers of its room.
    assert_eq!(
        v["expected"].as_u64().unwrap(),
        v["sent"].as_u64().unwrap() * 10,
        "{v}"
    );
    // Publishers receive their own room's messages too: one each per message sent.
    assert_eq!(v["publisher_echoes"], v["sent"], "{v}");
    node.stop().await.expect("node stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_fanout_with_recover_counts_the_same_and_reports_no_recovery_without_faults() {
    let (node, url) = node_with(|_| {}).await;
    let run = loadtest(&["--url", &url, "--json", "fanout", "--quick", "--recover"]).await;
    let v = run.ok_json();
    assert_clean(&v);
    // Accepted is what each publisher saw stored: every message, each reaching 10 subscribers.
    assert_eq!(
        v["expected"].as_u64().unwrap(),
        v["sent"].as_u64().unwrap() * 10,
        "{v}"
    );
    let r = &v["recover"];
    for zero in [
        "reconnects",
        "rejoins_recovered",
        "rejoins_not_recovered",
        "history_resets",
        "refused",
    ] {
        assert_eq!(r[zero], 0, "recover.{zero} in {v}");
    }
    // Without --recover the JSON has no recovery section.
    let plain = loadtest(&["--url", &url, "--json", "fanout", "--quick"]).await;
    assert!(plain.ok_json().get("recover").is_none());
    assert!(plain.ok_json().get("acks").is_none());
    node.stop().await.expect("node stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_rooms_count_each_subscribers_own_publishers() {
    let (_node, url) = node_with(|c| {
        c.announce_connections = false;
    })
    .await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "--source-addrs",
        "none",
        "fanout",
        "--subscribers",
        "7",
        "--rooms",
        "3",
        "--publishers",
        "4",
        "--rate",
        "30",
        "--duration-secs",
        "0.5",
    ])
    .await;
    let v = run.ok_json();
    assert_clean(&v);
    // Rooms hold 3, 2, 2 subscribers; publishers 0 and 3 share room 0.
    let sent = v["sent"].as_u64().unwrap();
    let expected = v["expected"].as_u64().unwrap();
    assert!(expected >= sent * 2 && expected <= sent * 3, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_summary_by_default() {
    let (_node, url) = node_with(|_| {}).await;
    let run = loadtest(&["--url", &url, "fanout", "--quick"]).await;
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(run.stdout.contains("deliveries/s"), "{}", run.stdout);
    assert!(run.stdout.contains("lost 0"), "{}", run.stdout);
    assert!(run.stdout.contains("p99"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_subscribers_answer_pings_and_are_not_closed_as_idle() {
    // Subscribers send nothing after their join; only their pongs keep the node from closing
    // them after 2 s without a frame.
    let (node, url) = node_with(|c| {
        c.announce_connections = false;
        c.ping_interval_secs = 1;
        c.idle_timeout_secs = 2;
    })
    .await;
    let run = loadtest(&[
        "--url",
        &url,
        "--json",
        "fanout",
        "--subscribers",
        "5",
        "--rooms",
        "1",
        "--publishers",
        "1",
        "--rate",
        "20",
        "--duration-secs",
        "4",
    ])
    .await;
    let v = run.ok_json();
    assert_clean(&v);
    node.stop().await.expect("node stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_fanout_with_ids_gets_every_message_acked_with_and_without_history() {
    // history 500: acked once stored (with offset); 0: acked once published.
    for history in [500, 0] {
        let (node, url) = node_with(|c| {
            c.announce_connections = false;
            c.history_size = history;
        })
        .await;
        let run = loadtest(&["--url", &url, "--json", "fanout", "--quick", "--ids"]).await;
        let v = run.ok_json();
        assert_clean(&v);
        let acks = &v["acks"];
        assert_eq!(acks["sent_with_id"], v["sent"], "history {history}: {v}");
        assert_eq!(acks["acked"], v["sent"], "history {history}: {v}");
        assert_eq!(
            acks["errors"],
            serde_json::json!({}),
            "history {history}: {v}"
        );
        for zero in ["unacked", "duplicate_acks", "foreign"] {
            assert_eq!(acks[zero], 0, "acks.{zero}, history {history}: {v}");
        }
        // The ids do not disturb the echoes: one per message sent.
        assert_eq!(v["publisher_echoes"], v["sent"], "{v}");
        node.stop().await.expect("node stops cleanly");
    }
}
