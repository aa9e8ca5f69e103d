//! The group coordinators of this node: finding (or lazily starting) the coordinator of
//! a group, reading committed offsets from local offsets replicas, and the offsets
//! purge for deleted topics.
//!
//! A group's coordinator runs on the leader of its offsets partition
//! ([`offsets_partition_of`]). A request for a group whose offsets partition this node
//! does not lead is refused with [`GroupError::NotCoordinator`] and a leader hint, before
//! anything changes, so the edge can safely try the hinted node.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use psubd_raft::{GroupId, RaftNode};
use ractor::{Actor, ActorRef, ActorStatus};
use tokio::sync::{watch, Mutex};
use tracing::info;

use crate::assignment::TopicPartition;
use crate::controller::ControllerState;
use crate::coordinator::{
    CoordinatorActor, CoordinatorArgs, CoordinatorMsg, GroupAnswer, GroupRequest, GroupSummary,
};
use crate::error::GroupError;
use crate::locks::read_lock;
use crate::offsets::{
    offsets_partition_of, propose, CommittedOffset, OffsetsCommand, OffsetsHandle, OffsetsTable,
    OFFSETS_TOPIC,
};
use crate::partition::BatchLimits;
use crate::proposal::check_leader;
use crate::push::{PushBoard, PushConfig};
use crate::topic::PartitionPlacement;

/// Most coordinators one node runs at once; idle ones are stopped to make room.
pub const MAX_COORDINATORS: usize = 10_000;

/// How long a new coordinator may wait for its offsets replica to catch up with every
/// commit of earlier leaders before it serves.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3);

/// Extra time a call to a coordinator may take beyond the write timeout.
const CALL_GRACE: Duration = Duration::from_secs(2);

/// How often the offsets partition leaders look for offsets of deleted topics.
const PURGE_EVERY: Duration = Duration::from_secs(5);

struct Entry {
    actor: ActorRef<CoordinatorMsg>,
    term: u64,
    partition: u32,
    members: Arc<AtomicU32>,
}

struct Inner {
    metadata: watch::Receiver<Arc<ControllerState>>,
    offsets: OffsetsTable,
    limits: BatchLimits,
    /// This node's Raft groups (leadership fences).
    raft_node: RaftNode,
    /// Held across a coordinator's start, so one group never gets two.
    coordinators: Mutex<HashMap<String, Entry>>,
    /// The status of the pushers running on this node.
    push_board: PushBoard,
}

/// A push subscription whose offsets partition this node leads: its pusher runs here.
#[derive(Clone)]
pub struct LedPush {
    /// The group.
    pub group: String,
    /// Its settings.
    pub config: PushConfig,
    /// The offsets partition's Raft term: the pusher's epoch. A pusher of an older term
    /// stops.
    pub term: u64,
    /// The local replica of the group's offsets partition (committed offsets, commits).
    pub offsets: OffsetsHandle,
}

/// This node's group coordinators. Cheap to clone.
#[derive(Clone)]
pub struct GroupDirectory {
    inner: Arc<Inner>,
}

impl GroupDirectory {
    /// A directory over the local offsets replicas; starts the purge task.
    pub fn new(
        metadata: watch::Receiver<Arc<ControllerState>>,
        offsets: OffsetsTable,
        limits: BatchLimits,
        raft_node: RaftNode,
    ) -> Self {
        let inner = Arc::new(Inner {
            metadata,
            offsets,
            limits,
            raft_node,
            coordinators: Mutex::new(HashMap::new()),
            push_board: PushBoard::default(),
        });
        tokio::spawn(purge_deleted_topics(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// The placement of a group's offsets partition, once the offsets topic exists.
    pub fn offsets_placement(&self, group: &str) -> Option<PartitionPlacement> {
        self.inner
            .metadata
            .borrow()
            .partition(OFFSETS_TOPIC, offsets_partition_of(group))
            .cloned()
    }

    /// The status board of the pushers on this node.
    pub fn push_board(&self) -> &PushBoard {
        &self.inner.push_board
    }

    /// The push subscriptions of every offsets partition this node leads with a quorum:
    /// the pushers that should run here now.
    pub fn led_push_subscriptions(&self) -> Vec<LedPush> {
        let handles: Vec<OffsetsHandle> =
            read_lock(&self.inner.offsets).values().cloned().collect();
        let mut out = Vec::new();
        for handle in handles {
            if !handle.reader.is_ready() {
                continue;
            }
            let Ok(term) = self.check_leads(&handle) else {
                continue;
            };
            for (group, config) in handle.reader.push_subscriptions() {
                out.push(LedPush {
                    group,
                    config,
                    term,
                    offsets: handle.clone(),
                });
            }
        }
        out
    }

    /// The placement of offsets partition `partition`.
    pub fn offsets_partition(&self, partition: u32) -> Option<PartitionPlacement> {
        self.inner
            .metadata
            .borrow()
            .partition(OFFSETS_TOPIC, partition)
            .cloned()
    }

    fn local(&self, group: GroupId) -> Option<OffsetsHandle> {
        read_lock(&self.inner.offsets).get(&group).cloned()
    }

    /// The local replica of offsets partition `partition`, if this node holds one. A node
    /// that has not applied the offsets topic's creation yet (its metadata lags the node
    /// that sent the request) is "not the coordinator" like any other node without the
    /// replica: nothing changed, and the sender looks for the coordinator elsewhere.
    fn local_partition(&self, partition: u32) -> Result<OffsetsHandle, GroupError> {
        let placement = self
            .offsets_partition(partition)
            .ok_or(GroupError::NotCoordinator { leader: None })?;
        self.local(placement.group)
            .filter(|h| h.reader.is_ready())
            .ok_or(GroupError::NotCoordinator { leader: None })
    }

    /// Fails unless this node leads the offsets partition.
    fn check_leads(&self, handle: &OffsetsHandle) -> Result<u64, GroupError> {
        check_leader(
            &self.inner.raft_node,
            handle.group,
            &handle.raft,
            self.inner.limits.quorum_stale_after,
        )?;
        Ok(handle.raft.metrics().borrow().current_term)
    }

    /// The running coordinator of `group`, started if needed.
    async fn coordinator(&self, group: &str) -> Result<ActorRef<CoordinatorMsg>, GroupError> {
        let partition = offsets_partition_of(group);
        let handle = self.local_partition(partition)?;
        let term = self.check_leads(&handle)?;
        {
            let table = self.inner.coordinators.lock().await;
            if let Some(entry) = table.get(group) {
                if entry.term == term && is_alive(&entry.actor) {
                    return Ok(entry.actor.clone());
                }
            }
        }
        // A new coordinator must see every offset committed under earlier leaders: wait
        // until this replica has applied everything committed before this read.
        match tokio::time::timeout(CATCH_UP_TIMEOUT, handle.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(GroupError::NotCoordinator { leader: None }),
            Err(_) => return Err(GroupError::NoQuorum),
        }
        // ... and every commit its log holds, committed or not yet. openraft restores a
        // leader that restarts (a power loss of every node) in the same term, so a new
        // coordinator may share its epoch with the one before the restart; a commit that
        // one proposed may still sit uncommitted in this log and apply later with a
        // generation the new coordinator hands out again (it starts above the applied
        // fence). Applied first, that commit raises the fence the new coordinator starts
        // from, and its offset is in place before any member reads.
        let last_log = handle.raft.metrics().borrow().last_log_index;
        let mut metrics = handle.raft.metrics();
        let applied_all = metrics.wait_for(|m| {
            m.last_applied.map(|id| id.index) >= last_log
                || m.current_term != term
                || m.state != openraft::ServerState::Leader
        });
        match tokio::time::timeout(CATCH_UP_TIMEOUT, applied_all).await {
            Ok(Ok(m)) if m.current_term == term && m.state == openraft::ServerState::Leader => {}
            Ok(_) => return Err(GroupError::NotCoordinator { leader: None }),
            Err(_) => return Err(GroupError::NoQuorum),
        }
        let mut table = self.inner.coordinators.lock().await;
        if let Some(entry) = table.get(group) {
            if entry.term == term && is_alive(&entry.actor) {
                return Ok(entry.actor.clone());
            }
            entry
                .actor
                .stop(Some("offsets partition leadership changed".into()));
        }
        if table.len() >= MAX_COORDINATORS {
            table.retain(|_, e| is_alive(&e.actor) && e.members.load(Ordering::Relaxed) > 0);
            if table.len() >= MAX_COORDINATORS {
                return Err(GroupError::Unavailable {
                    reason: "this node coordinates too many groups".into(),
                });
            }
        }
        let members = Arc::new(AtomicU32::new(0));
        let (actor, _) = Actor::spawn(
            None,
            CoordinatorActor,
            CoordinatorArgs {
                group: group.to_string(),
                offsets: handle,
                metadata: self.inner.metadata.clone(),
                limits: self.inner.limits,
                term,
                member_count: members.clone(),
                raft_node: self.inner.raft_node.clone(),
                push_board: self.inner.push_board.clone(),
            },
        )
        .await
        .map_err(|e| GroupError::Unavailable {
            reason: format!("group coordinator failed to start: {e}"),
        })?;
        table.insert(
            group.to_string(),
            Entry {
                actor: actor.clone(),
                term,
                partition,
                members,
            },
        );
        Ok(actor)
    }

    /// Serves a request at the group's coordinator on this node.
    ///
    /// # Errors
    /// [`GroupError::NotCoordinator`] (with a hint) when this node does not lead the
    /// group's offsets partition; the coordinator's own refusals otherwise.
    pub async fn call(
        &self,
        group: &str,
        request: GroupRequest,
    ) -> Result<GroupAnswer, GroupError> {
        let wait = self.inner.limits.write_timeout + CALL_GRACE;
        // Twice at most: a coordinator that stopped between lookup and call is replaced.
        for _ in 0..2 {
            let actor = self.coordinator(group).await?;
            let request = request.clone();
            match actor
                .call(
                    |reply| CoordinatorMsg::Request { request, reply },
                    Some(wait),
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(answer)) => return answer,
                Ok(_) => {
                    return Err(GroupError::OutcomeUnknown {
                        reason: "the group coordinator did not answer in time".into(),
                    })
                }
                Err(_) => continue,
            }
        }
        Err(GroupError::Unavailable {
            reason: "the group coordinator stopped".into(),
        })
    }

    /// The committed offsets of a group: a linearizable read, served only by the leader of
    /// the group's offsets partition once it has confirmed its leadership with a quorum and
    /// applied everything committed before the read. A follower, or a leader cut off from
    /// its quorum, could answer an offset older than an acknowledged commit.
    ///
    /// # Errors
    /// [`GroupError::NotCoordinator`] (with a hint) when this node does not lead the
    /// partition; [`GroupError::NoQuorum`] when the leadership cannot be confirmed in time.
    pub async fn committed(
        &self,
        group: &str,
    ) -> Result<Vec<(TopicPartition, CommittedOffset)>, GroupError> {
        let handle = self.local_partition(offsets_partition_of(group))?;
        self.check_leads(&handle)?;
        match tokio::time::timeout(CATCH_UP_TIMEOUT, handle.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(handle.reader.committed(group)),
            Ok(Err(_)) => Err(GroupError::NotCoordinator { leader: None }),
            Err(_) => Err(GroupError::NoQuorum),
        }
    }

    /// The committed offsets of every group this node coordinates (it leads the group's
    /// offsets partition), as the local replica applied them, by group, topic and
    /// partition. For the node's metrics: not linearizable (a leader about to learn it was
    /// deposed may show an older offset for a moment), unlike [`GroupDirectory::committed`].
    pub fn coordinated_offsets(
        &self,
        me: psubd_raft::NodeId,
    ) -> Vec<(String, TopicPartition, CommittedOffset)> {
        let handles: Vec<OffsetsHandle> = read_lock(&self.inner.offsets)
            .values()
            .filter(|h| h.reader.is_ready() && h.raft.metrics().borrow().current_leader == Some(me))
            .cloned()
            .collect();
        let mut rows = Vec::new();
        for handle in handles {
            for group in handle.reader.groups() {
                for (partition, offset) in handle.reader.committed(&group) {
                    rows.push((group.clone(), partition, offset));
                }
            }
        }
        rows
    }

    /// The groups of offsets partition `partition`: those with committed offsets and
    /// those with members here. Served by the partition's leader, where the members are.
    ///
    /// # Errors
    /// [`GroupError::NotCoordinator`] when this node does not lead the partition.
    pub async fn list(&self, partition: u32) -> Result<Vec<GroupSummary>, GroupError> {
        let handle = self.local_partition(partition)?;
        self.check_leads(&handle)?;
        let mut groups: BTreeMap<String, u32> =
            handle.reader.groups().into_iter().map(|g| (g, 0)).collect();
        let table = self.inner.coordinators.lock().await;
        for (group, entry) in table.iter() {
            let members = entry.members.load(Ordering::Relaxed);
            if entry.partition == partition && is_alive(&entry.actor) && members > 0 {
                groups.insert(group.clone(), members);
            }
        }
        Ok(groups
            .into_iter()
            .map(|(group, members)| GroupSummary { group, members })
            .collect())
    }
}

fn is_alive(actor: &ActorRef<CoordinatorMsg>) -> bool {
    matches!(
        actor.get_status(),
        ActorStatus::Unstarted | ActorStatus::Starting | ActorStatus::Running
    )
}

/// On every offsets partition this node leads, drops the committed offsets of topic
/// partitions that no longer exist (see `offsets` module docs). Readers already ignore
/// them; this reclaims the space. Stops when the directory is dropped.
async fn purge_deleted_topics(inner: Weak<Inner>) {
    let mut interval = tokio::time::interval(PURGE_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let handles: Vec<OffsetsHandle> = read_lock(&inner.offsets).values().cloned().collect();
        let metadata = inner.metadata.borrow().clone();
        for handle in handles {
            if check_leader(
                &inner.raft_node,
                handle.group,
                &handle.raft,
                inner.limits.quorum_stale_after,
            )
            .is_err()
            {
                continue;
            }
            for (topic, groups) in handle.reader.topic_groups() {
                let live: Vec<GroupId> = metadata
                    .topics
                    .get(&topic)
                    .map(|t| t.partitions.iter().map(|p| p.group).collect())
                    .unwrap_or_default();
                // Only ids this node's metadata has handed out: a newer id belongs to a
                // topic this node has not heard of yet, not to a deleted one.
                let stale: Vec<GroupId> = groups
                    .into_iter()
                    .filter(|g| *g < metadata.next_group && !live.contains(g))
                    .collect();
                if stale.is_empty() {
                    continue;
                }
                let command = OffsetsCommand::PurgeTopic {
                    topic: topic.clone(),
                    topic_groups: stale,
                };
                match propose(
                    &inner.raft_node,
                    &handle,
                    &command,
                    inner.limits.write_timeout,
                )
                .await
                {
                    Ok(()) => info!(topic = %topic, "purged committed offsets of a deleted topic"),
                    Err(error) => info!(topic = %topic, %error, "offsets purge failed; will retry"),
                }
            }
        }
    }
}
