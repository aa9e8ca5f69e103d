//! Consumer-group operations: join, leave, commit, the offsets view and reset, list,
//! describe and delete, each sent to the group's coordinator wherever it runs (through
//! [`crate::edge::Edge::group`]).

use std::collections::BTreeSet;

use psubd_actors::assignment::{AssignmentStrategy, TopicPartition};
use psubd_actors::controller::access::{Operation, ResourceType};
use psubd_actors::coordinator::{
    AutoOffsetReset, GroupAnswer, GroupDescription, GroupRequest, GroupSummary, Lease,
    MAX_SESSION_TIMEOUT_MS, MIN_SESSION_TIMEOUT_MS,
};
use psubd_actors::offsets::{CommittedOffset, OffsetEntry};
use psubd_actors::topic::{PartitionPlacement, TopicMeta};

use super::{names, Caller, Result, Service};
use crate::error::ApiError;
use crate::protocol::{OffsetSpec, ReplicaStatus};

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
    /// A topic a group may use: a valid, existing, non-internal name the caller may
    /// `read`.
    ///
    /// # Errors
    /// 400 `invalid_name`, 403 `forbidden`, 404 `topic_not_found`.
    pub async fn group_topic(&self, caller: &Caller, topic: &str) -> Result<TopicMeta> {
        names::group_topic(topic)?;
        self.authorize(caller, ResourceType::Topic, topic, Operation::Read)?;
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
        self.authorize_group(caller, group, Operation::Read)?;
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
    pub async fn leave(&self, caller: &Caller, group: &GroupName, member: String) -> Result<()> {
        self.authorize_group(caller, group, Operation::Read)?;
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
        self.authorize_group(caller, group, Operation::Read)?;
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

/// Where a reset moves a partition's committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// A given offset (inside the log).
    Offset(u64),
    /// The log start.
    Earliest,
    /// The high watermark.
    Latest,
    /// The first record at or after a timestamp.
    Timestamp(i64),
}

/// One reset: a topic (every partition, or one) and where to.
#[derive(Clone, Debug)]
pub struct ResetRequest {
    /// The topic.
    pub topic: String,
    /// One partition, or every partition when `None`.
    pub partition: Option<u32>,
    /// Where to.
    pub to: ResetTo,
}

/// One committed offset of a group with its partition's state now.
pub struct CommittedRow {
    /// The partition.
    pub partition: TopicPartition,
    /// What the group committed.
    pub committed: CommittedOffset,
    /// The partition's replica status; `None` when no replica answered.
    pub status: Option<ReplicaStatus>,
    /// The committed offset fell below the log start (retention removed those records).
    pub below_log_start: bool,
    /// Only then: the `auto_offset_reset` of the member holding the partition now.
    pub reset: Option<AutoOffsetReset>,
}

impl CommittedRow {
    /// Where the holding member resumes when the committed offset left the log.
    pub fn resumes_at(&self) -> Option<u64> {
        match (self.reset, self.status) {
            (Some(AutoOffsetReset::Earliest), Some(s)) => Some(s.log_start),
            (Some(AutoOffsetReset::Latest), Some(s)) => Some(s.high_watermark),
            _ => None,
        }
    }
}

impl Service {
    /// Every consumer group of the cluster the caller may `describe`.
    ///
    /// # Errors
    /// 503 when an offsets partition has no reachable leader.
    pub async fn list_groups(&self, caller: &Caller) -> Result<Vec<GroupSummary>> {
        let mut groups = self.edge.list_groups().await?;
        groups.retain(|g| self.permits(caller, ResourceType::Group, &g.group, Operation::Describe));
        Ok(groups)
    }

    /// Refuses `operation` on the group unless the caller's ACLs allow it.
    ///
    /// # Errors
    /// 403 `forbidden`.
    fn authorize_group(
        &self,
        caller: &Caller,
        group: &GroupName,
        operation: Operation,
    ) -> Result<()> {
        self.authorize(caller, ResourceType::Group, group.as_str(), operation)
    }

    /// A group's members, generation and assignments.
    ///
    /// # Errors
    /// 404 `group_not_found`; 503 when its coordinator is unreachable.
    pub async fn describe_group(
        &self,
        caller: &Caller,
        group: &GroupName,
    ) -> Result<GroupDescription> {
        self.authorize_group(caller, group, Operation::Describe)?;
        match self
            .edge
            .group(group.as_str(), GroupRequest::Describe)
            .await?
        {
            GroupAnswer::Described(d) => Ok(d),
            other => Err(ApiError::Internal {
                detail: format!("describe answered {other:?}"),
            }),
        }
    }

    /// Deletes an empty group and its committed offsets.
    ///
    /// # Errors
    /// 404 `group_not_found`, 409 `group_not_empty`.
    pub async fn delete_group(&self, caller: &Caller, group: &GroupName) -> Result<()> {
        self.authorize_group(caller, group, Operation::Delete)?;
        self.edge
            .group(group.as_str(), GroupRequest::Delete)
            .await?;
        Ok(())
    }

    /// Ends a member's stream (its `attachment`, from the lease it attached with): its
    /// partitions stay with it for `grace_ms` unless a stream re-attaches meanwhile.
    ///
    /// # Errors
    /// The coordinator's refusals.
    pub async fn detach_member(
        &self,
        caller: &Caller,
        group: &str,
        member_id: String,
        grace_ms: u64,
        attachment: u64,
    ) -> Result<()> {
        self.authorize(caller, ResourceType::Group, group, Operation::Read)?;
        self.edge
            .group(
                group,
                GroupRequest::Detach {
                    member_id,
                    grace_ms,
                    attachment,
                },
            )
            .await?;
        Ok(())
    }

    /// A group's committed offsets for the topics as they exist now (a deleted topic's
    /// are being purged), with each partition's status.
    ///
    /// # Errors
    /// 503 when the group's offsets partition is unreachable.
    pub async fn group_offsets(
        &self,
        caller: &Caller,
        group: &GroupName,
    ) -> Result<Vec<CommittedRow>> {
        self.authorize_group(caller, group, Operation::Describe)?;
        let committed = self.edge.committed_offsets(group.as_str()).await?;
        let mut rows = Vec::new();
        for (tp, value) in committed {
            let Ok(meta) = self.edge.topic(&tp.topic).await else {
                continue;
            };
            let Some(placement) = meta.partitions.get(tp.partition as usize) else {
                continue;
            };
            if placement.group == value.topic_group {
                rows.push((tp, value, placement.clone()));
            }
        }
        let statuses = futures::future::join_all(
            rows.iter()
                .map(|(_, _, placement)| self.edge.partition_status(placement)),
        )
        .await;
        let below = |value: &CommittedOffset, status: Option<ReplicaStatus>| {
            status.is_some_and(|s| value.offset < s.log_start)
        };
        // Only when a committed offset fell below the log start: which reset policy the
        // member holding that partition resumes with (best effort; none without members).
        let resets = if rows
            .iter()
            .zip(&statuses)
            .any(|((_, value, _), status)| below(value, *status))
        {
            self.member_resets(group).await
        } else {
            Vec::new()
        };
        Ok(rows
            .into_iter()
            .zip(statuses)
            .map(|((tp, value, _), status)| {
                let below_log_start = below(&value, status);
                let reset = resets
                    .iter()
                    .find(|(held, _)| *held == tp)
                    .map(|(_, reset)| *reset)
                    .filter(|_| below_log_start);
                CommittedRow {
                    partition: tp,
                    committed: value,
                    status,
                    below_log_start,
                    reset,
                }
            })
            .collect())
    }

    /// The `auto_offset_reset` of the member holding each assigned partition now; empty
    /// when the coordinator cannot be asked (the offsets view is then still served).
    async fn member_resets(&self, group: &GroupName) -> Vec<(TopicPartition, AutoOffsetReset)> {
        match self
            .edge
            .group(group.as_str(), GroupRequest::Describe)
            .await
        {
            Ok(GroupAnswer::Described(d)) => d
                .members
                .into_iter()
                .flat_map(|m| {
                    let reset = m.auto_offset_reset;
                    m.assignments.into_iter().map(move |tp| (tp, reset))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Moves a group's committed offsets (the group must have no members); answers the
    /// offsets set.
    ///
    /// # Errors
    /// 400 for a malformed request, 404 for unknown topics and partitions, 416 for an
    /// offset outside the log, 409 `group_not_empty`.
    pub async fn reset_offsets(
        &self,
        caller: &Caller,
        group: &GroupName,
        requests: Vec<ResetRequest>,
    ) -> Result<Vec<OffsetEntry>> {
        self.authorize_group(caller, group, Operation::Alter)?;
        check_offset_count(requests.len())?;
        let mut entries: Vec<OffsetEntry> = Vec::new();
        let mut seen = BTreeSet::new();
        for item in &requests {
            let meta = self.group_topic(caller, &item.topic).await?;
            let partitions: Vec<u32> = match item.partition {
                Some(p) => {
                    partition_of(&meta, p)?;
                    vec![p]
                }
                None => (0..meta.config.partitions).collect(),
            };
            for partition in partitions {
                if !seen.insert((item.topic.clone(), partition)) {
                    return Err(ApiError::InvalidRequest {
                        message: format!(
                            "offsets name partition {partition} of topic '{}' twice",
                            item.topic
                        ),
                    });
                }
                let placement = partition_of(&meta, partition)?;
                let status = self.edge.partition_status(placement).await.ok_or_else(|| {
                    ApiError::Unavailable {
                        reason: "the partition has no reachable replica".into(),
                    }
                })?;
                let offset = match item.to {
                    ResetTo::Earliest => status.log_start,
                    ResetTo::Latest => status.high_watermark,
                    ResetTo::Offset(n) => {
                        if n < status.log_start || n > status.high_watermark {
                            return Err(ApiError::out_of_range(
                                n,
                                status.log_start,
                                status.high_watermark,
                            ));
                        }
                        n
                    }
                    ResetTo::Timestamp(ts) => self.offset_for_timestamp(placement, ts).await?,
                };
                entries.push(OffsetEntry {
                    topic: item.topic.clone(),
                    partition,
                    topic_group: placement.group,
                    offset,
                });
            }
        }
        check_offset_count(entries.len())?;
        self.edge
            .group(
                group.as_str(),
                GroupRequest::Reset {
                    offsets: entries.clone(),
                },
            )
            .await?;
        Ok(entries)
    }

    /// The first offset whose record's timestamp is at or after `timestamp_ms` (the high
    /// watermark when none is), from the partition leader's time index.
    async fn offset_for_timestamp(
        &self,
        placement: &PartitionPlacement,
        timestamp_ms: i64,
    ) -> Result<u64> {
        let found = self
            .edge
            .fetch(placement, OffsetSpec::AtTime(timestamp_ms), 0, 0, 0)
            .await?;
        Ok(found.next_offset)
    }
}
