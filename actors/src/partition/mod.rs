//! A topic partition: one Raft group per partition, its state machine, its reader and the
//! actor that batches publishes into Raft entries.
//!
//! The map, bottom to top (each file imports only from files above it in this list):
//!
//! | file | what it owns |
//! |---|---|
//! | [`layout`] | every key of the partition's state tree |
//! | [`stored`] | a stored batch (dense or sparse) and its summary |
//! | [`batch_index`] | the log bounds and the index of retained batches |
//! | [`key_index`] | the key index of a compacted topic |
//! | [`batch_store`] | the batches as one apply call stages them: appends, trims, rewrites |
//! | [`delay_queue`] | delayed records waiting for their due time, and their release |
//! | [`compaction`] | which records survive, and the [`compaction::Compactor`] applying windows |
//! | [`retention`] | which batches have expired |
//! | [`id_table`] | the record ids stored recently (idempotent publish) |
//! | [`guard`] | guarded appends: ids and expected offsets, decided at apply |
//! | [`command`] | the group's commands: built by the leader, decoded by every replica |
//! | [`shared`] | what the state machine publishes to readers once written |
//! | [`fetched`] | records as a read returns them |
//! | [`reader`] | [`PartitionReader`]: reads, key views, what maintenance is due |
//! | [`logic`] | [`PartitionLogic`]: the state machine, composing the parts above |
//! | [`release_timer`] | the leader proposing delayed records, and releasing them when due |
//! | [`actor`] | [`PartitionActor`]: batching publishes, the maintenance tick |
//! | [`maintenance_clock`] | one timer sending the maintenance tick to the partitions led here |

mod actor;
mod batch_index;
mod batch_store;
mod command;
pub mod compaction;
pub mod delay_queue;
#[cfg(test)]
mod delay_tests;
mod fetched;
pub mod guard;
#[cfg(test)]
mod guard_tests;
pub mod id_table;
pub mod key_index;
mod layout;
mod logic;
pub mod maintenance_clock;
mod reader;
mod release_timer;
pub mod retention;
mod shared;
mod stored;
#[cfg(test)]
mod tests;

pub use actor::{
    check_space, Acks, Appended, BatchLimits, MaintenanceArgs, PartitionActor, PartitionArgs,
    PartitionHandle, PartitionMsg, PartitionState, COMPACTION_PASS_TICKS,
    DEFAULT_MAINTENANCE_INTERVAL, MAX_QUEUED_REQUESTS,
};
pub use batch_index::{BatchIndex, LogBounds};
pub use delay_queue::{DelaySummary, DelayedRecords};
pub use fetched::{FetchedIter, FetchedRecords};
pub use logic::PartitionLogic;
pub use reader::{PartitionReader, ReadError};
pub use release_timer::TimerEvent;
