//! Once a second: the rates so far (for progress lines and the JSON series), the
//! nodes' resident memory (for the "RSS under load" target) and, for local nodes, the CPU
//! time they used (CPU per record is a steadier figure than records/s on a shared machine).
//!
//! Producers and consumers bump two relaxed atomics per request; nothing else is shared
//! with the hot loops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::phase::RunClock;

/// Sampling period of the series.
const TICK: Duration = Duration::from_secs(1);

/// Counters the load tasks bump and the sampler reads.
#[derive(Debug, Default)]
pub struct LiveCounters {
    published: AtomicU64,
    consumed: AtomicU64,
}

impl LiveCounters {
    /// Records acknowledged to a producer.
    pub fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    /// Records received by a consumer.
    pub fn add_consumed(&self, n: u64) {
        self.consumed.fetch_add(n, Ordering::Relaxed);
    }

    fn read(&self) -> (u64, u64) {
        (
            self.published.load(Ordering::Relaxed),
            self.consumed.load(Ordering::Relaxed),
        )
    }
}

/// Where the nodes' memory can be read.
#[derive(Debug, Clone)]
pub enum RssSource {
    /// Local node processes (`--dev`): `/proc/<pid>/status`, by node id.
    Pids(Vec<(String, u32)>),
    /// `process_resident_memory_bytes` in each node's `/metrics`, by URL.
    Metrics(Vec<String>),
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Seconds since the window started (negative during warm-up).
    pub t_s: f64,
    /// Records/s acknowledged to producers in this second.
    pub publish_per_s: f64,
    /// Records/s received by consumers in this second.
    pub consume_per_s: f64,
    /// Records acknowledged to producers since the run began (warm-up included).
    pub published: u64,
    /// CPU seconds (user + system) the local node processes have used since they started;
    /// `None` when the nodes are not local processes.
    pub node_cpu_s: Option<f64>,
    /// CPU seconds this load generator has used since it started.
    pub bench_cpu_s: Option<f64>,
}

/// What the sampler saw over a run.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// One point per second.
    pub series: Vec<SeriesPoint>,
    /// Highest resident memory seen per node, bytes.
    pub rss_max: BTreeMap<String, u64>,
}

/// Samples until `stop` turns true, printing progress to stderr every `progress`
/// (never if zero).
pub async fn sample(
    clock: Arc<RunClock>,
    live: Arc<LiveCounters>,
    rss: Option<RssSource>,
    client: reqwest::Client,
    progress: Duration,
    mut stop: watch::Receiver<bool>,
) -> Samples {
    let mut samples = Samples::default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = (Instant::now(), live.read());
    let mut last_progress = (Instant::now(), live.read());
    let mut rss = rss;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
        }
        let now = Instant::now();
        let counts = live.read();
        let secs = (now - last.0).as_secs_f64().max(1e-6);
        let t_s = if now >= clock.window_start() {
            (now - clock.window_start()).as_secs_f64()
        } else {
            -(clock.window_start() - now).as_secs_f64()
        };
        let node_cpu_s = match &rss {
            Some(RssSource::Pids(pids)) => pids
                .iter()
                .map(|(_, pid)| cpu_seconds_of(&pid.to_string()))
                .sum::<Option<f64>>(),
            _ => None,
        };
        samples.series.push(SeriesPoint {
            t_s,
            publish_per_s: (counts.0 - last.1 .0) as f64 / secs,
            consume_per_s: (counts.1 - last.1 .1) as f64 / secs,
            published: counts.0,
            node_cpu_s,
            bench_cpu_s: cpu_seconds_of("self"),
        });
        last = (now, counts);
        if let Some(source) = rss.as_mut() {
            sample_rss(source, &client, &mut samples.rss_max).await;
        }
        if !progress.is_zero() && now - last_progress.0 >= progress {
            let secs = (now - last_progress.0).as_secs_f64();
            let phase = if now < clock.window_start() {
                "warm-up"
            } else {
                "window "
            };
            eprintln!(
                "  [{phase} {t_s:>6.1} s] publish {:>10.0} rec/s   consume {:>10.0} rec/s",
                (counts.0 - last_progress.1 .0) as f64 / secs,
                (counts.1 - last_progress.1 .1) as f64 / secs,
            );
            last_progress = (now, counts);
        }
    }
    samples
}

/// Reads every node's memory once and keeps the maximum; drops sources that do not
/// answer (a node without the metric is simply not reported).
async fn sample_rss(
    source: &mut RssSource,
    client: &reqwest::Client,
    max: &mut BTreeMap<String, u64>,
) {
    match source {
        RssSource::Pids(pids) => {
            for (node, pid) in pids.iter() {
                if let Some(bytes) = rss_of_pid(*pid) {
                    let e = max.entry(node.clone()).or_insert(0);
                    *e = (*e).max(bytes);
                }
            }
        }
        RssSource::Metrics(urls) => {
            let mut keep = Vec::with_capacity(urls.len());
            for url in urls.drain(..) {
                if let Some(bytes) = rss_from_metrics(client, &url).await {
                    let e = max.entry(url.clone()).or_insert(0);
                    *e = (*e).max(bytes);
                    keep.push(url);
                }
            }
            *urls = keep;
        }
    }
}

/// Node processes on this machine serving `urls`, found by their `--http host:port`
/// argument, labelled by URL: lets a run against a local cluster started by hand report
/// memory even when the nodes export no process metrics.
pub fn local_node_pids(urls: &[String]) -> Vec<(String, u32)> {
    let wanted: Vec<(&str, &str)> = urls
        .iter()
        .filter_map(|u| Some((u.as_str(), u.strip_prefix("http://")?.trim_end_matches('/'))))
        .collect();
    let mut found = Vec::new();
    for pid in process_ids() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let http = args
            .windows(2)
            .find_map(|w| (w[0] == b"--http").then_some(w[1]));
        let Some(http) = http.and_then(|h| std::str::from_utf8(h).ok()) else {
            continue;
        };
        if let Some((url, _)) = wanted.iter().find(|(_, authority)| *authority == http) {
            found.push((url.to_string(), pid));
        }
    }
    found.sort();
    found
}

/// Every process id on this machine (the numeric entries of `/proc`); empty where
/// `/proc` cannot be read.
pub fn process_ids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
        })
        .collect()
}

/// User + system CPU seconds a local process has used (`/proc/<pid>/stat` fields 14
/// and 15); `pid` may be `self`.
pub(crate) fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// `VmRSS` of a local process, bytes.
pub(crate) fn rss_of_pid(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `process_resident_memory_bytes` from a node's Prometheus text, bytes.
async fn rss_from_metrics(client: &reqwest::Client, base: &str) -> Option<u64> {
    let resp = client.get(format!("{base}/metrics")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    parse_rss_metric(&text)
}

fn parse_rss_metric(text: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix("process_resident_memory_bytes")?;
        let value = rest.split_whitespace().last()?;
        value.parse::<f64>().ok().map(|v| v as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_from_prometheus_text() {
        let text = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 1.23456e+08\n";
        assert_eq!(parse_rss_metric(text), Some(123_456_000));
        assert_eq!(parse_rss_metric("up 1\n"), None);
    }

    #[test]
    fn reads_own_cpu_time() {
        // Burn a little CPU so the figure cannot be zero at tick resolution.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(x != 1);
        assert!(cpu_seconds_of("self").is_some_and(|s| s > 0.0));
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_of_pid(std::process::id()).unwrap_or(0) > 0);
    }
}
