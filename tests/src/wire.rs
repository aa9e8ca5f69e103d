//! The JSON shapes of docs/api.md, as the tests read and write them.
//!
//! Deliberately written from the contract, not shared with the `api` crate: if the node
//! drifts from docs/api.md, these types fail to parse its answers and the tests say so.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A topic as `POST /v1/topics` and `GET /v1/topics/{t}` return it.
#[derive(Debug, Clone, Deserialize)]
pub struct Topic {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
}

/// One entry of `GET /v1/topics/{t}/partitions`.
#[derive(Debug, Clone, Deserialize)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: u32,
    /// Node id of the leader; `None` while the partition has none.
    pub leader: Option<u64>,
    /// Node ids holding a replica.
    pub replicas: Vec<u64>,
    /// First offset still stored.
    pub log_start_offset: u64,
    /// One past the last committed offset.
    pub high_watermark: u64,
}

/// A record to publish (one element of the request's `records`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewRecord {
    /// Partitioning key; equal keys go to one partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The value, any JSON (encoding `json`, the default).
    pub value: Value,
    /// Record headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Explicit partition; else the key's hash, else round-robin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

impl NewRecord {
    /// A keyed record with a JSON value.
    pub fn keyed(key: impl Into<String>, value: Value) -> Self {
        Self {
            key: Some(key.into()),
            value,
            ..Self::default()
        }
    }
}

/// Where one published record landed (an element of `offsets`, or one NDJSON line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct DeliveryReport {
    /// Partition the record was written to.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
}

/// The 200 answer of a publish: one report per record, in request order.
#[derive(Debug, Clone, Deserialize)]
pub struct PublishResponse {
    /// Reports, in the order of the request's records.
    pub offsets: Vec<DeliveryReport>,
}

/// A record as a fetch returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// Record timestamp.
    pub timestamp_ms: i64,
    /// Key, if the record had one.
    #[serde(default)]
    pub key: Option<String>,
    /// Value (a base64 string when `encoding` is `base64`).
    pub value: Value,
    /// Headers (an object, possibly empty or absent).
    #[serde(default)]
    pub headers: Option<Value>,
    /// `base64` for binary values.
    #[serde(default)]
    pub encoding: Option<String>,
}

impl Record {
    /// The value's bytes: base64-decoded when the record says so, the UTF-8 of a string
    /// value, else the JSON text.
    ///
    /// # Panics
    ///
    /// When `encoding` is `base64` and the value is not valid base64.
    pub fn value_bytes(&self) -> Vec<u8> {
        match (&self.value, self.encoding.as_deref()) {
            (Value::String(s), Some("base64")) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_else(|e| panic!("record {}: bad base64 value: {e}", self.offset)),
            (Value::String(s), _) => s.clone().into_bytes(),
            (v, _) => v.to_string().into_bytes(),
        }
    }
}

/// The 200 answer of a fetch by offset.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchResponse {
    /// Records from the requested offset on (empty when none arrived before the timeout).
    pub records: Vec<Record>,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// The partition's high watermark as the answering node knows it.
    pub high_watermark: u64,
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    /// HTTP status × 100 + n.
    pub error_code: u32,
    /// Stable snake_case name.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// Whether retrying the same request may succeed.
    pub retriable: bool,
    /// Further fields, e.g. `log_start_offset` and `high_watermark` on a 416.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterInfo {
    /// Id of the answering node.
    pub node_id: u64,
    /// Controller leader, if known.
    pub controller_leader: Option<u64>,
    /// Every member.
    pub nodes: Vec<ClusterNode>,
    /// Every partition of every topic and where it lives.
    pub partitions: Vec<PartitionPlacement>,
}

/// One member in `GET /v1/cluster` (and the answer to `POST /v1/cluster/nodes`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: u64,
    /// Its peer-transport address.
    pub raft: String,
    /// Its HTTP base URL; `None` until the node has registered it with the controller.
    pub http: Option<String>,
    /// Whether the answering node believes it is up.
    pub alive: bool,
    /// Whether it is a voter of the controller group (false while an added node catches up).
    pub voter: bool,
}

/// One partition in `GET /v1/cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct PartitionPlacement {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Nodes holding a replica.
    pub replicas: Vec<u64>,
    /// Its leader, if known.
    pub leader: Option<u64>,
}
