//! Prometheus metrics (`GET /metrics`). Counters are bumped on the request path;
//! per-partition gauges are read from the local replicas at scrape time ([`Metrics::refresh`]),
//! so a deleted topic's series leave with it.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use psubd_actors::locks::lock;
use psubd_actors::Broker;

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route, seconds.
    pub http_latency: HistogramVec,
    /// Records published through this node's edge, by topic.
    pub records_published: IntCounterVec,
    /// Records returned by fetches through this node's edge, by topic.
    pub records_fetched: IntCounterVec,
    /// High watermark of each local replica.
    pub high_watermark: IntGaugeVec,
    /// 1 when the local replica leads the partition.
    pub partition_leader: IntGaugeVec,
    /// Bytes used by the node's database on disk.
    pub disk_bytes: IntGaugeVec,
    /// Stored bytes of the retained record batches of each local replica.
    pub partition_stored_bytes: IntGaugeVec,
    /// Log start offset of each local replica.
    pub log_start_offset: IntGaugeVec,
    /// Bytes allocated on disk under the node's data directory (database, snapshots).
    pub data_dir_bytes: IntGaugeVec,
    /// Last Raft log index of each local replica: beside the high watermark it shows how
    /// many records the partition actor packs into one entry (the batching at work).
    pub raft_last_log_index: IntGaugeVec,
    /// Free bytes on the data directory's file system, as last measured.
    pub storage_free_bytes: IntGaugeVec,
    /// 1 while the node is below its free-space threshold and refuses new records.
    pub storage_low_space: IntGaugeVec,
    /// Raft groups of this node stopped on a fatal error (they serve nothing until restart).
    pub raft_groups_stopped: IntGaugeVec,
    /// Raft term of each local replica.
    pub raft_term: IntGaugeVec,
    /// Last Raft log index applied by each local replica.
    pub raft_applied_index: IntGaugeVec,
    /// On a partition's leader: entries each follower's log is behind the leader's.
    pub raft_follower_lag: IntGaugeVec,
    /// One scrape refreshes and renders at a time: a refresh clears the per-partition
    /// gauges before setting them again.
    scrape: Mutex<()>,
}

impl Metrics {
    /// Registers every metric.
    ///
    /// # Panics
    /// Never in practice: metric names and labels are constants checked by the tests.
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("psubd_http_requests_total", "HTTP requests"),
            &["route", "status"],
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "psubd_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let records_published = IntCounterVec::new(
            Opts::new("psubd_records_published_total", "Records published"),
            &["topic"],
        )
        .expect("valid metric");
        let records_fetched = IntCounterVec::new(
            Opts::new("psubd_records_fetched_total", "Records fetched"),
            &["topic"],
        )
        .expect("valid metric");
        let high_watermark = IntGaugeVec::new(
            Opts::new(
                "psubd_partition_high_watermark",
                "High watermark of local replicas",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let partition_leader = IntGaugeVec::new(
            Opts::new(
                "psubd_partition_leader",
                "1 when this node leads the partition",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let disk_bytes = IntGaugeVec::new(
            Opts::new("psubd_disk_bytes", "Database bytes on disk"),
            &["node"],
        )
        .expect("valid metric");
        let partition_stored_bytes = IntGaugeVec::new(
            Opts::new(
                "psubd_partition_stored_bytes",
                "Stored bytes of retained record batches of local replicas",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let log_start_offset = IntGaugeVec::new(
            Opts::new(
                "psubd_partition_log_start_offset",
                "Log start offset of local replicas",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let data_dir_bytes = IntGaugeVec::new(
            Opts::new(
                "psubd_data_dir_bytes",
                "Bytes allocated under the node's data directory",
            ),
            &["node"],
        )
        .expect("valid metric");
        let raft_last_log_index = IntGaugeVec::new(
            Opts::new(
                "psubd_partition_raft_last_log_index",
                "Last Raft log index of local replicas",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let partition_gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["topic", "partition"]).expect("valid metric")
        };
        let raft_term = partition_gauge("psubd_partition_raft_term", "Raft term of local replicas");
        let raft_applied_index = partition_gauge(
            "psubd_partition_raft_applied_index",
            "Last Raft log index applied by local replicas",
        );
        let raft_follower_lag = IntGaugeVec::new(
            Opts::new(
                "psubd_partition_raft_follower_lag",
                "On the partition's leader: Raft entries each follower's log is behind",
            ),
            &["topic", "partition", "follower"],
        )
        .expect("valid metric");
        let node_gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["node"]).expect("valid metric")
        };
        let storage_free_bytes = node_gauge(
            "psubd_storage_free_bytes",
            "Free bytes on the data directory's file system",
        );
        let storage_low_space = node_gauge(
            "psubd_storage_low_space",
            "1 while free space is below the threshold and new records are refused",
        );
        let raft_groups_stopped = node_gauge(
            "psubd_raft_groups_stopped",
            "Raft groups stopped on a fatal error",
        );
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_latency.clone()),
            Box::new(records_published.clone()),
            Box::new(records_fetched.clone()),
            Box::new(high_watermark.clone()),
            Box::new(partition_leader.clone()),
            Box::new(disk_bytes.clone()),
            Box::new(partition_stored_bytes.clone()),
            Box::new(log_start_offset.clone()),
            Box::new(data_dir_bytes.clone()),
            Box::new(raft_last_log_index.clone()),
            Box::new(storage_free_bytes.clone()),
            Box::new(storage_low_space.clone()),
            Box::new(raft_groups_stopped.clone()),
            Box::new(raft_term.clone()),
            Box::new(raft_applied_index.clone()),
            Box::new(raft_follower_lag.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        // The process's memory, CPU seconds and file descriptors, as every Prometheus
        // exporter names them (`process_*`), read from /proc at each scrape.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        Self {
            registry,
            http_requests,
            http_latency,
            records_published,
            records_fetched,
            high_watermark,
            partition_leader,
            disk_bytes,
            partition_stored_bytes,
            log_start_offset,
            data_dir_bytes,
            raft_last_log_index,
            storage_free_bytes,
            storage_low_space,
            raft_groups_stopped,
            raft_term,
            raft_applied_index,
            raft_follower_lag,
            scrape: Mutex::new(()),
        }
    }

    /// The gauges labelled by topic and partition, cleared at each refresh.
    fn partition_gauges(&self) -> [&IntGaugeVec; 8] {
        [
            &self.high_watermark,
            &self.partition_leader,
            &self.partition_stored_bytes,
            &self.log_start_offset,
            &self.raft_last_log_index,
            &self.raft_term,
            &self.raft_applied_index,
            &self.raft_follower_lag,
        ]
    }

    /// Refreshes the gauges read from this node's replicas and storage, then renders every
    /// metric. Series of topics deleted since the last scrape are gone. `data_dir_bytes`
    /// is measured by the caller (it walks the disk: off the async runtime).
    pub fn refresh_and_render(&self, broker: &Broker, data_dir_bytes: Option<u64>) -> Vec<u8> {
        let _one_scrape = lock(&self.scrape);
        for gauge in self.partition_gauges() {
            gauge.reset();
        }
        let metadata = broker.metadata();
        let me = broker.node_id();
        for topic in metadata.topics.values() {
            for (index, placement) in topic.partitions.iter().enumerate() {
                let Some(handle) = broker.partition(placement.group) else {
                    continue;
                };
                let partition = index.to_string();
                let labels = [topic.name.as_str(), partition.as_str()];
                let bounds = handle.reader.bounds();
                let raft = handle.raft.metrics();
                let raft = raft.borrow();
                let set = |gauge: &IntGaugeVec, value: u64| {
                    gauge
                        .with_label_values(&labels)
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                };
                set(&self.high_watermark, bounds.next_offset);
                set(&self.log_start_offset, bounds.log_start);
                set(&self.partition_stored_bytes, handle.reader.stored_bytes());
                set(
                    &self.partition_leader,
                    u64::from(raft.current_leader == Some(me)),
                );
                let last_log_index = raft.last_log_index.unwrap_or(0);
                set(&self.raft_last_log_index, last_log_index);
                set(&self.raft_term, raft.current_term);
                set(
                    &self.raft_applied_index,
                    raft.last_applied.map_or(0, |log_id| log_id.index),
                );
                for (follower, matched) in raft.replication.iter().flatten() {
                    if *follower == me {
                        continue;
                    }
                    let matched = matched.map_or(0, |log_id| log_id.index);
                    let follower = follower.to_string();
                    self.raft_follower_lag
                        .with_label_values(&[topic.name.as_str(), partition.as_str(), &follower])
                        .set(
                            i64::try_from(last_log_index.saturating_sub(matched))
                                .unwrap_or(i64::MAX),
                        );
                }
            }
        }
        // Counters by topic: a deleted topic's series go too.
        for counter in [&self.records_published, &self.records_fetched] {
            remove_topics_not_in(counter, &|topic| metadata.topics.contains_key(topic));
        }
        let node = [me.to_string()];
        let storage = broker.raft_node().storage();
        if let Ok(bytes) = storage.size_on_disk() {
            self.disk_bytes
                .with_label_values(&node)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let health = storage.health();
        let space = health.space();
        if let Some(free) = space.free_bytes {
            self.storage_free_bytes
                .with_label_values(&node)
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        self.storage_low_space
            .with_label_values(&node)
            .set(i64::from(space.low));
        self.raft_groups_stopped
            .with_label_values(&node)
            .set(health.stopped_groups().len() as i64);
        if let Some(bytes) = data_dir_bytes {
            self.data_dir_bytes
                .with_label_values(&node)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.render()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Removes the series of `counter` whose `topic` label `exists` denies.
fn remove_topics_not_in(counter: &IntCounterVec, exists: &dyn Fn(&str) -> bool) {
    let gone: HashSet<String> = counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .flat_map(|metric| metric.get_label())
        .filter(|label| label.name() == "topic" && !exists(label.value()))
        .map(|label| label.value().to_string())
        .collect();
    for topic in gone {
        let _ = counter.remove_label_values(&[&topic]);
    }
}

/// Bytes allocated on disk by every file under `dir` (what `du` counts: sparse or
/// preallocated space is counted as the filesystem holds it). Files that vanish while
/// walking are skipped. Blocking: call off the async runtime.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            total += dir_bytes(&entry.path());
        } else {
            total += allocated(&meta);
        }
    }
    total
}

#[cfg(unix)]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let metrics = Metrics::new();
        metrics
            .records_published
            .with_label_values(&["orders"])
            .inc_by(3);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("psubd_records_published_total{topic=\"orders\"} 3"));
        for process_metric in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(text.contains(process_metric), "{process_metric} missing");
        }
    }
}
