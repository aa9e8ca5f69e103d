//! Prometheus metrics (`GET /metrics`). Counters are bumped on the request path;
//! per-partition series are read from the local replicas at scrape time
//! ([`Metrics::refresh_and_render`]), and consumer group series from the groups this node
//! coordinates ([`group_positions`]), so a deleted topic's or group's series leave with it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use futures::StreamExt;
use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use psubd_actors::locks::lock;
use psubd_actors::topic::PartitionPlacement;
use psubd_actors::Broker;

use crate::edge::Edge;

/// At most this many consumer group series (group, topic, partition) per scrape: a node
/// coordinating more groups reports the first ones in name order (a scrape stays bounded).
pub const MAX_GROUP_SERIES: usize = 5_000;

/// Partition statuses a scrape asks for at once (of the partitions its groups read): a
/// coordinator of many groups does not send a burst of thousands of peer requests.
const STATUS_CONCURRENCY: usize = 32;

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
    /// Raft groups of this node that are quiet: idle, neither ticking nor heartbeating.
    pub raft_groups_quiet: IntGaugeVec,
    /// Raft term of each local replica.
    pub raft_term: IntGaugeVec,
    /// Last Raft log index applied by each local replica.
    pub raft_applied_index: IntGaugeVec,
    /// On a partition's leader: entries each follower's log is behind the leader's.
    pub raft_follower_lag: IntGaugeVec,
    /// Last Raft log index each local replica knows committed.
    pub raft_commit_index: IntGaugeVec,
    /// Leaders each local replica has seen elected since the node started.
    pub raft_leader_changes: IntCounterVec,
    /// Snapshots each local replica built, and their bytes.
    pub snapshot_builds: IntCounterVec,
    /// Bytes of the snapshots each local replica built.
    pub snapshot_built_bytes: IntCounterVec,
    /// Snapshots each local replica installed from its leader.
    pub snapshot_installs: IntCounterVec,
    /// Bytes of the snapshots each local replica installed.
    pub snapshot_installed_bytes: IntCounterVec,
    /// On a group's coordinator: the group's committed offset per partition.
    pub group_committed_offset: IntGaugeVec,
    /// On a group's coordinator: high watermark minus committed offset per partition.
    pub group_lag: IntGaugeVec,
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
        let raft_commit_index = partition_gauge(
            "psubd_partition_raft_commit_index",
            "Last Raft log index local replicas know committed",
        );
        let partition_counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["topic", "partition"])
                .expect("valid metric")
        };
        let raft_leader_changes = partition_counter(
            "psubd_partition_raft_leader_changes_total",
            "Leaders local replicas saw elected since the node started",
        );
        let snapshot_builds = partition_counter(
            "psubd_partition_snapshot_builds_total",
            "Snapshots local replicas built",
        );
        let snapshot_built_bytes = partition_counter(
            "psubd_partition_snapshot_built_bytes_total",
            "Bytes of the snapshots local replicas built",
        );
        let snapshot_installs = partition_counter(
            "psubd_partition_snapshot_installs_total",
            "Snapshots local replicas installed from their leader",
        );
        let snapshot_installed_bytes = partition_counter(
            "psubd_partition_snapshot_installed_bytes_total",
            "Bytes of the snapshots local replicas installed",
        );
        let group_gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["group", "topic", "partition"])
                .expect("valid metric")
        };
        let group_committed_offset = group_gauge(
            "psubd_group_committed_offset",
            "On the group's coordinator: the committed offset (next to read) per partition",
        );
        let group_lag = group_gauge(
            "psubd_group_lag",
            "On the group's coordinator: records between the committed offset and the high watermark",
        );
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
        let raft_groups_quiet = node_gauge(
            "psubd_raft_groups_quiet",
            "Raft groups that are idle and quiet: neither ticking nor heartbeating",
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
            Box::new(raft_groups_quiet.clone()),
            Box::new(raft_term.clone()),
            Box::new(raft_applied_index.clone()),
            Box::new(raft_follower_lag.clone()),
            Box::new(raft_commit_index.clone()),
            Box::new(raft_leader_changes.clone()),
            Box::new(snapshot_builds.clone()),
            Box::new(snapshot_built_bytes.clone()),
            Box::new(snapshot_installs.clone()),
            Box::new(snapshot_installed_bytes.clone()),
            Box::new(group_committed_offset.clone()),
            Box::new(group_lag.clone()),
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
            raft_groups_quiet,
            raft_term,
            raft_applied_index,
            raft_follower_lag,
            raft_commit_index,
            raft_leader_changes,
            snapshot_builds,
            snapshot_built_bytes,
            snapshot_installs,
            snapshot_installed_bytes,
            group_committed_offset,
            group_lag,
            scrape: Mutex::new(()),
        }
    }

    /// The gauges labelled by topic and partition (and the group gauges), cleared at each
    /// refresh.
    fn partition_gauges(&self) -> [&IntGaugeVec; 11] {
        [
            &self.raft_commit_index,
            &self.group_committed_offset,
            &self.group_lag,
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

    /// The counters read from each replica's Raft stats, set again at each refresh (a
    /// counter that only grows: reset, then set to the stats' total).
    fn partition_counters(&self) -> [&IntCounterVec; 5] {
        [
            &self.raft_leader_changes,
            &self.snapshot_builds,
            &self.snapshot_built_bytes,
            &self.snapshot_installs,
            &self.snapshot_installed_bytes,
        ]
    }

    /// Refreshes the gauges read from this node's replicas and storage, then renders every
    /// metric. Series of topics deleted since the last scrape are gone, as are those of
    /// groups no longer in `groups`. `data_dir_bytes` is measured by the caller (it walks
    /// the disk: off the async runtime), and so are `groups` ([`group_positions`]: they
    /// may ask peers).
    pub fn refresh_and_render(
        &self,
        broker: &Broker,
        data_dir_bytes: Option<u64>,
        groups: &[GroupPosition],
    ) -> Vec<u8> {
        let _one_scrape = lock(&self.scrape);
        for gauge in self.partition_gauges() {
            gauge.reset();
        }
        for counter in self.partition_counters() {
            counter.reset();
        }
        self.set_group_positions(groups);
        let storage = broker.raft_node().storage();
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
                if let Some(stats) = storage.group_stats(placement.group) {
                    let stats = stats.read();
                    set(&self.raft_commit_index, stats.committed_index);
                    for (counter, total) in [
                        (&self.raft_leader_changes, stats.leader_changes),
                        (&self.snapshot_builds, stats.snapshot_builds),
                        (&self.snapshot_built_bytes, stats.snapshot_built_bytes),
                        (&self.snapshot_installs, stats.snapshot_installs),
                        (
                            &self.snapshot_installed_bytes,
                            stats.snapshot_installed_bytes,
                        ),
                    ] {
                        counter.with_label_values(&labels).inc_by(total);
                    }
                }
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
        self.raft_groups_quiet
            .with_label_values(&node)
            .set(i64::try_from(broker.raft_node().quiet_groups()).unwrap_or(i64::MAX));
        if let Some(bytes) = data_dir_bytes {
            self.data_dir_bytes
                .with_label_values(&node)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.render()
    }

    /// Sets the group gauges to `groups` (cleared by the caller).
    fn set_group_positions(&self, groups: &[GroupPosition]) {
        for position in groups {
            let partition = position.partition.to_string();
            let labels = [
                position.group.as_str(),
                position.topic.as_str(),
                partition.as_str(),
            ];
            let to_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
            self.group_committed_offset
                .with_label_values(&labels)
                .set(to_i64(position.committed));
            if let Some(high_watermark) = position.high_watermark {
                self.group_lag
                    .with_label_values(&labels)
                    .set(to_i64(high_watermark.saturating_sub(position.committed)));
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// A consumer group's committed offset in one partition, and that partition's high
/// watermark when a replica answered, as the group's coordinator sees them at a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset (the next to read).
    pub committed: u64,
    /// The partition's high watermark; `None` when no replica answered in time.
    pub high_watermark: Option<u64>,
}

/// The committed offsets of the groups this node coordinates, with their partitions' high
/// watermarks (at most [`MAX_GROUP_SERIES`]). Offsets left from a deleted topic (or one
/// deleted and created again) are skipped. Each partition's status is asked once, however
/// many groups read it, [`STATUS_CONCURRENCY`] at a time, each bounded by the edge's status
/// timeouts.
pub async fn group_positions(edge: &Edge) -> Vec<GroupPosition> {
    let broker = edge.broker();
    let metadata = broker.metadata();
    let mut rows = broker.groups().coordinated_offsets(broker.node_id());
    rows.sort_by(|a, b| (&a.0, &a.1.topic, a.1.partition).cmp(&(&b.0, &b.1.topic, b.1.partition)));
    rows.truncate(MAX_GROUP_SERIES);
    let mut placements: BTreeMap<(String, u32), PartitionPlacement> = BTreeMap::new();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(_, tp, offset)| {
            let Some(placement) = metadata.partition(&tp.topic, tp.partition) else {
                return false;
            };
            let current = placement.group == offset.topic_group;
            if current {
                placements.insert((tp.topic.clone(), tp.partition), placement.clone());
            }
            current
        })
        .collect();
    // The futures are made first: a stream mapping with a closure over borrowed placements
    // would not be `Send` for every lifetime, as the handler's future must be.
    let asks: Vec<_> = placements
        .values()
        .map(|placement| edge.partition_status(placement))
        .collect();
    let statuses: Vec<_> = futures::stream::iter(asks)
        .buffered(STATUS_CONCURRENCY)
        .collect()
        .await;
    let high_watermarks: BTreeMap<&(String, u32), u64> = placements
        .keys()
        .zip(statuses)
        .filter_map(|(key, status)| status.map(|s| (key, s.high_watermark)))
        .collect();
    rows.into_iter()
        .map(|(group, tp, offset)| {
            let high_watermark = high_watermarks
                .get(&(tp.topic.clone(), tp.partition))
                .copied();
            GroupPosition {
                group,
                topic: tp.topic,
                partition: tp.partition,
                committed: offset.offset,
                high_watermark,
            }
        })
        .collect()
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
        metrics.set_group_positions(&[
            GroupPosition {
                group: "billing".into(),
                topic: "orders".into(),
                partition: 2,
                committed: 7,
                high_watermark: Some(10),
            },
            GroupPosition {
                group: "billing".into(),
                topic: "orders".into(),
                partition: 3,
                committed: 4,
                high_watermark: None,
            },
        ]);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("psubd_records_published_total{topic=\"orders\"} 3"));
        let labels = r#"group="billing",partition="2",topic="orders""#;
        assert!(text.contains(&format!("psubd_group_committed_offset{{{labels}}} 7")));
        assert!(text.contains(&format!("psubd_group_lag{{{labels}}} 3")));
        // No high watermark: the committed offset, and no made-up lag.
        assert!(text.contains(r#"psubd_group_committed_offset{group="billing",partition="3""#));
        assert!(!text.contains(r#"psubd_group_lag{group="billing",partition="3""#));
        for process_metric in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(text.contains(process_metric), "{process_metric} missing");
        }
    }
}
