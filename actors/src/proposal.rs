//! Proposing to a Raft group, the same way for every group (partitions, the controller,
//! the consumer offsets): whether this replica may propose now ([`check_leader`]: it
//! leads and heard from a quorum recently), and a proposal with a deadline whose outcome
//! maps openraft's errors once ([`propose`], [`committed`]).
//!
//! A refusal before proposing ([`Refusal`]) means nothing was written: the caller may
//! retry elsewhere. Anything after proposing that is not an answer is
//! [`OutcomeUnknown`]: the entry may still commit. [`enqueue`] checks the handover fence
//! once more as it hands the entry to the Raft core, atomically with a handover
//! (`psubd_raft::handover`): a leadership being given away takes no entry its chosen
//! follower has not seen.

use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::raft::responder::Responder;
use openraft::{RaftTypeConfig, ServerState};
use psubd_raft::types::typ::{Raft, RaftMetrics};
use psubd_raft::{Command, CommandResponse, GroupId, NodeId, RaftNode, TypeConfig};

/// Why this replica may not propose now; nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Another replica leads (`leader` is a hint), or none is known.
    NotLeader {
        /// The leader this replica knows of, if any.
        leader: Option<NodeId>,
    },
    /// This replica leads but has not heard from a quorum recently: it is on a minority
    /// side.
    NoQuorum,
}

/// A proposal got no answer: it may or may not be committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeUnknown {
    /// What happened.
    pub reason: String,
}

/// Why a proposal has no answer: refused before it was enqueued (nothing written), or
/// enqueued without an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotCommitted {
    /// Not enqueued: the group's leadership is being handed over.
    Refused(Refusal),
    /// Enqueued (or the group stopped): the entry may still commit.
    Unknown(OutcomeUnknown),
}

impl From<OutcomeUnknown> for NotCommitted {
    fn from(unknown: OutcomeUnknown) -> Self {
        NotCommitted::Unknown(unknown)
    }
}

/// Whether this replica of `group` may propose now: it leads with a fresh quorum, and is
/// not giving the leadership away (`psubd_raft::handover`: the node is stopping, or the
/// group goes back to its preferred leader). While it is, it answers "not leader" with no
/// hint, so callers wait for the next leader rather than come back here.
///
/// # Errors
/// [`Refusal::NotLeader`] with the leader hint, or [`Refusal::NoQuorum`].
pub fn check_leader(
    raft_node: &RaftNode,
    group: GroupId,
    raft: &Raft,
    quorum_stale_after: Duration,
) -> Result<(), Refusal> {
    // Read under the borrow: this runs on every publish and fetch, and cloning the
    // metrics would copy the membership and replication maps each time.
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    leader_status(&metrics, quorum_stale_after)?;
    if raft_node.is_fenced(group) {
        return Err(Refusal::NotLeader { leader: None });
    }
    Ok(())
}

/// [`check_leader`] on metrics already borrowed (a caller watching them for a change).
///
/// # Errors
/// As [`check_leader`].
pub fn leader_status(metrics: &RaftMetrics, quorum_stale_after: Duration) -> Result<(), Refusal> {
    if metrics.state != ServerState::Leader {
        return Err(Refusal::NotLeader {
            leader: metrics.current_leader.filter(|l| *l != metrics.id),
        });
    }
    match metrics.millis_since_quorum_ack {
        Some(ms) if Duration::from_millis(ms) <= quorum_stale_after => Ok(()),
        _ => Err(Refusal::NoQuorum),
    }
}

/// The current leader of a group as this replica sees it.
pub fn leader_of(raft: &Raft) -> Option<NodeId> {
    raft.metrics().borrow().current_leader
}

/// What a proposal's answer arrives on.
pub type Pending = <<TypeConfig as RaftTypeConfig>::Responder as Responder<TypeConfig>>::Receiver;

/// One Raft group on this node, as its proposers address it.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The node, whose handover fences every proposal respects.
    pub raft_node: &'a RaftNode,
    /// The group's id.
    pub group: GroupId,
    /// The group's Raft handle.
    pub raft: &'a Raft,
    /// What the group is, in reasons: "partition", "controller", "offsets partition".
    pub name: &'static str,
}

/// Proposes `command` to the target group and waits up to `deadline` for it to be
/// committed and applied.
///
/// # Errors
/// [`NotCommitted`]: refused (nothing written), or no answer came.
pub async fn propose(
    target: Target<'_>,
    command: Command,
    deadline: Duration,
) -> Result<CommandResponse, NotCommitted> {
    let pending = enqueue(target, command).await?;
    Ok(committed(pending, deadline, target.name).await?)
}

/// Hands `command` to the Raft core without waiting for the commit: entries are proposed
/// in the order they are enqueued, even with several in flight.
///
/// # Errors
/// [`NotCommitted::Refused`] when the group is being handed over (nothing written);
/// [`NotCommitted::Unknown`] when the group stopped.
pub async fn enqueue(target: Target<'_>, command: Command) -> Result<Pending, NotCommitted> {
    let Some(_pass) = target.raft_node.admit_proposal(target.group) else {
        return Err(NotCommitted::Refused(Refusal::NotLeader { leader: None }));
    };
    target
        .raft
        .client_write_ff(command)
        .await
        .map_err(|_| NotCommitted::Unknown(stopped(target.name)))
}

/// Waits up to `deadline` for an enqueued proposal's answer.
///
/// # Errors
/// [`OutcomeUnknown`] when no answer came. A "forward to leader" after proposing means
/// the entry was truncated here, but another replica may still hold it and commit it
/// later: unknown, never "not written".
pub async fn committed(
    pending: Pending,
    deadline: Duration,
    group: &str,
) -> Result<CommandResponse, OutcomeUnknown> {
    match tokio::time::timeout(deadline, pending).await {
        Ok(Ok(Ok(response))) => Ok(response.data),
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => Err(OutcomeUnknown {
            reason: "leadership changed while the write was in flight".into(),
        }),
        Ok(Ok(Err(_))) | Ok(Err(_)) => Err(stopped(group)),
        Err(_) => Err(OutcomeUnknown {
            reason: "the write was not committed within the timeout".into(),
        }),
    }
}

fn stopped(group: &str) -> OutcomeUnknown {
    OutcomeUnknown {
        reason: format!("the {group}'s Raft group stopped"),
    }
}
