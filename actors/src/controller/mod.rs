//! The controller: proposes metadata changes to Raft group 0.
//!
//! Every node runs group 0 and reads the replicated [`ControllerState`] locally through a
//! watch; only writes come here. A plain service, not an actor: it holds no state of its
//! own (the state is group 0's), so each change is a call that checks this node leads,
//! validates, chooses replica sets and proposes with the write timeout as its deadline.

pub mod access;
pub mod membership;
pub mod reassignment;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use psubd_raft::types::typ::Raft;
use psubd_raft::{NodeId, RaftNode, CONTROLLER_GROUP};

use crate::clock::now_ms;
use crate::error::ControllerError;
use crate::proposal::{self, check_leader};
use crate::stable_hash::fnv1a;
use crate::topic::{is_internal, place_replicas, validate_name, TopicConfig, TopicMeta};
pub use membership::{Admission, Member, MAX_NODES};
pub use state::{
    ControllerCommand, ControllerLogic, ControllerResponse, ControllerState, NodeInfo, TopicUpdate,
};

/// How proposals name group 0 in their reasons.
const GROUP: &str = "controller";

/// This node's writer of group 0. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    /// Group 0's Raft handle.
    raft: Raft,
    /// The `--peers` ids: replica sets are drawn from group 0's voters
    /// ([`Controller::placement_nodes`]), these only while its membership is unknown.
    nodes: Vec<NodeId>,
    /// This node's Raft groups: which peers are connected right now.
    raft_node: RaftNode,
    /// How long a proposed change may take before it is answered "outcome unknown".
    write_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses changes.
    quorum_stale_after: Duration,
    /// Group 0's applied state: nodes decommissioning or decommissioned take no new
    /// replicas.
    metadata: watch::Receiver<Arc<ControllerState>>,
    /// Held by a membership change from start to end: openraft takes one at a time.
    membership_change: Arc<tokio::sync::Mutex<()>>,
}

impl Controller {
    /// The controller over group 0's `raft`.
    pub fn new(
        raft: Raft,
        nodes: Vec<NodeId>,
        raft_node: RaftNode,
        write_timeout: Duration,
        quorum_stale_after: Duration,
        metadata: watch::Receiver<Arc<ControllerState>>,
    ) -> Self {
        Self {
            raft,
            nodes,
            raft_node,
            write_timeout,
            quorum_stale_after,
            metadata,
            membership_change: Arc::default(),
        }
    }

    /// The nodes new replicas may go to: the cluster's nodes less those decommissioning
    /// or decommissioned.
    fn placeable_nodes(&self) -> Vec<NodeId> {
        let state = self.metadata.borrow().clone();
        self.placement_nodes()
            .into_iter()
            .filter(|n| !state.moves.is_retired(*n))
            .collect()
    }

    /// Creates a topic; answers its metadata. The name and settings are checked again
    /// here, as the request may come from a peer.
    ///
    /// # Errors
    /// `NotLeader` / `NoQuorum` (nothing written), `Invalid` for a bad name or setting
    /// (more replicas than nodes, say), `TopicExists`, `OutcomeUnknown`.
    pub async fn create_topic(
        &self,
        name: String,
        config: TopicConfig,
    ) -> Result<TopicMeta, ControllerError> {
        if is_internal(&name) {
            return Err(ControllerError::Invalid(
                "topic names starting with '__' are reserved".into(),
            ));
        }
        self.create(name, config).await
    }

    /// Creates one of psubd's own topics (`__consumer_offsets`), which no request may.
    ///
    /// # Errors
    /// As [`Controller::create_topic`].
    pub async fn create_internal_topic(
        &self,
        name: String,
        config: TopicConfig,
    ) -> Result<TopicMeta, ControllerError> {
        self.create(name, config).await
    }

    async fn create(
        &self,
        name: String,
        config: TopicConfig,
    ) -> Result<TopicMeta, ControllerError> {
        self.check_leader()?;
        validate_name("topic", &name).map_err(|e| ControllerError::Invalid(e.0))?;
        let nodes = self.placeable_nodes();
        config
            .check(nodes.len())
            .map_err(ControllerError::Invalid)?;
        // Rotate the first replica by the stable hash of the name so topics' leaders
        // spread.
        let offset = fnv1a(name.as_bytes());
        let candidates = live_first(&nodes, &self.raft_node, config.replication_factor);
        let replicas = place_replicas(
            &candidates,
            config.partitions,
            config.replication_factor,
            offset,
        );
        let command = ControllerCommand::CreateTopic {
            name,
            config,
            replicas,
            created_ms: now_ms(),
        };
        match self.propose(command).await? {
            ControllerResponse::Done(Some(meta)) => Ok(meta),
            ControllerResponse::TopicExists => Err(ControllerError::TopicExists),
            _ => Err(unexpected()),
        }
    }

    /// Deletes a topic.
    ///
    /// # Errors
    /// As [`Controller::create_topic`]; `TopicNotFound`.
    pub async fn delete_topic(&self, name: String) -> Result<(), ControllerError> {
        self.check_leader()?;
        if is_internal(&name) {
            return Err(ControllerError::Invalid(
                "internal topics cannot be deleted".into(),
            ));
        }
        match self
            .propose(ControllerCommand::DeleteTopic { name })
            .await?
        {
            ControllerResponse::Done(_) => Ok(()),
            ControllerResponse::TopicNotFound => Err(ControllerError::TopicNotFound),
            _ => Err(unexpected()),
        }
    }

    /// Changes a topic's mutable settings (checked again here, as the request may come
    /// from a peer); answers the topic's metadata after the change.
    ///
    /// # Errors
    /// As [`Controller::delete_topic`].
    pub async fn update_topic(
        &self,
        name: String,
        update: TopicUpdate,
    ) -> Result<TopicMeta, ControllerError> {
        self.check_leader()?;
        update.check().map_err(ControllerError::Invalid)?;
        match self
            .propose(ControllerCommand::UpdateTopic { name, update })
            .await?
        {
            ControllerResponse::Done(Some(meta)) => Ok(meta),
            ControllerResponse::TopicNotFound => Err(ControllerError::TopicNotFound),
            _ => Err(unexpected()),
        }
    }

    /// Sets a topic's duplicate window (checked again here, as the request may come from a
    /// peer); answers the topic's metadata.
    ///
    /// # Errors
    /// As [`Controller::update_topic`].
    pub async fn set_duplicate_window(
        &self,
        name: String,
        duplicate_window_ms: u64,
    ) -> Result<TopicMeta, ControllerError> {
        self.check_leader()?;
        if duplicate_window_ms > crate::topic::MAX_DUPLICATE_WINDOW_MS {
            return Err(ControllerError::Invalid(format!(
                "duplicate_window_ms must be at most {}",
                crate::topic::MAX_DUPLICATE_WINDOW_MS
            )));
        }
        match self
            .propose(ControllerCommand::SetDuplicateWindow {
                name,
                duplicate_window_ms,
            })
            .await?
        {
            ControllerResponse::Done(Some(meta)) => Ok(meta),
            ControllerResponse::TopicNotFound => Err(ControllerError::TopicNotFound),
            _ => Err(unexpected()),
        }
    }

    /// Raises a topic's partition count to `partitions` (checked again here, as the
    /// request may come from a peer: it must grow, within the settings' limits). The new
    /// partitions are placed as at creation, continuing the same rotation over the nodes;
    /// each replica's supervisor opens their groups. `current` is the topic as this node
    /// applied it. Answers the topic's metadata after the change.
    ///
    /// # Errors
    /// As [`Controller::delete_topic`]; `Invalid` when the count does not grow or is out of
    /// range, or another change of the count came first.
    pub async fn add_partitions(
        &self,
        name: String,
        partitions: u32,
        current: Option<TopicMeta>,
    ) -> Result<TopicMeta, ControllerError> {
        self.check_leader()?;
        if is_internal(&name) {
            return Err(ControllerError::Invalid(
                "internal topics cannot be changed".into(),
            ));
        }
        let meta = current.ok_or(ControllerError::TopicNotFound)?;
        let from = meta.partitions.len() as u32;
        if partitions <= from {
            return Err(ControllerError::Invalid(format!(
                "partitions can only grow: the topic has {from}"
            )));
        }
        let mut config = meta.config.clone();
        config.partitions = partitions;
        let nodes = self.placeable_nodes();
        config
            .check(nodes.len())
            .map_err(ControllerError::Invalid)?;
        let rf = config.replication_factor;
        let candidates = live_first(&nodes, &self.raft_node, rf);
        let placed = place_replicas(&candidates, partitions, rf, fnv1a(name.as_bytes()));
        let command = ControllerCommand::AddPartitions {
            name,
            from,
            replicas: placed[from as usize..].to_vec(),
        };
        match self.propose(command).await? {
            ControllerResponse::Done(Some(meta)) => Ok(meta),
            ControllerResponse::TopicNotFound => Err(ControllerError::TopicNotFound),
            ControllerResponse::PartitionsChanged => Err(ControllerError::Invalid(
                "the topic's partition count changed meanwhile; look at it again".into(),
            )),
            _ => Err(unexpected()),
        }
    }

    /// Changes the access model (validated by the caller).
    ///
    /// # Errors
    /// `NotLeader` / `NoQuorum` (nothing written), `OutcomeUnknown`; `Ok(Err(_))` when the
    /// change was refused against the replicated state (nothing changed).
    pub async fn change_access(
        &self,
        change: access::AccessChange,
    ) -> Result<Result<(), access::AccessRefusal>, ControllerError> {
        self.check_leader()?;
        match self.propose(ControllerCommand::Access(change)).await? {
            ControllerResponse::Access(outcome) => Ok(outcome),
            _ => Err(unexpected()),
        }
    }

    /// Records a node's HTTP address.
    ///
    /// # Errors
    /// `NotLeader` / `NoQuorum` (nothing written), `OutcomeUnknown`.
    pub async fn register_node(&self, info: NodeInfo) -> Result<(), ControllerError> {
        self.check_leader()?;
        self.propose(ControllerCommand::RegisterNode(info))
            .await
            .map(|_| ())
    }

    fn check_leader(&self) -> Result<(), ControllerError> {
        Ok(check_leader(
            &self.raft_node,
            CONTROLLER_GROUP,
            &self.raft,
            self.quorum_stale_after,
        )?)
    }

    async fn propose(
        &self,
        command: ControllerCommand,
    ) -> Result<ControllerResponse, ControllerError> {
        let command =
            state::encode_command(&command).map_err(|_| ControllerError::OutcomeUnknown {
                reason: "command did not encode".into(),
            })?;
        let target = proposal::Target {
            raft_node: &self.raft_node,
            group: CONTROLLER_GROUP,
            raft: &self.raft,
            name: GROUP,
        };
        let response = proposal::propose(target, command, self.write_timeout).await?;
        Ok(state::decode_response(&response))
    }
}

fn unexpected() -> ControllerError {
    ControllerError::OutcomeUnknown {
        reason: "unexpected controller response".into(),
    }
}

/// The nodes to place replicas on: the live ones (this node and every peer with a
/// connection up) when there are enough of them for the replication factor, else all —
/// a partition placed partly on a down node still has a majority and heals when it returns.
fn live_first(nodes: &[NodeId], raft_node: &RaftNode, replication_factor: u32) -> Vec<NodeId> {
    let connected = raft_node.connected_peers();
    let live: Vec<NodeId> = nodes
        .iter()
        .copied()
        .filter(|n| *n == raft_node.id() || connected.contains(n))
        .collect();
    if live.len() >= replication_factor as usize {
        live
    } else {
        nodes.to_vec()
    }
}
