//! The errors of psubd-actors. Variants the caller can act on (a leader hint, retry
//! later) are kept apart from "this node is broken".
//!
//! "Not leader", "no quorum" and "outcome unknown" are decided in one place
//! ([`crate::proposal`]) and converted here. Each enum keeps its own variants for them:
//! these enums travel between nodes (postcard, by variant index), so their shapes are
//! part of the node-to-node protocol.

use psubd_raft::NodeId;
use serde::{Deserialize, Serialize};

use crate::proposal::{NotCommitted, OutcomeUnknown, Refusal};

/// Why a partition could not take or serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PartitionError {
    /// This replica is not the leader; nothing was written. `leader` is a hint.
    #[error("not the partition leader")]
    NotLeader {
        /// The leader this replica knows of, if any.
        leader: Option<NodeId>,
    },
    /// This replica leads but has not heard from a quorum recently: it is on a minority
    /// side. Nothing was written.
    #[error("partition leader cannot reach a quorum")]
    NoQuorum,
    /// The write was proposed and its fate is unknown: it may or may not be committed.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What happened.
        reason: String,
    },
    /// This node holds no replica of the partition (it moved, or is still being opened).
    #[error("no replica of this partition on this node")]
    NoReplica,
    /// A replica of the partition (`node`) is below its free-space threshold: the partition
    /// takes no new records until space returns. Nothing was written.
    #[error("node {node} holding a replica of this partition is low on disk space")]
    InsufficientStorage {
        /// The node low on space.
        node: NodeId,
    },
    /// The partition's actor is overloaded or gone; nothing was written.
    #[error("partition unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
    },
    /// The partition's delay queue holds its maximum of records or bytes: the delayed
    /// records were not queued. It drains as records fall due.
    #[error(
        "the partition's delay queue is full (at most {max_records} records and {max_bytes} \
         bytes wait per partition); nothing was queued"
    )]
    DelayQueueFull {
        /// The queue's bound on records.
        max_records: u64,
        /// The queue's bound on bytes.
        max_bytes: u64,
    },
    /// `expected_offset` was not the partition's next offset when the entry applied;
    /// nothing of the request was written.
    #[error("the partition's next offset is {next_offset}")]
    OffsetMismatch {
        /// The partition's next offset.
        next_offset: u64,
    },
    /// `If-Match` was not the key's latest offset when the entry applied; nothing was
    /// written.
    #[error("the key's latest offset is {}", key_offset.map_or("none (no live record)".to_string(), |o| o.to_string()))]
    KeyOffsetMismatch {
        /// The key's latest live offset, if it has one.
        key_offset: Option<u64>,
    },
}

/// Why a controller (metadata) operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControllerError {
    /// This node does not lead the controller; nothing was written.
    #[error("not the controller leader")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The controller cannot reach a quorum; nothing was written.
    #[error("controller has no quorum")]
    NoQuorum,
    /// Proposed; fate unknown.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What happened.
        reason: String,
    },
    /// The topic exists already.
    #[error("topic exists")]
    TopicExists,
    /// No such topic.
    #[error("topic not found")]
    TopicNotFound,
    /// The request is valid JSON but cannot be done (e.g. more replicas than nodes).
    #[error("{0}")]
    Invalid(String),
    /// The change conflicts with the cluster's state (a move in progress, a node leaving,
    /// too few nodes left); nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// A node id or address is taken by another node; nothing changed.
    #[error("{0}")]
    NodeConflict(String),
}

/// Why a consumer-group request was refused (docs/api.md § Consumer groups).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupError {
    /// This node does not lead the group's offsets partition, so it is not the group's
    /// coordinator; nothing changed. `leader` is a hint.
    #[error("not the group's coordinator")]
    NotCoordinator {
        /// The offsets partition's leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The coordinator's offsets partition cannot reach a quorum; nothing changed.
    #[error("the group's offsets partition cannot reach a quorum")]
    NoQuorum,
    /// The coordinator cannot serve now (starting, overloaded); nothing changed.
    #[error("group coordinator unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
    },
    /// A commit was proposed and its fate is unknown.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What happened.
        reason: String,
    },
    /// The member is not (or no longer) in the group: it expired, left, or joined a
    /// coordinator that has since moved. The client re-joins.
    #[error("member is not in the group")]
    UnknownMember,
    /// The request carries an older generation than the group's.
    #[error("generation {given} is stale; the group is at generation {current}")]
    StaleGeneration {
        /// The generation sent.
        given: u64,
        /// The group's generation.
        current: u64,
    },
    /// A commit names a partition not assigned to the member in this generation.
    #[error("partition {partition} of topic '{topic}' is not assigned to this member")]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The operation needs a group without members.
    #[error("the group has {members} active members")]
    NotEmpty {
        /// How many.
        members: usize,
    },
    /// The group has neither members nor committed offsets.
    #[error("group not found")]
    GroupNotFound,
    /// A join asks for another assignment strategy than the group's members use.
    #[error("the group uses the '{current}' assignment strategy")]
    StrategyMismatch {
        /// The group's strategy.
        current: String,
    },
    /// The group is at its member limit.
    #[error("the group has the maximum of {limit} members")]
    TooManyMembers {
        /// The limit.
        limit: usize,
    },
    /// A fetch's position token does not fit the member's assignment in its generation
    /// (forged or corrupted); nothing changed.
    #[error("invalid position: {reason}")]
    InvalidPosition {
        /// What does not fit.
        reason: String,
    },
    /// The group is a push subscription: members may not join, and its offsets are
    /// neither reset nor deleted until the subscription is deleted.
    #[error("the group is a push subscription")]
    PushSubscription,
    /// The group is not a push subscription.
    #[error("the group is not a push subscription")]
    NotPushSubscription,
    /// A new push subscription would pass the bound of its offsets partition.
    #[error("the group's offsets partition holds its maximum of {limit} push subscriptions")]
    TooManyPushSubscriptions {
        /// The bound (per offsets partition).
        limit: u32,
    },
}

impl From<Refusal> for PartitionError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotLeader { leader } => PartitionError::NotLeader { leader },
            Refusal::NoQuorum => PartitionError::NoQuorum,
        }
    }
}

impl From<OutcomeUnknown> for PartitionError {
    fn from(unknown: OutcomeUnknown) -> Self {
        PartitionError::OutcomeUnknown {
            reason: unknown.reason,
        }
    }
}

impl From<Refusal> for ControllerError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotLeader { leader } => ControllerError::NotLeader { leader },
            Refusal::NoQuorum => ControllerError::NoQuorum,
        }
    }
}

impl From<OutcomeUnknown> for ControllerError {
    fn from(unknown: OutcomeUnknown) -> Self {
        ControllerError::OutcomeUnknown {
            reason: unknown.reason,
        }
    }
}

/// The coordinator is where the group's offsets partition leads: that partition's
/// refusal is "not the coordinator".
impl From<Refusal> for GroupError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotLeader { leader } => GroupError::NotCoordinator { leader },
            Refusal::NoQuorum => GroupError::NoQuorum,
        }
    }
}

impl From<OutcomeUnknown> for GroupError {
    fn from(unknown: OutcomeUnknown) -> Self {
        GroupError::OutcomeUnknown {
            reason: unknown.reason,
        }
    }
}

/// A proposal refused at enqueue or left without an answer, as each actor's error: one
/// conversion through that error's own `From<Refusal>` and `From<OutcomeUnknown>`.
macro_rules! from_not_committed {
    ($($error:ty),*) => {$(
        impl From<NotCommitted> for $error {
            fn from(not: NotCommitted) -> Self {
                match not {
                    NotCommitted::Refused(refusal) => refusal.into(),
                    NotCommitted::Unknown(unknown) => unknown.into(),
                }
            }
        }
    )*};
}

from_not_committed!(PartitionError, ControllerError, GroupError);
