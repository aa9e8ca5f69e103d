//! `psubd-bench`: the load generator behind the tables of docs/benchmarks.md. A binary
//! of its own, so the server binary carries none of its dependencies (its HTTP/1.1
//! client, histograms, temporary dirs); it talks to psubd over HTTP only. The one psubd
//! crates it imports are `psubd-launch`, to start `--dev`'s `psubd dev` as every launcher
//! of local psubd processes does, and `psubd-client`, whose `Producer` the
//! `--client-producer` loops measure.
//!
//! In the spirit of `kafka-producer-perf-test` and `nats bench`: producers publish
//! pre-built request bodies over keep-alive HTTP connections, consumers read by offset
//! (long-poll fetch) or as members of a consumer group, and the tool prints records/s,
//! MB/s, request latency percentiles, end-to-end latency (publish → consume), errors by
//! class and duplicates seen by consumers. `--json` writes the same figures with the
//! machine and the parameters, so a table in docs/benchmarks.md can be traced to a run.
//!
//! # Layout
//!
//! - `lib.rs`: the command-line arguments ([`BenchArgs`]) and [`run`]; `main.rs` the
//!   binary.
//! - `session.rs`: one measurement (warm-up, window, drain) and the repetition of it.
//! - `target.rs`: the cluster under test: its URLs, topic creation, partition metadata.
//! - `dev_cluster.rs`: a local cluster started through `psubd dev` for `--dev` (the
//!   process itself, its ports and its log tail are `psubd-launch`'s).
//! - `payload.rs`: the value format (run, send time, producer, sequence) and request
//!   bodies built once and patched in place.
//! - `phase.rs`: the clock of a run (warm-up, window, stop) and the `--rate` pacer.
//! - `producer.rs`, `consumer.rs`, `group.rs`: the three kinds of load;
//!   `client_producer.rs`: producers through psubd-client's `Producer` instead;
//!   `connection.rs`: the producers' lean keep-alive HTTP/1.1 connections.
//! - `fetch.rs`: parsing fetch answers without copying values; `duplicates.rs`:
//!   duplicate detection; `error_class.rs`: errors by class; `latency.rs`: histograms.
//! - `sampler.rs`: per-second throughput series and node memory.
//! - `hardware.rs`: cores, memory, the disk under the data dir, the git commit.
//! - `report.rs`: the printed table, medians over runs and the JSON report.
//! - `idle.rs`: `--idle-topics`, what many idle partitions cost (topic creation, idle
//!   CPU and memory of the nodes, the first publish to an idle partition).
//! - `yardstick.rs` (feature `nats`): NATS JetStream under the same single-record load, for
//!   `bench/vs-nats.sh`; `nats_main.rs` its binary.

mod client_producer;
mod connection;
mod consumer;
mod dev_cluster;
mod duplicates;
mod error_class;
mod fetch;
mod group;
mod hardware;
mod idle;
mod latency;
mod payload;
mod phase;
mod producer;
mod report;
mod sampler;
mod session;
mod target;
#[cfg(feature = "nats")]
pub mod yardstick;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

/// Arguments of `psubd-bench`; every figure docs/benchmarks.md quotes is reproducible from them.
///
/// Concurrency model: each of a producer's `--in-flight` requests is a sequential loop on
/// its own keep-alive connection (HTTP/1.1 does not pipeline), so the load is
/// `--producers × --in-flight` connections with one request each: `--producers 64` and
/// `--producers 8 --in-flight 8` both keep 64 requests in flight. Loops are spread over
/// the `--url` nodes round-robin, and each loop's requests rotate over the partitions.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BenchArgs {
    /// Node URL(s) of a running cluster, repeatable or comma separated; connections are
    /// spread over them round-robin.
    #[arg(long = "url", value_delimiter = ',', required_unless_present = "dev")]
    pub urls: Vec<String>,

    /// Start a local cluster with `psubd dev` in a temporary data dir, run against it,
    /// and stop it on exit.
    #[arg(long, conflicts_with = "urls")]
    pub dev: bool,

    /// Start the `--dev` cluster with API keys required (`psubd dev --auth`) and send its
    /// admin key with every request: the cost of authentication, against a run without.
    #[arg(long, requires = "dev", conflicts_with = "token")]
    pub dev_auth: bool,

    /// API key sent as `Authorization: Bearer` with every request (a cluster with
    /// `--auth`). Never written to the report.
    #[arg(long, env = "PSUBD_TOKEN")]
    #[serde(skip_serializing)]
    pub token: Option<String>,

    /// Number of nodes of the `--dev` cluster.
    #[arg(long, default_value_t = 3)]
    pub dev_nodes: u16,

    /// First HTTP port of the `--dev` cluster (raft ports are 1000 above); chosen away
    /// from `psubd dev`'s default so a developer's own cluster is not disturbed.
    #[arg(long, default_value_t = 18081)]
    pub dev_base_port: u16,

    /// Parent of the `--dev` cluster's temporary data dir (default: the system temp dir).
    /// The disk under it is the one the report describes.
    #[arg(long)]
    pub dev_data_dir: Option<PathBuf>,

    /// Keep the `--dev` data dir after the run (its path is printed).
    #[arg(long)]
    pub keep_data: bool,

    /// The `psubd` binary `--dev` starts (default: the one next to this executable,
    /// else `psubd` on the PATH).
    #[arg(long, env = "PSUBD_BIN")]
    pub psubd: Option<PathBuf>,

    /// Data dir of the nodes of a running cluster, only to describe its disk in the
    /// report (the bench never writes there).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Topic to publish to and read from; created if missing.
    #[arg(long, default_value = "bench")]
    pub topic: String,

    /// Partitions of the topic when the bench creates it.
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,

    /// Replication factor of the topic when the bench creates it.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,

    /// Number of producers; 0 for a read-only run.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,

    /// Requests in flight per producer, each on its own keep-alive connection.
    #[arg(long, default_value_t = 1)]
    pub in_flight: u32,

    /// Records per publish request (the API allows at most 1000).
    #[arg(long, default_value_t = 1)]
    pub records_per_request: u32,

    /// Size of each record's value in bytes (at least the 32-byte header the consumers
    /// read the send time and sequence from).
    #[arg(long, default_value_t = 100)]
    pub record_size: u32,

    /// Publish through psubd-client's `Producer` (its batching, each request sent straight
    /// to the partitions' leader) instead of pre-built HTTP bodies: each loop sends
    /// `--records-per-request` records to one partition and waits for all their
    /// deliveries. Values are JSON strings, which the consumers do not read back, so it
    /// measures producers only.
    #[arg(long)]
    pub client_producer: bool,

    /// Acknowledgement level of the publishes.
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,

    /// Publish body: `json` (records array, `encoding: string`) or `raw` (one record per
    /// request as `application/octet-stream`; needs `--records-per-request 1`).
    #[arg(long, value_enum, default_value_t = BodyFormat::Json)]
    pub format: BodyFormat,

    /// Give every published record a unique `id` (idempotent publish; `--format json`
    /// only), to measure what deduplication costs.
    #[arg(long)]
    pub ids: bool,

    /// Length of the measured window of each run (`30s`, `500ms`, `2m`, or seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub duration: Duration,

    /// Load applied before each measured window and not counted (connections, leaders,
    /// caches settle).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub warmup: Duration,

    /// Repeat the measurement this many times; the table shows every run and the median.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,

    /// Cap on the total publish rate in records/s (open-loop schedule shared by all
    /// producers), e.g. half the peak rate for the end-to-end latency row.
    #[arg(long)]
    pub rate: Option<u64>,

    /// End a run's window early once this many records are acknowledged in it.
    #[arg(long)]
    pub max_records: Option<u64>,

    /// Publish this many records (in batches of 500, as fast as the cluster takes them)
    /// before the first run, so that a read-only run (`--producers 0 --from earliest`)
    /// has a log to read.
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,

    /// Consumers reading by offset with long-poll fetches. With M <= partitions each
    /// reads a disjoint share of the partitions; with more, partitions get several readers.
    #[arg(long, default_value_t = 0)]
    pub consumers: u32,

    /// Members of one consumer group (docs/api.md § Consumer groups), committing offsets
    /// every `--commit-interval`.
    #[arg(long, default_value_t = 0)]
    pub group_consumers: u32,

    /// Consumer group name (default: a fresh `psubd-bench-<topic>-<time>-<run>` per run).
    #[arg(long)]
    pub group: Option<String>,

    /// Where offset consumers start: `latest` (the records of this run) or `earliest`
    /// (the whole log; with `--producers 0` they wrap around at the end).
    #[arg(long, value_enum, default_value_t = StartFrom::Latest)]
    pub from: StartFrom,

    /// `max_records` of each fetch.
    #[arg(long, default_value_t = 500)]
    pub fetch_max_records: u32,

    /// `max_bytes` of each fetch.
    #[arg(long, default_value_t = 1_048_576)]
    pub fetch_max_bytes: u64,

    /// `timeout_ms` of each long-poll fetch.
    #[arg(long, default_value_t = 1000)]
    pub fetch_timeout_ms: u64,

    /// How often group members commit their positions.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub commit_interval: Duration,

    /// Retries of a publish after 503 (honouring Retry-After), 504 or a connection error.
    /// A retry after 504 or a lost connection may write the records twice: the consumers
    /// count such duplicates.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,

    /// Timeout of one HTTP request (fetches get their long-poll time on top).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub request_timeout: Duration,

    /// After the producers stop, how long consumers may take to read what was published
    /// in the window (for the end-to-end figures).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub drain_timeout: Duration,

    /// How long to wait for the cluster to be ready and the topic's partitions to have
    /// leaders.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub ready_timeout: Duration,

    /// Print the rates so far to stderr this often (`0` = never).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub progress_interval: Duration,

    /// Write the JSON report (hardware, parameters, every run, medians) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Scale mode instead of a load run: create this many topics (`<topic>-idle-NNNNN`, of
    /// `--partitions` and `--replication-factor`), report topic creation latency, the
    /// nodes' CPU and memory while idle over `--duration`, and the first publish to
    /// `--idle-samples` partitions after they went idle. Node CPU is read from /proc:
    /// `--dev` or local nodes only.
    #[arg(long)]
    pub idle_topics: Option<u32>,

    /// With `--idle-topics`: how long to wait after the last topic before the window.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    #[serde(serialize_with = "serialize_duration")]
    pub idle_settle: Duration,

    /// With `--idle-topics`: partitions that get one first publish after the window.
    #[arg(long, default_value_t = 100)]
    pub idle_samples: u32,
}

/// Acknowledgement level of a publish (`?acks=`), as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Acks {
    /// Committed on a majority and applied.
    #[value(name = "all")]
    #[serde(rename = "all")]
    All,
    /// Answered at once with 202.
    #[value(name = "0")]
    #[serde(rename = "0")]
    Zero,
}

impl Acks {
    /// The value of the `acks` query parameter.
    fn as_query(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Zero => "0",
        }
    }
}

/// How a publish request carries its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `{"encoding":"string","records":[...]}`.
    Json,
    /// The value as the body, `application/octet-stream`, one record per request.
    Raw,
}

/// Where offset consumers start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The high watermark when the run starts.
    Latest,
    /// The log start.
    Earliest,
}

/// The API's limit on records per publish request (docs/api.md § Names and limits).
const MAX_RECORDS_PER_REQUEST: u32 = 1000;

/// Most producer loops the value header can name (its producer field is 4 hex digits).
const MAX_PRODUCER_LOOPS: u32 = 0xFFFF;

impl BenchArgs {
    /// Rejects combinations that would measure nothing or something else than asked.
    ///
    /// # Errors
    ///
    /// Names the rule that the arguments break.
    fn validate(&self) -> anyhow::Result<()> {
        if !self.dev && self.urls.is_empty() {
            bail!("give --url http://HOST:PORT (repeatable) or --dev");
        }
        if self.dev && self.dev_nodes == 0 {
            bail!("--dev-nodes must be at least 1");
        }
        if u32::from(self.dev_base_port) + 1000 + u32::from(self.dev_nodes) > u32::from(u16::MAX) {
            bail!("--dev-base-port + 1000 + --dev-nodes must stay below 65536 (raft ports)");
        }
        if !is_valid_name(&self.topic) {
            bail!("--topic must match ^[A-Za-z0-9._-]{{1,249}}$ and not be . or ..");
        }
        if let Some(g) = &self.group {
            if !is_valid_name(g) {
                bail!("--group must match ^[A-Za-z0-9._-]{{1,249}}$ and not be . or ..");
            }
        }
        if self.partitions == 0 || self.replication_factor == 0 {
            bail!("--partitions and --replication-factor must be at least 1");
        }
        if self.records_per_request == 0 || self.records_per_request > MAX_RECORDS_PER_REQUEST {
            bail!(
                "--records-per-request must be in 1..={MAX_RECORDS_PER_REQUEST} (the API's limit)"
            );
        }
        if (self.record_size as usize) < payload::HEADER_LEN {
            bail!(
                "--record-size must be at least {} bytes: each value carries the send time, producer and sequence",
                payload::HEADER_LEN
            );
        }
        if self.format == BodyFormat::Raw && self.records_per_request != 1 {
            bail!("--format raw publishes one record per request: use --records-per-request 1");
        }
        if self.ids && self.format == BodyFormat::Raw {
            bail!("--ids needs --format json (a raw body would carry its id in a header)");
        }
        if self.in_flight == 0 && self.producers > 0 {
            bail!("--in-flight must be at least 1");
        }
        let loops = u64::from(self.producers) * u64::from(self.in_flight.max(1));
        if loops > u64::from(MAX_PRODUCER_LOOPS) {
            bail!("--producers × --in-flight must be at most {MAX_PRODUCER_LOOPS}");
        }
        if self.idle_topics == Some(0) {
            bail!("--idle-topics must be at least 1");
        }
        if self.producers == 0
            && self.consumers == 0
            && self.group_consumers == 0
            && self.idle_topics.is_none()
        {
            bail!("nothing to measure: give --producers, --consumers or --group-consumers");
        }
        if self.producers == 0 && self.from == StartFrom::Latest && self.consumers > 0 {
            bail!("--producers 0 with --from latest reads nothing: use --from earliest (and --prefill N)");
        }
        if self.client_producer {
            if self.consumers > 0 || self.group_consumers > 0 {
                bail!("--client-producer measures producers only: drop --consumers and --group-consumers");
            }
            if self.acks != Acks::All || self.format != BodyFormat::Json {
                bail!(
                    "--client-producer publishes with acks=all as JSON: drop --acks and --format"
                );
            }
            if self.producers == 0 {
                bail!("--client-producer needs --producers");
            }
        }
        if self.runs == 0 {
            bail!("--runs must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.rate == Some(0) {
            bail!("--rate must be positive (omit it for no cap)");
        }
        if self.fetch_max_records == 0 {
            bail!("--fetch-max-records must be at least 1");
        }
        Ok(())
    }
}

/// Runs a bench binary's `work` on a multi-threaded runtime and turns its outcome into the
/// process's exit code, printing a failure as `name: error`: the `main` of both binaries.
pub fn main_with<F>(name: &str, work: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark: starts or finds the cluster, makes the topic, runs `--runs`
/// measurements, prints the table and writes `--json`.
///
/// Ctrl-C stops the measurement; a `--dev` cluster is stopped in every case.
///
/// # Errors
///
/// Bad arguments, a cluster that does not become ready, a topic that cannot be created,
/// a server without consumer groups when `--group-consumers` is set, or a report file
/// that cannot be written. Errors of individual requests are counted, not returned.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let measured = async {
        match args.idle_topics {
            Some(topics) => idle::run(&args, topics).await,
            None => session::run_all(&args).await,
        }
    };
    tokio::select! {
        res = measured => res,
        res = tokio::signal::ctrl_c() => {
            res.context("failed to listen for Ctrl-C")?;
            bail!("interrupted")
        }
    }
}

/// Topic and group names as docs/api.md § Names and limits allows them (so they go into
/// URLs without escaping).
fn is_valid_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `30s`, `250ms`, `2m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit '{other}' (use ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Writes durations into the JSON report as seconds, the unit the table uses.
fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_accepts_units_and_bare_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
