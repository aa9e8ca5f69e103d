//! The README's walk-through, as a new user runs it: `psubd dev` on its default ports,
//! then every `sh` block of the "Walk-through" section pasted into bash verbatim — no
//! sleeps, no retries. Each command must answer 2xx, and its output must have the shape
//! the README shows on the `#>` lines under it. Then a graceful stop, and the nodes' logs
//! for the whole run must hold no WARN or ERROR line: a healthy cluster gives an operator
//! nothing to act on.
//!
//! This test binary holds no other cluster test: it uses the README's fixed ports (8081-8083,
//! 9081-9083), which must be free.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use psubd_tests::cluster::psubd_bin;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The README's ports: `psubd dev`'s defaults.
const PORTS: [u16; 6] = [8081, 8082, 8083, 9081, 9082, 9083];

/// How long `psubd dev` may take to say the cluster is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// How long the walk-through's commands may take in all (one long-poll waits 1 s).
const WALK_WITHIN: Duration = Duration::from_secs(120);

/// How long a graceful stop may take.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Printed between two commands' outputs, so each output can be told apart.
const MARKER: &str = "@@@ psubd walk-through command";

/// One command of the walk-through (with its continuation lines) and the output the
/// README shows for it.
#[derive(Debug)]
struct Step {
    command: String,
    shown: Vec<String>,
}

/// The `sh` blocks of the README's "Walk-through" section, split into commands.
fn walk_through_steps(readme: &str) -> Vec<Step> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Walk-through"))
        .expect("the README has a '## Walk-through' section");
    let mut steps: Vec<Step> = Vec::new();
    let mut in_sh = false;
    let mut continuing = false;
    for line in section.lines() {
        if !in_sh {
            in_sh = line.trim_end() == "```sh";
            continue;
        }
        if line.starts_with("```") {
            in_sh = false;
            continue;
        }
        if let Some(shown) = line.strip_prefix("#>") {
            let step = steps.last_mut().expect("a #> line follows a command");
            step.shown.push(shown.trim().to_string());
            continue;
        }
        if continuing {
            let step = steps.last_mut().expect("a continued command");
            step.command.push('\n');
            step.command.push_str(line);
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            steps.push(Step {
                command: line.to_string(),
                shown: Vec::new(),
            });
        } else {
            continue;
        }
        // A trailing backslash or pipe continues the command on the next line.
        let end = line.trim_end();
        continuing = end.ends_with('\\') || end.ends_with('|');
    }
    steps
}

/// The bash script: the commands verbatim, each preceded by a marker line.
fn script(steps: &[Step]) -> String {
    let mut out = String::from("set -euo pipefail\n");
    for (i, step) in steps.iter().enumerate() {
        out.push_str(&format!("printf '\\n{MARKER} {i}\\n'\n"));
        out.push_str(&step.command);
        out.push('\n');
    }
    out
}

/// `PATH` with the directory of the `psubd` binary under test first.
fn search_path() -> std::ffi::OsString {
    let bin = psubd_bin();
    let dir = bin
        .parent()
        .expect("the binary lives in a directory")
        .to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&rest)))
        .expect("a valid PATH")
}

/// Whether `actual` has the shape of `shown`: the same keys in every object, the same
/// kind of value at each key, and arrays whose element i has the shape of the shown
/// element i, or of the last shown one (an empty shown array matches any array; a
/// non-empty one needs elements).
fn same_shape(shown: &Value, actual: &Value) -> Result<(), String> {
    match (shown, actual) {
        (Value::Object(s), Value::Object(a)) => {
            let shown_keys: Vec<&String> = s.keys().collect();
            let actual_keys: Vec<&String> = a.keys().collect();
            if shown_keys != actual_keys {
                return Err(format!(
                    "keys {actual_keys:?}, the README shows {shown_keys:?}"
                ));
            }
            for (key, value) in s {
                same_shape(value, &a[key]).map_err(|e| format!("{key}: {e}"))?;
            }
            Ok(())
        }
        (Value::Array(s), Value::Array(a)) => match s.len() {
            0 => Ok(()),
            _ if a.is_empty() => Err("an empty array, the README shows elements".into()),
            // Element i against the shown element i (or the last shown one).
            shown_len => a.iter().enumerate().try_for_each(|(i, element)| {
                same_shape(&s[i.min(shown_len - 1)], element).map_err(|e| format!("[{i}]: {e}"))
            }),
        },
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        // A value the README shows as `{"total":12}` may be any JSON a user published.
        (s, a) => Err(format!("{a}, the README shows {s}")),
    }
}

fn assert_ports_free() {
    for port in PORTS {
        if let Err(error) = TcpListener::bind(("127.0.0.1", port)) {
            panic!(
                "port {port} is taken ({error}): the walk-through test runs `psubd dev` on \
                 the README's ports; stop whatever uses them (a `psubd dev`?)"
            );
        }
    }
}

/// Lines of the node logs under `dir` at WARN or ERROR level.
fn warnings_and_errors(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the dev data directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).expect("a node log");
            found.extend(
                text.lines()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .map(|l| format!("{}: {l}", path.display())),
            );
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walk_through_runs_verbatim_with_a_quiet_log() {
    let readme_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let steps = walk_through_steps(&readme);
    assert!(steps.len() >= 15, "the walk-through's commands: {steps:#?}");
    assert_ports_free();

    let work = tempfile::tempdir().expect("a temporary directory");
    let data_dir = work.path().join("dev");
    let mut dev = Command::new(psubd_bin())
        .args(["dev", "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("psubd dev starts");
    let mut out = BufReader::new(dev.stdout.take().expect("dev's stdout")).lines();
    tokio::time::timeout(READY_WITHIN, async {
        while let Some(line) = out.next_line().await.expect("dev's stdout") {
            if line.starts_with("cluster ready") {
                return;
            }
        }
        panic!("psubd dev exited before the cluster was ready");
    })
    .await
    .expect("psubd dev ready in time");

    // curl as a user runs it, except that an HTTP error fails the command (and `set -e`
    // stops the script there) instead of going unnoticed.
    std::fs::write(work.path().join(".curlrc"), "fail-with-body\n").expect("a curlrc");
    let run = Command::new("bash")
        .arg("-c")
        .arg(script(&steps))
        .current_dir(work.path())
        .env("CURL_HOME", work.path())
        // The client commands (`psubd topic …`) as a user who installed the binary runs them.
        .env("PATH", search_path())
        .env_remove("PSUBD_URL")
        .env_remove("PSUBD_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(WALK_WITHIN, run)
        .await
        .expect("the walk-through finishes in time")
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let outputs: Vec<&str> = stdout.split(MARKER).skip(1).collect();
    let failed_at = outputs.len().saturating_sub(1);
    assert!(
        run.status.success(),
        "the walk-through failed ({}) at command {failed_at}:\n{}\noutput:\n{}\nstderr:\n{}",
        run.status,
        steps[failed_at].command,
        outputs.last().unwrap_or(&""),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(outputs.len(), steps.len(), "one output per command");
    for (step, output) in steps.iter().zip(&outputs) {
        // The first line is the marker's index; the rest is what the command printed.
        let printed: Vec<&str> = output
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            printed.len(),
            step.shown.len(),
            "{}\nprinted {printed:?}, the README shows {:?}",
            step.command,
            step.shown
        );
        for (shown, actual) in step.shown.iter().zip(&printed) {
            let shown: Value = serde_json::from_str(shown)
                .unwrap_or_else(|e| panic!("the README's #> line is not JSON ({e}): {shown}"));
            let actual: Value = serde_json::from_str(actual)
                .unwrap_or_else(|e| panic!("{}\nprinted non-JSON ({e}): {actual}", step.command));
            if let Err(difference) = same_shape(&shown, &actual) {
                panic!("{}\nprinted {actual}\n{difference}", step.command);
            }
        }
    }

    // A graceful stop, as Ctrl-C does it.
    let pid = dev.id().expect("dev's pid");
    // SAFETY: kill(2) with the pid of a child this test spawned and still owns.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
    let status = tokio::time::timeout(STOP_WITHIN, dev.wait())
        .await
        .expect("psubd dev stops in time")
        .expect("psubd dev's exit status");
    assert!(status.success(), "psubd dev exited with {status}");
    let noisy = warnings_and_errors(&data_dir);
    assert!(
        noisy.is_empty(),
        "a healthy cluster logged WARN or ERROR lines:\n{}",
        noisy.join("\n")
    );
}

#[test]
fn shapes_compare_keys_kinds_and_elements() {
    let shown: Value = serde_json::from_str(r#"{"a":[{"b":1}],"c":"x","d":[]}"#).unwrap();
    let same: Value = serde_json::from_str(r#"{"a":[{"b":2},{"b":3}],"c":"y","d":[1]}"#).unwrap();
    assert!(same_shape(&shown, &same).is_ok());
    let missing_key: Value = serde_json::from_str(r#"{"a":[{"b":1}],"c":"x"}"#).unwrap();
    assert!(same_shape(&shown, &missing_key).is_err());
    let null_leader: Value = serde_json::from_str(r#"{"a":[{"b":null}],"c":"x","d":[]}"#).unwrap();
    assert!(same_shape(&shown, &null_leader).is_err());
    let no_elements: Value = serde_json::from_str(r#"{"a":[],"c":"x","d":[]}"#).unwrap();
    assert!(same_shape(&shown, &no_elements).is_err());
}
