//! Quiet groups: a Raft group with nothing to do costs (almost) nothing.
//!
//! Every group's openraft core ticks (every 1.5 heartbeat intervals), and a leader sends
//! each follower a heartbeat every interval; with thousands of partition groups per node
//! that alone kept a core busy on an idle cluster. So an idle group goes *quiet*: its
//! core's ticks are switched off (`Raft::runtime_config().tick(false)`), which stops both
//! its heartbeats and its election timer, and its tick task is held still
//! ([`crate::runtime`]). What keeps it live instead is one node-level
//! signal per peer pair: the transport's keepalive (`Transport::contact`), which every
//! group the two nodes share relies on.
//!
//! A pass over the node's groups every `RaftTuning::quiet_check_ms` decides, for each
//! replica, from its metrics alone:
//!
//! - a **leader** goes quiet once it is idle — its log did not move since the previous
//!   pass, everything is applied, every other member has matched its last entry, it heard
//!   from a quorum recently, and it is not handing its leadership over — and every member's
//!   node is in contact;
//! - a **follower** goes quiet while it knows a leader on another node that is in contact;
//! - anything else (a candidate, a learner, a follower without a leader) ticks.
//!
//! A quiet replica wakes (ticks again, and stays awake at least a leader lease, an
//! election timeout and a heartbeat) when its pass finds any of that no longer true: the
//! leader's log moved (a proposal) or a follower fell behind; a node it relies on fell silent, said it is
//! stopping, or reconnected (it may have restarted); its leader or role changed. It also
//! wakes at once when a peer asks it for a vote (`wake`, from the registry's router): a
//! replica that stands for election knows something this node does not. A woken follower
//! whose leader's node is gone stands once a leader lease and an election timeout have
//! passed since the leader's last heartbeat (at its next tick if it was quiet that long),
//! and it stays awake until then: a dead leader is replaced within the transport's
//! silence limit, one pass and one tick, or, when its node came back without the group's
//! leadership (restarted, or wiped), within a lease and an election timeout of the
//! reconnection (the connection's serial changed).
//!
//! Safety never rests on these timers (Raft's votes and log matching do not use them).
//! What a quiet leader gives up is its followers' leases and fresh `millis_since_quorum_ack`
//! figures; docs/architecture.md ("Quiet groups") explains why the reads and leadership
//! checks built on them stay correct.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use crate::runtime::TickGate;
use crate::types::{typ, GroupId, NodeId};

/// The peers this node is in contact with, each with the serial number of its connection
/// (`Transport::contact`).
pub(crate) type Contact = BTreeMap<NodeId, u64>;

/// The peers (with their connections' serials) a quiet replica relies on being alive.
type Basis = Vec<(NodeId, u64)>;

/// What a pass needs to know about one group besides its metrics.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conditions {
    /// The group's leadership is being handed over (`crate::handover`): it keeps ticking.
    pub fenced: bool,
    /// The replica's last log index is the one the previous pass saw.
    pub idle: bool,
    /// The longest a leader may have gone without a quorum's answer and still go quiet.
    pub fresh: Duration,
}

/// The peers a replica may go quiet relying on, or `None` when it must keep ticking.
pub(crate) fn quiet_basis(
    metrics: &typ::RaftMetrics,
    conditions: Conditions,
    contact: &Contact,
) -> Option<Basis> {
    match metrics.state {
        ServerState::Leader => leader_basis(metrics, conditions, contact),
        ServerState::Follower => {
            let leader = metrics.current_leader.filter(|l| *l != metrics.id)?;
            contact.get(&leader).map(|conn| vec![(leader, *conn)])
        }
        _ => None,
    }
}

/// A leader with nothing to replicate, everything applied, every member caught up, a
/// recent quorum, and every member's node in contact.
fn leader_basis(
    metrics: &typ::RaftMetrics,
    conditions: Conditions,
    contact: &Contact,
) -> Option<Basis> {
    if conditions.fenced || !conditions.idle || metrics.current_leader != Some(metrics.id) {
        return None;
    }
    let acked = metrics.millis_since_quorum_ack?;
    if Duration::from_millis(acked) > conditions.fresh {
        return None;
    }
    let last = metrics.last_log_index?;
    if metrics.last_applied.map(|l| l.index) != Some(last) {
        return None;
    }
    let replication = metrics.replication.as_ref()?;
    let mut basis = Vec::new();
    for (member, _) in metrics.membership_config.membership().nodes() {
        if *member == metrics.id {
            continue;
        }
        let matched = replication.get(member)?;
        if matched.map(|l| l.index) != Some(last) {
            return None;
        }
        basis.push((*member, *contact.get(member)?));
    }
    Some(basis)
}

/// One group as the passes left it.
struct GroupState {
    raft: typ::Raft,
    /// Closed while the group is quiet (its ticks are off), holding its tick task.
    gate: Arc<TickGate>,
    /// The group's metrics, read by every pass without cloning the handle.
    metrics: tokio::sync::watch::Receiver<typ::RaftMetrics>,
    /// The last log index the previous pass saw.
    last_log: Option<u64>,
    /// The basis the previous pass found (`None`: the replica had to tick); while quiet,
    /// the peers and connections the quiet state relies on.
    seen: Option<Basis>,
    /// A woken group keeps ticking at least until then.
    awake_until: Instant,
}

impl GroupState {
    fn is_quiet(&self) -> bool {
        self.gate.is_closed()
    }

    /// Ticks again if quiet; returns whether it was.
    fn wake(&self) -> bool {
        if !self.is_quiet() {
            return false;
        }
        self.raft.runtime_config().tick(true);
        self.gate.open();
        true
    }

    fn go_quiet(&self) {
        self.raft.runtime_config().tick(false);
        self.gate.close();
    }
}

impl Drop for GroupState {
    /// A closing group's tick task must run to see that it is cancelled.
    fn drop(&mut self) {
        self.gate.open();
    }
}

/// The quiet state of every group on the node (see the module doc). The registry adds a
/// group when it opens and removes it when it closes, so a pass reads only this map.
pub(crate) struct QuietGroups {
    groups: Mutex<HashMap<GroupId, GroupState>>,
    /// The contact the previous pass saw.
    contact: Mutex<Contact>,
    /// How many groups the last pass left quiet (the node's metrics show it).
    quiet: AtomicUsize,
    /// How long a woken group keeps ticking at least: the leader lease, the longest
    /// election timeout and a heartbeat. A follower that has accepted a leader stands only
    /// once a lease and an election timeout have passed since it last heard from it, so a
    /// follower whose leader is gone stands before it may go quiet again (with less, one
    /// whose leader's node restarted wiped — in contact, leading nothing — went back to
    /// sleep first and never stood); and a woken leader's heartbeats renew its followers'
    /// view before it may go quiet again.
    min_awake: Duration,
    /// See [`Conditions::fresh`].
    fresh: Duration,
}

impl QuietGroups {
    pub(crate) fn new(min_awake: Duration, fresh: Duration) -> Self {
        QuietGroups {
            groups: Mutex::new(HashMap::new()),
            contact: Mutex::new(Contact::new()),
            quiet: AtomicUsize::new(0),
            min_awake,
            fresh,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, GroupState>> {
        // Every critical section leaves the map consistent: a poisoned one still is.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A group opened: awake, as openraft starts every group.
    pub(crate) fn opened(&self, group: GroupId, raft: &typ::Raft, gate: Arc<TickGate>) {
        let state = GroupState {
            raft: raft.clone(),
            gate,
            metrics: raft.metrics(),
            last_log: None,
            seen: None,
            awake_until: Instant::now() + self.min_awake,
        };
        self.lock().insert(group, state);
    }

    /// A group closed.
    pub(crate) fn closed(&self, group: GroupId) {
        self.lock().remove(&group);
    }

    /// How many groups the last pass left quiet.
    pub(crate) fn count(&self) -> usize {
        self.quiet.load(Ordering::Relaxed)
    }

    /// How many quiet groups' tick tasks are held still (all of them, unless openraft's
    /// tick task went unrecognised: see [`crate::runtime`]).
    pub(crate) fn held_tick_tasks(&self) -> usize {
        self.lock().values().filter(|s| s.gate.holds_task()).count()
    }

    /// Wakes `group` now (a peer asked it for a vote): it ticks again, for at least
    /// `min_awake`.
    pub(crate) fn wake(&self, group: GroupId) {
        let mut groups = self.lock();
        let Some(state) = groups.get_mut(&group) else {
            return;
        };
        if state.wake() {
            tracing::debug!(group, "quiet group woken by a vote request");
        }
        state.awake_until = Instant::now() + self.min_awake;
    }

    /// One pass over the node's groups (see the module doc). Returns how many are quiet.
    pub(crate) fn pass(&self, contact: &Contact, fenced: impl Fn(GroupId) -> bool) -> usize {
        let now = Instant::now();
        let contact_changed = {
            let mut seen = self.contact.lock().unwrap_or_else(|e| e.into_inner());
            let changed = *seen != *contact;
            if changed {
                seen.clone_from(contact);
            }
            changed
        };
        let mut states = self.lock();
        let mut quiet = 0;
        for (group, state) in states.iter_mut() {
            // A quiet replica's basis is a function of its metrics, its fence and the
            // contact alone: with none of them changed it stays quiet, and the pass skips
            // the work (most groups of an idle node are quiet).
            let unchanged = !contact_changed && !state.metrics.has_changed().unwrap_or(true);
            if state.is_quiet() && unchanged && !fenced(*group) {
                quiet += 1;
                continue;
            }
            let basis = {
                let metrics = state.metrics.borrow_and_update();
                let idle = state.last_log.is_some() && state.last_log == metrics.last_log_index;
                state.last_log = metrics.last_log_index;
                let conditions = Conditions {
                    fenced: fenced(*group),
                    idle,
                    fresh: self.fresh,
                };
                quiet_basis(&metrics, conditions, contact)
            };
            // A replica goes quiet only on a basis that held, the same peers on the same
            // connections, for `min_awake`, and a quiet one wakes when it changes: a
            // follower whose leader's connection was replaced may no longer have a leader
            // there (its node restarted), and must stay awake long enough to stand if no
            // heartbeat comes.
            let changed = state.seen != basis;
            if changed {
                state.awake_until = now + self.min_awake;
                state.seen = basis;
            }
            if changed {
                state.wake();
            } else if !state.is_quiet() && state.seen.is_some() && now >= state.awake_until {
                state.go_quiet();
            }
            quiet += usize::from(state.is_quiet());
        }
        self.quiet.store(quiet, Ordering::Relaxed);
        quiet
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    const ME: NodeId = 1;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, ME), index)
    }

    fn members() -> Arc<StoredMembership<NodeId, BasicNode>> {
        let nodes: BTreeMap<NodeId, BasicNode> = [1, 2, 3]
            .into_iter()
            .map(|id| (id, BasicNode::new(format!("127.0.0.1:{id}"))))
            .collect();
        let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
        let membership = Membership::new(vec![voters], nodes);
        Arc::new(StoredMembership::new(Some(log_id(1)), membership))
    }

    /// An idle leader at index 7 with both followers caught up.
    fn idle_leader() -> typ::RaftMetrics {
        let mut m = typ::RaftMetrics::new_initial(ME);
        m.state = ServerState::Leader;
        m.current_leader = Some(ME);
        m.last_log_index = Some(7);
        m.last_applied = Some(log_id(7));
        m.millis_since_quorum_ack = Some(100);
        m.membership_config = members();
        m.replication = Some(
            [
                (1, Some(log_id(7))),
                (2, Some(log_id(7))),
                (3, Some(log_id(7))),
            ]
            .into_iter()
            .collect(),
        );
        m
    }

    fn follower_of(leader: NodeId) -> typ::RaftMetrics {
        let mut m = typ::RaftMetrics::new_initial(ME);
        m.state = ServerState::Follower;
        m.current_leader = Some(leader);
        m.membership_config = members();
        m
    }

    fn calm() -> Conditions {
        Conditions {
            fenced: false,
            idle: true,
            fresh: Duration::from_secs(1),
        }
    }

    fn all_in_contact() -> Contact {
        [(2, 20), (3, 30)].into_iter().collect()
    }

    #[test]
    fn an_idle_leader_with_every_member_caught_up_and_in_contact_goes_quiet() {
        let basis = quiet_basis(&idle_leader(), calm(), &all_in_contact());
        assert_eq!(basis, Some(vec![(2, 20), (3, 30)]));
    }

    #[test]
    fn a_leader_ticks_while_anything_is_left_to_do_or_unsure() {
        let contact = all_in_contact();
        let mut behind = idle_leader();
        behind
            .replication
            .as_mut()
            .unwrap()
            .insert(3, Some(log_id(6)));
        assert_eq!(quiet_basis(&behind, calm(), &contact), None);

        let mut unapplied = idle_leader();
        unapplied.last_applied = Some(log_id(6));
        assert_eq!(quiet_basis(&unapplied, calm(), &contact), None);

        let mut no_quorum = idle_leader();
        no_quorum.millis_since_quorum_ack = Some(5_000);
        assert_eq!(quiet_basis(&no_quorum, calm(), &contact), None);

        let busy = Conditions {
            idle: false,
            ..calm()
        };
        assert_eq!(quiet_basis(&idle_leader(), busy, &contact), None);

        let handing_over = Conditions {
            fenced: true,
            ..calm()
        };
        assert_eq!(quiet_basis(&idle_leader(), handing_over, &contact), None);

        let one_silent: Contact = [(2, 20)].into_iter().collect();
        assert_eq!(quiet_basis(&idle_leader(), calm(), &one_silent), None);
    }

    #[test]
    fn a_follower_is_quiet_only_while_its_leaders_node_is_in_contact() {
        let contact = all_in_contact();
        assert_eq!(
            quiet_basis(&follower_of(2), calm(), &contact),
            Some(vec![(2, 20)])
        );
        let leader_silent: Contact = [(3, 30)].into_iter().collect();
        assert_eq!(quiet_basis(&follower_of(2), calm(), &leader_silent), None);

        let mut leaderless = follower_of(2);
        leaderless.current_leader = None;
        assert_eq!(quiet_basis(&leaderless, calm(), &contact), None);

        let mut candidate = follower_of(2);
        candidate.state = ServerState::Candidate;
        assert_eq!(quiet_basis(&candidate, calm(), &contact), None);
    }
}
