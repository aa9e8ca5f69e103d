//! Streams (`…/partitions/{p}/stream`, `…/members/{m}/stream`): what one NDJSON line — or
//! the data of one SSE event — holds.

use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::groups::TopicPartition;
use crate::records::Record;

/// A member stream's `assignment` item: sent first, and again whenever the generation or
/// the member's partitions change.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentEvent {
    /// Always `assignment`; record lines never carry an `event` field.
    pub event: String,
    /// The group's generation.
    pub generation: u64,
    /// The member's partitions.
    pub assignments: Vec<TopicPartition>,
}

/// One item of a stream.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamItem {
    /// A member stream's assignment (SSE event `assignment`).
    Assignment(AssignmentEvent),
    /// A record (SSE event `record`, id `<partition>-<offset>`).
    Record(Record),
    /// The error that ended the stream (SSE event `error`).
    Error(ErrorBody),
}
