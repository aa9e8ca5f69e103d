//! # Layout
//!
//! `psubd-raft` runs many Raft groups per node on one sled database (state, metadata) and
//! per-group append-only log segment files (entries). Modules from the bottom up; each uses
//! only those above it in this list:
//!
//! - [`runtime`]: the async runtime of every group's openraft tasks (tokio, holding quiet
//!   groups' tick tasks still).
//! - [`types`], [`error`]: the one openraft type configuration every group shares; the
//!   storage error type.
//! - `codec`, `blocking`: postcard encoding of what is stored; blocking file work off the
//!   async threads.
//! - [`health`]: storage failure (fail-stop), free space (refuse writes before the disk is
//!   full), stopped groups.
//! - [`stats`]: per-group counters openraft's metrics lack (leader changes, commit index,
//!   snapshots built and installed), for the node's metrics.
//! - [`engine`]: the storage seam (engine trait, trees, batches), its sled implementation and
//!   the deferred state trees.
//! - [`log`]: the Raft log: segment files, their decoded tail, the set of files to sync, the
//!   node-wide flusher (group commit) and the per-group [`LogStore`].
//! - [`state`]: state machines: the [`GroupLogic`] seam, the generic [`StateMachine`],
//!   snapshot files, their schedule and write-behind.
//! - [`node_storage`]: the node's storage assembly ([`NodeStorage`]) over all of the above.
//! - [`config`]: identity, addresses and the Raft tuning of every group; [`peer_addr`]: a
//!   peer's `host:port` (an IP literal or a DNS name, resolved at each dial).
//! - [`transport`], `network`: the peer transport (one TCP connection per peer pair,
//!   postcard frames) and openraft's outbound network over it.
//! - `quiet`: idle groups stop ticking and heartbeating, resting on the transport's
//!   keepalive per peer pair instead, and wake when anything needs them.
//! - [`registry`]: the groups running on this node ([`RaftNode`]), routing inbound RPCs by
//!   group id, and running the quiet groups' passes.
//! - [`handover`]: moving a group's leadership to a caught-up follower (a node stopping, a
//!   preferred leader returning), with the fences that stop proposals meanwhile.

pub(crate) mod blocking;
pub(crate) mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod handover;
pub mod health;
pub mod log;
pub(crate) mod network;
pub mod node_storage;
pub mod peer_addr;
pub(crate) mod quiet;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod stats;
pub mod transport;
pub mod types;

/// True only in the test-only build with the `chaos-skip-log-fsync` feature, whose log flusher
/// never syncs log segments: acknowledged writes are then lost on power loss. The node warns
/// at start when it runs such a build.
pub const SKIPS_LOG_FSYNC: bool = cfg!(feature = "chaos-skip-log-fsync");

pub use config::{RaftNodeConfig, RaftTuning, MAX_SNAPSHOT_STAGGER_PERCENT};
pub use engine::{Tree, Value, WriteBatch};
pub use error::StorageIoError;
pub use handover::{HandOver, ProposalPass};
pub use health::{SpaceReport, StorageFailure, StorageHealth};
pub use log::store::LogStore;
pub use node_storage::NodeStorage;
pub use peer_addr::PeerAddr;
pub use registry::{PeerService, RaftNode, RaftNodeError};
pub use state::logic::{GroupLogic, SnapshotHold, SnapshotPlan, RESERVED_KEY_PREFIX};
pub use state::machine::StateMachine;
pub use state::snapshot::SnapshotBuilder;
pub use stats::{GroupStats, GroupStatsSnapshot};
pub use transport::auth::ClusterSecret;
pub use transport::tls::{PeerTls, PeerTlsError};
pub use transport::{Faults, TransportError};
pub use types::{Command, CommandResponse, GroupId, NodeId, TypeConfig, CONTROLLER_GROUP};
