//! The node supervisor: runs this node's partition replicas as the controller says.
//!
//! It reconciles rather than reacting to individual events: whenever the replicated
//! controller state changes (and at start), it compares the partition groups this node
//! should hold with those it runs, opens the missing ones (Raft group + partition actor)
//! and closes and destroys the ones it no longer holds (the topic was deleted, or a replica
//! move left this node out: only once the move's new voters are committed, see
//! `controller::reassignment`). A partition actor that fails
//! is restarted on the same Raft handle.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use psubd_raft::{GroupId, NodeId, RaftNode};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::controller::ControllerState;
use crate::locks::{read_lock, write_lock};
use crate::offsets::{OffsetsHandle, OffsetsLogic, OffsetsTable, OFFSETS_TOPIC};
use crate::partition::{
    BatchLimits, MaintenanceArgs, PartitionActor, PartitionArgs, PartitionHandle, PartitionLogic,
    PartitionReader, MAX_QUEUED_REQUESTS,
};
use crate::topic::CleanupPolicy;

/// The local partition replicas, shared with the edge. Written only by the supervisor.
pub type PartitionTable = Arc<RwLock<HashMap<GroupId, PartitionHandle>>>;

/// Messages of [`NodeSupervisor`].
pub enum SupervisorMsg {
    /// The controller state changed: bring the local replicas in line.
    Reconcile,
}

/// Startup arguments of the supervisor.
pub struct SupervisorArgs {
    /// This node's Raft groups.
    pub raft_node: RaftNode,
    /// The replicated controller state.
    pub metadata: watch::Receiver<Arc<ControllerState>>,
    /// Where local replicas are published for the edge.
    pub partitions: PartitionTable,
    /// Where local replicas of the consumer offsets partitions are published: they run
    /// [`OffsetsLogic`] and no partition actor (their writes come from coordinators).
    pub offsets: OffsetsTable,
    /// Entry limits for partition actors.
    pub limits: BatchLimits,
    /// How long a non-preferred replica waits for the preferred one to form a new group
    /// before initialising it itself.
    pub init_fallback_after: Duration,
    /// Period of each partition actor's maintenance tick (retention).
    pub maintenance_interval: Duration,
}

/// State of the supervisor.
pub struct SupervisorState {
    args: SupervisorArgs,
}

/// The node supervisor actor. See the module docs.
pub struct NodeSupervisor;

/// One partition replica this node should hold.
struct WantedReplica {
    topic: String,
    partition: u32,
    replicas: Vec<NodeId>,
    /// True for the partitions of the consumer offsets topic.
    offsets: bool,
    /// The topic's cleanup policy (fixed at creation): compacted partitions keep a key
    /// index.
    cleanup_policy: CleanupPolicy,
    /// True when this node is a new replica of a move in progress
    /// (`controller::reassignment`): the group exists elsewhere and this replica joins it
    /// as a learner, so it must never initialise it (that would found a second, empty
    /// group under the same id).
    joining: bool,
}

/// The groups this node should hold: those whose placement names it, and those a move
/// in progress adds it to.
fn wanted(state: &ControllerState, me: NodeId) -> HashMap<GroupId, WantedReplica> {
    let mut wanted: HashMap<GroupId, WantedReplica> = state
        .topics
        .values()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .enumerate()
                .map(move |(i, placement)| (topic, i as u32, placement))
        })
        .filter(|(_, _, placement)| placement.replicas.contains(&me))
        .map(|(topic, partition, placement)| {
            (
                placement.group,
                WantedReplica {
                    topic: topic.name.clone(),
                    partition,
                    replicas: placement.replicas.clone(),
                    offsets: topic.name == OFFSETS_TOPIC,
                    cleanup_policy: topic.config.cleanup_policy,
                    joining: false,
                },
            )
        })
        .collect();
    for (group, reassignment) in &state.moves.reassignments {
        if !reassignment.added().contains(&me) || wanted.contains_key(group) {
            continue;
        }
        let Some(topic) = state.topics.get(&reassignment.topic) else {
            continue;
        };
        wanted.insert(
            *group,
            WantedReplica {
                topic: topic.name.clone(),
                partition: reassignment.partition,
                replicas: reassignment.to.clone(),
                offsets: topic.name == OFFSETS_TOPIC,
                cleanup_policy: topic.config.cleanup_policy,
                joining: true,
            },
        );
    }
    wanted
}

impl SupervisorState {
    fn local(&self) -> Vec<GroupId> {
        let mut groups: Vec<GroupId> = read_lock(&self.args.partitions).keys().copied().collect();
        groups.extend(read_lock(&self.args.offsets).keys());
        groups
    }

    fn publish_offsets(&self, group: GroupId, handle: Option<OffsetsHandle>) {
        let mut table = write_lock(&self.args.offsets);
        match handle {
            Some(handle) => table.insert(group, handle),
            None => table.remove(&group),
        };
    }

    fn publish(&self, group: GroupId, handle: Option<PartitionHandle>) {
        let mut table = write_lock(&self.args.partitions);
        match handle {
            Some(handle) => table.insert(group, handle),
            None => table.remove(&group),
        };
    }

    fn maintenance(&self, topic: &str, partition: u32, reader: PartitionReader) -> MaintenanceArgs {
        MaintenanceArgs {
            topic: topic.to_string(),
            partition,
            metadata: self.args.metadata.clone(),
            reader,
            interval: self.args.maintenance_interval,
        }
    }

    async fn open(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        group: GroupId,
        wanted: WantedReplica,
    ) -> Result<(), ActorProcessingErr> {
        let WantedReplica {
            topic,
            partition: number,
            replicas,
            offsets,
            cleanup_policy,
            joining,
        } = wanted;
        let offsets_partition = offsets.then_some(number);
        let me = self.args.raft_node.id();
        let (logic, reader) = PartitionLogic::with_policy(cleanup_policy);
        let (offsets_logic, offsets_reader) = OffsetsLogic::new();
        let logic: Box<dyn psubd_raft::GroupLogic> = match offsets_partition {
            Some(_) => Box::new(offsets_logic),
            None => Box::new(logic),
        };
        let members: BTreeSet<NodeId> = replicas.iter().copied().collect();
        // Only the preferred replica initialises, so it usually wins the first election
        // and leaders spread as placement intended. It does so once the other replicas
        // run the group (in a task: they open it as they apply the same metadata), so the
        // first election is not lost to a replica that has not opened it yet.
        let preferred = replicas.first() == Some(&me);
        let raft = self
            .args
            .raft_node
            .open_group(group, logic, members.clone(), false)
            .await?;
        if joining {
            debug!(group, "joining a partition group as a learner");
        } else if preferred {
            let raft_node = self.args.raft_node.clone();
            let raft = raft.clone();
            let members = members.clone();
            let wait = self.args.init_fallback_after / 2;
            tokio::spawn(async move {
                if let Err(error) = raft_node
                    .initialize_when_members_run(group, &raft, &members, wait)
                    .await
                {
                    warn!(group, %error, "initialising a new partition group failed");
                }
            });
        } else {
            let raft = raft.clone();
            let raft_node = self.args.raft_node.clone();
            let wait = self.args.init_fallback_after;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if raft.metrics().borrow().current_leader.is_none()
                    && !raft_node.is_stepping_down()
                    && !raft.is_initialized().await.unwrap_or(true)
                {
                    info!(
                        group,
                        "preferred replica silent; initialising the partition group"
                    );
                    let _ = raft.initialize(members).await;
                }
            });
        }
        if let Some(partition) = offsets_partition {
            self.publish_offsets(
                group,
                Some(OffsetsHandle {
                    partition,
                    group,
                    raft,
                    reader: offsets_reader,
                }),
            );
            info!(group, partition, "consumer offsets replica opened");
            return Ok(());
        }
        let (actor, _) = Actor::spawn_linked(
            None,
            PartitionActor,
            PartitionArgs {
                group,
                raft: raft.clone(),
                raft_node: self.args.raft_node.clone(),
                limits: self.args.limits,
                maintenance: self.maintenance(&topic, number, reader.clone()),
            },
            myself.get_cell(),
        )
        .await?;
        self.publish(
            group,
            Some(PartitionHandle {
                group,
                topic,
                partition: number,
                actor,
                reader,
                raft,
                admission: Arc::new(Semaphore::new(MAX_QUEUED_REQUESTS)),
            }),
        );
        info!(group, "partition replica opened");
        Ok(())
    }

    async fn close(&self, group: GroupId) {
        let handle = read_lock(&self.args.partitions).get(&group).cloned();
        self.publish(group, None);
        self.publish_offsets(group, None);
        if let Some(handle) = handle {
            handle
                .actor
                .stop(Some("replica no longer held here".into()));
        }
        if let Err(error) = self.args.raft_node.close_group(group, true).await {
            warn!(group, %error, "failed to close a partition's group no longer held here");
        }
        info!(group, "partition replica closed and destroyed");
    }

    async fn reconcile(&self, myself: &ActorRef<SupervisorMsg>) {
        let state = self.args.metadata.borrow().clone();
        let want = wanted(&state, self.args.raft_node.id());
        let have = self.local();
        for group in have.iter().filter(|g| !want.contains_key(g)) {
            self.close(*group).await;
        }
        for (group, replica) in want {
            if have.contains(&group) {
                continue;
            }
            if let Err(error) = self.open(myself, group, replica).await {
                warn!(group, %error, "failed to open a partition replica; will retry on the next change");
            }
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Turn controller state changes into Reconcile messages. Changes coalesce in the
        // watch, so this never queues more than one pending reconcile per change burst.
        let mut changes = args.metadata.clone();
        let target = myself.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if target.send_message(SupervisorMsg::Reconcile).is_err() {
                    break;
                }
            }
        });
        let _ = myself.send_message(SupervisorMsg::Reconcile);
        Ok(SupervisorState { args })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Reconcile => state.reconcile(&myself).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let failed = find_group(&state.args.partitions, &cell);
            warn!(group = ?failed, %error, "partition actor failed; restarting it");
            if let Some(group) = failed {
                let handle = read_lock(&state.args.partitions).get(&group).cloned();
                if let Some(handle) = handle {
                    let (actor, _) = Actor::spawn_linked(
                        None,
                        PartitionActor,
                        PartitionArgs {
                            group,
                            raft: handle.raft.clone(),
                            raft_node: state.args.raft_node.clone(),
                            limits: state.args.limits,
                            maintenance: state.maintenance(
                                &handle.topic,
                                handle.partition,
                                handle.reader.clone(),
                            ),
                        },
                        myself.get_cell(),
                    )
                    .await?;
                    state.publish(group, Some(PartitionHandle { actor, ..handle }));
                }
            }
        }
        Ok(())
    }
}

fn find_group(table: &PartitionTable, cell: &ActorCell) -> Option<GroupId> {
    let table = read_lock(table);
    table
        .iter()
        .find(|(_, handle)| handle.actor.get_id() == cell.get_id())
        .map(|(group, _)| *group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::reassignment::{MoveState, Reassignment};
    use crate::topic::{PartitionPlacement, TopicConfig, TopicMeta};

    /// A topic `t` with one partition (group 1000) on nodes 1, 2, 3, moving to 2, 3, 4.
    fn moving() -> ControllerState {
        let mut state = ControllerState::default();
        state.topics.insert(
            "t".into(),
            TopicMeta {
                name: "t".into(),
                config: TopicConfig {
                    partitions: 1,
                    replication_factor: 3,
                    retention_ms: -1,
                    retention_bytes: -1,
                    cleanup_policy: CleanupPolicy::Delete,
                    delete_retention_ms: 1,
                },
                partitions: vec![PartitionPlacement {
                    group: 1000,
                    replicas: vec![1, 2, 3],
                }],
                created_ms: 0,
            },
        );
        state.moves.reassignments.insert(
            1000,
            Reassignment {
                topic: "t".into(),
                partition: 0,
                from: vec![1, 2, 3],
                to: vec![2, 3, 4],
                state: MoveState::CatchingUp,
                started_ms: 0,
            },
        );
        state
    }

    #[test]
    fn a_moves_new_replica_joins_without_initialising_and_the_old_ones_stay_until_done() {
        let state = moving();
        // The new replica opens the group as a joiner: it must never initialise it.
        assert!(wanted(&state, 4)[&1000].joining);
        // The replicas of the placement keep theirs, the one leaving too, until the move
        // is done.
        for node in [1, 2, 3] {
            assert!(!wanted(&state, node)[&1000].joining, "node {node}");
        }
        assert!(wanted(&state, 5).is_empty());
        // Done: the placement is the target; the leaving node no longer holds the group.
        let mut done = state.clone();
        done.moves.reassignments.clear();
        done.topics.get_mut("t").unwrap().partitions[0].replicas = vec![2, 3, 4];
        assert!(wanted(&done, 1).is_empty());
        assert!(!wanted(&done, 4)[&1000].joining);
    }
}
