//! Moving partition replicas and decommissioning nodes: the replicated record of the moves
//! in progress and of the nodes leaving ([`Moves`], part of the controller state), the
//! checks every move passes ([`check_move`], [`check_decommission`]) and the planning of a
//! decommission ([`plan_decommission`]: which replica goes where).
//!
//! A move of partition `p` from replica set `from` to `to` is recorded by the controller
//! ([`ControllerCommand::StartMove`]); `p`'s placement keeps showing `from` (the replicas
//! that really vote) until the move is done. The nodes of `to` open the partition's group
//! as learners (they never initialise it); `p`'s leader adds them as learners, waits until
//! they caught up, hands its leadership to a remaining replica if it is itself removed, and
//! changes the group's voters to `to` in one joint-consensus change. Only once that change
//! is committed does it report the move done ([`ControllerCommand::FinishMove`]): the
//! placement becomes `to`, and the nodes no longer in it close and delete their replica.
//! Every step is driven by whichever replica leads `p` from the recorded move, so a move
//! resumes after a failover of the partition's or the controller's leader.
//!
//! At most [`MAX_CONCURRENT_MOVES`] moves run at once over the cluster: each copies a
//! partition's log to new replicas. A decommission moves the leaving node's replicas as
//! slots free up.

use std::collections::{BTreeMap, BTreeSet};

use psubd_raft::{GroupId, NodeId};
use serde::{Deserialize, Serialize};

use super::state::{ControllerCommand, ControllerState};
use super::{unexpected, Controller, ControllerResponse};
use crate::clock::now_ms;
use crate::error::ControllerError;

/// The most partition moves in progress at once over the cluster. Each one streams a
/// partition's log (or a snapshot) to new replicas next to the live traffic; four keep a
/// decommission moving without starving publishes on a small cluster.
pub const MAX_CONCURRENT_MOVES: usize = 4;

/// Where a move stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveState {
    /// The new replicas are learners of the partition's group, catching up.
    CatchingUp,
    /// The new replicas caught up; the group's voters are being changed to the target.
    ChangingMembership,
}

impl MoveState {
    /// The state's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::CatchingUp => "catching_up",
            MoveState::ChangingMembership => "changing_membership",
        }
    }
}

/// One partition's move in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The replicas when the move started (the placement's, until the move is done).
    pub from: Vec<NodeId>,
    /// The target replicas; the first is the preferred leader.
    pub to: Vec<NodeId>,
    /// Where the move stands.
    pub state: MoveState,
    /// When the move started (the proposer's clock), ms since the epoch.
    pub started_ms: i64,
}

impl Reassignment {
    /// The nodes the move adds.
    pub fn added(&self) -> Vec<NodeId> {
        self.to
            .iter()
            .copied()
            .filter(|n| !self.from.contains(n))
            .collect()
    }
}

/// A node's part in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Holds replicas and takes new ones.
    Active,
    /// Its replicas are being moved away; it takes no new ones.
    Decommissioning,
    /// It holds no replica and is no longer a voter of the controller group.
    Decommissioned,
}

impl NodeState {
    /// The state's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Decommissioning => "decommissioning",
            NodeState::Decommissioned => "decommissioned",
        }
    }
}

/// The moves in progress and the nodes leaving or gone. Stored under its own key of the
/// controller state (see `state.rs`), so states written before it still load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moves {
    /// Moves in progress by partition group. Invariant: at most
    /// [`MAX_CONCURRENT_MOVES`] entries, one per group.
    pub reassignments: BTreeMap<GroupId, Reassignment>,
    /// Nodes that are not active; absent means active.
    pub nodes: BTreeMap<NodeId, NodeState>,
}

impl Moves {
    /// A node's state.
    pub fn node_state(&self, node: NodeId) -> NodeState {
        self.nodes.get(&node).copied().unwrap_or(NodeState::Active)
    }

    /// True when the node takes no new replicas (decommissioning or decommissioned).
    pub fn is_retired(&self, node: NodeId) -> bool {
        self.node_state(node) != NodeState::Active
    }
}

/// Why a move or a decommission was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MoveRefusal {
    /// No such topic.
    #[error("topic not found")]
    TopicNotFound,
    /// The topic has no such partition.
    #[error("the topic has no partition {partition}")]
    PartitionNotFound {
        /// The partition asked for.
        partition: u32,
    },
    /// The request breaks a rule (named in the message).
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with the moves in progress or the cluster's state (named in the
    /// message): a move of the partition runs, too many moves run, a node is leaving, the
    /// remaining nodes cannot hold a replication factor.
    #[error("{0}")]
    Conflict(String),
}

impl From<MoveRefusal> for ControllerError {
    fn from(refusal: MoveRefusal) -> Self {
        match refusal {
            MoveRefusal::TopicNotFound => ControllerError::TopicNotFound,
            MoveRefusal::PartitionNotFound { .. } | MoveRefusal::Invalid(_) => {
                ControllerError::Invalid(refusal.to_string())
            }
            MoveRefusal::Conflict(message) => ControllerError::Conflict(message),
        }
    }
}

/// Checks a move of `topic`'s `partition` to `replicas` against the state; answers the
/// partition's group. The edge checks with it before forwarding (for precise errors), and
/// the controller again at apply, where the answer is final.
///
/// # Errors
/// [`MoveRefusal`] naming the rule broken.
pub fn check_move(
    state: &ControllerState,
    topic: &str,
    partition: u32,
    replicas: &[NodeId],
) -> Result<GroupId, MoveRefusal> {
    let meta = state.topics.get(topic).ok_or(MoveRefusal::TopicNotFound)?;
    let placement = meta
        .partitions
        .get(partition as usize)
        .ok_or(MoveRefusal::PartitionNotFound { partition })?;
    let rf = meta.config.replication_factor as usize;
    if replicas.len() != rf {
        return Err(MoveRefusal::Invalid(format!(
            "replicas must name exactly the topic's replication factor, {rf}, of nodes"
        )));
    }
    let distinct: BTreeSet<NodeId> = replicas.iter().copied().collect();
    if distinct.len() != replicas.len() {
        return Err(MoveRefusal::Invalid(
            "replicas must be distinct nodes".into(),
        ));
    }
    if let Some(unknown) = replicas.iter().find(|n| !state.nodes.contains_key(n)) {
        return Err(MoveRefusal::Invalid(format!(
            "node {unknown} is not a node of the cluster"
        )));
    }
    if placement.replicas == replicas {
        return Err(MoveRefusal::Invalid(
            "the partition already has these replicas".into(),
        ));
    }
    if state.moves.reassignments.contains_key(&placement.group) {
        return Err(MoveRefusal::Conflict(format!(
            "a move of partition {partition} of topic '{topic}' is in progress"
        )));
    }
    if let Some(retired) = replicas
        .iter()
        .find(|n| !placement.replicas.contains(n) && state.moves.is_retired(**n))
    {
        return Err(MoveRefusal::Conflict(format!(
            "node {retired} is decommissioning or decommissioned and takes no replicas"
        )));
    }
    if state.moves.reassignments.len() >= MAX_CONCURRENT_MOVES {
        return Err(MoveRefusal::Conflict(format!(
            "{MAX_CONCURRENT_MOVES} moves are in progress, the most at once; retry when one is done"
        )));
    }
    Ok(placement.group)
}

/// Checks that `node` may start decommissioning: it is a node of the cluster, active,
/// and the other active nodes can hold every topic's replication factor (the internal
/// consumer-offsets topic's too).
///
/// # Errors
/// [`MoveRefusal::Invalid`] for an unknown node, [`MoveRefusal::Conflict`] otherwise.
pub fn check_decommission(state: &ControllerState, node: NodeId) -> Result<(), MoveRefusal> {
    if !state.nodes.contains_key(&node) {
        return Err(MoveRefusal::Invalid(format!(
            "node {node} is not a node of the cluster"
        )));
    }
    if state.moves.is_retired(node) {
        return Err(MoveRefusal::Conflict(format!(
            "node {node} is already {}",
            state.moves.node_state(node).as_str()
        )));
    }
    let remaining = active_nodes(state)
        .into_iter()
        .filter(|n| *n != node)
        .count();
    let needed = state
        .topics
        .values()
        .map(|t| t.config.replication_factor as usize)
        .max()
        .unwrap_or(1)
        .max(1);
    if remaining < needed {
        return Err(MoveRefusal::Conflict(format!(
            "the {remaining} other active nodes cannot hold a replication factor of {needed}"
        )));
    }
    Ok(())
}

/// The registered nodes that take replicas, ascending.
pub fn active_nodes(state: &ControllerState) -> Vec<NodeId> {
    state
        .nodes
        .keys()
        .copied()
        .filter(|n| !state.moves.is_retired(*n))
        .collect()
}

/// One planned move: a partition and its new replica set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Its new replicas.
    pub replicas: Vec<NodeId>,
}

/// The next moves of `leaving`'s replicas, at most as many as the free move slots.
/// Each replica on `leaving` is replaced, in its position (so a preferred leader's
/// replacement becomes the preferred leader), by the active node that holds the fewest
/// replicas counting the moves already planned or running (lowest id on a tie) among
/// those not in the set already: the load spreads over the remaining nodes.
/// Partitions already moving are left to their move.
pub fn plan_decommission(state: &ControllerState, leaving: NodeId) -> Vec<PlannedMove> {
    let slots = MAX_CONCURRENT_MOVES.saturating_sub(state.moves.reassignments.len());
    let candidates = active_nodes(state);
    let mut load: BTreeMap<NodeId, usize> = candidates.iter().map(|n| (*n, 0)).collect();
    for topic in state.topics.values() {
        for placement in &topic.partitions {
            let replicas = state
                .moves
                .reassignments
                .get(&placement.group)
                .map_or(&placement.replicas, |m| &m.to);
            for replica in replicas {
                if let Some(count) = load.get_mut(replica) {
                    *count += 1;
                }
            }
        }
    }
    let mut planned = Vec::new();
    for topic in state.topics.values() {
        for (partition, placement) in topic.partitions.iter().enumerate() {
            if planned.len() >= slots {
                return planned;
            }
            if !placement.replicas.contains(&leaving)
                || state.moves.reassignments.contains_key(&placement.group)
            {
                continue;
            }
            let Some(target) = load
                .iter()
                .filter(|(n, _)| !placement.replicas.contains(n))
                .min_by_key(|(n, count)| (**count, **n))
                .map(|(n, _)| *n)
            else {
                continue;
            };
            if let Some(count) = load.get_mut(&target) {
                *count += 1;
            }
            let replicas = placement
                .replicas
                .iter()
                .map(|n| if *n == leaving { target } else { *n })
                .collect();
            planned.push(PlannedMove {
                topic: topic.name.clone(),
                partition: partition as u32,
                replicas,
            });
        }
    }
    planned
}

/// True when `node` holds no replica and no move involves it: its decommission may
/// finish.
pub fn holds_nothing(state: &ControllerState, node: NodeId) -> bool {
    let placed = state
        .topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .any(|p| p.replicas.contains(&node));
    let moving = state
        .moves
        .reassignments
        .values()
        .any(|m| m.from.contains(&node) || m.to.contains(&node));
    !placed && !moving
}

/// Applies a move command to the state (at apply, on every replica alike).
pub(super) fn execute(
    state: &mut ControllerState,
    command: ControllerCommand,
) -> ControllerResponse {
    let outcome = match command {
        ControllerCommand::StartMove {
            topic,
            partition,
            replicas,
            started_ms,
        } => check_move(state, &topic, partition, &replicas).map(|group| {
            let from = state
                .partition(&topic, partition)
                .map(|p| p.replicas.clone())
                .unwrap_or_default();
            state.moves.reassignments.insert(
                group,
                Reassignment {
                    topic,
                    partition,
                    from,
                    to: replicas,
                    state: MoveState::CatchingUp,
                    started_ms,
                },
            );
        }),
        ControllerCommand::MoveProgress { group, state: next } => {
            match state.moves.reassignments.get_mut(&group) {
                Some(reassignment) => {
                    reassignment.state = next;
                    Ok(())
                }
                None => Err(MoveRefusal::Conflict("no such move in progress".into())),
            }
        }
        ControllerCommand::FinishMove { group, replicas } => {
            match state.moves.reassignments.get(&group) {
                Some(reassignment) if reassignment.to == replicas => {
                    let (topic, partition) =
                        (reassignment.topic.clone(), reassignment.partition as usize);
                    state.moves.reassignments.remove(&group);
                    if let Some(placement) = state
                        .topics
                        .get_mut(&topic)
                        .and_then(|t| t.partitions.get_mut(partition))
                        .filter(|p| p.group == group)
                    {
                        placement.replicas = replicas;
                    }
                    Ok(())
                }
                _ => Err(MoveRefusal::Conflict("no such move in progress".into())),
            }
        }
        ControllerCommand::Decommission { node } => check_decommission(state, node).map(|()| {
            state.moves.nodes.insert(node, NodeState::Decommissioning);
        }),
        ControllerCommand::Decommissioned { node } => {
            if state.moves.node_state(node) == NodeState::Decommissioning
                && holds_nothing(state, node)
            {
                state.moves.nodes.insert(node, NodeState::Decommissioned);
                Ok(())
            } else {
                Err(MoveRefusal::Conflict(format!(
                    "node {node} still holds replicas or is not decommissioning"
                )))
            }
        }
        _ => Err(MoveRefusal::Invalid("not a move command".into())),
    };
    ControllerResponse::Moves(outcome)
}

/// A deleted topic's moves end with it.
pub(super) fn forget_topic(state: &mut ControllerState, topic: &str) {
    state.moves.reassignments.retain(|_, m| m.topic != topic);
}

impl Controller {
    /// Starts moving `topic`'s `partition` to `replicas` (checked again at apply).
    ///
    /// # Errors
    /// `NotLeader` / `NoQuorum` (nothing written), `OutcomeUnknown`; `TopicNotFound`,
    /// `Invalid` and `Conflict` from [`check_move`].
    pub async fn start_move(
        &self,
        topic: String,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<(), ControllerError> {
        self.move_command(ControllerCommand::StartMove {
            topic,
            partition,
            replicas,
            started_ms: now_ms(),
        })
        .await
    }

    /// Records how far the move of `group` got.
    ///
    /// # Errors
    /// As [`Controller::start_move`]; `Conflict` when no such move runs.
    pub async fn move_progress(
        &self,
        group: GroupId,
        state: MoveState,
    ) -> Result<(), ControllerError> {
        self.move_command(ControllerCommand::MoveProgress { group, state })
            .await
    }

    /// Records that the move of `group` to `replicas` is done: the group's voters are
    /// `replicas`, committed.
    ///
    /// # Errors
    /// As [`Controller::move_progress`].
    pub async fn finish_move(
        &self,
        group: GroupId,
        replicas: Vec<NodeId>,
    ) -> Result<(), ControllerError> {
        self.move_command(ControllerCommand::FinishMove { group, replicas })
            .await
    }

    /// Starts decommissioning `node` (checked again at apply, see [`check_decommission`]).
    ///
    /// # Errors
    /// As [`Controller::start_move`].
    pub async fn decommission(&self, node: NodeId) -> Result<(), ControllerError> {
        self.move_command(ControllerCommand::Decommission { node })
            .await
    }

    /// Records that `node` left: it holds no replica and is no voter of group 0.
    ///
    /// # Errors
    /// As [`Controller::move_progress`].
    pub async fn decommissioned(&self, node: NodeId) -> Result<(), ControllerError> {
        self.move_command(ControllerCommand::Decommissioned { node })
            .await
    }

    async fn move_command(&self, command: ControllerCommand) -> Result<(), ControllerError> {
        self.check_leader()?;
        match self.propose(command).await? {
            ControllerResponse::Moves(Ok(())) => Ok(()),
            ControllerResponse::Moves(Err(refusal)) => Err(refusal.into()),
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::NodeInfo;
    use crate::topic::{CleanupPolicy, PartitionPlacement, TopicConfig, TopicMeta};

    /// A state with nodes 1..=nodes and topic `t` with the given replica sets (groups
    /// 1000, 1001, ...), replication factor 3.
    fn state(nodes: u64, replicas: &[&[NodeId]]) -> ControllerState {
        let mut state = ControllerState::default();
        for id in 1..=nodes {
            state.nodes.insert(
                id,
                NodeInfo {
                    id,
                    http: format!("http://n{id}"),
                },
            );
        }
        let partitions = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| PartitionPlacement {
                group: 1000 + i as GroupId,
                replicas: r.to_vec(),
            })
            .collect();
        state.topics.insert(
            "t".into(),
            TopicMeta {
                name: "t".into(),
                config: TopicConfig {
                    partitions: replicas.len() as u32,
                    replication_factor: 3,
                    retention_ms: -1,
                    retention_bytes: -1,
                    cleanup_policy: CleanupPolicy::Delete,
                    delete_retention_ms: 1,
                },
                partitions,
                created_ms: 0,
            },
        );
        state
    }

    fn start(topic: &str, partition: u32, replicas: &[NodeId]) -> ControllerCommand {
        ControllerCommand::StartMove {
            topic: topic.into(),
            partition,
            replicas: replicas.to_vec(),
            started_ms: 0,
        }
    }

    fn refused(response: ControllerResponse) -> MoveRefusal {
        match response {
            ControllerResponse::Moves(Err(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_moves_are_refused_and_change_nothing() {
        let mut s = state(5, &[&[1, 2, 3]]);
        let before = s.clone();
        assert_eq!(
            refused(execute(&mut s, start("x", 0, &[1, 2, 4]))),
            MoveRefusal::TopicNotFound
        );
        assert_eq!(
            refused(execute(&mut s, start("t", 1, &[1, 2, 4]))),
            MoveRefusal::PartitionNotFound { partition: 1 }
        );
        for bad in [
            &[1, 2][..],
            &[1, 2, 4, 5],
            &[1, 1, 4],
            &[1, 2, 9],
            &[1, 2, 3],
        ] {
            assert!(matches!(
                refused(execute(&mut s, start("t", 0, bad))),
                MoveRefusal::Invalid(_)
            ));
        }
        assert_eq!(s, before);
    }

    #[test]
    fn a_move_is_recorded_then_finished_and_a_second_move_waits() {
        let mut s = state(5, &[&[1, 2, 3]]);
        assert!(matches!(
            execute(&mut s, start("t", 0, &[4, 2, 3])),
            ControllerResponse::Moves(Ok(()))
        ));
        let moving = &s.moves.reassignments[&1000];
        assert_eq!(
            (moving.from.clone(), moving.added()),
            (vec![1, 2, 3], vec![4])
        );
        // The placement shows the voting replicas until the move is done.
        assert_eq!(s.partition("t", 0).unwrap().replicas, vec![1, 2, 3]);
        assert!(matches!(
            refused(execute(&mut s, start("t", 0, &[5, 2, 3]))),
            MoveRefusal::Conflict(_)
        ));
        // A finish for another target is refused.
        assert!(matches!(
            refused(execute(
                &mut s,
                ControllerCommand::FinishMove {
                    group: 1000,
                    replicas: vec![5, 2, 3]
                }
            )),
            MoveRefusal::Conflict(_)
        ));
        execute(
            &mut s,
            ControllerCommand::FinishMove {
                group: 1000,
                replicas: vec![4, 2, 3],
            },
        );
        assert_eq!(s.partition("t", 0).unwrap().replicas, vec![4, 2, 3]);
        assert!(s.moves.reassignments.is_empty());
    }

    #[test]
    fn moves_are_bounded() {
        let sets: Vec<&[NodeId]> = vec![&[1, 2, 3]; MAX_CONCURRENT_MOVES + 1];
        let mut s = state(5, &sets);
        for p in 0..MAX_CONCURRENT_MOVES as u32 {
            assert!(matches!(
                execute(&mut s, start("t", p, &[1, 2, 4])),
                ControllerResponse::Moves(Ok(()))
            ));
        }
        assert!(matches!(
            refused(execute(
                &mut s,
                start("t", MAX_CONCURRENT_MOVES as u32, &[1, 2, 4])
            )),
            MoveRefusal::Conflict(_)
        ));
    }

    #[test]
    fn a_decommission_replaces_the_leaving_node_in_place_on_the_least_loaded_nodes() {
        // Node 1 holds three partitions; node 4 one, node 5 none.
        let mut s = state(5, &[&[1, 2, 3], &[2, 1, 3], &[3, 2, 1], &[2, 3, 4]]);
        execute(&mut s, ControllerCommand::Decommission { node: 1 });
        assert_eq!(s.moves.node_state(1), NodeState::Decommissioning);
        let planned = plan_decommission(&s, 1);
        let sets: Vec<Vec<NodeId>> = planned.iter().map(|m| m.replicas.clone()).collect();
        assert_eq!(sets, vec![vec![5, 2, 3], vec![2, 4, 3], vec![3, 2, 5]]);
        // A partition already moving is left to its move.
        execute(&mut s, start("t", 0, &[5, 2, 3]));
        let again = plan_decommission(&s, 1);
        assert!(again
            .iter()
            .all(|m| m.partition != 0 && !m.replicas.contains(&1)));
        // A node being decommissioned takes no new replica by request either.
        assert!(matches!(
            refused(execute(&mut s, start("t", 3, &[2, 3, 1]))),
            MoveRefusal::Conflict(_)
        ));
    }

    #[test]
    fn a_decommission_is_bounded_by_the_free_move_slots() {
        let sets: Vec<&[NodeId]> = vec![&[1, 2, 3]; MAX_CONCURRENT_MOVES + 3];
        let s = state(5, &sets);
        assert_eq!(plan_decommission(&s, 1).len(), MAX_CONCURRENT_MOVES);
    }

    #[test]
    fn a_decommission_that_cannot_keep_the_replication_factor_is_refused() {
        let mut s = state(3, &[&[1, 2, 3]]);
        assert!(matches!(
            refused(execute(&mut s, ControllerCommand::Decommission { node: 1 })),
            MoveRefusal::Conflict(_)
        ));
        assert!(matches!(
            refused(execute(&mut s, ControllerCommand::Decommission { node: 9 })),
            MoveRefusal::Invalid(_)
        ));
        let mut s = state(4, &[&[1, 2, 3]]);
        execute(&mut s, ControllerCommand::Decommission { node: 4 });
        // With 4 decommissioning, only 3 active nodes remain for RF 3.
        assert!(matches!(
            refused(execute(&mut s, ControllerCommand::Decommission { node: 1 })),
            MoveRefusal::Conflict(_)
        ));
        // Node 4 holds nothing: it may be marked decommissioned; node 1 may not.
        assert!(holds_nothing(&s, 4));
        assert!(matches!(
            execute(&mut s, ControllerCommand::Decommissioned { node: 4 }),
            ControllerResponse::Moves(Ok(()))
        ));
        assert_eq!(s.moves.node_state(4), NodeState::Decommissioned);
    }
}
