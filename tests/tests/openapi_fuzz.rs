//! schemathesis against a real node's `/openapi.json`: it generates requests from the
//! document (examples, boundary values, fuzzed and stateful sequences that create a topic
//! and then use it) and checks every answer. The run must exercise every operation and
//! find no server error (5xx), no status code, content type, header, body or SSE event
//! outside what the document says, and no invalid request accepted.
//!
//! `tests/schemathesis/schemathesis.toml` says what is not checked, and why: that every
//! schema-valid request is accepted (some rules are not expressible in the schema and get
//! their documented 4xx), and invalid lines of a publish stream (answered in the stream's
//! per-line reports, after its 200). It reads the long-lived streams as SSE, a few events
//! for two seconds at most. `psubd_ndjson.py` there teaches schemathesis NDJSON.
//!
//! schemathesis comes from PyPI into a virtualenv under the target directory, made on the
//! first run (needs `python3` with `venv` and pip, and PyPI). One node: every node serves the same document and
//! answers, and forwarding between nodes is tested elsewhere.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use psubd_tests::Cluster;
use tokio::process::Command;

const SCHEMATHESIS: &str = "4.32.5";
const RUN_LIMIT: Duration = Duration::from_secs(600);

async fn run(command: &mut Command, what: &str) -> Output {
    let output = tokio::time::timeout(RUN_LIMIT, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} took over {RUN_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    output
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The virtualenv's `schemathesis`, installed on first use.
async fn schemathesis() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{SCHEMATHESIS}"));
    let bin = venv.join("bin/schemathesis");
    let version = Command::new(&bin).arg("--version").output().await;
    if matches!(&version, Ok(out) if String::from_utf8_lossy(&out.stdout).contains(SCHEMATHESIS)) {
        return bin;
    }
    let made = run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    )
    .await;
    assert!(
        made.status.success(),
        "this test needs python3 with venv: {}",
        text(&made)
    );
    let installed = run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS}")),
        "pip install schemathesis",
    )
    .await;
    assert!(
        installed.status.success(),
        "pip could not install schemathesis {SCHEMATHESIS} (PyPI reachable?): {}",
        text(&installed)
    );
    bin
}

/// `label: N` or `label: N/M` of the run's summary, as (N, M).
fn summary_count(report: &str, label: &str) -> (usize, Option<usize>) {
    let line = report
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no '{label}' in the summary:\n{report}"));
    let mut numbers = line.trim().split('/').map(|n| n.trim().parse::<usize>());
    let first = numbers.next().and_then(Result::ok);
    let second = numbers.next().and_then(Result::ok);
    (
        first.unwrap_or_else(|| panic!("'{label}' has no count:\n{report}")),
        second,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let bin = schemathesis().await;
    let cluster = Cluster::start(1).await;
    let workdir = tempfile::tempdir().unwrap();
    let settings = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis");

    let mut command = Command::new(&bin);
    command
        .current_dir(workdir.path())
        .env("PYTHONPATH", &settings)
        .env("SCHEMATHESIS_HOOKS", "psubd_ndjson")
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(settings.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", cluster.http(1)))
        .args(["--max-examples", "20", "--seed", "1", "--workers", "1"])
        .args(["--request-timeout", "20", "--output-truncate", "false"]);
    let output = run(&mut command, "schemathesis run").await;
    let report = text(&output);

    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
    let (selected, all) = summary_count(&report, "Selected:");
    let (tested, _) = summary_count(&report, "Tested:");
    assert_eq!(Some(selected), all, "operations left out:\n{report}");
    assert_eq!(
        tested, selected,
        "operations selected but not run:\n{report}"
    );
}
