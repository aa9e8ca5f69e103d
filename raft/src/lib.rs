//! # Layout
//!
//! `psubd-raft` runs many Raft groups per node on one sled database (state, metadata) and
//! per-group append-only log segment files (entries).
//!
//! - [`types`]: the single openraft type configuration every group shares.
//! - `storage`: the project's storage seam (engine trait, sled implementation).
//! - `flusher`: the node-wide group-commit task that turns many pending flushes into one fsync.
//! - [`health`]: storage failure (fail-stop), free space (refuse writes before the disk is
//!   full), stopped groups.
//! - `log_store`: the per-group Raft log: entries in segment files, vote and marks in the engine.
//! - `segment_log`: a group's append-only log segment files (write once, purge by deleting).
//! - `log_sync`: the node-wide set of log files the flusher syncs at its next flush.
//! - `log_tail`: a group's newest entries kept decoded, for the reads that follow an append.
//! - `state_machine`: the generic per-group state machine; a [`GroupLogic`] gives it meaning.
//! - `snapshot`: snapshot files (build, stream, install).
//! - `snapshot_schedule`: when a state machine asks for a snapshot (entries and bytes).
//! - `write_behind`: snapshot files reach the disk in steps, so log flushes never queue behind
//!   one large fsync.
//! - `transport`: the peer transport (one TCP connection per peer pair, postcard frames).
//! - `network`: openraft's outbound network over the transport.
//! - `registry`: the groups running on this node, routing inbound RPCs by group id.

pub mod config;
pub(crate) mod deferred_tree;
pub mod error;
pub(crate) mod flusher;
pub mod health;
pub mod log_store;
pub(crate) mod log_sync;
pub(crate) mod log_tail;
pub mod logic;
pub(crate) mod network;
pub mod registry;
pub mod segment_log;
pub mod snapshot;
pub mod snapshot_schedule;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod types;
pub mod write_behind;

/// True only in the test-only build with the `chaos-skip-log-fsync` feature, whose log flusher
/// never syncs log segments: acknowledged writes are then lost on power loss. The node warns
/// at start when it runs such a build.
pub const SKIPS_LOG_FSYNC: bool = cfg!(feature = "chaos-skip-log-fsync");

pub use config::{RaftNodeConfig, RaftTuning, MAX_SNAPSHOT_STAGGER_PERCENT};
pub use error::StorageIoError;
pub use health::{SpaceReport, StorageFailure, StorageHealth};
pub use log_store::LogStore;
pub use logic::{GroupLogic, SnapshotHold, SnapshotPlan, RESERVED_KEY_PREFIX};
pub use registry::{PeerService, RaftNode, RaftNodeError};
pub use snapshot::SnapshotBuilder;
pub use state_machine::StateMachine;
pub use storage::{NodeStorage, Tree, Value, WriteBatch};
pub use transport::{Faults, TransportError};
pub use types::{Command, CommandResponse, GroupId, NodeId, TypeConfig, CONTROLLER_GROUP};
