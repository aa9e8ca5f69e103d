//! Routing of consumer-group requests: to the group's coordinator, which runs on the
//! leader of the group's offsets partition (docs/architecture.md § Raft groups).
//!
//! These are methods of [`Edge`] written apart from `edge.rs` because they are one
//! concept (group routing) on top of the edge's leader-following `to_leader`: a node that
//! is not the coordinator refuses with a leader hint before changing anything, exactly as
//! a partition follower does, so the same retry rules apply.

use std::time::Duration;

use psubd_actors::assignment::TopicPartition;
use psubd_actors::coordinator::{GroupAnswer, GroupRequest, GroupSummary};
use psubd_actors::offsets::{CommittedOffset, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use psubd_actors::topic::PartitionPlacement;

use crate::edge::Edge;
use crate::error::ApiError;
use crate::protocol::{ForwardRequest, ForwardResponse};

/// How long a group request may take at the coordinator: above the coordinator's own
/// bound (the write timeout, 10 s by default, plus its call grace), so the coordinator
/// answers `outcome_unknown` itself before the transport gives up.
const GROUP_REQUEST_DEADLINE: Duration = Duration::from_secs(12);

/// How long reads of committed offsets and group listings may take.
const GROUP_READ_DEADLINE: Duration = Duration::from_secs(3);

fn not_ready() -> ApiError {
    ApiError::Unavailable {
        reason: "the consumer offsets topic is not created yet".into(),
    }
}

fn refused(response: ForwardResponse, group: &str) -> ApiError {
    match response {
        ForwardResponse::GroupRefused(error) => ApiError::from_group(error, group),
        ForwardResponse::Partition(error) => error.into(),
        ForwardResponse::Broken(detail) => ApiError::Internal { detail },
        other => ApiError::Internal {
            detail: format!("unexpected answer to a group request: {other:?}"),
        },
    }
}

impl Edge {
    /// Waits until the consumer offsets topic exists (a cluster's first seconds: the
    /// controller creates it once elected), up to the write timeout.
    async fn offsets_topic_created(&self) -> Result<(), ApiError> {
        let mut metadata = self.broker().subscribe_metadata();
        let created = metadata.wait_for(|m| m.topics.contains_key(OFFSETS_TOPIC));
        let created = tokio::time::timeout(self.write_timeout(), created)
            .await
            .is_ok_and(|seen| seen.is_ok());
        created.then_some(()).ok_or_else(not_ready)
    }

    async fn offsets_placement(&self, group: &str) -> Result<PartitionPlacement, ApiError> {
        self.offsets_topic_created().await?;
        self.broker()
            .groups()
            .offsets_placement(group)
            .ok_or_else(not_ready)
    }

    /// Sends a request to the group's coordinator.
    ///
    /// # Errors
    /// The coordinator's refusals (409 `member_fenced`, ...), 503 when no coordinator is
    /// reachable (nothing changed), 504 when a commit's outcome is unknown.
    pub async fn group(&self, group: &str, request: GroupRequest) -> Result<GroupAnswer, ApiError> {
        let placement = self.offsets_placement(group).await?;
        let request = ForwardRequest::Group {
            group: group.to_string(),
            request,
        };
        match self
            .to_leader(
                &placement,
                request,
                GROUP_REQUEST_DEADLINE,
                self.write_timeout(),
            )
            .await?
        {
            ForwardResponse::Group(answer) => Ok(answer),
            other => Err(refused(other, group)),
        }
    }

    /// A group's committed offsets: a linearizable read at the leader of its offsets
    /// partition (never an older value than an acknowledged commit).
    ///
    /// # Errors
    /// 503 when no leader in contact with a quorum answers.
    pub async fn committed_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<(TopicPartition, CommittedOffset)>, ApiError> {
        let placement = self.offsets_placement(group).await?;
        let request = ForwardRequest::CommittedOffsets {
            group: group.to_string(),
        };
        match self
            .to_leader(
                &placement,
                request,
                GROUP_READ_DEADLINE,
                self.write_timeout(),
            )
            .await?
        {
            ForwardResponse::Committed(offsets) => Ok(offsets),
            other => Err(refused(other, group)),
        }
    }

    /// Every group of the cluster: each offsets partition's leader lists its groups.
    ///
    /// # Errors
    /// 503 when an offsets partition has no reachable leader (a partial list would look
    /// like deleted groups).
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ApiError> {
        self.offsets_topic_created().await?;
        let groups = self.broker().groups();
        let placements: Vec<PartitionPlacement> = (0..OFFSETS_PARTITIONS)
            .map(|p| groups.offsets_partition(p).ok_or_else(not_ready))
            .collect::<Result<_, _>>()?;
        let answers = futures::future::join_all(placements.iter().enumerate().map(
            |(partition, placement)| {
                self.to_leader(
                    placement,
                    ForwardRequest::ListGroups {
                        partition: partition as u32,
                    },
                    GROUP_READ_DEADLINE,
                    self.write_timeout(),
                )
            },
        ))
        .await;
        let mut out = Vec::new();
        for answer in answers {
            match answer? {
                ForwardResponse::Groups(list) => out.extend(list),
                other => return Err(refused(other, "")),
            }
        }
        out.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(out)
    }
}
