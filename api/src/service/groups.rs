//! Consumer-group operations: join, leave and commit, each sent to the group's
//! coordinator wherever it runs (through [`crate::edge::Edge::group`]).

use std::collections::BTreeSet;

use psubd_actors::assignment::AssignmentStrategy;
use psubd_actors::coordinator::{
    AutoOffsetReset, GroupAnswer, GroupRequest, Lease, MAX_SESSION_TIMEOUT_MS,
    MIN_SESSION_TIMEOUT_MS,
};
use psubd_actors::offsets::OffsetEntry;
use psubd_actors::topic::{PartitionPlacement, TopicMeta};

use super::{names, Caller, Result, Service};
use crate::error::ApiError;

/// Default session timeout (docs/api.md).
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 30_000;

/// Most topics one member may subscribe to.
pub const MAX_TOPICS_PER_MEMBER: usize = 100;

/// Most offsets in one commit or reset.
pub const MAX_OFFSETS_PER_REQUEST: usize = 10_000;

/// A consumer group's name, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupName(String);

impl GroupName {
    /// Checks a group name.
    ///
    /// # Errors
    /// 400 `invalid_name`.
    pub fn parse(name: String) -> Result<Self> {
        names::group(&name)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A join, its settings checked.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    topics: Vec<String>,
    session_timeout_ms: u64,
    auto_offset_reset: AutoOffsetReset,
    strategy: Option<AssignmentStrategy>,
}

impl JoinRequest {
    /// Checks a join's settings as clients name them (`auto_offset_reset`: `earliest` or
    /// `latest`; `assignment_strategy`: `range` or `round_robin`).
    ///
    /// # Errors
    /// 400 for the topic list, 422 `invalid_config` for the settings.
    pub fn new(
        topics: Vec<String>,
        session_timeout_ms: Option<u64>,
        auto_offset_reset: Option<&str>,
        assignment_strategy: Option<&str>,
    ) -> Result<Self> {
        if topics.is_empty() || topics.len() > MAX_TOPICS_PER_MEMBER {
            return Err(ApiError::InvalidRequest {
                message: format!("topics must list 1 to {MAX_TOPICS_PER_MEMBER} topics"),
            });
        }
        let unique: BTreeSet<&String> = topics.iter().collect();
        if unique.len() != topics.len() {
            return Err(ApiError::InvalidRequest {
                message: "topics must not repeat a topic".into(),
            });
        }
        let session_timeout_ms = session_timeout_ms.unwrap_or(DEFAULT_SESSION_TIMEOUT_MS);
        if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&session_timeout_ms) {
            return Err(ApiError::InvalidConfig {
                message: format!(
                    "session_timeout_ms must be between {MIN_SESSION_TIMEOUT_MS} and {MAX_SESSION_TIMEOUT_MS}"
                ),
            });
        }
        let auto_offset_reset = match auto_offset_reset {
            None | Some("latest") => AutoOffsetReset::Latest,
            Some("earliest") => AutoOffsetReset::Earliest,
            Some(other) => {
                return Err(ApiError::InvalidConfig {
                    message: format!(
                        "auto_offset_reset must be 'earliest' or 'latest', not '{other}'"
                    ),
                })
            }
        };
        let strategy = match assignment_strategy {
            None => None,
            Some("range") => Some(AssignmentStrategy::Range),
            Some("round_robin") => Some(AssignmentStrategy::RoundRobin),
            Some(other) => {
                return Err(ApiError::InvalidConfig {
                    message: format!(
                        "assignment_strategy must be 'range' or 'round_robin', not '{other}'"
                    ),
                })
            }
        };
        Ok(Self {
            topics,
            session_timeout_ms,
            auto_offset_reset,
            strategy,
        })
    }
}

/// One partition's offset in a commit.
#[derive(Clone, Debug)]
pub struct CommitOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The next offset to consume.
    pub offset: u64,
}

/// A member's commit.
#[derive(Clone, Debug)]
pub struct CommitRequest {
    /// The member committing.
    pub member_id: String,
    /// The generation it was assigned in.
    pub generation: u64,
    /// What it consumed.
    pub offsets: Vec<CommitOffset>,
}

/// Checks how many offsets one commit or reset names.
///
/// # Errors
/// 400 for none or too many.
pub fn check_offset_count(count: usize) -> Result<()> {
    if count == 0 || count > MAX_OFFSETS_PER_REQUEST {
        return Err(ApiError::InvalidRequest {
            message: format!("offsets must list 1 to {MAX_OFFSETS_PER_REQUEST} entries"),
        });
    }
    Ok(())
}

/// The placement of one partition of a topic.
///
/// # Errors
/// 404 `partition_not_found`.
pub fn partition_of(meta: &TopicMeta, partition: u32) -> Result<&PartitionPlacement> {
    meta.partitions
        .get(partition as usize)
        .ok_or_else(|| ApiError::PartitionNotFound {
            topic: meta.name.clone(),
            partition: u64::from(partition),
        })
}

/// The lease a coordinator answered.
///
/// # Errors
/// 500 for any other answer.
pub fn lease_of(answer: GroupAnswer) -> Result<Lease> {
    match answer {
        GroupAnswer::Lease(lease) => Ok(lease),
        other => Err(ApiError::Internal {
            detail: format!("coordinator answered {other:?} where a lease was due"),
        }),
    }
}

impl Service {
    /// A topic a group may use: a valid, existing, non-internal name.
    ///
    /// # Errors
    /// 400 `invalid_name`, 404 `topic_not_found`.
    pub async fn group_topic(&self, _caller: &Caller, topic: &str) -> Result<TopicMeta> {
        names::group_topic(topic)?;
        self.edge.topic(topic).await
    }

    /// Joins a member to a group; answers its lease (member id, generation, assignment).
    ///
    /// # Errors
    /// 404 for an unknown topic; the coordinator's refusals.
    pub async fn join(
        &self,
        caller: &Caller,
        group: &GroupName,
        request: JoinRequest,
    ) -> Result<Lease> {
        for topic in &request.topics {
            self.group_topic(caller, topic).await?;
        }
        lease_of(
            self.edge
                .group(
                    group.as_str(),
                    GroupRequest::Join {
                        topics: request.topics,
                        session_timeout_ms: request.session_timeout_ms,
                        auto_offset_reset: request.auto_offset_reset,
                        strategy: request.strategy,
                    },
                )
                .await?,
        )
    }

    /// Removes a member from its group at once (its partitions move without waiting for
    /// its session to expire).
    ///
    /// # Errors
    /// 400 for a malformed member id; the coordinator's refusals.
    pub async fn leave(&self, _caller: &Caller, group: &GroupName, member: String) -> Result<()> {
        names::member(&member)?;
        self.edge
            .group(group.as_str(), GroupRequest::Leave { member_id: member })
            .await?;
        Ok(())
    }

    /// Commits a member's offsets, fenced by its generation.
    ///
    /// # Errors
    /// 400 for a malformed request, 404 for unknown topics and partitions, 422 above a
    /// high watermark; the coordinator's refusals (fenced, stale generation, not
    /// assigned).
    pub async fn commit(
        &self,
        caller: &Caller,
        group: &GroupName,
        request: CommitRequest,
    ) -> Result<()> {
        names::member(&request.member_id)?;
        check_offset_count(request.offsets.len())?;
        let mut seen = BTreeSet::new();
        let mut entries = Vec::with_capacity(request.offsets.len());
        let mut placements = Vec::with_capacity(request.offsets.len());
        for item in request.offsets {
            if !seen.insert((item.topic.clone(), item.partition)) {
                return Err(ApiError::InvalidRequest {
                    message: format!(
                        "offsets name partition {} of topic '{}' twice",
                        item.partition, item.topic
                    ),
                });
            }
            let meta = self.group_topic(caller, &item.topic).await?;
            let placement = partition_of(&meta, item.partition)?;
            placements.push(placement.clone());
            entries.push(OffsetEntry {
                topic: item.topic,
                partition: item.partition,
                topic_group: placement.group,
                offset: item.offset,
            });
        }
        self.check_within_high_watermarks(&entries, &placements)
            .await?;
        self.edge
            .group(
                group.as_str(),
                GroupRequest::Commit {
                    member_id: request.member_id,
                    generation: request.generation,
                    offsets: entries,
                },
            )
            .await?;
        Ok(())
    }

    /// Refuses a commit above a partition's high watermark (as the partition's leader
    /// reports it): it would mark records that do not exist yet as consumed, and the
    /// member's next fetch would meet 416 forever. The watermark only grows, so a check
    /// before the proposal holds when the commit applies.
    ///
    /// # Errors
    /// 422 `offset_beyond_high_watermark`; 503 when a partition has no reachable replica.
    async fn check_within_high_watermarks(
        &self,
        entries: &[OffsetEntry],
        placements: &[PartitionPlacement],
    ) -> Result<()> {
        let statuses = futures::future::join_all(
            placements
                .iter()
                .map(|placement| self.edge.partition_status(placement)),
        )
        .await;
        for (entry, status) in entries.iter().zip(statuses) {
            let status = status.ok_or_else(|| ApiError::Unavailable {
                reason: format!(
                    "partition {} of topic '{}' has no reachable replica",
                    entry.partition, entry.topic
                ),
            })?;
            if entry.offset > status.high_watermark {
                return Err(ApiError::OffsetBeyondHighWatermark {
                    topic: entry.topic.clone(),
                    partition: entry.partition,
                    offset: entry.offset,
                    high_watermark: status.high_watermark,
                });
            }
        }
        Ok(())
    }
}
