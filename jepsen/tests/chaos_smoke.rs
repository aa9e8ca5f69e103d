//! The short chaos run CI makes: three real `psubd node` processes under kill, pause,
//! power loss of every node at once (`power-all`, on the fault file system) and — where
//! network namespaces are allowed — partition faults for 60 s, then the checker. Any
//! anomaly fails the test; the run's directory is kept and printed. As root with
//! /dev/fuse (CI), the run must have used the fault file system and injected a power-all.
//!
//! Needs the node binary next to the harness (`cargo test --workspace` builds both).

use std::process::Command;

/// Seconds of workload under faults.
const CHAOS_SECONDS: &str = "60";

/// The seed CI runs; its schedule is logged in the run's `schedule.json`. Its schedule cuts
/// every node's power within the run, with or without namespaces (a unit test in
/// `nemesis.rs` holds it to that).
const SEED: &str = "4";

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
            "kill,pause,partition,power-all",
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
    // SAFETY: geteuid has no preconditions.
    let fuse_expected =
        unsafe { libc::geteuid() } == 0 && std::path::Path::new("/dev/fuse").exists();
    if fuse_expected {
        let schedule: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("schedule.json")).expect("schedule.json"),
        )
        .expect("schedule.json is JSON");
        assert_eq!(
            schedule["faultfs"], true,
            "root with /dev/fuse, yet the run did not use the fault file system: {}",
            schedule["faultfs_fallback_reason"]
        );
        let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history");
        let power_all_injected = history.lines().any(|l| {
            l.contains(r#""f":"fault""#)
                && l.contains(r#""type":"ok""#)
                && l.contains(r#""window":"power-all""#)
        });
        assert!(
            power_all_injected,
            "no power-all fault was injected in {}",
            out.display()
        );
    } else {
        println!("not root or no /dev/fuse: power faults were skipped (see schedule.json)");
    }
    let _ = std::fs::remove_dir_all(&out);
}
