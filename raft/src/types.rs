//! The one openraft type configuration shared by every Raft group on a node.
//!
//! Every group (the controller, each topic partition, each consumer-offsets partition)
//! uses the same [`TypeConfig`]: commands and responses are opaque bytes, and each group's
//! [`GroupLogic`](crate::GroupLogic) gives them meaning. One type config means one
//! `Raft` type, so a single registry can hold every group on the node.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's id, as given by `--id` and used in `--peers`.
pub type NodeId = u64;

/// A Raft group's id. Group 0 is the controller; the controller hands out the others.
pub type GroupId = u64;

/// The controller's group id: every node runs it.
pub const CONTROLLER_GROUP: GroupId = 0;

/// An opaque command proposed to a group; the group's logic decodes it at apply.
///
/// Kept as `Bytes` so a publish batch travels from the HTTP body into the Raft entry
/// without being re-encoded.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Bytes);

impl fmt::Debug for Command {
    // Never log payloads: only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The logic's answer to an applied command, returned to the proposer by `client_write`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(pub Bytes);

impl fmt::Debug for CommandResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandResponse({} bytes)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// The type configuration of every psubd Raft group.
    ///
    /// Snapshots are files (`tokio::fs::File`), streamed to followers in chunks, so a large
    /// partition is never held in memory as one blob.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = crate::runtime::GroupRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

/// Short aliases for openraft's generic types instantiated with [`TypeConfig`].
pub mod typ {
    use super::TypeConfig;

    /// A running Raft group.
    pub type Raft = openraft::Raft<TypeConfig>;
    /// A group's metrics (its role, leader, indexes), as its watch publishes them.
    pub type RaftMetrics = openraft::RaftMetrics<super::NodeId, openraft::BasicNode>;
    /// A log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// A log id.
    pub type LogId = openraft::LogId<super::NodeId>;
    /// A vote.
    pub type Vote = openraft::Vote<super::NodeId>;
    /// A storage error, as openraft wants it.
    pub type StorageError = openraft::StorageError<super::NodeId>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<super::NodeId, openraft::BasicNode>;
    /// A snapshot.
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    /// Stored membership.
    pub type StoredMembership = openraft::StoredMembership<super::NodeId, openraft::BasicNode>;
    /// The error of `Raft::client_write`.
    pub type ClientWriteError = openraft::error::RaftError<
        super::NodeId,
        openraft::error::ClientWriteError<super::NodeId, openraft::BasicNode>,
    >;
    /// A successful `Raft::client_write`.
    pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
    /// Raft RPC requests and responses.
    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
    /// Raft RPC.
    pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<super::NodeId>;
    /// Raft RPC.
    pub type VoteRequest = openraft::raft::VoteRequest<super::NodeId>;
    /// Raft RPC.
    pub type VoteResponse = openraft::raft::VoteResponse<super::NodeId>;
    /// Raft RPC.
    pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
    /// Raft RPC.
    pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<super::NodeId>;
}
