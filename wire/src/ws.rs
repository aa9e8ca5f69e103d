//! The WebSocket API (`GET /v1/ws`, docs/api.md § WebSocket): the frames the server sends.
//! A client's operations are `{"op": …, "id"?: …}` objects documented there; their bodies
//! reuse the HTTP types (`records` is [`crate::NewRecord`]s, `offsets` is
//! [`crate::CommitOffset`]s).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorBody;
use crate::groups::TopicPartition;
use crate::publish::RecordReport;
use crate::records::Record;

/// One frame from the server, told apart by its `type`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// An operation succeeded.
    Ack(Ack),
    /// A subscription's record.
    Record(RecordFrame),
    /// A group subscription's generation or partitions changed.
    Assignment(AssignmentFrame),
    /// An operation failed, or a subscription ended.
    Error(ErrorFrame),
}

/// The answer of a successful operation; which fields are present depends on it:
/// `publish` gives `offsets` and `partial` (or `accepted` with `acks=0`), `subscribe`
/// gives `subscription`, `credit` and its source (`topic` and `partition`, or `group` and
/// `member_id`), `unsubscribe` gives `subscription`, `commit` and `credit` only `id`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The operation's `id`, as sent (`null` when it had none).
    pub id: Option<Value>,
    /// The subscription started or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<u64>,
    /// `publish` with `acks=0`: records accepted for a background append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    /// `publish`: one report per record, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<Vec<RecordReport>>,
    /// `publish`: true when some records failed (their reports hold the errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<bool>,
    /// A partition subscription's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// A partition subscription's partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// A group subscription's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A group subscription's member (joined or attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// `subscribe`: the records the subscription may send before more credit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u64>,
}

/// A record of a subscription, sent within its credit.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordFrame {
    /// The subscription.
    pub subscription: u64,
    /// The record, as every read renders it.
    pub record: Record,
}

/// A group subscription's generation or partitions changed (sent first, too).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentFrame {
    /// The subscription.
    pub subscription: u64,
    /// The group's generation.
    pub generation: u64,
    /// The member's partitions.
    pub assignments: Vec<TopicPartition>,
}

/// An operation's error, or the error that ended a subscription: the HTTP error body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The failed operation's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The subscription that ended, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<u64>,
    /// Why.
    #[serde(flatten)]
    pub error: ErrorBody,
}
