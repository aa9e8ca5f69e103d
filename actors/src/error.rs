//! The errors of psubd-actors. Variants the caller can act on (a leader hint, retry
//! later) are kept apart from "this node is broken".

use psubd_raft::NodeId;
use serde::{Deserialize, Serialize};

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
    /// The partition's actor is overloaded or gone; nothing was written.
    #[error("partition unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
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
}
