//! The controller actor: proposes metadata changes to Raft group 0.
//!
//! Every node runs group 0 and reads the replicated [`ControllerState`] locally through a
//! watch; only writes come here. The actor validates, chooses replica sets, and proposes
//! without awaiting the commit in `handle` (the write runs in a task that answers).

pub mod state;

use std::time::Duration;

use psubd_raft::types::typ::Raft;
use psubd_raft::{NodeId, RaftNode};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::clock::now_ms;
use crate::error::ControllerError;
use crate::proposal::{self, check_leader};
use crate::stable_hash::fnv1a;
use crate::topic::{place_replicas, TopicConfig, TopicMeta};
pub use state::{
    ControllerCommand, ControllerLogic, ControllerResponse, ControllerState, NodeInfo, TopicUpdate,
};

/// Messages of [`ControllerActor`].
pub enum ControllerMsg {
    /// Create a topic (validated by the caller); answered with its metadata.
    CreateTopic {
        /// The name.
        name: String,
        /// The configuration.
        config: TopicConfig,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<TopicMeta, ControllerError>>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// The name.
        name: String,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<(), ControllerError>>,
    },
    /// Change a topic's mutable settings (validated by the caller); answered with the
    /// topic's metadata after the change.
    UpdateTopic {
        /// The name.
        name: String,
        /// What changes.
        update: TopicUpdate,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<TopicMeta, ControllerError>>,
    },
    /// Register a node's HTTP address.
    RegisterNode {
        /// The node.
        info: NodeInfo,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<(), ControllerError>>,
    },
}

/// Startup arguments of the controller actor.
pub struct ControllerArgs {
    /// Group 0's Raft handle.
    pub raft: Raft,
    /// Every node of the cluster (the `--peers` ids): replica sets are drawn from them.
    pub nodes: Vec<NodeId>,
    /// This node's Raft groups: which peers are connected right now.
    pub raft_node: RaftNode,
    /// How long a proposed change may take before it is answered "outcome unknown".
    pub write_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses changes.
    pub quorum_stale_after: Duration,
}

/// The controller actor. See the module docs.
pub struct ControllerActor;

/// How proposals name group 0 in their reasons.
const GROUP: &str = "controller";

async fn propose(
    raft: Raft,
    command: ControllerCommand,
    timeout: Duration,
) -> Result<ControllerResponse, ControllerError> {
    let command = state::encode_command(&command).map_err(|_| ControllerError::OutcomeUnknown {
        reason: "command did not encode".into(),
    })?;
    let response = proposal::propose(&raft, command, timeout, GROUP).await?;
    Ok(state::decode_response(&response))
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

impl Actor for ControllerActor {
    type Msg = ControllerMsg;
    type State = ControllerArgs;
    type Arguments = ControllerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ControllerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let raft = state.raft.clone();
        let timeout = state.write_timeout;
        if let Err(refusal) = check_leader(&raft, state.quorum_stale_after) {
            let error = ControllerError::from(refusal);
            match message {
                ControllerMsg::CreateTopic { reply, .. } => drop(reply.send(Err(error))),
                ControllerMsg::DeleteTopic { reply, .. } => drop(reply.send(Err(error))),
                ControllerMsg::UpdateTopic { reply, .. } => drop(reply.send(Err(error))),
                ControllerMsg::RegisterNode { reply, .. } => drop(reply.send(Err(error))),
            }
            return Ok(());
        }
        match message {
            ControllerMsg::CreateTopic {
                name,
                config,
                reply,
            } => {
                if config.replication_factor as usize > state.nodes.len() {
                    let _ = reply.send(Err(ControllerError::Invalid(format!(
                        "replication_factor {} exceeds the {} nodes of the cluster",
                        config.replication_factor,
                        state.nodes.len()
                    ))));
                    return Ok(());
                }
                // Rotate the first replica by the stable hash of the name so topics'
                // leaders spread.
                let offset = fnv1a(name.as_bytes());
                let candidates =
                    live_first(&state.nodes, &state.raft_node, config.replication_factor);
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
                tokio::spawn(async move {
                    let answer = match propose(raft, command, timeout).await {
                        Ok(ControllerResponse::Done(Some(meta))) => Ok(meta),
                        Ok(ControllerResponse::TopicExists) => Err(ControllerError::TopicExists),
                        Ok(_) => Err(ControllerError::OutcomeUnknown {
                            reason: "unexpected controller response".into(),
                        }),
                        Err(error) => Err(error),
                    };
                    let _ = reply.send(answer);
                });
            }
            ControllerMsg::DeleteTopic { name, reply } => {
                tokio::spawn(async move {
                    let answer =
                        match propose(raft, ControllerCommand::DeleteTopic { name }, timeout).await
                        {
                            Ok(ControllerResponse::Done(_)) => Ok(()),
                            Ok(ControllerResponse::TopicNotFound) => {
                                Err(ControllerError::TopicNotFound)
                            }
                            Ok(_) => Err(ControllerError::OutcomeUnknown {
                                reason: "unexpected controller response".into(),
                            }),
                            Err(error) => Err(error),
                        };
                    let _ = reply.send(answer);
                });
            }
            ControllerMsg::UpdateTopic {
                name,
                update,
                reply,
            } => {
                tokio::spawn(async move {
                    let command = ControllerCommand::UpdateTopic { name, update };
                    let answer = match propose(raft, command, timeout).await {
                        Ok(ControllerResponse::Done(Some(meta))) => Ok(meta),
                        Ok(ControllerResponse::TopicNotFound) => {
                            Err(ControllerError::TopicNotFound)
                        }
                        Ok(_) => Err(ControllerError::OutcomeUnknown {
                            reason: "unexpected controller response".into(),
                        }),
                        Err(error) => Err(error),
                    };
                    let _ = reply.send(answer);
                });
            }
            ControllerMsg::RegisterNode { info, reply } => {
                tokio::spawn(async move {
                    let answer = propose(raft, ControllerCommand::RegisterNode(info), timeout)
                        .await
                        .map(|_| ());
                    let _ = reply.send(answer);
                });
            }
        }
        Ok(())
    }
}
