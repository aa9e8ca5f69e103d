//! Disk usage under retention: a measurement program, not a test.
//!
//! Starts a 3-node cluster from the `psubd` binary of the same profile (build it first:
//! `cargo build --release -p psubd`), creates a topic with a 30 s retention, publishes into
//! it continuously at a fixed rate, and every 30 s prints each node's data directory size
//! (sled database and snapshot files apart) next to what retention keeps. With retention
//! working and sled reusing freed space, the sizes level off instead of growing.
//!
//! ```text
//! cargo build --release -p psubd
//! cargo run --release -p psubd-tests --example retention_disk -- --minutes 10
//! ```
//!
//! Options: `--minutes N` (10), `--rate-kib N` published KiB per second (2048),
//! `--retention-ms N` (30000), `--partitions N` (3), `--every-secs N` (30), and any
//! `PSUBD_*` node setting through the environment of this program's nodes with
//! `--node-env KEY=VALUE` (repeatable).

use std::path::Path;
use std::time::{Duration, Instant};

use psubd_tests::{expect_json, Cluster, NodeClient};
use serde_json::{json, Value};

/// Bytes of each record's value.
const RECORD_BYTES: usize = 1024;
/// Records per publish request.
const RECORDS_PER_REQUEST: usize = 64;

struct Options {
    minutes: f64,
    rate_kib: u64,
    retention_ms: i64,
    partitions: u32,
    every: Duration,
    node_env: Vec<(String, String)>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        minutes: 10.0,
        rate_kib: 2048,
        retention_ms: 30_000,
        partitions: 3,
        every: Duration::from_secs(30),
        node_env: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let bad = |v: &str| format!("{flag}: bad value '{v}'");
        match flag.as_str() {
            "--minutes" => {
                let v = value()?;
                options.minutes = v.parse().map_err(|_| bad(&v))?;
            }
            "--rate-kib" => {
                let v = value()?;
                options.rate_kib = v.parse().map_err(|_| bad(&v))?;
            }
            "--retention-ms" => {
                let v = value()?;
                options.retention_ms = v.parse().map_err(|_| bad(&v))?;
            }
            "--partitions" => {
                let v = value()?;
                options.partitions = v.parse().map_err(|_| bad(&v))?;
            }
            "--every-secs" => {
                let v = value()?;
                options.every = Duration::from_secs(v.parse().map_err(|_| bad(&v))?);
            }
            "--node-env" => {
                let v = value()?;
                let (k, val) = v.split_once('=').ok_or_else(|| bad(&v))?;
                options.node_env.push((k.to_string(), val.to_string()));
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// Bytes allocated by the files under `dir` (as `du` counts them).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => allocated(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Publishes `RECORDS_PER_REQUEST` records per request, paced to `rate_kib`, until
/// `deadline`; returns the bytes of values acknowledged and the failed requests.
async fn publish_loop(
    node: NodeClient,
    topic: String,
    rate_kib: u64,
    deadline: Instant,
    published: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let value = "x".repeat(RECORD_BYTES);
    let records: Vec<Value> = (0..RECORDS_PER_REQUEST)
        .map(|_| json!({ "value": value }))
        .collect();
    let body = json!({ "records": records, "encoding": "string" });
    let request_bytes = (RECORD_BYTES * RECORDS_PER_REQUEST) as f64;
    let per_request = Duration::from_secs_f64(request_bytes / (rate_kib as f64 * 1024.0));
    let mut tick = tokio::time::interval(per_request);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let url = node.url(&format!("/v1/topics/{topic}/records"));
    while Instant::now() < deadline {
        tick.tick().await;
        let sent = node
            .http()
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                published.fetch_add(request_bytes as u64, Ordering::Relaxed);
            }
            _ => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("retention_disk: {message}");
            std::process::exit(2);
        }
    };
    let env: Vec<(&str, &str)> = options
        .node_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cluster = Cluster::start_with_env(3, &env).await;
    let n1 = cluster.node(1);
    let topic = "retained";
    let body = json!({
        "name": topic,
        "partitions": options.partitions,
        "replication_factor": 3,
        "retention_ms": options.retention_ms,
    });
    let created = n1
        .http()
        .post(n1.url("/v1/topics"))
        .json(&body)
        .send()
        .await
        .expect("create topic");
    expect_json::<Value>(created, 201)
        .await
        .expect("topic created");
    // Let every partition elect a leader before the clock starts.
    for _ in 0..100 {
        let parts: Vec<Value> = match n1
            .http()
            .get(n1.url(&format!("/v1/topics/{topic}/partitions")))
            .send()
            .await
        {
            Ok(resp) => expect_json(resp, 200).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        if !parts.is_empty() && parts.iter().all(|p| !p["leader"].is_null()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(options.minutes * 60.0);
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // One publisher per node, each at a third of the rate (the edge forwards to leaders).
    let mut publishers = Vec::new();
    for id in cluster.ids() {
        publishers.push(tokio::spawn(publish_loop(
            cluster.node(id),
            topic.to_string(),
            (options.rate_kib / 3).max(1),
            deadline,
            published.clone(),
            failures.clone(),
        )));
    }
    println!(
        "retention_disk: 3 nodes, topic '{topic}' ({} partitions, rf 3, retention_ms {}), \
         {} KiB/s of {} B records for {} min; sizes in MiB (allocated, as du)",
        options.partitions, options.retention_ms, options.rate_kib, RECORD_BYTES, options.minutes
    );
    println!(
        "| t (s) | published | retained (leaders) | log starts | {} |",
        cluster
            .ids()
            .iter()
            .map(|id| format!("node {id} total (db + snapshots)"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|---|---|{}", "---|".repeat(cluster.ids().len()));
    let mut next_report = start;
    loop {
        let now = Instant::now();
        if now >= next_report {
            let parts: Vec<Value> = match n1
                .http()
                .get(n1.url(&format!("/v1/topics/{topic}/partitions")))
                .send()
                .await
            {
                Ok(resp) => expect_json(resp, 200).await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let retained: u64 = parts
                .iter()
                .filter_map(|p| p["stored_bytes"].as_u64())
                .sum();
            let starts: Vec<String> = parts
                .iter()
                .map(|p| p["log_start_offset"].to_string())
                .collect();
            let nodes: Vec<String> = cluster
                .ids()
                .iter()
                .map(|id| {
                    let dir = cluster.data_dir(*id);
                    format!(
                        "{:.1} ({:.1} + {:.1})",
                        mib(allocated(dir)),
                        mib(allocated(&dir.join("db"))),
                        mib(allocated(&dir.join("snapshots")))
                    )
                })
                .collect();
            println!(
                "| {:.0} | {:.1} | {:.1} | {} | {} |",
                now.duration_since(start).as_secs_f64(),
                mib(published.load(std::sync::atomic::Ordering::Relaxed)),
                mib(retained),
                starts.join(" "),
                nodes.join(" | ")
            );
            next_report += options.every;
        }
        if now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for publisher in publishers {
        let _ = publisher.await;
    }
    println!(
        "done: {:.1} MiB published, {} failed requests",
        mib(published.load(std::sync::atomic::Ordering::Relaxed)),
        failures.load(std::sync::atomic::Ordering::Relaxed)
    );
}
