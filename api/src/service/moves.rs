//! Replica moves and decommissions (admin only): start moving a partition's replicas,
//! list the moves in progress, start decommissioning a node. The controller records them
//! (`psubd_actors::controller::reassignment`); the partitions' leaders and the controller
//! leader carry them out (`crate::mover`).

use psubd_actors::clock::now_ms;
use psubd_actors::controller::access::{Operation, ResourceType, CLUSTER};
use psubd_actors::controller::reassignment::{
    self, MoveRefusal, MoveState, NodeState, Reassignment,
};
use psubd_actors::controller::ControllerState;
use psubd_raft::NodeId;

use super::access::{audit, require_admin};
use super::{Caller, Result, Service};
use crate::error::ApiError;
use crate::protocol::{ForwardRequest, ForwardResponse, MoveOp};

/// A refusal as the API answers it: 404 for what does not exist, 400 for a bad request,
/// 409 for a conflict with the cluster's state.
fn refusal_error(refusal: MoveRefusal, topic: &str) -> ApiError {
    match refusal {
        MoveRefusal::TopicNotFound => ApiError::TopicNotFound {
            topic: topic.into(),
        },
        MoveRefusal::PartitionNotFound { partition } => ApiError::PartitionNotFound {
            topic: topic.into(),
            partition: u64::from(partition),
        },
        MoveRefusal::Invalid(message) => ApiError::InvalidRequest { message },
        MoveRefusal::Conflict(message) => ApiError::MoveConflict { message },
    }
}

impl Service {
    /// Starts moving `topic`'s `partition` to `replicas`; answers the move as recorded,
    /// once this node applied it. Checked here against this node's metadata (precise
    /// errors, nothing sent), then again by the controller, whose answer is final.
    ///
    /// # Errors
    /// 403 for a non-admin; 404 for an unknown topic or partition; 400 for replicas that
    /// are not distinct known nodes, exactly the replication factor of them, or the
    /// current ones; 409 when a move of the partition is in progress, too many moves are,
    /// or a target node is decommissioning; 503 / 504 from the controller.
    pub async fn move_replicas(
        &self,
        caller: &Caller,
        topic: &str,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<Reassignment> {
        let resource = format!("partition {partition} of topic '{topic}'");
        require_admin(caller, "move_replicas", &resource)?;
        let metadata = self.edge.broker().metadata();
        let group = reassignment::check_move(&metadata, topic, partition, &replicas)
            .map_err(|refusal| refusal_error(refusal, topic))?;
        let request = ForwardRequest::Moves(MoveOp::Start {
            topic: topic.to_string(),
            partition,
            replicas: replicas.clone(),
        });
        let outcome = self.move_write(request, topic).await;
        audit(
            caller,
            "move_replicas",
            &resource,
            outcome.as_ref().map_or_else(|e| e.code(), |()| "ok"),
        );
        outcome?;
        // Read-your-writes: the client's next request here sees the move (or its end).
        self.await_metadata(|m| {
            let recorded = m.moves.reassignments.contains_key(&group)
                || m.partition(topic, partition).map(|p| &p.replicas) == Some(&replicas);
            recorded.then_some(())
        })
        .await;
        Ok(Reassignment {
            topic: topic.to_string(),
            partition,
            from: metadata
                .partition(topic, partition)
                .map(|p| p.replicas.clone())
                .unwrap_or_default(),
            to: replicas,
            state: MoveState::CatchingUp,
            started_ms: now_ms(),
        })
    }

    /// The moves in progress, as this node applied them: `describe` on the cluster.
    ///
    /// # Errors
    /// 403 without `describe` on the cluster.
    pub fn reassignments(&self, caller: &Caller) -> Result<Vec<Reassignment>> {
        self.authorize(caller, ResourceType::Cluster, CLUSTER, Operation::Describe)?;
        let metadata = self.edge.broker().metadata();
        let mut moves: Vec<Reassignment> = metadata.moves.reassignments.values().cloned().collect();
        moves.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(moves)
    }

    /// Starts decommissioning `node`: its replicas move to the other active nodes, then it
    /// leaves the controller group. Answers the node's state once this node applied the
    /// change (`decommissioning` if it has not within the write timeout: the change is
    /// committed all the same).
    ///
    /// # Errors
    /// 403 for a non-admin; 400 for an unknown node; 409 when it is already leaving or the
    /// other active nodes cannot hold some topic's replication factor; 503 / 504.
    pub async fn decommission(&self, caller: &Caller, node: NodeId) -> Result<NodeState> {
        let resource = format!("node {node}");
        require_admin(caller, "decommission", &resource)?;
        let metadata = self.edge.broker().metadata();
        reassignment::check_decommission(&metadata, node)
            .map_err(|refusal| refusal_error(refusal, ""))?;
        let outcome = self
            .move_write(ForwardRequest::Moves(MoveOp::Decommission { node }), "")
            .await;
        audit(
            caller,
            "decommission",
            &resource,
            outcome.as_ref().map_or_else(|e| e.code(), |()| "ok"),
        );
        outcome?;
        let state = self
            .await_metadata(|m| m.moves.is_retired(node).then(|| m.moves.node_state(node)))
            .await;
        Ok(state.unwrap_or(NodeState::Decommissioning))
    }

    /// Sends a move's controller write to the controller leader.
    async fn move_write(&self, request: ForwardRequest, topic: &str) -> Result<()> {
        match self.edge.controller(request, topic).await {
            Ok(ForwardResponse::Done) => Ok(()),
            // The controller's own check refused (the state changed since this node's).
            Err(ApiError::InvalidConfig { message }) => Err(ApiError::InvalidRequest { message }),
            Err(error) => Err(error),
            Ok(other) => Err(ApiError::Internal {
                detail: format!("a move's controller write answered {other:?}"),
            }),
        }
    }

    /// The first value `found` finds in this node's metadata, waiting for it to apply
    /// what the controller committed, up to the write timeout.
    async fn await_metadata<T>(
        &self,
        mut found: impl FnMut(&ControllerState) -> Option<T>,
    ) -> Option<T> {
        let mut metadata = self.edge.broker().subscribe_metadata();
        let mut value = None;
        let wait = metadata.wait_for(|m| {
            value = found(m);
            value.is_some()
        });
        let _ = tokio::time::timeout(self.edge.write_timeout(), wait).await;
        value
    }
}
