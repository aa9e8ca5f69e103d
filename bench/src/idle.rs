//! `--idle-topics N`: what many idle partitions cost.
//!
//! Creates `N` topics of `--partitions` partitions (`--replication-factor`) one after the
//! other, timing each `POST /v1/topics` (it answers once every partition has a leader);
//! waits `--idle-settle` for the cluster to go idle; measures the nodes' CPU time over
//! `--duration` (from `/proc/<pid>/stat`, so local nodes only) and their resident memory;
//! then publishes one record to each of `--idle-samples` partitions spread over the
//! topics, one at a time, each to the node of a rotating URL, and times those first
//! publishes to partitions that were idle until then.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::StatusCode;
use serde::Serialize;

use super::latency::{Latency, LatencySummary};
use super::sampler::{self, cpu_seconds_of, rss_of_pid};
use super::session::open_cluster;
use super::BenchArgs;

/// Pause between retries of a topic creation the cluster answered 503 (a controller
/// election) or that failed to connect.
const CREATE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The figures of one scale run, as printed and written to `--json`.
#[derive(Debug, Serialize)]
pub struct IdleReport<'a> {
    /// Always "psubd-bench --idle-topics".
    tool: &'static str,
    /// The arguments of the run.
    parameters: &'a BenchArgs,
    /// Topics created in this run.
    topics: u32,
    /// Partitions created (topics × partitions).
    partitions: u64,
    /// Latency of one `POST /v1/topics`, retries included.
    create: LatencySummary,
    /// CPU seconds all local nodes used per second of the window (1.0 = one core).
    idle_cores: f64,
    /// The same, per node URL.
    idle_cores_per_node: Vec<(String, f64)>,
    /// Resident memory per node at the end of the window, bytes.
    rss_bytes: Vec<(String, u64)>,
    /// Latency of the first publish (acks=all) to a partition idle until then.
    first_publish: LatencySummary,
    /// First publishes that failed (not in the latency figures).
    first_publish_errors: u64,
}

/// Runs the scale measurement (see the module doc).
///
/// # Errors
/// A cluster that does not start, a topic the cluster refuses, or no local node process
/// to measure.
pub async fn run(args: &BenchArgs, topics: u32) -> anyhow::Result<()> {
    let (dev, target) = open_cluster(args).await?;
    let nodes = match &dev {
        Some(d) => d.node_pids(),
        None => sampler::local_node_pids(target.urls()),
    };
    if nodes.is_empty() {
        bail!(
            "--idle-topics measures node CPU from /proc: run it with --dev or against local nodes"
        );
    }
    let client = target.control().clone();
    let names: Vec<String> = (0..topics)
        .map(|i| format!("{}-idle-{i:05}", args.topic))
        .collect();

    let mut create = Latency::new();
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        create.record(create_topic(args, &client, target.url(i), name).await?);
        if (i + 1) % 100 == 0 {
            eprintln!(
                "  created {} topics in {:.1} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "psubd-bench: {topics} topics created; settling for {:?}",
        args.idle_settle
    );
    tokio::time::sleep(args.idle_settle).await;

    let cpu_before = cpu_of(&nodes)?;
    let window_started = Instant::now();
    tokio::time::sleep(args.duration).await;
    let cpu_after = cpu_of(&nodes)?;
    let window = window_started.elapsed().as_secs_f64();
    let idle_cores_per_node: Vec<(String, f64)> = nodes
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((node, _), (before, after))| (node.clone(), (after - before) / window))
        .collect();
    let idle_cores = idle_cores_per_node.iter().map(|(_, c)| c).sum();
    let rss_bytes = nodes
        .iter()
        .map(|(node, pid)| (node.clone(), rss_of_pid(*pid).unwrap_or(0)))
        .collect();

    let (first_publish, first_publish_errors) =
        first_publishes(args, &client, &target, &names).await;
    let report = IdleReport {
        tool: "psubd-bench --idle-topics",
        parameters: args,
        topics,
        partitions: u64::from(topics) * u64::from(args.partitions),
        create: create.summary(),
        idle_cores,
        idle_cores_per_node,
        rss_bytes,
        first_publish: first_publish.summary(),
        first_publish_errors,
    };
    print(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("failed to encode the report")?;
        std::fs::write(path, text)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("report: {}", path.display());
    }
    drop(dev);
    Ok(())
}

/// Creates one topic through `url`, retrying 503 and connection errors until
/// `--ready-timeout`; returns how long it took.
async fn create_topic(
    args: &BenchArgs,
    client: &reqwest::Client,
    url: &str,
    name: &str,
) -> anyhow::Result<Duration> {
    let body = serde_json::json!({
        "name": name,
        "partitions": args.partitions,
        "replication_factor": args.replication_factor,
    });
    let started = Instant::now();
    loop {
        let why = match client
            .post(format!("{url}/v1/topics"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::CREATED => return Ok(started.elapsed()),
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                format!("status {}", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                bail!("creating topic '{name}' failed with {status}: {text}");
            }
            Err(e) => e.to_string(),
        };
        if started.elapsed() > args.ready_timeout {
            bail!(
                "topic '{name}' not created within {:?} (last: {why})",
                args.ready_timeout
            );
        }
        tokio::time::sleep(CREATE_RETRY_PAUSE).await;
    }
}

/// CPU seconds used so far by each node process.
fn cpu_of(nodes: &[(String, u32)]) -> anyhow::Result<Vec<f64>> {
    nodes
        .iter()
        .map(|(node, pid)| {
            cpu_seconds_of(&pid.to_string())
                .with_context(|| format!("cannot read the CPU time of node {node} (pid {pid})"))
        })
        .collect()
}

/// One publish (`acks=all`, raw body) to each of `--idle-samples` partitions spread evenly
/// over the topics, one at a time, rotating over the node URLs.
async fn first_publishes(
    args: &BenchArgs,
    client: &reqwest::Client,
    target: &super::target::Target,
    names: &[String],
) -> (Latency, u64) {
    let total = names.len() as u64 * u64::from(args.partitions);
    let samples = u64::from(args.idle_samples).min(total);
    let mut latency = Latency::new();
    let mut errors = 0;
    for i in 0..samples {
        // Evenly spaced over every (topic, partition), so each sample hits a partition
        // nothing touched since it was created.
        let slot = i * total / samples.max(1);
        let topic = &names[(slot / u64::from(args.partitions)) as usize];
        let partition = slot % u64::from(args.partitions);
        let url = target.url(i as usize);
        let started = Instant::now();
        let answer = client
            .post(format!(
                "{url}/v1/topics/{topic}/records?acks=all&partition={partition}"
            ))
            .header("content-type", "application/octet-stream")
            .body("first")
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => latency.record(started.elapsed()),
            _ => errors += 1,
        }
    }
    (latency, errors)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The human-readable summary.
fn print(report: &IdleReport<'_>) {
    let c = &report.create;
    let f = &report.first_publish;
    println!(
        "idle scale: {} topics × {} partitions = {} partitions, rf {}",
        report.topics,
        report.parameters.partitions,
        report.partitions,
        report.parameters.replication_factor
    );
    println!(
        "  topic create      p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   ({} topics)",
        ms(c.p50_us),
        ms(c.p99_us),
        ms(c.max_us),
        c.samples
    );
    println!(
        "  idle CPU          {:.4} cores in all over {:?}",
        report.idle_cores, report.parameters.duration
    );
    for ((node, cores), (_, rss)) in report.idle_cores_per_node.iter().zip(&report.rss_bytes) {
        println!(
            "    {node:<28} {cores:.4} cores   RSS {:>7.1} MiB",
            *rss as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "  first publish     p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   ({} partitions, {} errors)",
        ms(f.p50_us),
        ms(f.p99_us),
        ms(f.max_us),
        f.samples,
        report.first_publish_errors
    );
}
