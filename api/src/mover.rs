//! Carrying out the replica moves and decommissions the controller records
//! (`psubd_actors::controller::reassignment`). Every node runs [`run_moves`]:
//!
//! - **On a partition's leader**, each move of that partition goes step by step: add the
//!   new replicas as learners (their nodes opened the group without initialising it) and
//!   wait until each is within [`CAUGHT_UP_ENTRIES`] of the leader's log (by log or by
//!   snapshot); record `changing_membership`; if this leader is itself removed, hand the
//!   leadership to a replica that stays (the next leader carries on from here); change the
//!   group's voters to the target in one joint-consensus change (openraft commits the
//!   joint configuration, then the target's); and only then record the move done, which
//!   is when the removed replicas' nodes close and delete their copy. Each step looks at the
//!   group's membership first, so a move interrupted by a failover of the partition's or
//!   the controller's leader resumes where it stopped.
//! - **On the controller's leader**, each decommissioning node's replicas are moved away
//!   as move slots free up (`reassignment::plan_decommission`); once the node holds
//!   nothing it is removed from the controller group's voters and recorded decommissioned.
//!
//! Nothing here is urgent: a step that cannot be done now (no leader, a follower behind,
//! a timeout) is tried again at the next tick, logged at debug.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use psubd_actors::controller::reassignment::{
    holds_nothing, plan_decommission, MoveState, NodeState, Reassignment,
};
use psubd_actors::locks::lock;
use psubd_actors::membership::{
    self, add_learner, await_caught_up, change_voters, is_leader, most_caught_up,
};
use psubd_raft::{GroupId, HandOver, NodeId, CONTROLLER_GROUP};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::edge::Edge;
use crate::leadership::hand_over;
use crate::protocol::{ForwardRequest, ForwardResponse, MoveOp};

/// How often each node looks for moves to advance.
pub const MOVE_TICK: Duration = Duration::from_millis(250);

/// How far (in entries) a new replica may trail the leader's log and count as caught up:
/// under load the entry in flight is always a little ahead, and joint consensus keeps
/// every commit on a majority of the old replicas as well as of the new ones.
const CAUGHT_UP_ENTRIES: u64 = 64;

/// How long one attempt waits for the new replicas to catch up before the next tick
/// tries again (a large partition takes several attempts; nothing is lost between them).
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// How long one membership change (adding a learner, changing the voters) may take.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a removed leader spends handing its leadership to a remaining replica.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// Why a step did not finish this time.
type StepError = String;

/// Advances the moves this node can, every [`MOVE_TICK`], until `stop`.
pub async fn run_moves(edge: Arc<Edge>, stop: CancellationToken) {
    let running: Arc<Mutex<HashSet<GroupId>>> = Arc::default();
    let mut tick = tokio::time::interval(MOVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut decommissions = None::<tokio::task::JoinHandle<()>>;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if edge.broker().raft_node().is_stepping_down() {
            return;
        }
        let state = edge.broker().metadata();
        for (group, reassignment) in &state.moves.reassignments {
            if !leads(&edge, *group) || !lock(&running).insert(*group) {
                continue;
            }
            let (edge, running, stop) = (edge.clone(), running.clone(), stop.clone());
            let (group, reassignment) = (*group, reassignment.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    outcome = drive(&edge, group, &reassignment) => {
                        if let Err(reason) = outcome {
                            debug!(group, %reason, "move not advanced yet");
                        }
                    }
                }
                lock(&running).remove(&group);
            });
        }
        let idle = decommissions.as_ref().is_none_or(|task| task.is_finished());
        let any_leaving = state
            .moves
            .nodes
            .values()
            .any(|s| *s == NodeState::Decommissioning);
        if idle && any_leaving && leads(&edge, CONTROLLER_GROUP) {
            let (edge, stop) = (edge.clone(), stop.clone());
            decommissions = Some(tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = advance_decommissions(&edge) => {}
                }
            }));
        }
    }
}

/// True when this node leads `group` (as far as its own replica knows).
fn leads(edge: &Edge, group: GroupId) -> bool {
    edge.broker()
        .raft_node()
        .group(group)
        .is_some_and(|raft| is_leader(&raft))
}

/// Sends a move's controller write; `Done` or a refusal.
async fn record(edge: &Edge, op: MoveOp, topic: &str) -> Result<(), StepError> {
    match edge.controller(ForwardRequest::Moves(op), topic).await {
        Ok(ForwardResponse::Done) => Ok(()),
        Ok(other) => Err(format!("the controller answered {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

/// One pass over a move of `group`, which this node leads. See the module docs.
async fn drive(edge: &Edge, group: GroupId, reassignment: &Reassignment) -> Result<(), StepError> {
    let raft_node = edge.broker().raft_node();
    let me = raft_node.id();
    let raft = raft_node
        .group(group)
        .ok_or("the group is not running here")?;
    let target: BTreeSet<NodeId> = reassignment.to.iter().copied().collect();
    let members = membership::members(&raft);
    let voters = &members.voters;
    if !members.joint && *voters == target {
        // A leader resuming a move may find the target in its log but not yet committed;
        // the removed replicas delete their copy at `finish`, so wait for the commit.
        if !members.committed {
            return Err("the target configuration is not committed yet".into());
        }
        return finish(edge, group, reassignment).await;
    }
    let added: Vec<NodeId> = target.difference(voters).copied().collect();
    for node in added.iter().filter(|n| !members.learners.contains(n)) {
        add_learner(raft_node, &raft, *node, MEMBERSHIP_TIMEOUT)
            .await
            .map_err(|e| format!("adding learner {node}: {e}"))?;
        info!(group, node, "new replica added as a learner");
    }
    await_caught_up(&raft, &added, CAUGHT_UP_ENTRIES, CATCH_UP_WAIT)
        .await
        .map_err(|e| e.to_string())?;
    if reassignment.state == MoveState::CatchingUp {
        let progress = MoveOp::Progress {
            group,
            state: MoveState::ChangingMembership,
        };
        record(edge, progress, &reassignment.topic).await?;
        info!(group, "new replicas caught up; changing the voters");
    }
    if !target.contains(&me) {
        // Hand the leadership to a replica that stays, the one furthest along of those
        // this node is in contact with (a dead one would never take over); it carries the
        // move on. With none staying (every replica replaced), openraft steps this leader
        // down once the new voters are committed, and they elect among themselves.
        let staying: Vec<NodeId> = reassignment
            .to
            .iter()
            .copied()
            .filter(|n| voters.contains(n))
            .collect();
        if !staying.is_empty() {
            let reachable: Vec<NodeId> = staying
                .into_iter()
                .filter(|n| raft_node.in_contact_with(*n))
                .collect();
            let stays = most_caught_up(&raft, &reachable)
                .ok_or("no remaining replica is reachable to take the leadership")?;
            let until = Instant::now() + HANDOVER_WAIT;
            return match hand_over(edge, group, Some(stays), until).await {
                HandOver::Moved { to } => {
                    info!(
                        group,
                        to, "leadership handed to a remaining replica before the change"
                    );
                    Ok(())
                }
                outcome => Err(format!("handing the leadership over: {outcome:?}")),
            };
        }
    }
    change_voters(&raft, target.clone(), MEMBERSHIP_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    info!(group, voters = ?target, "voters changed");
    finish(edge, group, reassignment).await
}

/// The group's voters are the target, committed: the move is done.
async fn finish(edge: &Edge, group: GroupId, reassignment: &Reassignment) -> Result<(), StepError> {
    let done = MoveOp::Finish {
        group,
        replicas: reassignment.to.clone(),
    };
    record(edge, done, &reassignment.topic).await?;
    info!(
        topic = %reassignment.topic,
        partition = reassignment.partition,
        replicas = ?reassignment.to,
        "replica move done"
    );
    Ok(())
}

/// On the controller's leader: starts the next moves of each decommissioning node, and
/// ends the decommission of a node that holds nothing any more.
async fn advance_decommissions(edge: &Edge) {
    let broker = edge.broker();
    let state = broker.metadata();
    let leaving: Vec<NodeId> = state
        .moves
        .nodes
        .iter()
        .filter(|(_, s)| **s == NodeState::Decommissioning)
        .map(|(n, _)| *n)
        .collect();
    for node in leaving {
        for planned in plan_decommission(&state, node) {
            let start = MoveOp::Start {
                topic: planned.topic.clone(),
                partition: planned.partition,
                replicas: planned.replicas.clone(),
            };
            match record(edge, start, &planned.topic).await {
                Ok(()) => info!(
                    node,
                    topic = %planned.topic,
                    partition = planned.partition,
                    replicas = ?planned.replicas,
                    "decommission: moving a replica away"
                ),
                Err(reason) => debug!(node, %reason, "decommission: move not started yet"),
            }
        }
        if !holds_nothing(&state, node) {
            continue;
        }
        if let Err(reason) = leave_controller_group(edge, node).await {
            debug!(node, %reason, "decommission: not out of the controller group yet");
            continue;
        }
        match record(edge, MoveOp::Decommissioned { node }, "").await {
            Ok(()) => info!(node, "node decommissioned"),
            Err(reason) => debug!(node, %reason, "decommission: not recorded yet"),
        }
    }
}

/// Removes `node` from the controller group's voters (this node leads it). A leader that
/// is itself the node hands the group over first; the next leader removes it.
async fn leave_controller_group(edge: &Edge, node: NodeId) -> Result<(), StepError> {
    let raft = edge.broker().controller_raft();
    let voters = membership::members(raft).voters;
    if !voters.contains(&node) {
        return Ok(());
    }
    if node == edge.broker().node_id() {
        let until = Instant::now() + HANDOVER_WAIT;
        let outcome = hand_over(edge, CONTROLLER_GROUP, None, until).await;
        return Err(format!("handing the controller over first: {outcome:?}"));
    }
    let remaining: BTreeSet<NodeId> = voters.into_iter().filter(|v| *v != node).collect();
    change_voters(raft, remaining, MEMBERSHIP_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    info!(node, "node removed from the controller group");
    Ok(())
}
