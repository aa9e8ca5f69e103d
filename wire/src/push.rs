//! Push subscriptions (docs/api.md § Push subscriptions): the settings a client sets,
//! the subscription and its state as the cluster shows it, and the body of each POST the
//! cluster makes to the endpoint.

use serde::{Deserialize, Serialize};

use crate::records::Record;

/// `PUT /v1/groups/{g}/push`: makes the group a push subscription. Omitted settings take
/// their defaults (docs/api.md).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// Topics whose records are pushed (they exist).
    pub topics: Vec<String>,
    /// `http://` or `https://` URL each record is POSTed to.
    pub endpoint: String,
    /// Most records of one partition outstanding at once (1 to 100; default 1: strict
    /// order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Deadline of one POST in ms (100 to 120,000; default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Pause after a first failed attempt, doubling per failure (10 to 3,600,000; default
    /// 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_backoff_ms: Option<u64>,
    /// Longest pause between attempts (at least `min_backoff_ms`, at most 3,600,000;
    /// default 60,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// Attempts per record before it is dead-lettered (1 to 100; default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Topic receiving records that exhausted their attempts; without one they are
    /// dropped (counted in `dropped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Key of the `X-Psubd-Signature` HMAC-SHA256 (1 to 256 bytes). Never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A push subscription: its settings (never the secret) and, once its pusher runs, the
/// state of each partition. The answer of `GET` and `PUT /v1/groups/{g}/push`, and the
/// `push` of `GET /v1/groups/{g}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscription {
    /// The group.
    pub group: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Where records are POSTed.
    pub endpoint: String,
    /// Most records of one partition outstanding.
    pub max_in_flight: u32,
    /// Deadline of one POST.
    pub timeout_ms: u64,
    /// Pause after a first failed attempt.
    pub min_backoff_ms: u64,
    /// Longest pause between attempts.
    pub max_backoff_ms: u64,
    /// Attempts per record.
    pub max_deliveries: u32,
    /// Where exhausted records go (`None`: dropped).
    pub dead_letter_topic: Option<String>,
    /// Whether bodies are signed (the secret itself is never shown).
    pub secret_set: bool,
    /// The node pushing: the group's coordinator.
    pub coordinator: u64,
    /// Per partition; empty until the pusher has started.
    pub partitions: Vec<PushPartitionState>,
}

/// One partition of a push subscription. Counts are since the pusher started on the
/// coordinator's node (a failover starts them again).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPartitionState {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The group's committed offset: every record below it was acknowledged,
    /// dead-lettered or dropped.
    pub committed_offset: Option<u64>,
    /// The partition's high watermark at the last read.
    pub high_watermark: Option<u64>,
    /// Records not yet committed past: high watermark − committed offset.
    pub lag: Option<u64>,
    /// The oldest record being delivered now.
    pub pending_offset: Option<u64>,
    /// Attempts made so far for it (0 when none is pending).
    pub delivery_attempt: u32,
    /// The last failure, until the next success.
    pub last_error: Option<String>,
    /// Records the endpoint acknowledged.
    pub delivered: u64,
    /// Records published to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records given up without a dead-letter topic.
    pub dropped: u64,
}

/// The body of each POST to a push endpoint: the record as a fetch shows it (with its
/// `topic`, `partition` and `offset`) and which attempt this is (1 for the first).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushDelivery {
    /// The record.
    #[serde(flatten)]
    pub record: Record,
    /// 1 for the first attempt, up to `max_deliveries`.
    pub delivery_attempt: u32,
}
