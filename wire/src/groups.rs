//! Consumer groups (docs/api.md § Consumer groups and § positions).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::records::Record;

/// Where a member starts in a partition without a committed offset.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoOffsetReset {
    /// The log start.
    Earliest,
    /// The high watermark (the server's default).
    #[default]
    Latest,
}

/// How a group spreads partitions over its members (both sticky).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentStrategy {
    /// Contiguous ranges per topic.
    #[default]
    Range,
    /// Partitions dealt in turn.
    RoundRobin,
}

/// A topic's partition.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
}

/// The body of `POST /v1/groups/{g}/members`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Topics to read, 1 to 100, no repeats.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 100))]
    pub topics: Vec<String>,
    /// 1000 to 300,000 ms (default 30,000): a member silent this long is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 300_000))]
    pub session_timeout_ms: Option<u64>,
    /// Where a partition without a committed offset starts (default `latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_offset_reset: Option<AutoOffsetReset>,
    /// Default: the strategy the group's members use, `range` for a new group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_strategy: Option<AssignmentStrategy>,
}

/// The 201 answer of a join.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The member's id (32 hex digits).
    pub member_id: String,
    /// The group's generation.
    pub generation: u64,
    /// The member's partitions.
    pub assignments: Vec<TopicPartition>,
}

/// The 200 answer of a member fetch, `GET /v1/groups/{g}/members/{m}/records`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberFetchResponse {
    /// The member's records.
    pub records: Vec<Record>,
    /// The generation the records were read under (commit with it).
    pub generation: u64,
    /// Opaque token: pass it as `position` on the next fetch to confirm these records
    /// were received (else the next fetch returns them again).
    pub position: String,
    /// The member's partitions, present when they or the generation changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignments: Option<Vec<TopicPartition>>,
}

/// One partition's offset in a commit (the **next** offset to read) or a reset answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Next offset to read: last processed + 1.
    pub offset: u64,
}

/// The body of `POST /v1/groups/{g}/offsets`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// The committing member.
    pub member_id: String,
    /// The generation the records were fetched under.
    pub generation: u64,
    /// 1 to 10,000 offsets.
    pub offsets: Vec<CommitOffset>,
}

/// The 200 answer of `GET /v1/groups/{g}/offsets`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsets {
    /// The group.
    pub group: String,
    /// One row per committed partition.
    pub offsets: Vec<CommittedOffset>,
}

/// One row of [`GroupOffsets`]; partition numbers are `None` when no replica answered.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Committed offset: the next to read.
    pub offset: u64,
    /// The partition's log start.
    pub log_start_offset: Option<u64>,
    /// The partition's high watermark.
    pub high_watermark: Option<u64>,
    /// `high_watermark - offset`.
    pub lag: Option<u64>,
    /// When the offset was committed.
    pub commit_timestamp_ms: i64,
    /// True when retention removed records at and after the committed offset.
    pub committed_below_log_start: bool,
    /// Then: the reset a member applies (`earliest` / `latest`).
    pub reset: Option<AutoOffsetReset>,
    /// Then: where a member resumes.
    pub resumes_at: Option<u64>,
}

/// The target of one reset entry: a number, `earliest` or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetOffset {
    /// The log start.
    Earliest,
    /// The high watermark.
    Latest,
    /// This offset (inside the log, else 416).
    At(u64),
}

impl fmt::Display for ResetOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetOffset::Earliest => f.write_str("earliest"),
            ResetOffset::Latest => f.write_str("latest"),
            ResetOffset::At(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for ResetOffset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(ResetOffset::Earliest),
            "latest" => Ok(ResetOffset::Latest),
            n => n.parse().map(ResetOffset::At).map_err(|_| {
                format!("'{s}' is not a reset target: use earliest, latest or an offset")
            }),
        }
    }
}

impl Serialize for ResetOffset {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ResetOffset::At(n) => serializer.serialize_u64(*n),
            named => serializer.serialize_str(&named.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for ResetOffset {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Name(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ResetOffset::At(n)),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// One entry of a reset: a topic (every partition, or one) to an offset or a timestamp.
/// Exactly one of `offset` and `timestamp_ms` must be set.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetEntry {
    /// Topic name.
    pub topic: String,
    /// One partition; `None`: every partition of the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The target offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<ResetOffset>,
    /// Or: the first record at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
}

/// The body of `PUT /v1/groups/{g}/offsets` (only while the group has no members).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// 1 to 10,000 entries.
    pub offsets: Vec<ResetEntry>,
}

/// The 200 answer of a reset: the offsets now committed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetResponse {
    /// The group.
    pub group: String,
    /// Per partition, the committed offset.
    pub offsets: Vec<CommitOffset>,
}

/// A group's state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    /// Has members.
    Stable,
    /// Has committed offsets and no members.
    Empty,
}

/// One row of `GET /v1/groups`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub group: String,
    /// `stable` or `empty`.
    pub state: GroupState,
    /// Active members.
    pub members: u32,
}

/// `GET /v1/groups/{g}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    /// The group.
    pub group: String,
    /// `stable` or `empty`.
    pub state: GroupState,
    /// The generation (0 before the first join on this coordinator).
    pub generation: u64,
    /// How partitions are spread.
    pub assignment_strategy: AssignmentStrategy,
    /// The coordinator's node id.
    pub coordinator: u64,
    /// The members.
    pub members: Vec<MemberDescription>,
    /// The push subscription, when the group is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::push::PushSubscription>,
}

/// One member in [`GroupDescription`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Its topics.
    pub topics: Vec<String>,
    /// Its session timeout.
    pub session_timeout_ms: u64,
    /// Its reset policy.
    pub auto_offset_reset: AutoOffsetReset,
    /// Its partitions.
    pub assignments: Vec<TopicPartition>,
    /// Milliseconds since it was last heard from (0 while in a long-poll).
    pub last_seen_ms_ago: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_offsets_are_numbers_or_names_on_the_wire() {
        let entry = ResetEntry {
            topic: "t".into(),
            partition: None,
            offset: Some(ResetOffset::Earliest),
            timestamp_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&entry).ok().as_deref(),
            Some(r#"{"topic":"t","offset":"earliest"}"#)
        );
        let back: Result<ResetEntry, _> =
            serde_json::from_str(r#"{"topic":"t","partition":1,"offset":7}"#);
        assert_eq!(back.ok().and_then(|e| e.offset), Some(ResetOffset::At(7)));
        assert!(serde_json::from_str::<ResetOffset>(r#""soon""#).is_err());
    }

    #[test]
    fn request_types_refuse_unknown_fields() {
        assert!(serde_json::from_str::<JoinRequest>(r#"{"topics":["a"],"sesion":1}"#).is_err());
    }
}
