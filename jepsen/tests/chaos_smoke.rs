//! The short chaos run CI makes: three real `psubd node` processes under kill,
//! pause and — where network namespaces are allowed — partition faults for 60 s, then
//! the checker. Any anomaly fails the test; the run's directory is kept and printed.
//!
//! Needs the node binary next to the harness (`cargo test --workspace` builds both).

use std::process::Command;

/// Seconds of workload under faults.
const CHAOS_SECONDS: &str = "60";

/// The seed CI runs; its schedule is logged in the run's `schedule.json`.
const SEED: &str = "1";

#[test]
fn short_chaos_run_finds_no_anomaly() {
    let harness = env!("CARGO_BIN_EXE_psubd-jepsen");
    let out = tempfile::Builder::new()
        .prefix("psubd-chaos-")
        .tempdir()
        .expect("a temporary directory for the run")
        .keep();
    let status = Command::new(harness)
        .args([
            "test",
            "--time",
            CHAOS_SECONDS,
            "--nemesis",
            "kill,pause,partition",
            "--seed",
            SEED,
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run the chaos harness");
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    println!("chaos run in {}: {}", out.display(), summary.trim());
    assert!(
        status.success(),
        "chaos run invalid or failed ({status}); history, results and node logs in {}\n{summary}",
        out.display()
    );
    let _ = std::fs::remove_dir_all(&out);
}
