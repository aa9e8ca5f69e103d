//! `psubd-jepsen`: `test` runs a chaos test against real psubd nodes; `check` re-checks a
//! recorded history. Both print a one-line summary and exit 1 when the run is invalid
//! (2 when the harness itself failed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use psubd_jepsen::checker;
use psubd_jepsen::nemesis::FaultKind;
use psubd_jepsen::run::{run_test, TestOptions};
use psubd_jepsen::JepsenError;

/// Chaos harness for psubd.
#[derive(Parser)]
#[command(name = "psubd-jepsen", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start three nodes, run the workload under faults, check the history.
    Test(TestArgs),
    /// Check a recorded history.jsonl and write results.json.
    Check(CheckArgs),
}

#[derive(Args)]
struct TestArgs {
    /// Seconds of workload under faults (the final phase comes after).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Fault kinds, comma-separated: kill, pause, partition, loss, lost-responses, power,
    /// power-all, disk-full, fsync-error, snapshot-crash, clock, membership (or `none`).
    #[arg(long, default_value = "kill,pause")]
    nemesis: String,
    /// Seed of the fault schedule and of the workload's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Writer processes; readers and group members are half as many (at least 1 and 2).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Number of topics.
    #[arg(long, default_value_t = 2)]
    topics: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Output directory: history.jsonl, results.json, schedule.json, logs/, data/.
    #[arg(long, default_value = "jepsen-out")]
    out: PathBuf,
    /// The psubd binary (default: next to this executable, then target/{release,debug}).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Run on loopback without network namespaces (no partition/loss faults).
    #[arg(long)]
    no_netns: bool,
    /// Leave out the consumer-group workload.
    #[arg(long)]
    no_groups: bool,
    /// Bytes of padding (a header) on every published record, so that records coalesced
    /// into one Raft entry outgrow a stored batch and are stored in several pieces.
    #[arg(long, default_value_t = 0)]
    pad_bytes: usize,
    /// Group members keep their member id after an unclear poll or commit and simply
    /// fetch again (presenting the last position token they received), as real clients
    /// do; by default they are abandoned and re-join.
    #[arg(long)]
    naive_members: bool,
    /// Writers attach a unique id to every record and send it again, with the same id,
    /// after an unknown outcome (504, or a transport error after sending); the checker
    /// then counts any value stored twice as an anomaly.
    #[arg(long)]
    idempotent_writers: bool,
    /// Run the nodes on plain directories instead of the fault file system (FUSE); the
    /// power, disk-full and fsync-error faults are then left out.
    #[arg(long)]
    no_faultfs: bool,
    /// Half the fault steps hold a second fault of another kind at the same time (never
    /// two network faults).
    #[arg(long)]
    overlap: bool,
    /// Snapshot interval of the nodes in Raft entries (`--snapshot-every-entries`, with 10
    /// entries kept behind a snapshot), so a follower cut off for seconds must catch up
    /// through a snapshot. Default: 100 with `snapshot-crash`, else the node's default.
    #[arg(long)]
    snapshot_every: Option<u64>,
}

#[derive(Args)]
struct CheckArgs {
    /// The history file.
    history: PathBuf,
    /// Where to write results.json (default: next to the history).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Test(a) => parse_kinds(&a.nemesis).and_then(|kinds| {
            run_test(TestOptions {
                time: Duration::from_secs(a.time),
                nemesis: kinds,
                seed: a.seed,
                concurrency: a.concurrency,
                topics: a.topics,
                partitions: a.partitions,
                out: a.out.clone(),
                binary: a.binary,
                no_netns: a.no_netns,
                no_groups: a.no_groups,
                pad_bytes: a.pad_bytes,
                naive_members: a.naive_members,
                idempotent_writers: a.idempotent_writers,
                no_faultfs: a.no_faultfs,
                overlap: a.overlap,
                snapshot_every: a.snapshot_every,
            })
            .map(|r| (r, a.out))
        }),
        Cmd::Check(a) => {
            let out = a.out.unwrap_or_else(|| {
                a.history
                    .parent()
                    .map(PathBuf::from)
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or_else(|| PathBuf::from("."))
            });
            checker::check_file(&a.history, &out).map(|r| (r, out))
        }
    };
    match result {
        Ok((results, out)) => {
            let line = results.summary();
            let _ = std::fs::write(out.join("summary.txt"), format!("{line}\n"));
            println!("{line}");
            if results.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("psubd-jepsen: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_kinds(s: &str) -> Result<Vec<FaultKind>, JepsenError> {
    if s.trim().is_empty() || s.trim() == "none" {
        return Ok(Vec::new());
    }
    let mut kinds = Vec::new();
    for part in s.split(',') {
        let k = FaultKind::parse(part)?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    Ok(kinds)
}
