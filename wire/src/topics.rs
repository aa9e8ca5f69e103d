//! Topics: `POST /v1/topics`, `GET /v1/topics[/{t}]`, `PATCH /v1/topics/{t}`,
//! `GET /v1/topics/{t}/partitions`.

use serde::{Deserialize, Serialize};

/// What happens to old records of a topic; fixed at creation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Records leave by age (`retention_ms`) and size (`retention_bytes`).
    #[default]
    Delete,
    /// Only the latest record of each key is kept; the topic has key views.
    Compact,
}

impl CleanupPolicy {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// The body of `POST /v1/topics`. Every setting left `None` takes the server's default
/// (docs/api.md § Topics), so a client does not hard-code defaults that may change.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name: `^[A-Za-z0-9._-]{1,249}$`, not starting with `__`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(_|(_[A-Za-z0-9.-]|[A-Za-z0-9.-])[A-Za-z0-9._-]{0,247})$")
    )]
    pub name: String,
    /// Partition count, 1 to 1024 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(nullable = false, minimum = 1, maximum = 1024)
    )]
    pub partitions: Option<u32>,
    /// Replicas per partition (default `min(3, nodes)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
    /// Age limit in ms, or -1 for none (default 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub retention_ms: Option<i64>,
    /// Size limit per partition in bytes, or -1 for none (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub retention_bytes: Option<i64>,
    /// `delete` (default) or `compact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_policy: Option<CleanupPolicy>,
    /// Compacted topics: how long a tombstone is kept, ms (-1 forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub delete_retention_ms: Option<i64>,
    /// How long record ids are remembered, ms: 0 (no deduplication) to 86,400,000
    /// (default 120,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(nullable = false, minimum = 0, maximum = 86_400_000)
    )]
    pub duplicate_window_ms: Option<i64>,
}

impl TopicSpec {
    /// A topic with every setting at the server's default.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// The body of `PATCH /v1/topics/{t}`: only retention and the duplicate window can change
/// after creation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicUpdate {
    /// New age limit, ms (-1 for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    /// New size limit per partition, bytes (-1 for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<i64>,
    /// New duplicate window, ms (0: no deduplication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_window_ms: Option<i64>,
    /// New partition count: more than the topic has (partitions are never removed).
    /// Keyed records may map to other partitions afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
}

/// A topic as create, describe, alter and list show it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Age limit, ms (-1: none).
    pub retention_ms: i64,
    /// Size limit per partition, bytes (-1: none).
    pub retention_bytes: i64,
    /// `delete` or `compact`.
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone is kept on a compacted topic, ms (-1: forever).
    pub delete_retention_ms: i64,
    /// How long record ids are remembered for deduplication, ms (0: not at all).
    pub duplicate_window_ms: u64,
}

/// One row of `GET /v1/topics/{t}/partitions`. The numbers are `None` when no replica of
/// the partition answered the node serving the request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// Partition index.
    pub partition: u32,
    /// Node id of the leader; `None` during an election.
    pub leader: Option<u64>,
    /// Node ids holding a replica.
    pub replicas: Vec<u64>,
    /// First offset still stored.
    pub log_start_offset: Option<u64>,
    /// Offset the next record will get.
    pub high_watermark: Option<u64>,
    /// Bytes of record data the answering replica stores.
    pub stored_bytes: Option<u64>,
    /// Delayed records waiting in the partition's delay queue on the answering replica
    /// (not yet readable, see `deliver_at_ms`); left out when none wait.
    #[serde(default, skip_serializing_if = "none_waiting")]
    pub delayed_records: Option<u64>,
}

/// True when a partition row has no delayed records to show.
fn none_waiting(delayed_records: &Option<u64>) -> bool {
    delayed_records.unwrap_or(0) == 0
}
