//! The yardstick side of `bench/vs-nats.sh`: NATS JetStream under the same single-record
//! publish load that `psubd-bench --producers N --records-per-request 1` puts on psubd.
//!
//! Each publisher has its own connection (as each psubd-bench producer has its own HTTP
//! connection) and one publish outstanding: it sends a record, awaits the stream's
//! acknowledgement (with `sync_interval: always` in the servers' config, JetStream acks
//! after an fsync on a quorum, the contract psubd keeps), then sends the next. Records
//! acknowledged inside the measurement window count; latency is send → ack. The JSON it
//! writes has the fields `bench/ab.sh` reads from a psubd-bench report (`median[].role`,
//! `records_per_s`, `p50_ms`, `p99_ms`, `runs[0].cpu.node_ms_per_1k_records`), so one
//! script tabulates both.
//!
//! Built only with the `nats` feature, so the workspace's usual builds carry no NATS
//! client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use clap::Args;
use serde_json::json;

use crate::latency::Latency;
use crate::sampler::cpu_seconds_of;

/// `psubd-nats-bench` arguments.
#[derive(Args, Debug)]
pub struct YardstickArgs {
    /// NATS server URLs; publishers connect round-robin.
    #[arg(long, value_delimiter = ',', default_value = "nats://127.0.0.1:4222")]
    pub servers: Vec<String>,
    /// Publishers, each with one publish outstanding.
    #[arg(long, default_value_t = 64)]
    pub publishers: usize,
    /// Bytes of each record's value (psubd-bench's default record is 100 bytes).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Replicas of the stream (3: a quorum of the 3-node cluster acks each record).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Load before the window, not measured.
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Process ids of the local nats-server processes, for CPU per record.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What one publisher saw inside the window.
struct PublisherTally {
    latency: Latency,
    errors: u64,
}

/// Creates the stream afresh, runs the publishers through warm-up and window, prints the
/// figures and writes the JSON.
pub async fn run(args: YardstickArgs) -> anyhow::Result<()> {
    if args.servers.is_empty() || args.publishers == 0 {
        bail!("need at least one server and one publisher");
    }
    // Streams are the cluster's: one server is enough to create it.
    let admin = async_nats::connect(args.servers[0].as_str())
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(admin);
    create_stream(&js, args.replicas).await?;

    let start = Instant::now();
    let window_start = start + args.warmup;
    let window_end = window_start + args.duration;
    let acked_in_window = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![b'x'; args.record_size]);
    let mut tasks = Vec::with_capacity(args.publishers);
    for i in 0..args.publishers {
        let url = args.servers[i % args.servers.len()].clone();
        let payload = payload.clone();
        let acked = acked_in_window.clone();
        tasks.push(tokio::spawn(async move {
            publish_loop(url, payload, window_start, window_end, acked).await
        }));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let cpu_before = servers_cpu_s(&args.server_pids);
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_after = servers_cpu_s(&args.server_pids);

    let mut latency = Latency::new();
    let mut errors = 0;
    for task in tasks {
        let tally = task.await.context("a publisher panicked")??;
        latency.merge(&tally.latency);
        errors += tally.errors;
    }
    let records = acked_in_window.load(Ordering::Relaxed);
    let records_per_s = records as f64 / args.duration.as_secs_f64();
    let summary = latency.summary();
    let ms = |us: u64| us as f64 / 1000.0;
    let node_ms_per_1k = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if records > 0 => {
            Some((after - before) * 1000.0 / (records as f64 / 1000.0))
        }
        _ => None,
    };
    println!(
        "nats publishers={} records/s={records_per_s:.0} p50={:.2} ms p99={:.2} ms errors={errors} \
         server CPU ms/1k records={}",
        args.publishers,
        ms(summary.p50_us),
        ms(summary.p99_us),
        node_ms_per_1k.map_or("-".into(), |v| format!("{v:.1}")),
    );
    if let Some(path) = &args.json {
        let report = json!({
            "tool": "psubd-nats-bench",
            "parameters": {
                "publishers": args.publishers,
                "record_size": args.record_size,
                "replicas": args.replicas,
                "duration_s": args.duration.as_secs_f64(),
                "warmup_s": args.warmup.as_secs_f64(),
            },
            "median": [{
                "role": "publish",
                "records_per_s": records_per_s,
                "p50_ms": ms(summary.p50_us),
                "p99_ms": ms(summary.p99_us),
                "max_ms": ms(summary.max_us),
                "errors": errors,
            }],
            "runs": [{ "cpu": node_ms_per_1k.map(|v| json!({ "node_ms_per_1k_records": v })) }],
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Creates the stream afresh (as psubd-bench --dev starts a fresh cluster). A new cluster's
/// JetStream answers "temporarily unavailable" until it has elected its meta leader, so
/// creation is retried for up to 30 s.
async fn create_stream(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = js.delete_stream("BENCH").await;
        let created = js
            .create_stream(stream::Config {
                name: "BENCH".into(),
                subjects: vec!["bench".into()],
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                eprintln!("psubd-nats-bench: stream not created yet ({error}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error).context("creating the stream"),
        }
    }
}

/// One publisher: publish, await the ack, repeat until the window ends.
async fn publish_loop(
    url: String,
    payload: Bytes,
    window_start: Instant,
    window_end: Instant,
    acked_in_window: Arc<AtomicU64>,
) -> anyhow::Result<PublisherTally> {
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client);
    let mut tally = PublisherTally {
        latency: Latency::new(),
        errors: 0,
    };
    loop {
        let sent = Instant::now();
        if sent >= window_end {
            return Ok(tally);
        }
        let acked = match js.publish("bench", payload.clone()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        let done = Instant::now();
        if sent < window_start || done > window_end {
            continue;
        }
        if acked {
            tally.latency.record(done - sent);
            acked_in_window.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.errors += 1;
        }
    }
}

/// CPU seconds of all the given processes, if every one can be read.
fn servers_cpu_s(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| cpu_seconds_of(&pid.to_string()))
        .sum()
}
