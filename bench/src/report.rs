//! Results: per-run figures, the printed table, medians over runs, and the JSON report.
//!
//! Every column of a "median" row is the median of that column over the runs (as
//! benchmark tables usually report), so one median row need not be one actual run; the
//! per-run rows are printed above it and kept in the JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::fetch::ConsumeStats;
use super::hardware::{Build, Hardware};
use super::latency::LatencySummary;
use super::producer::ProduceStats;
use super::sampler::SeriesPoint;
use super::BenchArgs;

/// Publish figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct PublishResult {
    /// Records acknowledged in the window.
    pub records: u64,
    /// Requests acknowledged in the window.
    pub requests: u64,
    /// Records acknowledged per second.
    pub records_per_s: f64,
    /// Value megabytes (10^6 bytes) acknowledged per second.
    pub mb_per_s: f64,
    /// Request latency, first send to final answer.
    pub latency_us: LatencySummary,
    /// Failed attempts by class.
    pub errors: BTreeMap<&'static str, u64>,
    /// Attempts after the first.
    pub retries: u64,
    /// Requests given up after all retries.
    pub failed_requests: u64,
}

impl PublishResult {
    /// Figures of merged producer statistics over `window`.
    pub fn new(stats: &ProduceStats, window: Duration) -> Self {
        let secs = window.as_secs_f64().max(1e-9);
        PublishResult {
            records: stats.records,
            requests: stats.requests,
            records_per_s: stats.records as f64 / secs,
            mb_per_s: stats.bytes as f64 / secs / 1e6,
            latency_us: stats.latency.summary(),
            errors: stats.errors.by_label(),
            retries: stats.retries,
            failed_requests: stats.failed_requests,
        }
    }

    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Consumer figures of one run (offset consumers or group members).
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeResult {
    /// Records received in the window.
    pub records: u64,
    /// Records received per second.
    pub records_per_s: f64,
    /// Value megabytes (10^6 bytes) received per second.
    pub mb_per_s: f64,
    /// Fetches answered in the window.
    pub fetches: u64,
    /// Fetch latency (long-poll waits included when consumers are caught up).
    pub fetch_latency_us: LatencySummary,
    /// Publish → consume latency of records sent in the window.
    pub e2e_latency_us: LatencySummary,
    /// Failed calls by class.
    pub errors: BTreeMap<&'static str, u64>,
    /// Records seen twice.
    pub duplicates: u64,
    /// Records not written by this run.
    pub foreign: u64,
}

impl ConsumeResult {
    /// Figures of merged consumer statistics over `window`.
    pub fn new(stats: &ConsumeStats, window: Duration) -> Self {
        let secs = window.as_secs_f64().max(1e-9);
        ConsumeResult {
            records: stats.records,
            records_per_s: stats.records as f64 / secs,
            mb_per_s: stats.bytes as f64 / secs / 1e6,
            fetches: stats.fetches,
            fetch_latency_us: stats.fetch_latency.summary(),
            e2e_latency_us: stats.e2e.summary(),
            errors: stats.errors.by_label(),
            duplicates: stats.duplicates,
            foreign: stats.foreign,
        }
    }

    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// How the publish rate moved over the window: the "rate stays within 20 % while the
/// log grows" check.
#[derive(Debug, Clone, Serialize)]
pub struct RateDrift {
    /// Mean publish rate over the first tenth of the window's seconds.
    pub first_tenth_per_s: f64,
    /// Mean publish rate over the last tenth.
    pub last_tenth_per_s: f64,
    /// `(last - first) / first`, percent.
    pub change_pct: f64,
    /// Mean publish rate over each tenth of the window, in order: how the rate moved as
    /// the log grew (the "10 million records" row).
    pub tenths_per_s: Vec<f64>,
}

/// CPU the nodes (and the load generator) used in the window, per record published:
/// unlike records/s, hardly moved by other work on a shared machine.
#[derive(Debug, Clone, Serialize)]
pub struct CpuCost {
    /// CPU seconds of all local node processes in the window.
    pub node_cpu_s: f64,
    /// CPU seconds of the load generator in the window.
    pub bench_cpu_s: f64,
    /// Node CPU milliseconds per 1,000 records published in the window.
    pub node_ms_per_1k_records: f64,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// 1-based run number.
    pub run: u32,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Producers' figures, if there were producers.
    pub publish: Option<PublishResult>,
    /// Offset consumers' figures, if any.
    pub fetch: Option<ConsumeResult>,
    /// Group members' figures, if any.
    pub group: Option<ConsumeResult>,
    /// Publish rate at the start vs the end of the window, over the seconds wholly inside
    /// it (windows of 10 s or more).
    pub rate_drift: Option<RateDrift>,
    /// Rates per second, warm-up included.
    pub series: Vec<SeriesPoint>,
    /// Highest resident memory per node during the run, bytes.
    pub node_rss_max_bytes: BTreeMap<String, u64>,
    /// CPU per record, when the nodes are local processes and records were published.
    pub cpu: Option<CpuCost>,
}

impl RunResult {
    /// The drift of the publish rate over the window's per-second series.
    pub fn drift(series: &[SeriesPoint], window: Duration) -> Option<RateDrift> {
        let w = window.as_secs_f64();
        let points: Vec<f64> = series
            .iter()
            .filter(|p| p.t_s > 0.0 && p.t_s <= w)
            .map(|p| p.publish_per_s)
            .collect();
        if points.len() < 10 {
            return None;
        }
        let tenth = points.len() / 10;
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let tenths_per_s = (0..10)
            .map(|i| mean(&points[i * points.len() / 10..(i + 1) * points.len() / 10]))
            .collect();
        let first = mean(&points[..tenth]);
        let last = mean(&points[points.len() - tenth..]);
        Some(RateDrift {
            first_tenth_per_s: first,
            last_tenth_per_s: last,
            change_pct: if first > 0.0 {
                (last - first) / first * 100.0
            } else {
                0.0
            },
            tenths_per_s,
        })
    }

    /// Node CPU per record over the window's whole seconds (from the per-second series).
    pub fn cpu_cost(series: &[SeriesPoint], window: Duration) -> Option<CpuCost> {
        let w = window.as_secs_f64();
        let inside: Vec<&SeriesPoint> = series
            .iter()
            .filter(|p| p.t_s >= 0.0 && p.t_s <= w + 0.5)
            .collect();
        let (first, last) = (inside.first()?, inside.last()?);
        let records = last.published.checked_sub(first.published)?;
        let node_cpu_s = last.node_cpu_s? - first.node_cpu_s?;
        let bench_cpu_s = match (last.bench_cpu_s, first.bench_cpu_s) {
            (Some(l), Some(f)) => l - f,
            _ => 0.0,
        };
        (records > 0).then(|| CpuCost {
            node_cpu_s,
            bench_cpu_s,
            node_ms_per_1k_records: node_cpu_s * 1000.0 / (records as f64 / 1000.0),
        })
    }
}

/// One line of the table (also the median's shape in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `publish`, `fetch` (offset consumers) or `group`.
    pub role: &'static str,
    /// Records per second.
    pub records_per_s: f64,
    /// Value MB per second.
    pub mb_per_s: f64,
    /// Request latency percentiles, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// End-to-end median, ms (consumers only).
    pub e2e_p50_ms: Option<f64>,
    /// End-to-end 99th percentile, ms (consumers only).
    pub e2e_p99_ms: Option<f64>,
    /// Errors (failed attempts).
    pub errors: f64,
    /// Duplicates (consumers only).
    pub duplicates: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Row {
    fn publish(p: &PublishResult) -> Self {
        let l = &p.latency_us;
        Row {
            role: "publish",
            records_per_s: p.records_per_s,
            mb_per_s: p.mb_per_s,
            p50_ms: ms(l.p50_us),
            p90_ms: ms(l.p90_us),
            p99_ms: ms(l.p99_us),
            p999_ms: ms(l.p999_us),
            max_ms: ms(l.max_us),
            e2e_p50_ms: None,
            e2e_p99_ms: None,
            errors: p.error_total() as f64,
            duplicates: None,
        }
    }

    fn consume(role: &'static str, c: &ConsumeResult) -> Self {
        let l = &c.fetch_latency_us;
        let e = &c.e2e_latency_us;
        let has_e2e = e.samples > 0;
        Row {
            role,
            records_per_s: c.records_per_s,
            mb_per_s: c.mb_per_s,
            p50_ms: ms(l.p50_us),
            p90_ms: ms(l.p90_us),
            p99_ms: ms(l.p99_us),
            p999_ms: ms(l.p999_us),
            max_ms: ms(l.max_us),
            e2e_p50_ms: has_e2e.then(|| ms(e.p50_us)),
            e2e_p99_ms: has_e2e.then(|| ms(e.p99_us)),
            errors: c.error_total() as f64,
            duplicates: Some(c.duplicates as f64),
        }
    }

    /// The rows of one run.
    pub fn of_run(r: &RunResult) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Some(p) = &r.publish {
            rows.push(Row::publish(p));
        }
        if let Some(c) = &r.fetch {
            rows.push(Row::consume("fetch", c));
        }
        if let Some(c) = &r.group {
            rows.push(Row::consume("group", c));
        }
        rows
    }

    /// Column-wise medians of each role over the runs.
    pub fn medians(runs: &[RunResult]) -> Vec<Row> {
        let all: Vec<Vec<Row>> = runs.iter().map(Row::of_run).collect();
        let mut out = Vec::new();
        for role in ["publish", "fetch", "group"] {
            let rows: Vec<&Row> = all.iter().flatten().filter(|r| r.role == role).collect();
            if rows.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
            let med_opt = |f: &dyn Fn(&Row) -> Option<f64>| {
                let v: Vec<f64> = rows.iter().filter_map(|r| f(r)).collect();
                (!v.is_empty()).then(|| median(v))
            };
            out.push(Row {
                role,
                records_per_s: med(&|r| r.records_per_s),
                mb_per_s: med(&|r| r.mb_per_s),
                p50_ms: med(&|r| r.p50_ms),
                p90_ms: med(&|r| r.p90_ms),
                p99_ms: med(&|r| r.p99_ms),
                p999_ms: med(&|r| r.p999_ms),
                max_ms: med(&|r| r.max_ms),
                e2e_p50_ms: med_opt(&|r| r.e2e_p50_ms),
                e2e_p99_ms: med_opt(&|r| r.e2e_p99_ms),
                errors: med(&|r| r.errors),
                duplicates: med_opt(&|r| r.duplicates),
            });
        }
        out
    }
}

/// Median of a non-empty list (mean of the middle two for even lengths).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The table's header line.
pub fn print_table_header() {
    println!(
        "{:>4}  {:<8} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5}",
        "run",
        "role",
        "records/s",
        "MB/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "e2e p50",
        "e2e p99",
        "errors",
        "dups"
    );
}

/// Prints the rows of one run (or the medians, with `label` "med").
pub fn print_rows(label: &str, rows: &[Row]) {
    for r in rows {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:>4}  {:<8} {:>12} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>8} {:>7} {:>5}",
            label,
            r.role,
            thousands(r.records_per_s),
            r.mb_per_s,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            opt(r.e2e_p50_ms),
            opt(r.e2e_p99_ms),
            r.errors.round() as u64,
            r.duplicates.map_or("-".to_string(), |d| format!("{}", d.round() as u64)),
        );
    }
}

/// What is not in the table: errors by class, retries, memory, drift.
pub fn print_details(runs: &[RunResult]) {
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut rss: BTreeMap<String, u64> = BTreeMap::new();
    let (mut retries, mut failed, mut foreign) = (0u64, 0u64, 0u64);
    for r in runs {
        if let Some(p) = &r.publish {
            for (k, v) in &p.errors {
                *errors.entry(format!("publish {k}")).or_default() += v;
            }
            retries += p.retries;
            failed += p.failed_requests;
        }
        for (role, c) in [("fetch", &r.fetch), ("group", &r.group)] {
            if let Some(c) = c {
                for (k, v) in &c.errors {
                    *errors.entry(format!("{role} {k}")).or_default() += v;
                }
                foreign += c.foreign;
            }
        }
        for (node, bytes) in &r.node_rss_max_bytes {
            let e = rss.entry(node.clone()).or_default();
            *e = (*e).max(*bytes);
        }
    }
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("errors (all runs): {}", list.join(", "));
    }
    if retries > 0 || failed > 0 {
        println!("publish retries: {retries}, requests given up: {failed}");
    }
    if foreign > 0 {
        println!("records from other runs or writers (not timed): {foreign}");
    }
    if !rss.is_empty() {
        let list: Vec<String> = rss
            .iter()
            .map(|(n, b)| format!("{n} {:.0} MB", *b as f64 / 1e6))
            .collect();
        println!("node RSS max: {}", list.join(", "));
    }
    for r in runs {
        if let Some(c) = &r.cpu {
            println!(
                "run {}: node CPU {:.1} s ({:.2} ms per 1,000 records), load generator CPU {:.1} s",
                r.run, c.node_cpu_s, c.node_ms_per_1k_records, c.bench_cpu_s
            );
        }
        if let Some(d) = &r.rate_drift {
            println!(
                "run {}: publish rate first tenth {} rec/s, last tenth {} rec/s ({:+.1} %)",
                r.run,
                thousands(d.first_tenth_per_s),
                thousands(d.last_tenth_per_s),
                d.change_pct
            );
            let tenths: Vec<String> = d.tenths_per_s.iter().map(|v| thousands(*v)).collect();
            println!(
                "run {}: publish rate by tenth of the window (rec/s): {}",
                r.run,
                tenths.join(", ")
            );
        }
    }
}

/// The lines above the table: what is measured, on what, with which build.
pub fn print_preamble(
    args: &BenchArgs,
    topic: &TopicSummary,
    nodes: &[String],
    hardware: &Hardware,
    build: &Build,
) {
    let mut what = vec![format!(
        "topic {} ({} partitions, rf {})",
        topic.name, topic.partitions, topic.replication_factor
    )];
    if args.producers > 0 {
        what.push(format!(
            "{} producers × {} in flight, {} records/request, {} B values, acks={}, {} body",
            args.producers,
            args.in_flight,
            args.records_per_request,
            args.record_size,
            args.acks.as_query(),
            match args.format {
                super::BodyFormat::Json => "json",
                super::BodyFormat::Raw => "raw",
            }
        ));
    }
    if args.ids {
        what.push("a unique id on every record".into());
    }
    if let Some(rate) = args.rate {
        what.push(format!("rate cap {} rec/s", thousands(rate as f64)));
    }
    if args.consumers > 0 {
        what.push(format!(
            "{} offset consumers (max_records {})",
            args.consumers, args.fetch_max_records
        ));
    }
    if args.group_consumers > 0 {
        what.push(format!("{} group members", args.group_consumers));
    }
    what.push(format!(
        "{:.0} s window + {:.0} s warm-up, {} run(s)",
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.runs
    ));
    println!("psubd-bench: {}", what.join(" · "));
    let mut machine = vec![format!("{} cores", hardware.cores)];
    if let Some(m) = &hardware.cpu_model {
        machine.push(m.clone());
    }
    if let Some(b) = hardware.memory_bytes {
        machine.push(format!("{:.1} GB RAM", b as f64 / 1e9));
    }
    if let Some(d) = &hardware.disk {
        let kind = match d.rotational {
            Some(true) => " (rotational)",
            Some(false) => " (non-rotational)",
            None => "",
        };
        machine.push(format!(
            "disk {} {}{}{}",
            d.device.as_deref().unwrap_or("?"),
            d.fs_type.as_deref().unwrap_or("?"),
            kind,
            d.model
                .as_deref()
                .map(|m| format!(" {m}"))
                .unwrap_or_default()
        ));
        if let (Some(p50), Some(p99)) = (d.fsync_4k_p50_us, d.fsync_4k_p99_us) {
            machine.push(format!(
                "fsync 4 KiB p50 {:.2} ms p99 {:.2} ms",
                ms(p50),
                ms(p99)
            ));
        }
    }
    println!("machine: {}", machine.join(", "));
    println!(
        "build: psubd {} {}{}{}",
        build.version,
        build.profile,
        build
            .git_commit
            .as_deref()
            .map(|c| format!(" commit {}", &c[..c.len().min(12)]))
            .unwrap_or_default(),
        if build.git_dirty == Some(true) {
            " (dirty)"
        } else {
            ""
        }
    );
    println!("nodes: {}", nodes.join(", "));
    if build.profile == "debug" {
        println!("warning: a debug build; figures are not comparable (use --release)");
    }
}

/// `1234567.8` → `1,234,568`.
fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The topic as measured.
#[derive(Debug, Clone, Serialize)]
pub struct TopicSummary {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: u32,
    /// Replication factor.
    pub replication_factor: u32,
}

/// The JSON report: enough to reproduce and to compare runs across commits.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Always `psubd-bench`.
    pub tool: &'static str,
    /// When the bench started, ms since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// The build measured.
    pub build: &'a Build,
    /// The machine.
    pub hardware: &'a Hardware,
    /// Every argument as given (or defaulted).
    pub parameters: &'a BenchArgs,
    /// The nodes' URLs.
    pub nodes: &'a [String],
    /// `GET /v1/cluster` at the start, verbatim.
    pub cluster: Option<serde_json::Value>,
    /// The topic.
    pub topic: TopicSummary,
    /// Every run.
    pub runs: &'a [RunResult],
    /// Column-wise medians over the runs.
    pub median: Vec<Row>,
}

/// Writes the report as pretty JSON.
///
/// # Errors
///
/// The file cannot be written.
pub fn write_json(path: &Path, report: &Report<'_>) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(report).context("failed to encode the report")?;
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn drift_compares_first_and_last_tenth() {
        let series: Vec<SeriesPoint> = (1..=20)
            .map(|t| SeriesPoint {
                t_s: t as f64,
                publish_per_s: if t <= 10 { 100.0 } else { 80.0 },
                consume_per_s: 0.0,
                published: 90 * t,
                node_cpu_s: Some(0.5 * t as f64),
                bench_cpu_s: None,
            })
            .collect();
        let d = RunResult::drift(&series, Duration::from_secs(20)).unwrap();
        assert_eq!(d.tenths_per_s.len(), 10);
        assert_eq!(d.tenths_per_s[0], 100.0);
        assert_eq!(d.tenths_per_s[9], 80.0);
        // 19 s of the window: 9.5 CPU s for 1,710 records = 5,555.6 ms per 1,000.
        let c = RunResult::cpu_cost(&series, Duration::from_secs(20)).unwrap();
        assert!((c.node_cpu_s - 9.5).abs() < 1e-9);
        assert!((c.node_ms_per_1k_records - 9_500.0 / 1.71).abs() < 1e-6);
        assert_eq!(d.first_tenth_per_s, 100.0);
        assert_eq!(d.last_tenth_per_s, 80.0);
        assert!((d.change_pct + 20.0).abs() < 1e-9);
        assert!(RunResult::drift(&series[..5], Duration::from_secs(5)).is_none());
    }
}
