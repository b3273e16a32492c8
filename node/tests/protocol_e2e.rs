//! The whole client protocol table, driven by an independent client: python `websockets`
//! running `tests/e2e/protocol_scenario.py` against a real `ringcast-node` process.
//! Fails loudly when python3 or the `websockets` package is missing (the README's test command
//! installs both).

use std::process::Command;

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_client_runs_the_protocol_scenario_against_a_node_process() {
    let (child, addr) =
        ringcast_testkit::spawn_server(env!("CARGO_BIN_EXE_ringcast-node"), &["--node-id", "e2e"]);
    let node = Killed(child);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/e2e/protocol_scenario.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("ws://{addr}/ws"))
        .output()
        .expect("python3 is required for the independent-client test (see README)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "protocol scenario failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    drop(node);
}
