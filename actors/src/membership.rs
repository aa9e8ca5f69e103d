//! Changing a Raft group's replicas, for replica moves and decommissions
//! (`controller::reassignment`): what the group's membership is, adding a learner,
//! waiting for learners to catch up, changing the voters. Kept here, beside
//! [`crate::proposal`], so the edge that drives moves needs no openraft types.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use psubd_raft::types::typ::Raft;
use psubd_raft::{NodeId, RaftNode};

/// A group's membership as its replica on this node last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// Every voter (of both configurations while a change is in its joint phase).
    pub voters: BTreeSet<NodeId>,
    /// The learners.
    pub learners: BTreeSet<NodeId>,
    /// True while a voter change is half done (the joint configuration).
    pub joint: bool,
    /// True once this configuration is committed (applied here). A configuration takes
    /// effect when appended: until it is committed a new leader may not have it, and the
    /// group would go back to the one before.
    pub committed: bool,
}

/// Why a membership step did not finish; the caller tries again later.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The node has no transport address for the replica to add.
    #[error("node {node} is not a known peer")]
    UnknownPeer {
        /// The node.
        node: NodeId,
    },
    /// The step did not end within its bound.
    #[error("{what} timed out")]
    TimedOut {
        /// The step.
        what: &'static str,
    },
    /// openraft refused (not the leader, a change in progress) or the group stopped.
    #[error("{0}")]
    Refused(String),
}

/// True when this replica leads the group.
pub fn is_leader(raft: &Raft) -> bool {
    raft.metrics().borrow().state == ServerState::Leader
}

/// The group's membership as this replica last saw it.
pub fn members(raft: &Raft) -> Members {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let applied = metrics.last_applied.map(|id| id.index);
    let committed = metrics
        .membership_config
        .log_id()
        .is_none_or(|id| applied.is_some_and(|applied| applied >= id.index));
    Members {
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        joint: membership.get_joint_config().len() > 1,
        committed,
    }
}

/// Of `candidates`, the follower whose log matches the leader's furthest (the best one
/// to hand a leadership to); `None` when this replica does not lead or knows none of them.
pub fn most_caught_up(raft: &Raft, candidates: &[NodeId]) -> Option<NodeId> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let replication = metrics.replication.as_ref()?;
    candidates
        .iter()
        .filter_map(|node| {
            let matched = replication.get(node)?.map(|id| id.index)?;
            Some((matched, *node))
        })
        .max()
        .map(|(_, node)| node)
}

/// Adds `node` as a learner (the leader replicates to it from then on, by log or by
/// snapshot); does not wait for it to catch up.
///
/// # Errors
/// [`MembershipError`]; nothing changed unless openraft committed the learner.
pub async fn add_learner(
    raft_node: &RaftNode,
    raft: &Raft,
    node: NodeId,
    within: Duration,
) -> Result<(), MembershipError> {
    let peers = raft_node.peers();
    let addr = peers
        .get(&node)
        .ok_or(MembershipError::UnknownPeer { node })?;
    let adding = raft.add_learner(node, BasicNode::new(addr.to_string()), false);
    tokio::time::timeout(within, adding)
        .await
        .map_err(|_| MembershipError::TimedOut {
            what: "adding a learner",
        })?
        .map(|_| ())
        .map_err(|e| MembershipError::Refused(e.to_string()))
}

/// Waits until each of `nodes` has matched the leader's log to within `slack` entries,
/// up to `within`. Only a leader knows its followers' progress.
///
/// # Errors
/// [`MembershipError::TimedOut`], or `Refused` when the group stopped.
pub async fn await_caught_up(
    raft: &Raft,
    nodes: &[NodeId],
    slack: u64,
    within: Duration,
) -> Result<(), MembershipError> {
    let mut metrics = raft.metrics();
    let caught_up = metrics.wait_for(|m| {
        let (Some(last), Some(replication)) = (m.last_log_index, &m.replication) else {
            return false;
        };
        nodes.iter().all(|node| {
            replication
                .get(node)
                .and_then(|matched| matched.map(|id| id.index))
                .is_some_and(|index| index + slack >= last)
        })
    });
    let outcome = tokio::time::timeout(within, caught_up)
        .await
        .map(|seen| seen.is_ok());
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(MembershipError::Refused("the group stopped".into())),
        Err(_) => Err(MembershipError::TimedOut {
            what: "catching up",
        }),
    }
}

/// Changes the group's voters to `voters` (joint consensus: openraft commits the joint
/// configuration, then `voters` alone) and answers once that is committed. Replicas left
/// out are dropped from the group, not kept as learners.
///
/// # Errors
/// [`MembershipError`]: the change may still complete after a timeout.
pub async fn change_voters(
    raft: &Raft,
    voters: BTreeSet<NodeId>,
    within: Duration,
) -> Result<(), MembershipError> {
    tokio::time::timeout(within, raft.change_membership(voters, false))
        .await
        .map_err(|_| MembershipError::TimedOut {
            what: "changing the voters",
        })?
        .map(|_| ())
        .map_err(|e| MembershipError::Refused(e.to_string()))
}
