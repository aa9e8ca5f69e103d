//! Helpers shared by the end-to-end test files: what a test remembers of acknowledged
//! publishes, and the checks that every node holds them.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::time::Duration;

use psubd_tests::{eventually, Cluster, DeliveryReport, NewRecord, Record};
use serde_json::{json, Value};

/// What an acknowledged record must read back as.
#[derive(Debug, Clone)]
pub enum Expected {
    /// A JSON-encoded record: its value and headers.
    Json {
        /// The published value.
        value: Value,
        /// The published headers, if any.
        headers: Option<BTreeMap<String, String>>,
    },
    /// A raw (octet-stream / text) record: its bytes.
    Bytes(Vec<u8>),
}

/// One acknowledged record: where the node said it is, and what it holds.
#[derive(Debug, Clone)]
pub struct Acked {
    /// Acknowledged partition.
    pub partition: u32,
    /// Acknowledged offset.
    pub offset: u64,
    /// Published key.
    pub key: Option<String>,
    /// Published content.
    pub expected: Expected,
}

impl Acked {
    /// Pairs published records with their delivery reports (same order, per docs/api.md).
    pub fn from_publish(records: &[NewRecord], reports: &[DeliveryReport]) -> Vec<Acked> {
        assert_eq!(
            records.len(),
            reports.len(),
            "one delivery report per record"
        );
        records
            .iter()
            .zip(reports)
            .map(|(r, d)| Acked {
                partition: d.partition,
                offset: d.offset,
                key: r.key.clone(),
                expected: Expected::Json {
                    value: r.value.clone(),
                    headers: r.headers.clone(),
                },
            })
            .collect()
    }

    /// Panics unless `got` (read at this record's partition and offset) matches.
    pub fn assert_matches(&self, got: &Record, node: u64) {
        let at = format!(
            "node {node}, partition {}, offset {}",
            self.partition, self.offset
        );
        assert_eq!(got.partition, self.partition, "{at}: partition");
        assert_eq!(got.offset, self.offset, "{at}: offset");
        assert_eq!(
            got.key, self.key,
            "{at}: key (record encoding {:?})",
            got.encoding
        );
        match &self.expected {
            Expected::Json { value, headers } => {
                assert_eq!(&got.value, value, "{at}: value");
                if let Some(h) = headers {
                    assert_eq!(got.headers.as_ref(), Some(&json!(h)), "{at}: headers");
                }
            }
            Expected::Bytes(bytes) => {
                assert_eq!(&got.value_bytes(), bytes, "{at}: raw value bytes");
            }
        }
    }
}

/// Asserts that the acknowledged offsets are unique, and returns them grouped by
/// partition.
pub fn by_partition(acked: &[Acked]) -> BTreeMap<u32, BTreeMap<u64, &Acked>> {
    let mut out: BTreeMap<u32, BTreeMap<u64, &Acked>> = BTreeMap::new();
    for a in acked {
        let prev = out.entry(a.partition).or_default().insert(a.offset, a);
        assert!(
            prev.is_none(),
            "offset {} of partition {} was acknowledged twice",
            a.offset,
            a.partition
        );
    }
    out
}

/// docs/architecture.md § Failure contract: every acknowledged record is readable from each of
/// `nodes`, in order, at its acknowledged offset. Waits up to `timeout` for a node to
/// catch up (a follower may apply a moment after the leader acknowledged); a record
/// that is there but different fails at once.
pub async fn assert_all_present(
    cluster: &Cluster,
    topic: &str,
    acked: &[Acked],
    nodes: &[u64],
    timeout: Duration,
) {
    let grouped = by_partition(acked);
    for &id in nodes {
        let node = cluster.node(id);
        for (&partition, expected) in &grouped {
            let needed = expected.keys().next_back().map_or(0, |o| o + 1);
            let node = &node;
            let records = eventually(
                timeout,
                &format!("node {id} to hold offsets 0..{needed} of {topic}/{partition}"),
                || async move {
                    let records = node.try_fetch_all(topic, partition).await?;
                    if (records.len() as u64) < needed {
                        return Err(format!("only {} records", records.len()));
                    }
                    Ok(records)
                },
            )
            .await;
            for (&offset, a) in expected {
                a.assert_matches(&records[offset as usize], id);
            }
        }
    }
}

/// The high watermark of every partition of `topic`, once every node in `cluster`
/// reports the same ones (so that a later comparison is not confused by a follower
/// still applying).
pub async fn converged_high_watermarks(cluster: &Cluster, topic: &str) -> Vec<u64> {
    let nodes: Vec<_> = cluster
        .running()
        .into_iter()
        .map(|id| cluster.node(id))
        .collect();
    let nodes = &nodes;
    eventually(
        Duration::from_secs(10),
        &format!("every node to report the same high watermarks for {topic}"),
        || async move {
            let mut seen: Option<Vec<u64>> = None;
            for node in nodes {
                let mut parts = node.try_partitions(topic).await?;
                parts.sort_by_key(|p| p.partition);
                let hws: Vec<u64> = parts.iter().map(|p| p.high_watermark).collect();
                match &seen {
                    None => seen = Some(hws),
                    Some(s) if *s == hws => {}
                    Some(s) => return Err(format!("{s:?} vs {hws:?} on {}", node.base())),
                }
            }
            seen.ok_or_else(|| String::from("no running node"))
        },
    )
    .await
}
