//! # Layout
//!
//! `psubd-actors` holds the domain and the actors that act on it.
//!
//! - [`record`]: records and record batches, the unit of storage and replication.
//! - [`topic`]: topic names, configuration and replica placement.
//! - [`partition`]: the partition actor (batches publishes into Raft entries) and, in
//!   `partition::log`, the partition's state machine logic and reader.
//! - [`controller`]: the controller actor and, in `controller::state`, group 0's replicated
//!   metadata.
//! - [`supervisor`]: the node supervisor, which runs the partition replicas the controller
//!   assigns to this node.
//! - [`broker`]: the handle the edge uses for local operations.
//! - [`error`]: the crate's errors.

pub mod broker;
pub mod controller;
pub mod error;
pub mod partition;
pub mod record;
pub mod supervisor;
pub mod topic;

pub use broker::{Broker, BrokerConfig, BrokerError};
pub use error::{ControllerError, PartitionError};
