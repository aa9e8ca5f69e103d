//! Where this node's leaderships go: to caught-up followers before the node stops
//! ([`hand_over_all`]), and back to each partition's preferred replica — the first of its
//! replica set — once that replica is in contact and caught up ([`balance_leaders`]), so
//! leaders spread again after restarts and failovers (Kafka's automatic preferred-leader
//! election). Each node moves only the leaderships it holds: the leader is the one that
//! knows how far its followers are.
//!
//! The mechanics (fence, drain, elect at the follower) are `psubd_raft::handover`'s; this
//! module chooses the groups and carries the follower's part over the forwarding protocol
//! ([`ForwardRequest::TakeLeadership`]).

use std::sync::Arc;
use std::time::Duration;

use psubd_raft::{GroupId, HandOver, NodeId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::edge::{Delivery, Edge};
use crate::protocol::{ForwardRequest, ForwardResponse};

/// How long a stopping node spends handing its leaderships over, all groups at once,
/// before it stops anyway (followers then elect after their election timeout).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping node spends telling its peers it leaves and answering what they
/// sent before (see [`say_goodbye`]).
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the balancer gives one group's move back to its preferred replica: the leader's
/// lease (1.5 s by default) plus a round trip or two.
const BALANCE_MOVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`hand_over_all`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandOverSummary {
    /// Groups this node led when it started.
    pub led: usize,
    /// Of them, those whose leadership moved to a follower in time.
    pub moved: usize,
}

/// Asks `to` to stand for `group`'s leadership (the follower's part of a handover).
async fn ask_to_stand(
    edge: &Edge,
    group: GroupId,
    to: NodeId,
    leader_last_index: u64,
    until: Instant,
) -> bool {
    let request = ForwardRequest::TakeLeadership {
        group,
        leader_last_index,
    };
    let wait = until.saturating_duration_since(Instant::now());
    matches!(
        edge.deliver(to, request, wait).await,
        Delivery::Answered(ForwardResponse::Standing(true))
    )
}

/// Moves one group's leadership from this node (see `psubd_raft::handover`).
pub(crate) async fn hand_over(
    edge: &Edge,
    group: GroupId,
    preferred: Option<NodeId>,
    until: Instant,
) -> HandOver {
    edge.broker()
        .raft_node()
        .hand_over(group, preferred, until, |to, last| {
            ask_to_stand(edge, group, to, last, until)
        })
        .await
}

/// The node is stopping: stops standing for leaderships, hands every leadership it holds
/// (the controller, partitions, consumer-offsets partitions) to a caught-up follower, all
/// at once, for at most `within`, then fences every group. The HTTP edge keeps serving
/// meanwhile; a group takes writes here until its own handover fences it, and requests
/// for a fenced group wait for its next leader.
pub async fn hand_over_all(edge: &Edge, within: Duration) -> HandOverSummary {
    let raft_node = edge.broker().raft_node();
    raft_node.step_down();
    let until = Instant::now() + within;
    let groups = raft_node.group_ids();
    let outcomes =
        futures::future::join_all(groups.iter().map(|g| hand_over(edge, *g, None, until))).await;
    raft_node.fence_all();
    let mut summary = HandOverSummary::default();
    for (group, outcome) in groups.iter().zip(outcomes) {
        match outcome {
            HandOver::NotLeader => {}
            HandOver::Moved { to } => {
                summary.led += 1;
                summary.moved += 1;
                debug!(group, to, "leadership handed over");
            }
            other => {
                summary.led += 1;
                info!(group, outcome = ?other, "leadership not handed over; followers will elect");
            }
        }
    }
    summary
}

/// The node is stopping and has drained its HTTP edge: tells every peer it is leaving, so
/// they send it nothing more (their requests go elsewhere, knowing nothing was sent), then
/// answers everything they sent before, at most `within` in all. Only then may the node
/// close its connections: a request cut off by a closing connection has an unknown
/// outcome (504) at the edge that forwarded it.
pub async fn say_goodbye(edge: &Edge, within: Duration) {
    let until = Instant::now() + within;
    let raft_node = edge.broker().raft_node();
    let me = raft_node.id();
    let peers: Vec<NodeId> = raft_node
        .peers()
        .keys()
        .copied()
        .filter(|p| *p != me)
        .collect();
    let told = peers.iter().map(|peer| {
        let wait = until.saturating_duration_since(Instant::now());
        edge.deliver(*peer, ForwardRequest::Departing, wait)
    });
    futures::future::join_all(told).await;
    raft_node
        .await_peer_requests(until.saturating_duration_since(Instant::now()))
        .await;
}

/// The partitions (user topics and consumer offsets) this node leads whose preferred
/// replica is another node it is in contact with.
fn misplaced_leaderships(edge: &Edge) -> Vec<(GroupId, NodeId)> {
    let broker = edge.broker();
    let raft_node = broker.raft_node();
    let me = broker.node_id();
    let metadata = broker.metadata();
    metadata
        .topics
        .values()
        .flat_map(|topic| topic.partitions.iter())
        .filter_map(|placement| {
            let preferred = *placement.replicas.first()?;
            // A moving partition's leadership is the move's business (`crate::mover`):
            // its preferred replica changes when the move is done.
            if metadata.moves.reassignments.contains_key(&placement.group) {
                return None;
            }
            if preferred == me || !raft_node.in_contact_with(preferred) {
                return None;
            }
            let raft = raft_node.group(placement.group)?;
            let leads = raft.metrics().borrow().current_leader == Some(me);
            leads.then_some((placement.group, preferred))
        })
        .collect()
}

/// Every `every`, moves the partitions this node leads back to their preferred replicas
/// when those are in contact and caught up, one group at a time (each move fences its
/// group for a round trip or two). Ends with `stop` (between two moves), which the node
/// cancels and waits for before it hands its leaderships over, so the two never move one
/// group at once.
pub async fn balance_leaders(edge: Arc<Edge>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (group, preferred) in misplaced_leaderships(&edge) {
            if stop.is_cancelled() || edge.broker().raft_node().is_stepping_down() {
                return;
            }
            // A move is never dropped half-way (a follower asked to stand ends this
            // leadership whatever happens here); a stopping node waits for it.
            let until = Instant::now() + BALANCE_MOVE_TIMEOUT;
            match hand_over(&edge, group, Some(preferred), until).await {
                HandOver::Moved { to } => {
                    info!(group, to, "leadership moved back to the preferred replica")
                }
                outcome => debug!(group, ?outcome, "preferred leader not restored yet"),
            }
        }
    }
}
