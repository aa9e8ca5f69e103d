//! # Layout
//!
//! `psubd-actors` holds the domain and the actors that act on it.
//!
//! - [`clock`]: the wall clock, read one way (`now_ms`).
//! - [`record`]: records and record batches, the unit of storage and replication.
//! - [`topic`]: topic names, configuration and replica placement.
//! - [`partition`]: a topic partition — the actor that batches publishes into Raft entries,
//!   the state machine ([`partition::PartitionLogic`]) built from typed parts (batch store,
//!   key index, compactor, retention; its module docs map them) and the reader.
//! - [`controller`]: the controller (a plain service that proposes metadata changes) and,
//!   in `controller::state`, group 0's replicated metadata.
//! - [`membership`]: changing a group's replicas (learners, catching up, voters), for
//!   replica moves.
//! - [`proposal`]: proposing to any Raft group: the leadership check, the proposal
//!   with a deadline, and the one mapping of openraft's outcomes.
//! - [`supervisor`]: the node supervisor, which runs the partition replicas the controller
//!   assigns to this node.
//! - [`offsets`]: the consumer offsets topic's state machine (committed offsets) and reader.
//! - [`assignment`]: sticky range / round-robin partition assignment for groups.
//! - [`push`]: push subscriptions: their replicated settings and the node's board of
//!   running pushers' status.
//! - [`coordinator`]: the group coordinator actor (members, generations, positions).
//! - [`group_directory`]: this node's coordinators, started on demand where the group's
//!   offsets partition leads.
//! - [`stable_hash`]: the one stable hash (keys to partitions, groups to coordinators).
//! - [`timer`]: periodic messages to an actor (coordinator and partition ticks).
//! - [`broker`]: the handle the edge uses for local operations.
//! - [`error`]: the crate's errors.
//! - [`locks`]: locks that survive a panicked writer.

pub mod assignment;
pub mod broker;
pub mod clock;
pub mod controller;
pub mod coordinator;
pub mod error;
pub mod group_directory;
pub mod locks;
pub mod membership;
pub mod offsets;
pub mod partition;
pub mod proposal;
pub mod push;
pub mod record;
pub mod stable_hash;
pub mod supervisor;
pub mod timer;
pub mod topic;

pub use broker::{Broker, BrokerConfig, BrokerError};
pub use error::{ControllerError, GroupError, PartitionError};
