//! The broker: what the edge holds on to. It starts the controller group and the node
//! supervisor, and offers the local operations the edge (or a peer's forwarded request)
//! runs on this node. Routing between nodes is the edge's job, not the broker's.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use psubd_raft::types::typ::{Raft, RaftMetrics};
use psubd_raft::{GroupId, NodeId, RaftNode, CONTROLLER_GROUP};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::controller::access::{AccessChange, AccessRefusal};
use crate::controller::membership::MAX_NODE_URL_BYTES;
use crate::controller::{
    Admission, Controller, ControllerLogic, ControllerState, Member, NodeInfo, TopicUpdate,
};
use crate::error::{ControllerError, PartitionError};
use crate::group_directory::GroupDirectory;
use crate::locks::read_lock;
use crate::offsets::{OffsetsTable, OFFSETS_PARTITIONS, OFFSETS_REPLICATION, OFFSETS_TOPIC};
use crate::partition::guard::RequestGuard;
use crate::partition::{
    Appended, BatchLimits, DelayedRecords, PartitionHandle, PartitionMsg,
    DEFAULT_MAINTENANCE_INTERVAL,
};
use crate::proposal::{check_leader, leader_of, leader_status};
use crate::record::EncodedRecords;
use crate::supervisor::{NodeSupervisor, PartitionTable, SupervisorArgs, SupervisorMsg};
use crate::topic::{CleanupPolicy, TopicConfig, TopicMeta};

/// Startup errors of the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The controller group failed to open.
    #[error("controller group failed to open: {0}")]
    Controller(String),
    /// An actor failed to start.
    #[error("actor failed to start: {0}")]
    Spawn(String),
}

/// Settings of the broker.
#[derive(Clone, Copy, Debug)]
pub struct BrokerConfig {
    /// Partition entry limits and write timeouts.
    pub limits: BatchLimits,
    /// See [`SupervisorArgs::init_fallback_after`].
    pub init_fallback_after: Duration,
    /// See [`SupervisorArgs::maintenance_interval`].
    pub maintenance_interval: Duration,
    /// True for a node that joins a running cluster (`--join`): it never initialises the
    /// controller group, whatever its id; the cluster adds it.
    pub joins_existing_cluster: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            limits: BatchLimits::default(),
            init_fallback_after: Duration::from_secs(4),
            maintenance_interval: DEFAULT_MAINTENANCE_INTERVAL,
            joins_existing_cluster: false,
        }
    }
}

struct Inner {
    raft_node: RaftNode,
    controller_raft: Raft,
    controller: Controller,
    supervisor: ActorRef<SupervisorMsg>,
    metadata: watch::Receiver<Arc<ControllerState>>,
    partitions: PartitionTable,
    limits: BatchLimits,
    groups: GroupDirectory,
}

/// A node's broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// How long a call to a local actor may take beyond the write timeout before the caller
/// gives up on it (the actor itself answers at the write timeout).
const ACTOR_CALL_GRACE: Duration = Duration::from_secs(2);

impl Broker {
    /// Opens the controller group, bootstraps it if this node is the one to, and starts
    /// the controller and the supervisor actor.
    ///
    /// # Errors
    /// [`BrokerError`] when the controller group or an actor fails to start.
    pub async fn start(raft_node: RaftNode, config: BrokerConfig) -> Result<Self, BrokerError> {
        let (logic, metadata) = ControllerLogic::new();
        let members: BTreeSet<NodeId> = raft_node.peers().keys().copied().collect();
        let controller_raft = raft_node
            .open_group(CONTROLLER_GROUP, Box::new(logic), members.clone(), false)
            .await
            .map_err(|e| BrokerError::Controller(e.to_string()))?;
        if !config.joins_existing_cluster {
            tokio::spawn(bootstrap_controller(
                raft_node.clone(),
                controller_raft.clone(),
                members.clone(),
            ));
        }
        tokio::spawn(crate::controller::membership::learn_member_addresses(
            raft_node.clone(),
            metadata.clone(),
        ));
        let controller = Controller::new(
            controller_raft.clone(),
            members.iter().copied().collect(),
            raft_node.clone(),
            config.limits.write_timeout,
            config.limits.quorum_stale_after,
            metadata.clone(),
        );
        let partitions = PartitionTable::default();
        crate::partition::maintenance_clock::run(
            Arc::downgrade(&partitions),
            config.maintenance_interval,
        );
        let offsets = OffsetsTable::default();
        let (supervisor, _) = Actor::spawn(
            None,
            NodeSupervisor,
            SupervisorArgs {
                raft_node: raft_node.clone(),
                metadata: metadata.clone(),
                partitions: partitions.clone(),
                offsets: offsets.clone(),
                limits: config.limits,
                init_fallback_after: config.init_fallback_after,
                maintenance_interval: config.maintenance_interval,
            },
        )
        .await
        .map_err(|e| BrokerError::Spawn(e.to_string()))?;
        let groups =
            GroupDirectory::new(metadata.clone(), offsets, config.limits, raft_node.clone());
        let inner = Arc::new(Inner {
            raft_node,
            controller_raft,
            controller,
            supervisor,
            metadata,
            partitions,
            limits: config.limits,
            groups,
        });
        tokio::spawn(create_offsets_topic(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// This node's consumer-group coordinators and offsets replicas.
    pub fn groups(&self) -> &GroupDirectory {
        &self.inner.groups
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.raft_node.id()
    }

    /// This node's Raft groups and transport.
    pub fn raft_node(&self) -> &RaftNode {
        &self.inner.raft_node
    }

    /// The replicated metadata as this node has applied it.
    pub fn metadata(&self) -> Arc<ControllerState> {
        self.inner.metadata.borrow().clone()
    }

    /// A watch of the metadata (changes on every applied controller command).
    pub fn subscribe_metadata(&self) -> watch::Receiver<Arc<ControllerState>> {
        self.inner.metadata.clone()
    }

    /// The controller leader this node knows of.
    pub fn controller_leader(&self) -> Option<NodeId> {
        self.inner.controller_raft.metrics().borrow().current_leader
    }

    /// Ready: the controller has a leader that this node is in contact with (a leader
    /// must have heard from a quorum recently; a follower must be connected to the leader
    /// and have heard from it lately, since after a restart it remembers the last leader it
    /// knew whether or not it can reach it).
    pub fn is_ready(&self) -> bool {
        let metrics = self.inner.controller_raft.metrics().borrow().clone();
        match metrics.current_leader {
            _ if self.inner.raft_node.is_stepping_down() => false,
            Some(leader) if leader == metrics.id => check_leader(
                &self.inner.raft_node,
                CONTROLLER_GROUP,
                &self.inner.controller_raft,
                self.inner.limits.quorum_stale_after,
            )
            .is_ok(),
            Some(leader) => self.inner.raft_node.in_contact_with(leader),
            None => false,
        }
    }

    /// The local replica of a partition group, if this node holds one.
    pub fn partition(&self, group: GroupId) -> Option<PartitionHandle> {
        read_lock(&self.inner.partitions).get(&group).cloned()
    }

    /// True when this node leads the partition group *and* has heard from a quorum
    /// recently. A leader cut off from its followers keeps calling itself leader until it
    /// hears of a newer term; only this check makes its view of the log's end
    /// authoritative (e.g. to answer "offset beyond the end").
    pub fn leads_with_quorum(&self, group: GroupId) -> bool {
        self.partition(group).is_some_and(|h| {
            check_leader(
                &self.inner.raft_node,
                group,
                &h.raft,
                self.inner.limits.quorum_stale_after,
            )
            .is_ok()
        })
    }

    /// The leader of a partition group as this node sees it (only known on replicas).
    pub fn partition_leader(&self, group: GroupId) -> Option<NodeId> {
        self.partition(group).and_then(|h| leader_of(&h.raft))
    }

    /// Waits until this node's replica of `group` knows a leader that can take writes:
    /// another node it has heard from as leader, or itself once it leads with a fresh
    /// quorum. Waits for the replica to open first (a topic created an instant ago).
    /// `None` when `wait` passes first, or this node holds no such group.
    pub async fn await_leader(&self, group: GroupId, wait: Duration) -> Option<NodeId> {
        let until = tokio::time::Instant::now() + wait;
        let raft = self.inner.raft_node.await_group(group, wait).await?;
        let limits = self.inner.limits;
        let raft_node = &self.inner.raft_node;
        watch_for_leader(&raft, until, |metrics| match metrics.current_leader {
            Some(leader) if leader != metrics.id => Some(leader),
            // Not while handing the leadership over: the asker waits for the next leader.
            Some(me) => (leader_status(metrics, limits.quorum_stale_after).is_ok()
                && !raft_node.is_fenced(group))
            .then_some(me),
            None => None,
        })
        .await
    }

    /// Waits until this node knows a controller leader, up to `wait`.
    pub async fn await_controller_leader(&self, wait: Duration) -> Option<NodeId> {
        let until = tokio::time::Instant::now() + wait;
        watch_for_leader(&self.inner.controller_raft, until, |metrics| {
            metrics.current_leader
        })
        .await
    }

    /// Appends one request's records on this node's replica, which must lead.
    ///
    /// # Errors
    /// [`PartitionError`]; `NotLeader`, `NoQuorum`, `NoReplica` and `Unavailable` mean
    /// nothing was written.
    pub async fn append_local(
        &self,
        group: GroupId,
        records: EncodedRecords,
        guard: RequestGuard,
    ) -> Result<Appended, PartitionError> {
        self.call_partition(group, |reply| PartitionMsg::Append {
            records,
            guard,
            reply,
        })
        .await
    }

    /// Queues one request's delayed records on this node's replica, which must lead
    /// (docs/architecture.md § Delayed records).
    ///
    /// # Errors
    /// As [`Broker::append_local`]; `DelayQueueFull` when the partition's delay queue
    /// has no room (nothing was queued).
    pub async fn delay_local(
        &self,
        group: GroupId,
        records: DelayedRecords,
    ) -> Result<(), PartitionError> {
        self.call_partition(group, |reply| PartitionMsg::Delay { records, reply })
            .await
    }

    /// Asks this node's replica of `group` a write, within its admission bound and the
    /// write timeout.
    async fn call_partition<T: Send + 'static>(
        &self,
        group: GroupId,
        message: impl FnOnce(ractor::RpcReplyPort<Result<T, PartitionError>>) -> PartitionMsg,
    ) -> Result<T, PartitionError> {
        let handle = self.partition(group).ok_or(PartitionError::NoReplica)?;
        let wait = self.inner.limits.write_timeout;
        let _permit = tokio::time::timeout(wait, handle.admission.acquire())
            .await
            .map_err(|_| PartitionError::Unavailable {
                reason: "partition queue full".into(),
            })?
            .map_err(|_| PartitionError::Unavailable {
                reason: "partition closing".into(),
            })?;
        let call = handle.actor.call(message, Some(wait + ACTOR_CALL_GRACE));
        match call.await {
            Ok(ractor::rpc::CallResult::Success(answer)) => answer,
            // The message was delivered: the write may be in flight.
            Ok(_) => Err(PartitionError::OutcomeUnknown {
                reason: "partition actor did not answer in time".into(),
            }),
            Err(_) => Err(PartitionError::Unavailable {
                reason: "partition actor stopped".into(),
            }),
        }
    }

    /// Creates a topic through this node's controller, which must lead group 0.
    ///
    /// # Errors
    /// [`ControllerError`]; `NotLeader` and `NoQuorum` mean nothing was written.
    pub async fn create_topic(
        &self,
        name: String,
        config: TopicConfig,
    ) -> Result<TopicMeta, ControllerError> {
        self.inner.controller.create_topic(name, config).await
    }

    /// Deletes a topic through this node's controller.
    ///
    /// # Errors
    /// As [`Broker::create_topic`].
    pub async fn delete_topic(&self, name: String) -> Result<(), ControllerError> {
        self.inner.controller.delete_topic(name).await
    }

    /// Changes a topic's mutable settings through this node's controller.
    ///
    /// # Errors
    /// As [`Broker::create_topic`]; [`ControllerError::TopicNotFound`] for an unknown topic.
    pub async fn update_topic(
        &self,
        name: String,
        update: TopicUpdate,
    ) -> Result<TopicMeta, ControllerError> {
        self.inner.controller.update_topic(name, update).await
    }

    /// Sets a topic's duplicate window through this node's controller.
    ///
    /// # Errors
    /// As [`Broker::update_topic`].
    pub async fn set_duplicate_window(
        &self,
        name: String,
        duplicate_window_ms: u64,
    ) -> Result<TopicMeta, ControllerError> {
        self.inner
            .controller
            .set_duplicate_window(name, duplicate_window_ms)
            .await
    }

    /// Raises a topic's partition count through this node's controller.
    ///
    /// # Errors
    /// As [`Broker::update_topic`]; `Invalid` when the count would not grow.
    pub async fn add_partitions(
        &self,
        name: String,
        partitions: u32,
    ) -> Result<TopicMeta, ControllerError> {
        let current = self.metadata().topics.get(&name).cloned();
        self.inner
            .controller
            .add_partitions(name, partitions, current)
            .await
    }

    /// Changes the access model through this node's controller.
    ///
    /// # Errors
    /// As [`Broker::create_topic`]; `Ok(Err(_))` for a change the model refused.
    pub async fn change_access(
        &self,
        change: AccessChange,
    ) -> Result<Result<(), AccessRefusal>, ControllerError> {
        self.inner.controller.change_access(change).await
    }

    /// Records a node's HTTP address through this node's controller. Checked here too, as
    /// it may arrive from a peer: the id must be one of the cluster's nodes (no phantom
    /// node enters the metadata) and the address a short http(s) URL.
    ///
    /// # Errors
    /// [`ControllerError::Invalid`] for an unknown id or a malformed address; otherwise as
    /// [`Broker::create_topic`].
    pub async fn register_node(&self, info: NodeInfo) -> Result<(), ControllerError> {
        if !self.inner.raft_node.peers().contains_key(&info.id) {
            return Err(ControllerError::Invalid(format!(
                "node {} is not one of the cluster's nodes",
                info.id
            )));
        }
        let scheme_ok = info.http.starts_with("http://") || info.http.starts_with("https://");
        if !scheme_ok
            || info.http.len() > MAX_NODE_URL_BYTES
            || info.http.chars().any(char::is_control)
        {
            return Err(ControllerError::Invalid(format!(
                "a node's HTTP address must be an http(s) URL of at most {MAX_NODE_URL_BYTES} bytes"
            )));
        }
        self.inner.controller.register_node(info).await
    }

    /// This node's writer of the controller group (replica moves and decommissions are
    /// proposed through it: `controller::reassignment`).
    pub fn controller(&self) -> &Controller {
        &self.inner.controller
    }

    /// The controller group's Raft handle on this node (its membership changes when a
    /// node is decommissioned).
    pub fn controller_raft(&self) -> &Raft {
        &self.inner.controller_raft
    }

    /// Records a node's addresses and makes it a voter of the controller group, through
    /// this node's controller (see [`crate::controller::membership`]).
    ///
    /// # Errors
    /// As [`Controller::admit_node`](crate::controller::Controller::admit_node).
    pub async fn admit_node(
        &self,
        member: Member,
        admission: Admission,
    ) -> Result<(), ControllerError> {
        let state = self.metadata();
        self.inner
            .controller
            .admit_node(member, admission, &state)
            .await
    }

    /// The voters of the controller group as this node knows them: the cluster's members.
    pub fn controller_voters(&self) -> Vec<NodeId> {
        self.inner
            .controller_raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .collect()
    }

    /// Stops the actors and every Raft group, then flushes storage. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.supervisor.stop(Some("shutdown".into()));
        self.inner.raft_node.shutdown().await;
    }
}

/// Waits on a group's metrics until `leader` picks one from them, or `until` passes.
async fn watch_for_leader(
    raft: &Raft,
    until: tokio::time::Instant,
    leader: impl Fn(&RaftMetrics) -> Option<NodeId>,
) -> Option<NodeId> {
    let mut metrics = raft.metrics();
    let waited = metrics.wait_for(|now| leader(now).is_some());
    let now = tokio::time::timeout_at(until, waited).await.ok()?.ok()?;
    leader(&now)
}

/// Creates the consumer offsets topic once the cluster has a controller: while this node
/// leads the controller and the topic is missing, it proposes it (idempotent: a
/// concurrent creation answers `TopicExists`). Ends once the topic exists, or with the
/// broker.
async fn create_offsets_topic(inner: Weak<Inner>) {
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.metadata.borrow().topics.contains_key(OFFSETS_TOPIC) {
            return;
        }
        let me = inner.raft_node.id();
        if inner.controller_raft.metrics().borrow().current_leader != Some(me) {
            continue;
        }
        let broker = Broker { inner };
        let nodes = broker.raft_node().peers().len() as u32;
        let config = TopicConfig {
            partitions: OFFSETS_PARTITIONS,
            replication_factor: OFFSETS_REPLICATION.min(nodes.max(1)),
            retention_ms: -1,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::Compact,
            delete_retention_ms: crate::topic::DEFAULT_DELETE_RETENTION_MS,
        };
        match broker
            .inner
            .controller
            .create_internal_topic(OFFSETS_TOPIC.to_string(), config)
            .await
        {
            Ok(_) | Err(ControllerError::TopicExists) => {
                info!("consumer offsets topic created");
                return;
            }
            // Retried on the next tick (a controller election, or the node stopping):
            // nothing for an operator to do.
            Err(error) => debug!(%error, "creating the consumer offsets topic failed; retrying"),
        }
    }
}

/// Initialises the controller group exactly once per cluster: only the lowest node id
/// does it, only while its own group 0 is pristine, and only once every peer answered
/// that it holds no controller state (a wiped node must rejoin, not found a new cluster).
async fn bootstrap_controller(raft_node: RaftNode, raft: Raft, members: BTreeSet<NodeId>) {
    let me = raft_node.id();
    if members.first() != Some(&me) {
        return;
    }
    let probe_timeout = Duration::from_millis(500);
    let mut backoff = Duration::from_millis(100);
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => return,
        }
        let mut all_pristine = true;
        for peer in members.iter().copied().filter(|p| *p != me) {
            match raft_node
                .peer_has_group_state(peer, CONTROLLER_GROUP, probe_timeout)
                .await
            {
                Ok(true) => {
                    info!(
                        peer,
                        "a peer holds controller state; joining the existing cluster"
                    );
                    return;
                }
                Ok(false) => {}
                Err(_) => all_pristine = false,
            }
        }
        if all_pristine {
            match raft.initialize(members.clone()).await {
                Ok(()) => info!("controller group initialised"),
                Err(error) => warn!(%error, "controller initialisation refused"),
            }
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
