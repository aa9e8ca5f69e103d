//! The controller's replicated state (Raft group 0): cluster nodes, topics and the
//! access model (principals, keys, ACLs, quotas).
//!
//! The whole state is small, so it is stored as one value and published to readers as an
//! immutable `Arc` snapshot after every applied batch: the edge reads metadata without
//! locks or messages, and the supervisor reconciles partition groups from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use psubd_raft::{
    Command, CommandResponse, GroupId, GroupLogic, NodeId, SnapshotPlan, StorageIoError, Tree,
    WriteBatch,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use super::access::{AccessChange, AccessRefusal, AccessState};
use super::reassignment::{self, MoveRefusal, MoveState, Moves};
use crate::topic::{PartitionPlacement, TopicConfig, TopicMeta, DEFAULT_DUPLICATE_WINDOW_MS};

const STATE_KEY: &[u8] = b"state";

/// The access model is stored under its own key: postcard has no optional trailing
/// fields, so adding it to the value under [`STATE_KEY`] would make every state and
/// snapshot written before it undecodable. Absent (an older snapshot), it is empty.
const ACCESS_KEY: &[u8] = b"access";

/// Each topic's duplicate window, under its own key for the same reason as
/// [`ACCESS_KEY`]. Absent (an older state), every topic has the default window.
const DUPLICATE_WINDOWS_KEY: &[u8] = b"duplicate_windows";

/// The moves in progress and the nodes' states, under their own key for the same reason
/// as [`ACCESS_KEY`]. Absent (an older state), no move runs and every node is active.
const MOVES_KEY: &[u8] = b"moves";

/// First group id handed to a partition; lower ids are reserved.
pub const FIRST_PARTITION_GROUP: GroupId = 1000;

/// A node as registered with the controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Base URL of its HTTP edge, e.g. `http://127.0.0.1:8081`.
    pub http: String,
}

/// Everything group 0 replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerState {
    /// Nodes that registered their HTTP address.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Next partition group id. Invariant: greater than every group id ever handed out,
    /// so a deleted topic's groups are never confused with a new one's.
    pub next_group: GroupId,
    /// Principals, keys, ACLs and quotas (stored under [`ACCESS_KEY`], not in this
    /// value's encoding).
    #[serde(skip)]
    pub access: AccessState,
    /// `duplicate_window_ms` of the topics that set one (stored under
    /// [`DUPLICATE_WINDOWS_KEY`], not in this value's encoding); see
    /// [`ControllerState::duplicate_window_ms`].
    #[serde(skip)]
    pub duplicate_windows: BTreeMap<String, u64>,
    /// Replica moves in progress and nodes leaving (stored under [`MOVES_KEY`], not in
    /// this value's encoding).
    #[serde(skip)]
    pub moves: Moves,
}

impl ControllerState {
    /// The placement of one partition, if the topic and partition exist.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionPlacement> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    /// How long `topic`'s partitions remember record ids (0: no deduplication).
    pub fn duplicate_window_ms(&self, topic: &str) -> u64 {
        self.duplicate_windows
            .get(topic)
            .copied()
            .unwrap_or(DEFAULT_DUPLICATE_WINDOW_MS)
    }
}

/// A change to the controller state, proposed through Raft.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControllerCommand {
    /// Records a node's HTTP address (sent by every node at boot).
    RegisterNode(NodeInfo),
    /// Creates a topic with replica sets chosen by the proposer; group ids are assigned
    /// at apply, so they follow log order.
    CreateTopic {
        /// Topic name (validated by the proposer).
        name: String,
        /// Its configuration.
        config: TopicConfig,
        /// Replica set per partition.
        replicas: Vec<Vec<NodeId>>,
        /// Creation time (proposer's clock).
        created_ms: i64,
    },
    /// Deletes a topic; its partition groups are closed and destroyed on every replica.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Changes a topic's mutable settings; partition leaders read them from the published
    /// state at their next maintenance tick.
    UpdateTopic {
        /// Topic name.
        name: String,
        /// The settings to change (validated by the proposer).
        update: TopicUpdate,
    },
    /// Changes the access model.
    Access(AccessChange),
    /// Adds partitions to a topic that has `from` of them (refused at apply otherwise, so
    /// two concurrent increases cannot both place the same partitions); group ids are
    /// assigned at apply, as at creation.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The partition count the proposer saw.
        from: u32,
        /// Replica set of each new partition, in partition order.
        replicas: Vec<Vec<NodeId>>,
    },
    /// Sets a topic's `duplicate_window_ms` (checked by the proposer); partition leaders
    /// stamp it into the guarded entries they build from then on.
    SetDuplicateWindow {
        /// Topic name.
        name: String,
        /// The window, ms (0: no deduplication).
        duplicate_window_ms: u64,
    },
    /// Starts moving a partition's replicas to `replicas` (checked at apply:
    /// `reassignment::check_move`); the placement changes only at [`Self::FinishMove`].
    StartMove {
        /// Topic name.
        topic: String,
        /// The partition.
        partition: u32,
        /// The target replica set; the first is the preferred leader.
        replicas: Vec<NodeId>,
        /// When the move started (proposer's clock).
        started_ms: i64,
    },
    /// Records how far a move got (sent by the partition's leader, which drives it).
    MoveProgress {
        /// The partition's group.
        group: GroupId,
        /// The step reached.
        state: MoveState,
    },
    /// Ends a move: the partition group's voters are `replicas`, committed; the
    /// placement becomes `replicas` and the nodes left out delete their replica.
    FinishMove {
        /// The partition's group.
        group: GroupId,
        /// The move's target (refused unless it is the recorded one).
        replicas: Vec<NodeId>,
    },
    /// Starts decommissioning a node: it takes no new replicas and the controller leader
    /// moves its replicas away (checked at apply: `reassignment::check_decommission`).
    Decommission {
        /// The node.
        node: NodeId,
    },
    /// Ends a decommission: the node holds no replica and left group 0's voters.
    Decommissioned {
        /// The node.
        node: NodeId,
    },
}

/// The mutable settings of a topic (`PATCH /v1/topics/{t}`); `None` leaves one unchanged.
/// Partitions, replication factor and cleanup policy are fixed at creation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicUpdate {
    /// New age limit, ms (-1: forever).
    pub retention_ms: Option<i64>,
    /// New size limit per partition, bytes (-1: unbounded).
    pub retention_bytes: Option<i64>,
}

impl TopicUpdate {
    /// Checks the new settings (see [`TopicConfig::check`]).
    ///
    /// # Errors
    /// The rule broken, as a message for the user.
    pub fn check(&self) -> Result<(), String> {
        if self == &TopicUpdate::default() {
            return Err("nothing to change".into());
        }
        if let Some(retention_ms) = self.retention_ms {
            crate::topic::check_retention_ms(retention_ms)?;
        }
        if let Some(retention_bytes) = self.retention_bytes {
            crate::topic::check_retention_bytes(retention_bytes)?;
        }
        Ok(())
    }

    /// Applies the update to a configuration.
    pub fn apply_to(&self, config: &mut TopicConfig) {
        if let Some(retention_ms) = self.retention_ms {
            config.retention_ms = retention_ms;
        }
        if let Some(retention_bytes) = self.retention_bytes {
            config.retention_bytes = retention_bytes;
        }
    }
}

/// The controller's answer to a command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControllerResponse {
    /// Done; for a created topic, its metadata.
    Done(Option<TopicMeta>),
    /// The topic already exists.
    TopicExists,
    /// The topic does not exist.
    TopicNotFound,
    /// The command did not decode (a version mismatch between nodes).
    Invalid,
    /// The answer to an access change: done, or why not.
    Access(Result<(), AccessRefusal>),
    /// The topic's partition count was not the one the change was placed for.
    PartitionsChanged,
    /// The answer to a move or decommission command: done, or why not.
    Moves(Result<(), MoveRefusal>),
}

/// Encodes a command for Raft.
///
/// # Errors
/// Only if postcard fails, which for these types means out of memory.
pub fn encode_command(command: &ControllerCommand) -> Result<Command, postcard::Error> {
    Ok(Command(Bytes::from(postcard::to_stdvec(command)?)))
}

/// Decodes the response to a command.
pub fn decode_response(response: &CommandResponse) -> ControllerResponse {
    postcard::from_bytes(&response.0).unwrap_or(ControllerResponse::Invalid)
}

/// Group 0's state machine logic.
pub struct ControllerLogic {
    state: ControllerState,
    published: watch::Sender<Arc<ControllerState>>,
}

impl ControllerLogic {
    /// A logic and a watch of its published state.
    pub fn new() -> (Self, watch::Receiver<Arc<ControllerState>>) {
        let initial = ControllerState {
            next_group: FIRST_PARTITION_GROUP,
            ..ControllerState::default()
        };
        let (published, receiver) = watch::channel(Arc::new(initial.clone()));
        (
            Self {
                state: initial,
                published,
            },
            receiver,
        )
    }

    fn execute(&mut self, command: ControllerCommand) -> ControllerResponse {
        match command {
            ControllerCommand::RegisterNode(info) => {
                self.state.nodes.insert(info.id, info);
                ControllerResponse::Done(None)
            }
            ControllerCommand::CreateTopic {
                name,
                config,
                replicas,
                created_ms,
            } => {
                if self.state.topics.contains_key(&name) {
                    return ControllerResponse::TopicExists;
                }
                let partitions = replicas
                    .into_iter()
                    .map(|replicas| {
                        let group = self.state.next_group;
                        self.state.next_group += 1;
                        PartitionPlacement { group, replicas }
                    })
                    .collect();
                let meta = TopicMeta {
                    name: name.clone(),
                    config,
                    partitions,
                    created_ms,
                };
                // A re-created topic starts with the default window.
                self.state.duplicate_windows.remove(&name);
                self.state.topics.insert(name, meta.clone());
                ControllerResponse::Done(Some(meta))
            }
            ControllerCommand::DeleteTopic { name } => match self.state.topics.remove(&name) {
                Some(_) => {
                    self.state.duplicate_windows.remove(&name);
                    reassignment::forget_topic(&mut self.state, &name);
                    ControllerResponse::Done(None)
                }
                None => ControllerResponse::TopicNotFound,
            },
            ControllerCommand::SetDuplicateWindow {
                name,
                duplicate_window_ms,
            } => match self.state.topics.get(&name) {
                Some(meta) => {
                    let meta = meta.clone();
                    self.state
                        .duplicate_windows
                        .insert(name, duplicate_window_ms);
                    ControllerResponse::Done(Some(meta))
                }
                None => ControllerResponse::TopicNotFound,
            },
            ControllerCommand::UpdateTopic { name, update } => {
                match self.state.topics.get_mut(&name) {
                    Some(meta) => {
                        update.apply_to(&mut meta.config);
                        ControllerResponse::Done(Some(meta.clone()))
                    }
                    None => ControllerResponse::TopicNotFound,
                }
            }
            ControllerCommand::Access(change) => {
                ControllerResponse::Access(self.state.access.apply(change))
            }
            ControllerCommand::AddPartitions {
                name,
                from,
                replicas,
            } => match self.state.topics.get_mut(&name) {
                Some(meta) if meta.partitions.len() == from as usize => {
                    for replicas in replicas {
                        let group = self.state.next_group;
                        self.state.next_group += 1;
                        meta.partitions.push(PartitionPlacement { group, replicas });
                    }
                    meta.config.partitions = meta.partitions.len() as u32;
                    ControllerResponse::Done(Some(meta.clone()))
                }
                Some(_) => ControllerResponse::PartitionsChanged,
                None => ControllerResponse::TopicNotFound,
            },
            command @ (ControllerCommand::StartMove { .. }
            | ControllerCommand::MoveProgress { .. }
            | ControllerCommand::FinishMove { .. }
            | ControllerCommand::Decommission { .. }
            | ControllerCommand::Decommissioned { .. }) => {
                reassignment::execute(&mut self.state, command)
            }
        }
    }
}

fn encode_state(state: &ControllerState) -> Result<Vec<u8>, StorageIoError> {
    postcard::to_stdvec(state).map_err(|e| StorageIoError::Codec {
        what: "controller state",
        source: e,
    })
}

fn encode_windows(windows: &BTreeMap<String, u64>) -> Result<Vec<u8>, StorageIoError> {
    postcard::to_stdvec(windows).map_err(|e| StorageIoError::Codec {
        what: "duplicate windows",
        source: e,
    })
}

fn encode_moves(moves: &Moves) -> Result<Vec<u8>, StorageIoError> {
    postcard::to_stdvec(moves).map_err(|e| StorageIoError::Codec {
        what: "moves",
        source: e,
    })
}

fn encode_access(access: &AccessState) -> Result<Vec<u8>, StorageIoError> {
    postcard::to_stdvec(access).map_err(|e| StorageIoError::Codec {
        what: "access state",
        source: e,
    })
}

impl GroupLogic for ControllerLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        if let Some(raw) = state.get(STATE_KEY)? {
            self.state = postcard::from_bytes(&raw).map_err(|e| StorageIoError::Codec {
                what: "controller state",
                source: e,
            })?;
        }
        self.state.access = match state.get(ACCESS_KEY)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(|e| StorageIoError::Codec {
                what: "access state",
                source: e,
            })?,
            None => AccessState::default(),
        };
        self.state.duplicate_windows = match state.get(DUPLICATE_WINDOWS_KEY)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(|e| StorageIoError::Codec {
                what: "duplicate windows",
                source: e,
            })?,
            None => BTreeMap::new(),
        };
        self.state.moves = match state.get(MOVES_KEY)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(|e| StorageIoError::Codec {
                what: "moves",
                source: e,
            })?,
            None => Moves::default(),
        };
        self.published.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }

    fn apply(
        &mut self,
        _index: u64,
        command: &Command,
        _state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        let response = match postcard::from_bytes::<ControllerCommand>(&command.0) {
            Ok(command) => {
                // The access model is rewritten only when it may have changed: it can be
                // far larger than the rest of the state.
                if matches!(command, ControllerCommand::Access(_)) {
                    let response = self.execute(command);
                    batch.insert(ACCESS_KEY, encode_access(&self.state.access)?);
                    response
                } else {
                    let moves_change = matches!(
                        command,
                        ControllerCommand::StartMove { .. }
                            | ControllerCommand::MoveProgress { .. }
                            | ControllerCommand::FinishMove { .. }
                            | ControllerCommand::Decommission { .. }
                            | ControllerCommand::Decommissioned { .. }
                            | ControllerCommand::DeleteTopic { .. }
                    );
                    let windows_change = matches!(
                        command,
                        ControllerCommand::SetDuplicateWindow { .. }
                            | ControllerCommand::CreateTopic { .. }
                            | ControllerCommand::DeleteTopic { .. }
                    );
                    let response = self.execute(command);
                    if windows_change {
                        batch.insert(
                            DUPLICATE_WINDOWS_KEY,
                            encode_windows(&self.state.duplicate_windows)?,
                        );
                    }
                    if moves_change {
                        batch.insert(MOVES_KEY, encode_moves(&self.state.moves)?);
                    }
                    response
                }
            }
            Err(error) => {
                warn!(%error, "skipping undecodable controller command");
                ControllerResponse::Invalid
            }
        };
        batch.insert(STATE_KEY, encode_state(&self.state)?);
        let encoded = postcard::to_stdvec(&response).map_err(|e| StorageIoError::Codec {
            what: "controller response",
            source: e,
        })?;
        Ok(CommandResponse(Bytes::from(encoded)))
    }

    fn applied(&mut self) {
        self.published.send_if_modified(|current| {
            if **current == self.state {
                return false;
            }
            *current = Arc::new(self.state.clone());
            true
        });
    }

    fn snapshot_plan(&self, _state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        Ok(SnapshotPlan {
            pinned: vec![
                (STATE_KEY.to_vec(), encode_state(&self.state)?),
                (ACCESS_KEY.to_vec(), encode_access(&self.state.access)?),
                (
                    DUPLICATE_WINDOWS_KEY.to_vec(),
                    encode_windows(&self.state.duplicate_windows)?,
                ),
                (MOVES_KEY.to_vec(), encode_moves(&self.state.moves)?),
            ],
            lazy: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::CleanupPolicy;

    /// A controller holding topic `t`: `partitions` partitions on node 1, 1 s retention.
    fn with_topic(partitions: u32) -> ControllerLogic {
        let (mut logic, _) = ControllerLogic::new();
        let config = TopicConfig {
            partitions,
            replication_factor: 1,
            retention_ms: 1_000,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 1,
        };
        logic.execute(ControllerCommand::CreateTopic {
            name: "t".into(),
            config,
            replicas: vec![vec![1]; partitions as usize],
            created_ms: 0,
        });
        logic
    }

    #[test]
    fn update_topic_changes_only_the_given_settings() {
        let mut logic = with_topic(2);
        let update = TopicUpdate {
            retention_ms: None,
            retention_bytes: Some(4_096),
        };
        let ControllerResponse::Done(Some(meta)) = logic.execute(ControllerCommand::UpdateTopic {
            name: "t".into(),
            update: update.clone(),
        }) else {
            panic!("update refused");
        };
        assert_eq!(meta.config.retention_bytes, 4_096);
        assert_eq!(meta.config.retention_ms, 1_000);
        assert_eq!(meta.partitions.len(), 2);
        assert!(matches!(
            logic.execute(ControllerCommand::UpdateTopic {
                name: "missing".into(),
                update,
            }),
            ControllerResponse::TopicNotFound
        ));
    }

    #[test]
    fn partitions_are_added_with_fresh_groups_only_to_the_count_they_were_placed_for() {
        let mut logic = with_topic(1);
        let add = |from| ControllerCommand::AddPartitions {
            name: "t".into(),
            from,
            replicas: vec![vec![2], vec![3]],
        };
        let ControllerResponse::Done(Some(meta)) = logic.execute(add(1)) else {
            panic!("the increase was refused");
        };
        assert_eq!(meta.config.partitions, 3);
        let groups: Vec<GroupId> = meta.partitions.iter().map(|p| p.group).collect();
        assert_eq!(groups, vec![1000, 1001, 1002]);
        assert_eq!(meta.partitions[2].replicas, vec![3]);
        // Placed for one partition, the topic now has three: refused, nothing changes.
        assert!(matches!(
            logic.execute(add(1)),
            ControllerResponse::PartitionsChanged
        ));
        assert_eq!(logic.state.topics["t"].partitions.len(), 3);
    }

    #[test]
    fn the_access_model_leaves_the_stored_state_format_unchanged() {
        let (mut logic, _) = ControllerLogic::new();
        let before = encode_state(&logic.state).unwrap();
        let ControllerResponse::Access(Ok(())) =
            logic.execute(ControllerCommand::Access(AccessChange::AddPrincipal {
                name: "app".into(),
                created_ms: 0,
            }))
        else {
            panic!("principal refused");
        };
        // A state (or snapshot) written before the access model decodes as it did.
        assert_eq!(encode_state(&logic.state).unwrap(), before);
        let decoded: ControllerState = postcard::from_bytes(&before).unwrap();
        assert!(decoded.access.principals.is_empty());
        let access = encode_access(&logic.state.access).unwrap();
        let back: AccessState = postcard::from_bytes(&access).unwrap();
        assert!(back.principals.contains_key("app"));
    }

    fn entry(index: u64, command: &ControllerCommand) -> psubd_raft::types::typ::Entry {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(encode_command(command).unwrap()),
        }
    }

    /// Principals and key hashes are written with the state, reloaded when the node
    /// reopens, and carried by a snapshot to a replica that installs it.
    #[tokio::test]
    async fn the_access_model_survives_a_reopen_and_a_snapshot() {
        use openraft::storage::RaftStateMachine;
        use openraft::RaftSnapshotBuilder;
        let dir = tempfile::tempdir().unwrap();
        let storage = psubd_raft::NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, published) = ControllerLogic::new();
        let mut sm = storage.state_machine(0, Box::new(logic)).unwrap();
        sm.apply([
            entry(
                1,
                &ControllerCommand::Access(AccessChange::AddPrincipal {
                    name: "app".into(),
                    created_ms: 1,
                }),
            ),
            entry(
                2,
                &ControllerCommand::Access(AccessChange::AddKey {
                    principal: "app".into(),
                    key_id: "k1".into(),
                    hash: [7; 32],
                    created_ms: 2,
                }),
            ),
        ])
        .await
        .unwrap();
        let expected = published.borrow().access.clone();
        assert_eq!(expected.keys["k1"].hash, [7; 32]);
        let mut builder = sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        drop(builder);
        drop(sm);

        let (logic, reopened) = ControllerLogic::new();
        let _sm = storage.state_machine(0, Box::new(logic)).unwrap();
        assert_eq!(reopened.borrow().access, expected);

        let other = tempfile::tempdir().unwrap();
        let other_storage = psubd_raft::NodeStorage::open(other.path(), 1 << 20).unwrap();
        let (logic, installed) = ControllerLogic::new();
        let mut other_sm = other_storage.state_machine(0, Box::new(logic)).unwrap();
        other_sm
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(installed.borrow().access, expected);
    }
}
