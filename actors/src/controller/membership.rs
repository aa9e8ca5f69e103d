//! The cluster's membership: which nodes are in it and where their peer transports listen.
//!
//! A node is a member once it is a voter of the controller group (group 0); only voters
//! are offered for replica placement. Every node's transport address (`--raft`, or its
//! advertised form) is recorded in the controller state by [`ControllerCommand::AdmitNode`],
//! so every node — one restarted later, or one that joined after the others started —
//! learns it from the replicated state rather than from `--peers` alone.
//!
//! Adding a node (`POST /v1/cluster/nodes`, or `psubd node --join`), on the controller
//! leader, one change at a time: record the node and its addresses (every transport learns
//! the address from the state), add it to group 0 as a learner and wait until the leader
//! believes its log is up to date, then make it a voter through openraft's joint consensus
//! (`change_membership`). Each step is idempotent, so a request that ran out of time is
//! simply sent again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use psubd_raft::{NodeId, PeerAddr, RaftNode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::info;

use super::state::{ControllerCommand, ControllerState};
use super::Controller;
use crate::error::ControllerError;

/// Most nodes of a cluster (voters and learners of group 0). Every node holds a
/// connection to every other, and the controller replicates to all of them.
pub const MAX_NODES: usize = 64;

/// Longest HTTP base URL of a node.
pub const MAX_NODE_URL_BYTES: usize = 256;

/// A node as it asks to be admitted (or as a member records its own addresses at boot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's id (positive).
    pub id: NodeId,
    /// Where its peer transport is reached.
    pub raft: PeerAddr,
    /// Base URL of its HTTP edge.
    pub http: String,
}

/// Who asks to record a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    /// An operator or a joining node (`POST /v1/cluster/nodes`): the id must be unused, or
    /// used by the same transport address (then the request is idempotent).
    Join,
    /// A voter recording its own addresses at boot: they replace the recorded ones (the node
    /// knows where it listens now). Refused for a node that is not a voter.
    SelfRegistration,
}

/// Checks what can be checked without the state: a positive id, an http(s) URL.
///
/// # Errors
/// [`ControllerError::Invalid`] naming the rule.
pub fn validate(member: &Member) -> Result<(), ControllerError> {
    if member.id == 0 {
        return Err(ControllerError::Invalid(
            "a node id must be a positive integer".into(),
        ));
    }
    let scheme_ok = member.http.starts_with("http://") || member.http.starts_with("https://");
    if !scheme_ok
        || member.http.len() > MAX_NODE_URL_BYTES
        || member
            .http
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ControllerError::Invalid(format!(
            "a node's HTTP address must be an http(s) URL of at most {MAX_NODE_URL_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Controller {
    /// The nodes replicas may be placed on: the voters of group 0, as this node sees them.
    pub(super) fn placement_nodes(&self) -> Vec<NodeId> {
        let voters: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .collect();
        if voters.is_empty() {
            self.nodes.clone()
        } else {
            voters
        }
    }

    /// Admits `member` (see the module docs); `state` is the controller state as this node
    /// applied it. Answers once the node is a voter of group 0.
    ///
    /// # Errors
    /// `NotLeader` / `NoQuorum` (nothing written); `Invalid` for a bad member, a full
    /// cluster, or a self-registration of a non-voter; `NodeConflict` when the id is taken
    /// by another address; `OutcomeUnknown` when a step ran out of time (sending the same
    /// request again continues from where it stopped).
    pub async fn admit_node(
        &self,
        member: Member,
        admission: Admission,
        state: &ControllerState,
    ) -> Result<(), ControllerError> {
        self.check_leader()?;
        validate(&member)?;
        let _one_change_at_a_time = self.membership_change.lock().await;
        let (voters, learners) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
            (voters, learners)
        };
        let is_voter = voters.contains(&member.id);
        match admission {
            Admission::SelfRegistration if !is_voter => {
                return Err(ControllerError::Invalid(format!(
                    "node {} is not a member of the cluster; add it with POST /v1/cluster/nodes",
                    member.id
                )));
            }
            Admission::SelfRegistration => {}
            Admission::Join => {
                if state.moves.is_retired(member.id) {
                    return Err(ControllerError::NodeConflict(format!(
                        "node {} is decommissioning or decommissioned; add a new node with an id never used",
                        member.id
                    )));
                }
                let peers = self.raft_node.peers();
                let known = state
                    .members
                    .get(&member.id)
                    .or_else(|| peers.get(&member.id))
                    .cloned();
                if let Some(address) = known.filter(|a| *a != member.raft) {
                    return Err(ControllerError::NodeConflict(format!(
                        "node id {} is taken by the node at {address}",
                        member.id
                    )));
                }
                let taken = state
                    .members
                    .iter()
                    .chain(peers.iter())
                    .find(|(id, address)| **id != member.id && **address == member.raft)
                    .map(|(id, _)| *id);
                if let Some(other) = taken {
                    return Err(ControllerError::NodeConflict(format!(
                        "{} is the address of node {other}",
                        member.raft
                    )));
                }
                if !self.raft_node.may_add_peer_at(&member.raft) {
                    return Err(ControllerError::Invalid(format!(
                        "{} is not a loopback address and peers do not authenticate: give \
                         every node a --cluster-secret-file or peer TLS certificates",
                        member.raft
                    )));
                }
                let size = voters.union(&learners).count();
                if !is_voter && !learners.contains(&member.id) && size >= MAX_NODES {
                    return Err(ControllerError::Invalid(format!(
                        "the cluster has its maximum of {MAX_NODES} nodes"
                    )));
                }
            }
        }
        let recorded = state.members.get(&member.id) == Some(&member.raft)
            && state.nodes.get(&member.id).map(|n| n.http.as_str()) == Some(&member.http);
        if !recorded {
            self.propose(ControllerCommand::AdmitNode(member.clone()))
                .await?;
        }
        // The leader replicates to the node now: it need not wait for its own watch.
        self.raft_node.learn_peer(member.id, member.raft.clone());
        if is_voter {
            return Ok(());
        }
        self.add_voter(&member).await
    }

    /// Adds `member` to group 0 as a learner, waits until its log is up to date, then
    /// makes it a voter by joint consensus. Each step bounded by half the write timeout.
    async fn add_voter(&self, member: &Member) -> Result<(), ControllerError> {
        let step = self.write_timeout / 2;
        let node = BasicNode::new(member.raft.to_string());
        info!(node = member.id, raft = %member.raft, "adding a node to the controller group as a learner");
        match tokio::time::timeout(step, self.raft.add_learner(member.id, node, true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(membership_failed(error)),
            Err(_) => return Err(still_catching_up(step)),
        }
        info!(node = member.id, "the learner caught up; making it a voter");
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([member.id]));
        match tokio::time::timeout(step, self.raft.change_membership(change, false)).await {
            Ok(Ok(_)) => {
                info!(node = member.id, "node added to the cluster");
                Ok(())
            }
            Ok(Err(error)) => Err(membership_failed(error)),
            Err(_) => Err(ControllerError::OutcomeUnknown {
                reason: "the membership change did not commit in time; send the request again"
                    .into(),
            }),
        }
    }
}

/// Keeps this node's transport in step with the members' addresses in the controller state
/// (at start, from the state loaded from disk, then at every change), until the state's
/// watch closes with the broker.
pub(crate) async fn learn_member_addresses(
    raft_node: RaftNode,
    mut metadata: watch::Receiver<Arc<ControllerState>>,
) {
    loop {
        let members = metadata.borrow_and_update().members.clone();
        for (id, address) in members {
            if id != raft_node.id() {
                raft_node.learn_peer(id, address);
            }
        }
        if metadata.changed().await.is_err() {
            return;
        }
    }
}

/// A membership change openraft refused or could not finish: a leadership change or a
/// change in progress. Retrying continues where it stopped.
fn membership_failed(error: impl std::fmt::Display) -> ControllerError {
    ControllerError::OutcomeUnknown {
        reason: format!("the membership change did not complete: {error}; send the request again"),
    }
}

fn still_catching_up(waited: Duration) -> ControllerError {
    ControllerError::OutcomeUnknown {
        reason: format!(
            "the node is a learner still catching up after {} ms; send the request again",
            waited.as_millis()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, http: &str) -> Member {
        Member {
            id,
            raft: PeerAddr::parse("node-4.internal:9084").unwrap(),
            http: http.into(),
        }
    }

    #[test]
    fn validation_wants_a_positive_id_and_an_http_url() {
        assert!(validate(&member(4, "http://node-4:8084")).is_ok());
        assert!(validate(&member(4, "https://node-4")).is_ok());
        assert!(validate(&member(0, "http://node-4:8084")).is_err());
        assert!(validate(&member(4, "ftp://node-4")).is_err());
        assert!(validate(&member(4, "http://a b")).is_err());
        assert!(validate(&member(4, &format!("http://{}", "a".repeat(300)))).is_err());
    }
}
