//! The client commands of the `psubd` binary (`topic`, `produce`, `consume`, `key`,
//! `group`, `cluster`) run as a user runs them, against a real 3-node cluster: output, exit codes
//! (0, 1 with the server's message, 2 for usage errors) and what ends up stored.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use psubd_tests::{cluster::psubd_bin, eventually, Checks, Cluster};
use psubd_wire::{
    ClusterInfo, DeliveryReport, GroupOffsets, PushSubscription, Record, ResetResponse, Topic,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Bound on one command (a consume with --max ends as soon as it printed enough).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command left.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self, what: &str) -> Self {
        assert_eq!(self.code, 0, "{what}: exit code; stderr: {}", self.stderr);
        self
    }

    fn fails(self, what: &str, code: i32, message: &str) -> Self {
        assert_eq!(
            self.code, code,
            "{what}: exit code; stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(message),
            "{what}: stderr lacks {message:?}: {}",
            self.stderr
        );
        self
    }

    fn json<T: DeserializeOwned>(&self, what: &str) -> T {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{what}: stdout is not the JSON expected ({e}): {}",
                self.stdout
            )
        })
    }

    fn json_lines<T: DeserializeOwned>(&self, what: &str) -> Vec<T> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{what}: line is not the JSON expected ({e}): {l}"))
            })
            .collect()
    }

    fn lines(&self) -> Vec<String> {
        self.stdout.lines().map(str::to_owned).collect()
    }
}

/// The binary, pointed at a cluster through `PSUBD_URL` (every node, comma separated).
struct Psubd {
    urls: String,
}

impl Psubd {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(psubd_bin());
        command
            .args(args)
            .env("PSUBD_URL", &self.urls)
            .env_remove("PSUBD_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `psubd args…` with `stdin` and waits for it to end.
    async fn run(&self, args: &[&str], stdin: &str) -> Run {
        let child = self.command(args).spawn().expect("the psubd binary starts");
        finish(child, stdin).await
    }
}

async fn finish(mut child: tokio::process::Child, stdin: &str) -> Run {
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes())
            .await
            .expect("stdin takes the input");
        drop(pipe);
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .expect("the command ends in time")
        .expect("the command's output is readable");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_against_a_three_node_cluster() {
    let cluster = Cluster::start(3).await;
    let urls = cluster
        .ids()
        .iter()
        .map(|id| cluster.http(*id))
        .collect::<Vec<_>>()
        .join(",");
    let psubd = Psubd { urls };
    let mut checks = Checks::new();
    checks.run("topic_commands", topic_commands(&psubd)).await;
    checks
        .run("errors_and_usage", errors_and_usage(&psubd, &cluster))
        .await;
    checks
        .run(
            "produce_text_then_consume",
            produce_text_then_consume(&psubd, &cluster),
        )
        .await;
    checks
        .run("produce_json_lines", produce_json_lines(&psubd))
        .await;
    checks
        .run(
            "a_refused_record_fails_alone",
            a_refused_record_fails_alone(&psubd),
        )
        .await;
    checks
        .run(
            "consume_follows_new_records",
            consume_follows_new_records(&psubd, &cluster),
        )
        .await;
    checks
        .run(
            "consume_in_a_group_commits_what_it_printed",
            consume_in_a_group(&psubd),
        )
        .await;
    checks
        .run("push_set_get_delete", push_set_get_delete(&psubd))
        .await;
    checks.run("key_views", key_views(&psubd)).await;
    checks.run("cluster_view", cluster_view(&psubd)).await;
    checks
        .run("move_and_decommission", move_and_decommission(&psubd))
        .await;
    checks.finish();
}

async fn topic_commands(psubd: &Psubd) {
    let created = psubd
        .run(
            &[
                "topic",
                "create",
                "cli-topics",
                "--partitions",
                "2",
                "--retention-ms",
                "600000",
            ],
            "",
        )
        .await
        .ok("create");
    assert!(
        created.stdout.contains("cli-topics") && created.stdout.contains("600000"),
        "{}",
        created.stdout
    );
    let compacted: Topic = psubd
        .run(
            &[
                "topic",
                "create",
                "cli-table",
                "--compact",
                "--replication-factor",
                "2",
                "--output",
                "json",
            ],
            "",
        )
        .await
        .ok("create compacted")
        .json("create compacted");
    assert_eq!(compacted.replication_factor, 2);
    assert_eq!(compacted.cleanup_policy, psubd_wire::CleanupPolicy::Compact);
    let listed: Vec<Topic> = psubd
        .run(&["topic", "list", "--output", "json"], "")
        .await
        .ok("list")
        .json("list");
    let names: BTreeSet<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains("cli-topics") && names.contains("cli-table"),
        "{names:?}"
    );
    let table = psubd.run(&["topic", "list"], "").await.ok("list table");
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    let described: Value = psubd
        .run(&["topic", "describe", "cli-topics", "--output", "json"], "")
        .await
        .ok("describe")
        .json("describe");
    assert_eq!(described["topic"]["partitions"], 2);
    assert_eq!(described["partitions"].as_array().map(Vec::len), Some(2));
    let altered: Topic = psubd
        .run(
            &[
                "topic",
                "alter",
                "cli-topics",
                "--retention-ms",
                "-1",
                "--output",
                "json",
            ],
            "",
        )
        .await
        .ok("alter")
        .json("alter");
    assert_eq!(altered.retention_ms, -1);
    psubd
        .run(&["topic", "delete", "cli-table"], "")
        .await
        .ok("delete");
    psubd
        .run(&["topic", "describe", "cli-table"], "")
        .await
        .fails("describe a deleted topic", 1, "topic 'cli-table' not found");
}

async fn errors_and_usage(psubd: &Psubd, cluster: &Cluster) {
    psubd
        .run(&["topic", "create", "cli-errors"], "")
        .await
        .ok("create");
    psubd
        .run(&["topic", "create", "cli-errors"], "")
        .await
        .fails("create twice", 1, "already exists");
    psubd.run(&["topic", "describe", "nope"], "").await.fails(
        "describe unknown",
        1,
        "topic 'nope' not found",
    );
    psubd.run(&["produce", "nope"], "x\n").await.fails(
        "produce to unknown",
        1,
        "topic 'nope' not found",
    );
    psubd
        .run(&["consume", "nope", "--max", "1"], "")
        .await
        .fails("consume unknown", 1, "topic 'nope' not found");
    psubd
        .run(
            &["consume", "cli-errors", "--partition", "7", "--max", "1"],
            "",
        )
        .await
        .fails("consume an unknown partition", 1, "partition_not_found");
    psubd.run(&["topic", "create", "Bad/Name"], "").await.fails(
        "bad topic name",
        1,
        "invalid_name",
    );
    // Usage errors: clap's and the combinations it cannot express.
    for (args, message) in [
        (
            vec!["topic", "create", "x", "--partitions", "many"],
            "invalid value",
        ),
        (vec!["topic", "alter", "cli-errors"], "required"),
        (
            vec!["consume", "cli-errors", "--from", "soon"],
            "not an offset",
        ),
        (
            vec!["consume", "cli-errors", "--group", "g", "--from", "5"],
            "--from OFFSET cannot be used with --group",
        ),
        (
            vec!["produce", "cli-errors", "--header", "novalue"],
            "is not K=V",
        ),
        (vec!["group", "reset", "g"], "--to"),
        (vec!["topic", "frobnicate"], "unrecognized subcommand"),
    ] {
        psubd
            .run(&args, "")
            .await
            .fails(&format!("psubd {args:?}"), 2, message);
    }
    // No node at the URL: a clear message naming it, exit 1.
    let unreachable = Psubd {
        urls: "http://127.0.0.1:1".into(),
    };
    unreachable.run(&["topic", "list"], "").await.fails(
        "unreachable",
        1,
        "cannot reach any node at http://127.0.0.1:1",
    );
    let malformed = Psubd {
        urls: "localhost:8081".into(),
    };
    malformed
        .run(&["cluster"], "")
        .await
        .fails("malformed URL", 1, "not a node URL");
    // --url wins over PSUBD_URL, and a dead seed before a live one is skipped.
    let url = format!("--url=http://127.0.0.1:1,{}", cluster.http(1));
    unreachable
        .run(&["topic", "describe", "cli-errors", &url], "")
        .await
        .ok("dead seed first");
}

async fn produce_text_then_consume(psubd: &Psubd, cluster: &Cluster) {
    psubd
        .run(&["topic", "create", "cli-text", "--partitions", "3"], "")
        .await
        .ok("create");
    let input: String = (1..=9)
        .map(|i| format!("k{i}:value {i}\n"))
        .collect::<String>()
        + "\nno key here\n";
    let produced = psubd
        .run(
            &[
                "produce",
                "cli-text",
                "--key-separator",
                ":",
                "--header",
                "src=cli",
                "--header",
                "n=1",
                "--verbose",
            ],
            &input,
        )
        .await
        .ok("produce");
    let reports: Vec<DeliveryReport> = produced.json_lines("produce reports");
    assert_eq!(
        reports.len(),
        10,
        "one report per non-blank line: {}",
        produced.stdout
    );
    let quiet = psubd
        .run(&["produce", "cli-text"], "quiet\n")
        .await
        .ok("produce quietly");
    assert!(
        quiet.stdout.is_empty(),
        "produce prints nothing without --verbose: {}",
        quiet.stdout
    );

    let consumed = psubd
        .run(
            &[
                "consume", "cli-text", "--from", "earliest", "--max", "11", "--format", "json",
            ],
            "",
        )
        .await
        .ok("consume");
    let records: Vec<Record> = consumed.json_lines("consume");
    assert_eq!(records.len(), 11, "{}", consumed.stdout);
    for (i, report) in reports.iter().enumerate().take(9) {
        let record = records
            .iter()
            .find(|r| r.partition == report.partition && r.offset == report.offset)
            .unwrap_or_else(|| panic!("no record at the reported {report:?}"));
        assert_eq!(record.key.as_deref(), Some(format!("k{}", i + 1).as_str()));
        assert_eq!(record.value, Value::String(format!("value {}", i + 1)));
        assert_eq!(record.headers.get("src").map(String::as_str), Some("cli"));
        assert_eq!(record.headers.get("n").map(String::as_str), Some("1"));
    }
    assert!(records
        .iter()
        .any(|r| r.key.is_none() && r.value == "no key here"));
    // --exit-at-end: everything there, then stop (no --max).
    let dumped = psubd
        .run(&["consume", "cli-text", "--exit-at-end"], "")
        .await
        .ok("consume to the end");
    assert_eq!(dumped.lines().len(), 11, "{}", dumped.stdout);
    let nothing = psubd
        .run(
            &["consume", "cli-text", "--from", "latest", "--exit-at-end"],
            "",
        )
        .await
        .ok("consume from the end to the end");
    assert!(nothing.stdout.is_empty(), "{}", nothing.stdout);
    // --from @MS: from a time; every record is stamped after 0, none after the newest.
    let newest = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or_default();
    let since_zero = psubd
        .run(
            &["consume", "cli-text", "--from", "@0", "--exit-at-end"],
            "",
        )
        .await
        .ok("consume from a time");
    assert_eq!(since_zero.lines().len(), 11, "{}", since_zero.stdout);
    let later = format!("@{}", newest + 1);
    let none_later = psubd
        .run(
            &["consume", "cli-text", "--from", &later, "--exit-at-end"],
            "",
        )
        .await
        .ok("consume from after the newest record");
    assert!(none_later.stdout.is_empty(), "{}", none_later.stdout);
    psubd
        .run(
            &["consume", "cli-text", "--group", "g", "--exit-at-end"],
            "",
        )
        .await
        .fails("--exit-at-end with --group", 2, "cannot be used with");

    // Keys printed back as produce reads them.
    let keyed = psubd
        .run(
            &[
                "consume",
                "cli-text",
                "--exit-at-end",
                "--key-separator",
                ":",
            ],
            "",
        )
        .await
        .ok("consume with keys");
    let lines: BTreeSet<String> = keyed.lines().into_iter().collect();
    assert!(
        lines.contains("k3:value 3") && lines.contains(":no key here"),
        "{lines:?}"
    );

    // Equal keys land in one partition, through the CLI as through the API.
    let again = psubd
        .run(
            &["produce", "cli-text", "--key-separator", ":", "-v"],
            "k1:again\n",
        )
        .await
        .ok("produce k1");
    let again: Vec<DeliveryReport> = again.json_lines("k1 report");
    assert_eq!(again[0].partition, reports[0].partition);

    // One partition from an offset, values only.
    let p = reports[0].partition;
    // From the leader: a follower may not have applied the last record yet.
    let leader = cluster.leader_of("cli-text", p).await;
    let from_api = cluster.node(leader).fetch_all("cli-text", p).await;
    let partition = p.to_string();
    let values = psubd
        .run(
            &[
                "consume",
                "cli-text",
                "--partition",
                &partition,
                "--from",
                "1",
                "--max",
                &(from_api.len() - 1).to_string(),
            ],
            "",
        )
        .await
        .ok("consume one partition");
    let expected: Vec<String> = from_api[1..]
        .iter()
        .map(|r| r.value.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(values.lines(), expected);
}

async fn produce_json_lines(psubd: &Psubd) {
    psubd
        .run(&["topic", "create", "cli-json", "--partitions", "2"], "")
        .await
        .ok("create");
    let input = concat!(
        "{\"key\":\"a\",\"value\":{\"total\":1},\"headers\":{\"h\":\"v\"}}\n",
        "{\"value\":[1,2],\"partition\":1}\n",
        "{\"value\":3,\"colour\":\"red\"}\n",
        "{\"value\":4}\n",
    );
    psubd
        .run(&["produce", "cli-json", "--format", "json"], input)
        .await
        .fails("a bad JSON line", 1, "line 3");
    let mut not_utf8 = psubd
        .command(&["produce", "cli-json", "--partition", "0"])
        .spawn()
        .expect("produce starts");
    if let Some(mut stdin) = not_utf8.stdin.take() {
        stdin.write_all(b"\xff\xfe\n").await.expect("stdin");
    }
    finish(not_utf8, "")
        .await
        .fails("a line that is not UTF-8", 1, "line 1: a line is not UTF-8");
    // Read back through the CLI: a follower may not have applied the last record yet,
    // while --exit-at-end stops at the leader's high watermark.
    let stored: Vec<Record> = psubd
        .run(
            &["consume", "cli-json", "--exit-at-end", "--format", "json"],
            "",
        )
        .await
        .ok("read back")
        .json_lines("read back");
    let values: BTreeSet<String> = stored.iter().map(|r| r.value.to_string()).collect();
    assert_eq!(
        values,
        BTreeSet::from(["{\"total\":1}".to_string(), "[1,2]".to_string()]),
        "the lines before the bad one are stored, none after"
    );
    assert!(stored
        .iter()
        .any(|r| r.partition == 1 && r.value == serde_json::json!([1, 2])));
}

/// docs/api.md: a publish with one bad record writes nothing; the producer splits the
/// batch so the bad record fails alone and its neighbours are stored.
async fn a_refused_record_fails_alone(psubd: &Psubd) {
    psubd
        .run(&["topic", "create", "cli-split"], "")
        .await
        .ok("create");
    let too_large = "x".repeat(1024 * 1024 + 1);
    let input = format!("before\n{too_large}\nafter\n");
    psubd
        .run(&["produce", "cli-split"], &input)
        .await
        .fails("a record over the size limit", 1, "line 2")
        .fails("a record over the size limit", 1, "record_too_large");
    let stored = psubd
        .run(&["consume", "cli-split", "--exit-at-end"], "")
        .await
        .ok("read back");
    assert_eq!(stored.lines(), vec!["before", "after"]);
}

async fn consume_follows_new_records(psubd: &Psubd, cluster: &Cluster) {
    psubd
        .run(&["topic", "create", "cli-follow"], "")
        .await
        .ok("create");
    psubd
        .run(&["produce", "cli-follow"], "old\n")
        .await
        .ok("produce old");
    let hw = cluster.node(2).partitions("cli-follow").await[0].high_watermark;
    // Started at the end of the log (an explicit offset: no race with the produce below).
    let follower = psubd
        .command(&[
            "consume",
            "cli-follow",
            "--partition",
            "0",
            "--from",
            &hw.to_string(),
            "--max",
            "2",
        ])
        .spawn()
        .expect("consume starts");
    psubd
        .run(&["produce", "cli-follow"], "new 1\n")
        .await
        .ok("produce 1");
    psubd
        .run(&["produce", "cli-follow"], "new 2\n")
        .await
        .ok("produce 2");
    let followed = finish(follower, "").await.ok("follow");
    assert_eq!(followed.lines(), vec!["new 1", "new 2"]);
}

async fn consume_in_a_group(psubd: &Psubd) {
    psubd
        .run(&["topic", "create", "cli-group", "--partitions", "2"], "")
        .await
        .ok("create");
    let input: String = (0..6).map(|i| format!("r{i}\n")).collect();
    psubd
        .run(&["produce", "cli-group"], &input)
        .await
        .ok("produce");
    let all: BTreeSet<String> = (0..6).map(|i| format!("r{i}")).collect();

    let first = psubd
        .run(
            &[
                "consume",
                "cli-group",
                "--group",
                "cg",
                "--from",
                "earliest",
                "--max",
                "4",
            ],
            "",
        )
        .await
        .ok("first member");
    let second = psubd
        .run(
            &[
                "consume",
                "cli-group",
                "--group",
                "cg",
                "--from",
                "earliest",
                "--max",
                "2",
            ],
            "",
        )
        .await
        .ok("second member");
    let mut seen: Vec<String> = first.lines();
    seen.extend(second.lines());
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        all,
        "the second run reads exactly what the first did not print"
    );

    let described: Value = psubd
        .run(&["group", "describe", "cg", "--output", "json"], "")
        .await
        .ok("describe")
        .json("describe");
    let offsets: GroupOffsets =
        serde_json::from_value(described["offsets"].clone()).expect("offsets");
    assert_eq!(
        offsets.offsets.iter().map(|o| o.offset).sum::<u64>(),
        6,
        "{offsets:?}"
    );
    assert!(
        offsets.offsets.iter().all(|o| o.lag == Some(0)),
        "{offsets:?}"
    );
    let table = psubd
        .run(&["group", "describe", "cg"], "")
        .await
        .ok("describe table");
    assert!(table.stdout.contains("COMMITTED"), "{}", table.stdout);
    let listed: Value = psubd
        .run(&["group", "list", "--output", "json"], "")
        .await
        .ok("list")
        .json("list");
    assert!(
        listed
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["group"] == "cg")),
        "{listed}"
    );

    let reset: ResetResponse = psubd
        .run(
            &[
                "group", "reset", "cg", "--to", "earliest", "--output", "json",
            ],
            "",
        )
        .await
        .ok("reset")
        .json("reset");
    assert!(reset.offsets.iter().all(|o| o.offset == 0), "{reset:?}");
    let reread = psubd
        .run(&["consume", "cli-group", "--group", "cg", "--max", "6"], "")
        .await
        .ok("after the reset");
    assert_eq!(reread.lines().into_iter().collect::<BTreeSet<_>>(), all);

    psubd.run(&["group", "delete", "cg"], "").await.ok("delete");
    psubd.run(&["group", "describe", "cg"], "").await.fails(
        "describe a deleted group",
        1,
        "group_not_found",
    );
}

/// `group push set|get|delete`: the settings as given (the secret from the environment,
/// never printed), then the subscription gone.
async fn push_set_get_delete(psubd: &Psubd) {
    psubd
        .run(&["topic", "create", "cli-push", "--partitions", "1"], "")
        .await
        .ok("create");
    let mut set = psubd.command(&[
        "group",
        "push",
        "set",
        "cli-hooks",
        "--topic",
        "cli-push",
        "--endpoint",
        "http://127.0.0.1:9/hook",
        "--max-deliveries",
        "2",
        "--output",
        "json",
    ]);
    set.env("PSUBD_PUSH_SECRET", "cli-secret");
    let set = finish(set.spawn().expect("the psubd binary starts"), "")
        .await
        .ok("push set");
    assert!(!set.stdout.contains("cli-secret"), "{}", set.stdout);
    let stored: PushSubscription = set.json("push set");
    assert_eq!(
        (stored.max_deliveries, stored.secret_set, stored.topics),
        (2, true, vec!["cli-push".to_string()])
    );
    let table = psubd
        .run(&["group", "push", "get", "cli-hooks"], "")
        .await
        .ok("push get");
    assert!(
        table.stdout.contains("http://127.0.0.1:9/hook"),
        "{}",
        table.stdout
    );
    psubd
        .run(&["group", "push", "delete", "cli-hooks"], "")
        .await
        .ok("push delete");
    psubd
        .run(&["group", "push", "get", "cli-hooks"], "")
        .await
        .fails("get a deleted push subscription", 1, "push_not_found");
}

async fn cluster_view(psubd: &Psubd) {
    let info: ClusterInfo = psubd
        .run(&["cluster", "--output", "json"], "")
        .await
        .ok("cluster")
        .json("cluster");
    assert_eq!(info.nodes.len(), 3);
    assert!(info.nodes.iter().all(|n| n.alive), "{info:?}");
    let table = psubd.run(&["cluster"], "").await.ok("cluster table");
    assert!(
        table.stdout.starts_with("NODE") && table.stdout.contains("controller"),
        "{}",
        table.stdout
    );
}

/// `psubd topic move` moves a one-replica partition to another node, and `psubd cluster
/// decommission` is refused where the other nodes cannot hold the replication factor.
async fn move_and_decommission(psubd: &Psubd) {
    psubd
        .run(
            &["topic", "create", "cli-move", "--replication-factor", "1"],
            "",
        )
        .await
        .ok("create");
    let replica_of = |described: &Value| described["partitions"][0]["replicas"][0].as_u64();
    let described: Value = psubd
        .run(&["topic", "describe", "cli-move", "--output", "json"], "")
        .await
        .ok("describe")
        .json("describe");
    let from = replica_of(&described).expect("one replica");
    let to = from % 3 + 1;
    let moved = psubd
        .run(
            &[
                "topic",
                "move",
                "cli-move",
                "0",
                "--replicas",
                &to.to_string(),
            ],
            "",
        )
        .await
        .ok("move");
    assert_eq!(
        moved.stdout.trim(),
        format!("moving partition 0 of topic cli-move from {from} to {to}")
    );
    eventually(Duration::from_secs(60), "the move done", || async {
        let described: Value = psubd
            .run(&["topic", "describe", "cli-move", "--output", "json"], "")
            .await
            .ok("describe")
            .json("describe");
        (replica_of(&described) == Some(to))
            .then_some(())
            .ok_or(format!(
                "replicas: {}",
                described["partitions"][0]["replicas"]
            ))
    })
    .await;
    psubd
        .run(&["topic", "move", "cli-move", "0", "--replicas", "1,2"], "")
        .await
        .fails("move to two replicas", 1, "invalid_request");
    psubd
        .run(&["cluster", "decommission", "3"], "")
        .await
        .fails("decommission on three nodes", 1, "move_conflict");
}

async fn key_views(psubd: &Psubd) {
    psubd
        .run(
            &[
                "topic",
                "create",
                "profiles",
                "--partitions",
                "2",
                "--compact",
            ],
            "",
        )
        .await
        .ok("create a compacted topic");
    let put: DeliveryReport = psubd
        .run(
            &[
                "key",
                "put",
                "profiles",
                "alice",
                r#"{"plan":"pro"}"#,
                "--json",
            ],
            "",
        )
        .await
        .ok("put json")
        .json("put json");
    psubd
        .run(&["key", "put", "profiles", "bob", "hello"], "")
        .await
        .ok("put text");
    let carol: DeliveryReport = psubd
        .run(&["key", "put", "profiles", "carol", "x"], "")
        .await
        .ok("put carol")
        .json("put carol");
    let offset = put.offset.to_string();
    let value = psubd
        .run(
            &["key", "get", "profiles", "alice", "--min-offset", &offset],
            "",
        )
        .await
        .ok("get");
    assert_eq!(value.stdout, "{\"plan\":\"pro\"}\n");
    let record: Record = psubd
        .run(
            &[
                "key",
                "get",
                "profiles",
                "alice",
                "--format",
                "json",
                "--min-offset",
                &offset,
            ],
            "",
        )
        .await
        .ok("get json")
        .json("get json");
    assert_eq!(record.key.as_deref(), Some("alice"));
    assert_eq!(record.partition, put.partition);

    // Every key, in key order, across both partitions (the last write must be applied
    // where the listing reads: wait for carol first).
    let carol_offset = carol.offset.to_string();
    psubd
        .run(
            &[
                "key",
                "get",
                "profiles",
                "carol",
                "--min-offset",
                &carol_offset,
            ],
            "",
        )
        .await
        .ok("carol applied");
    let listed = psubd.run(&["key", "list", "profiles"], "").await.ok("list");
    assert_eq!(listed.lines(), vec!["alice", "bob", "carol"]);
    let first = psubd
        .run(&["key", "list", "profiles", "--max", "2"], "")
        .await
        .ok("list --max");
    assert_eq!(first.lines(), vec!["alice", "bob"]);
    let with_prefix: Vec<Record> = psubd
        .run(
            &[
                "key", "list", "profiles", "--prefix", "b", "--output", "json",
            ],
            "",
        )
        .await
        .ok("list --prefix")
        .json_lines("list --prefix");
    assert_eq!(with_prefix.len(), 1);
    assert_eq!(with_prefix[0].value, "hello");

    let gone: DeliveryReport = psubd
        .run(&["key", "delete", "profiles", "bob"], "")
        .await
        .ok("delete")
        .json("delete");
    let gone_offset = gone.offset.to_string();
    psubd
        .run(
            &[
                "key",
                "get",
                "profiles",
                "bob",
                "--min-offset",
                &gone_offset,
            ],
            "",
        )
        .await
        .fails(
            "get a deleted key",
            1,
            "key 'bob' not found in topic 'profiles'",
        );

    // Bad input: exit 1 with the reason, nothing written.
    psubd.run(&["key", "get", "nope", "alice"], "").await.fails(
        "unknown topic",
        1,
        "topic_not_found",
    );
    psubd
        .run(&["topic", "create", "plainlog"], "")
        .await
        .ok("create a plain topic");
    psubd.run(&["key", "list", "plainlog"], "").await.fails(
        "a topic that is not compacted",
        1,
        "is not compacted",
    );
    psubd
        .run(&["key", "put", "plainlog", "k", "v"], "")
        .await
        .fails(
            "put on a topic that is not compacted",
            1,
            "topic_not_compacted",
        );
    psubd
        .run(&["key", "put", "profiles", "k", "{oops", "--json"], "")
        .await
        .fails(
            "a --json value that does not parse",
            1,
            "the value is not JSON",
        );
    psubd
        .run(&["key", "get", "profiles"], "")
        .await
        .fails("a missing argument", 2, "KEY");
}
