//! `loadtest/bench.sh --quick` as the README's test command runs it: Redis, two nodes, the
//! gateway, nginx and a lone node really start, every scenario runs and nothing is lost.
//! Asserts only that it ran cleanly, never any speed; fails loudly when redis or nginx is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The directory holding this build's binaries (the loadtest's, and the node's and gateway's).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ringcast-loadtest"))
        .parent()
        .expect("a binary path has a parent directory")
        .to_path_buf()
}

#[test]
fn quick_bench_runs_every_scenario_and_loses_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bins = bin_dir();
    if !bins.join("ringcast-node").exists() || !bins.join("ringcast-gateway").exists() {
        // `cargo test --workspace` has built them already; a `-p ringcast-loadtest` run has not.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-p", "ringcast-node", "-p", "ringcast-gateway"])
            .status()
            .expect("cargo could not be started");
        assert!(
            status.success(),
            "building ringcast-node and ringcast-gateway failed"
        );
    }
    let out_file =
        std::env::temp_dir().join(format!("ringcast-bench-quick-{}.md", std::process::id()));
    let log_file = out_file.with_extension("log");
    let log = std::fs::File::create(&log_file).expect("creating the bench log file");
    let log2 = log.try_clone().expect("cloning the bench log file handle");
    let started = Instant::now();
    let mut child = Command::new("bash")
        .current_dir(&root)
        .arg("loadtest/bench.sh")
        .arg("--quick")
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(&out_file)
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("bash could not be started");
    // bench.sh bounds each run itself; this bounds the whole script (the quick mode's budget).
    let deadline = Duration::from_secs(120);
    while child.try_wait().expect("waiting for bench.sh").is_none() {
        if started.elapsed() > deadline {
            // SIGTERM first: bench.sh then stops the servers it started (its EXIT trap), which
            // a SIGKILL would leave running for the rest of the test run.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench.sh --quick did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().expect("waiting for bench.sh");
    let stderr = std::fs::read_to_string(&log_file).unwrap_or_default();
    let _ = std::fs::remove_file(&log_file);
    assert!(
        status.success(),
        "bench.sh --quick failed ({status}):\n{stderr}"
    );
    assert!(
        stderr.contains("every scenario ran, nothing lost"),
        "{stderr}"
    );
    let table = std::fs::read_to_string(&out_file).expect("bench.sh wrote no table");
    let _ = std::fs::remove_file(&out_file);
    let ok_rows = table.lines().filter(|l| l.ends_with("| ok |")).count();
    assert_eq!(ok_rows, 8, "expected 8 clean scenario rows:\n{table}");
    for via in ["gateway", "nginx", "memory bus", "no proxy"] {
        assert!(table.contains(via), "no {via} row:\n{table}");
    }
    assert!(table.contains(" 0 of "), "no loss column:\n{table}");
}
