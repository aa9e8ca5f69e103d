//! Moving a group's leadership to a caught-up follower: before a node stops (SIGTERM), and
//! to give a partition back to its preferred replica.
//!
//! openraft 0.9 has no transfer-leader call. What it has is enough:
//!
//! 1. The leader reads (through its Raft core, `Raft::with_raft_state`) when its own vote
//!    last changed: its **lease**. openraft refuses a vote while the voter's current leader
//!    lease (`election_timeout_max`, renewed by every heartbeat at followers, set at the
//!    leader itself when it was elected) runs, so a leader elected less than that ago
//!    first waits it out, still taking writes.
//! 2. It **fences** the group ([`Fences`]): every proposer on this node checks the fence
//!    as it enqueues (`psubd_actors::proposal`, through [`RaftNode::admit_proposal`]), so
//!    from now on nothing new is proposed here; requests are refused as "not leader"
//!    (nothing written, the edge retries at the next leader). The leader waits until no
//!    proposer is between its fence check and its enqueue, then sends a barrier through
//!    the Raft core, so every proposal that passed the fence is in the leader's log. (A
//!    proposal enqueued after the follower was chosen would leave that follower's log
//!    behind the leader's: it would lose the election, and the group would wait a whole
//!    election timeout for the next.)
//! 3. The leader waits until every entry of its log is applied (so every proposal in
//!    flight was answered: none can be cut short into "outcome unknown") and one follower's
//!    matched log index equals the leader's last log index.
//! 4. It asks that follower (a peer message; [`RaftNode::take_leadership`] there) to start
//!    an election at once (`Raft::trigger().elect()`). The candidate's last log id equals
//!    the leader's, so the old leader grants its vote and steps down; with the candidate's
//!    own vote that is a majority of a group of two or three voters. With more voters the
//!    others would still refuse within their lease, so the leader first stops its
//!    heartbeats and waits one lease. Once a follower stands, the group stays fenced until
//!    this leader is deposed (a candidate that loses still ends its term).
//!
//! **Why it is safe.** Nothing here bypasses Raft's vote: triggering an election is an
//! election timeout that fires early. Raft's election restriction (a voter grants only to
//! a candidate whose log is at least as up to date as its own) and a majority vote keep
//! every committed entry in the new leader's log, whichever candidate runs (Leader
//! Completeness). The caught-up check and the drain are for clients, not for safety: every
//! write this leader acknowledged is committed, and no proposal is left half-way.
//!
//! Every step is bounded by the caller's deadline; a handover that does not finish in time
//! leaves the group as it was (fenced only while the node stops), and an ordinary election
//! follows the leader's exit.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::types::{typ, GroupId, NodeId};

/// Margin past the leader lease before a handover asks for an election: the lease is
/// measured on another clock at the voter, and a vote refused for a few milliseconds costs
/// a whole failed election.
const LEASE_MARGIN: Duration = Duration::from_millis(100);

/// How long a follower asked to take leadership waits for its own log to show the index
/// the leader saw matched (its metrics trail its flushed log by a moment).
const CATCH_UP_WAIT: Duration = Duration::from_millis(500);

/// Groups whose leadership this node is giving away: no proposer may propose to them.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    /// Set once the node stops: it stands for no group any more.
    stepping_down: AtomicBool,
    /// Set once a stopping node has handed its leaderships over: every group is fenced,
    /// for good.
    all: AtomicBool,
    /// Groups handed over one at a time (a preferred leader returning).
    groups: RwLock<HashSet<GroupId>>,
    /// How many groups `groups` holds: every publish checks the fence, and while none is
    /// fenced (nearly always) that check takes no lock.
    fenced: AtomicUsize,
    /// Proposers between their fence check and their enqueue ([`ProposalPass`]).
    entering: AtomicUsize,
    /// Notified when `entering` drops to zero.
    settled: Notify,
}

/// A proposer's permit to enqueue one proposal: taken before the fence check and held
/// until the proposal is in the Raft core's queue, so a handover that fences the group
/// can wait for every proposer that passed the check ([`Fences::settle`]). The fence and
/// the count are both `SeqCst`: either the proposer sees the fence, or the handover sees
/// the proposer.
pub struct ProposalPass<'a> {
    fences: &'a Fences,
}

impl Drop for ProposalPass<'_> {
    fn drop(&mut self) {
        if self.fences.entering.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.fences.settled.notify_waiters();
        }
    }
}

impl Fences {
    pub(crate) fn is_fenced(&self, group: GroupId) -> bool {
        self.all.load(Ordering::SeqCst)
            || (self.fenced.load(Ordering::SeqCst) > 0
                && self
                    .groups
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&group))
    }

    pub(crate) fn is_stepping_down(&self) -> bool {
        self.stepping_down.load(Ordering::Acquire)
    }

    pub(crate) fn step_down(&self) {
        self.stepping_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn fence_all(&self) {
        self.all.store(true, Ordering::SeqCst);
    }

    fn fence(&self, group: GroupId) {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        if groups.insert(group) {
            self.fenced.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn lift(&self, group: GroupId) {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        if groups.remove(&group) {
            self.fenced.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A permit to enqueue a proposal to `group`, or `None` when it is fenced.
    fn admit(&self, group: GroupId) -> Option<ProposalPass<'_>> {
        self.entering.fetch_add(1, Ordering::SeqCst);
        let pass = ProposalPass { fences: self };
        (!self.is_fenced(group)).then_some(pass)
    }

    /// Waits until no proposer holds a [`ProposalPass`]: after a fence, every proposal
    /// that passed it is then enqueued. Passes are held for an unbounded channel send, so
    /// this is a matter of microseconds.
    async fn settle(&self) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.entering.load(Ordering::SeqCst) == 0 {
                return;
            }
            settled.await;
        }
    }
}

/// What a handover came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// This node does not lead the group (or the group does not run here): nothing to do.
    NotLeader,
    /// The group has no other voter to hand over to.
    Alone,
    /// The leadership moved: this node no longer leads the group.
    Moved {
        /// The follower asked to take over.
        to: NodeId,
    },
    /// No follower caught up, or the election did not end, before the deadline.
    TimedOut,
    /// The preferred follower is too far behind to be worth fencing the group for.
    Behind {
        /// The follower.
        to: NodeId,
    },
    /// The follower declined (it no longer follows this node, or is behind).
    Declined {
        /// The follower asked.
        to: NodeId,
    },
}

/// Removes a group's fence (and turns its heartbeats back on) when a handover ends, moved
/// or not: a group that stayed here leads on, one that moved has nothing left to fence.
struct Fenced<'a> {
    fences: &'a Fences,
    group: GroupId,
    raft: typ::Raft,
}

impl Drop for Fenced<'_> {
    fn drop(&mut self) {
        self.raft.runtime_config().heartbeat(true);
        self.fences.lift(self.group);
    }
}

/// Entries a preferred follower may trail the leader by and still be handed the group:
/// under load the entry in flight is always a little ahead, and once the group is fenced
/// the follower catches up within a round trip.
const NEARLY_CAUGHT_UP_ENTRIES: u64 = 64;

/// True when `node`'s log is within [`NEARLY_CAUGHT_UP_ENTRIES`] of the leader's.
fn nearly_caught_up(metrics: &typ::RaftMetrics, node: NodeId) -> bool {
    let (Some(last), Some(replication)) = (metrics.last_log_index, &metrics.replication) else {
        return false;
    };
    replication
        .get(&node)
        .and_then(|m| m.map(|id| id.index))
        .is_some_and(|index| index + NEARLY_CAUGHT_UP_ENTRIES >= last)
}

/// The follower to hand a group to, once the leader's log is all applied and that
/// follower's log matches it: `preferred` if given, else any. `None` until then.
fn caught_up_follower(
    metrics: &typ::RaftMetrics,
    preferred: Option<NodeId>,
) -> Option<(NodeId, u64)> {
    let last = metrics.last_log_index?;
    if metrics.last_applied.map(|id| id.index) != Some(last) {
        return None;
    }
    let replication = metrics.replication.as_ref()?;
    let matched = |node: &NodeId| {
        replication
            .get(node)
            .and_then(|m| m.map(|id| id.index))
            .is_some_and(|index| index == last)
    };
    let voters: Vec<NodeId> = metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|v| *v != metrics.id)
        .collect();
    let chosen = match preferred {
        Some(node) => voters.contains(&node).then_some(node).filter(matched),
        None => voters.iter().copied().find(matched),
    };
    chosen.map(|node| (node, last))
}

impl crate::RaftNode {
    /// True while `group`'s leadership is being given away by this node (or the stopping
    /// node has handed its leaderships over): proposers must refuse as "not leader"
    /// rather than propose.
    pub fn is_fenced(&self, group: GroupId) -> bool {
        self.fences().is_fenced(group)
    }

    /// A permit to enqueue one proposal to `group`, held until it is in the Raft core's
    /// queue; `None` while the group is fenced (refuse as "not leader": nothing written).
    /// Every proposer on this node goes through it, so a handover knows when the last
    /// proposal that passed its fence is in the log.
    pub fn admit_proposal(&self, group: GroupId) -> Option<ProposalPass<'_>> {
        self.fences().admit(group)
    }

    /// True once the node started stopping ([`RaftNode::step_down`](crate::RaftNode::step_down)).
    pub fn is_stepping_down(&self) -> bool {
        self.fences().is_stepping_down()
    }

    /// The node is stopping: stops it from starting elections (groups opened from now on
    /// included), so it wins no leadership it would have to give away again. The groups
    /// it leads keep taking writes until each is handed over ([`RaftNode::hand_over`]
    /// fences it then), so waiting out a fresh leader's lease costs clients nothing.
    pub fn step_down(&self) {
        self.fences().step_down();
        for group in self.group_ids() {
            if let Some(raft) = self.group(group) {
                raft.runtime_config().elect(false);
            }
        }
    }

    /// Moves `group`'s leadership from this node to a caught-up follower (`preferred` if
    /// given), asking it to stand with `ask(follower, last_log_index)` — a peer message the
    /// caller sends, answered by the follower's [`RaftNode::take_leadership`]. Bounded by
    /// `until`. See the module docs for the steps and why they are safe.
    pub async fn hand_over<F, Fut>(
        &self,
        group: GroupId,
        preferred: Option<NodeId>,
        until: Instant,
        ask: F,
    ) -> HandOver
    where
        F: FnOnce(NodeId, u64) -> Fut,
        Fut: Future<Output = bool>,
    {
        let Some(raft) = self.group(group) else {
            return HandOver::NotLeader;
        };
        let voters = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            if metrics.state != ServerState::Leader {
                return HandOver::NotLeader;
            }
            metrics.membership_config.membership().voter_ids().count()
        };
        if voters < 2 {
            return HandOver::Alone;
        }
        // Wait out this leader's own lease first (it refuses votes until then), before
        // fencing: a leader elected a moment ago keeps taking writes meanwhile.
        let Ok(elected_at) = raft.with_raft_state(|st| st.vote_last_modified()).await else {
            return HandOver::NotLeader;
        };
        let lease = self.leader_lease();
        if let Some(elected_at) = elected_at {
            tokio::time::sleep_until((elected_at + lease + LEASE_MARGIN).min(until)).await;
        }
        if let Some(node) = preferred {
            if !nearly_caught_up(&raft.metrics().borrow(), node) {
                return HandOver::Behind { to: node };
            }
        }
        self.fences().fence(group);
        let _fenced = Fenced {
            fences: self.fences(),
            group,
            raft: raft.clone(),
        };
        self.fences().settle().await;
        // The barrier: processed after every proposal that passed the fence. The core
        // publishes its metrics when the loop turn that answered the barrier ends, so the
        // metrics seen after the next change show every one of those entries; the value
        // seen now may predate the last of them, and a follower chosen on it would miss it.
        let mut metrics = raft.metrics();
        metrics.borrow_and_update();
        if raft.with_raft_state(|_| ()).await.is_err() {
            return HandOver::NotLeader;
        }
        match tokio::time::timeout_at(until, metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return HandOver::NotLeader,
            Err(_) => return HandOver::TimedOut,
        }
        if voters > 3 {
            // Only the candidate and this leader vote at once; the other voters must see
            // their lease run out first.
            raft.runtime_config().heartbeat(false);
            tokio::time::sleep_until((Instant::now() + lease + LEASE_MARGIN).min(until)).await;
        }
        let ready = metrics.wait_for(|m| {
            m.state != ServerState::Leader || caught_up_follower(m, preferred).is_some()
        });
        let chosen = match tokio::time::timeout_at(until, ready).await {
            Ok(Ok(m)) if m.state == ServerState::Leader => caught_up_follower(&m, preferred),
            Ok(Ok(_)) | Ok(Err(_)) => return HandOver::NotLeader,
            Err(_) => return HandOver::TimedOut,
        };
        let Some((to, last_log_index)) = chosen else {
            return HandOver::TimedOut;
        };
        if !ask(to, last_log_index).await {
            return HandOver::Declined { to };
        }
        // The follower stands now: whether it wins or not, its higher term ends this
        // leadership (a lost election deposes this leader at its next heartbeat), so the
        // group stays fenced until then, past `until` if need be — a write proposed now
        // would be cut off into an unknown outcome.
        let deposed_by = until.max(Instant::now() + 2 * lease);
        let stepped_down = metrics.wait_for(|m| m.state != ServerState::Leader);
        let outcome = match tokio::time::timeout_at(deposed_by, stepped_down).await {
            Ok(Ok(_)) => HandOver::Moved { to },
            Ok(Err(_)) => HandOver::NotLeader,
            Err(_) => HandOver::TimedOut,
        };
        outcome
    }

    /// The stopping node has handed over what it could: fences every group for good, so
    /// a leadership that did not move takes no more writes (requests wait for the next
    /// leader, elected once this node has gone).
    pub fn fence_all(&self) {
        self.fences().fence_all();
    }

    /// A follower's side of [`RaftNode::hand_over`]: starts an election for `group` at
    /// once when `from` is the leader this replica follows and its own log reaches
    /// `leader_last_index` (then the leader's vote is certain). Answers whether it stood.
    pub async fn take_leadership(
        &self,
        group: GroupId,
        from: NodeId,
        leader_last_index: u64,
    ) -> bool {
        if self.is_stepping_down() {
            return false;
        }
        let Some(raft) = self.group(group) else {
            return false;
        };
        let mut metrics = raft.metrics();
        let caught_up = metrics.wait_for(|m| {
            m.state != ServerState::Follower
                || m.current_leader != Some(from)
                || m.last_log_index >= Some(leader_last_index)
        });
        let ready = match tokio::time::timeout(CATCH_UP_WAIT, caught_up).await {
            Ok(Ok(m)) => {
                m.state == ServerState::Follower
                    && m.current_leader == Some(from)
                    && m.last_log_index >= Some(leader_last_index)
            }
            Ok(Err(_)) | Err(_) => false,
        };
        ready && raft.trigger().elect().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_fence_lifts_but_fencing_all_is_for_good() {
        let fences = Fences::default();
        assert!(!fences.is_fenced(7));
        fences.fence(7);
        assert!(fences.is_fenced(7));
        assert!(!fences.is_fenced(8));
        fences.lift(7);
        assert!(!fences.is_fenced(7));
        // Stepping down stops elections, not writes: each group is fenced at its handover.
        fences.step_down();
        assert!(fences.is_stepping_down());
        assert!(!fences.is_fenced(7));
        fences.fence_all();
        assert!(fences.is_fenced(7) && fences.is_fenced(8));
    }

    #[tokio::test]
    async fn a_fence_waits_for_the_proposer_that_passed_it_and_turns_later_ones_away() {
        let fences = Fences::default();
        let pass = fences.admit(7).expect("not fenced yet");
        fences.fence(7);
        assert!(fences.admit(7).is_none(), "a fenced group admits nobody");
        let other = fences.admit(8).expect("another group is not fenced");
        drop(other);
        // The proposer that passed before the fence still holds its pass: not settled.
        let settle = fences.settle();
        tokio::pin!(settle);
        assert!(futures::poll!(settle.as_mut()).is_pending());
        drop(pass);
        settle.await;
    }

    /// Leader 1 of voters {1, 2, 3} at last log index 10, applied up to `applied`, its
    /// followers' matched indexes as given.
    fn leader_metrics(applied: u64, matched: &[(NodeId, u64)]) -> typ::RaftMetrics {
        let log_id = |index| openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index);
        let voters: std::collections::BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        let membership = openraft::Membership::new(vec![voters], None);
        let mut metrics = typ::RaftMetrics::new_initial(1);
        metrics.state = ServerState::Leader;
        metrics.last_log_index = Some(10);
        metrics.last_applied = Some(log_id(applied));
        metrics.membership_config =
            std::sync::Arc::new(openraft::StoredMembership::new(None, membership));
        metrics.replication = Some(
            matched
                .iter()
                .map(|(node, index)| (*node, Some(log_id(*index))))
                .collect(),
        );
        metrics
    }

    #[test]
    fn only_a_follower_matching_a_fully_applied_log_is_handed_the_group() {
        // A write in flight (not applied yet): nobody, however far the followers are.
        assert_eq!(
            caught_up_follower(&leader_metrics(9, &[(2, 10), (3, 10)]), None),
            None
        );
        // Applied, and follower 3 matches: 3, unless 2 is the one asked for.
        let metrics = leader_metrics(10, &[(2, 8), (3, 10)]);
        assert_eq!(caught_up_follower(&metrics, None), Some((3, 10)));
        assert_eq!(caught_up_follower(&metrics, Some(3)), Some((3, 10)));
        assert_eq!(caught_up_follower(&metrics, Some(2)), None);
        // A node outside the voters is never chosen.
        assert_eq!(caught_up_follower(&metrics, Some(4)), None);
        // Nearly caught up: within the slack, not beyond it.
        assert!(nearly_caught_up(&metrics, 2));
        let mut far = leader_metrics(10, &[(2, 0)]);
        far.last_log_index = Some(NEARLY_CAUGHT_UP_ENTRIES + 1);
        assert!(!nearly_caught_up(&far, 2));
    }
}
