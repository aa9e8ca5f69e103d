//! What a group's state machine means: the [`GroupLogic`] trait and its snapshot plan.
//!
//! The generic [`StateMachine`](crate::StateMachine) owns the state tree, the last-applied log
//! id and the membership; a logic (the controller's metadata, a partition's record batches,
//! consumer offsets) gives the committed commands their meaning.

use crate::engine::{Tree, WriteBatch};
use crate::error::StorageIoError;
use crate::types::{Command, CommandResponse};

/// The key prefix reserved for the state machine's own metadata in a group's state tree.
/// A logic must never write keys starting with it: they would be overwritten, and snapshots
/// leave them out.
pub const RESERVED_KEY_PREFIX: [u8; 2] = [0xFF, 0xFF];

/// What one group's state machine means. The generic StateMachine owns the state tree,
/// last-applied log id and membership (under the reserved key prefix
/// [`RESERVED_KEY_PREFIX`], 0xFF 0xFF, that the logic must not use), and calls the logic for
/// each committed Normal entry.
///
/// ### To ensure correctness:
/// - `apply` must be deterministic: every replica applies the same commands in the same order
///   and must reach the same state and the same responses.
/// - Writes staged in the batch are not visible in `state` until the whole apply call is
///   written; a logic that reads back what an earlier command of the same call wrote must keep
///   that in memory (e.g. a partition's next offset).
/// - In-memory state is published to readers only in `applied`, never in `apply`.
pub trait GroupLogic: Send + Sync + 'static {
    /// Rebuild in-memory state from the state tree: at open and after a snapshot install.
    ///
    /// # Errors
    /// Storage I/O only.
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError>;

    /// Apply one committed command at log `index`: stage writes in `batch` (written atomically
    /// with last_applied, together with the other entries of the same apply call), update
    /// in-memory state, and return the response for the proposer. Domain refusals (topic
    /// exists, ...) are encoded in the response, never errors.
    ///
    /// # Errors
    /// Storage I/O only; an error stops the group (openraft treats it as fatal).
    fn apply(
        &mut self,
        index: u64,
        command: &Command,
        state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError>;

    /// Called after the batch of an apply call is written, and after every `load` (open,
    /// snapshot install): publish new state to watchers (e.g. a partition's high-watermark
    /// watch). Readers must never see state that is not written.
    fn applied(&mut self);

    /// What a snapshot taken now contains. Called with exclusive access (no apply running):
    /// `pinned` pairs are copied now; the `lazy` key range is read later by the builder task
    /// while applies continue — the logic promises keys in that range are only ever removed
    /// (never changed or added) after this point, so a later read is still a valid snapshot.
    ///
    /// # Errors
    /// Storage I/O only; the snapshot build then fails and openraft retries later.
    fn snapshot_plan(&self, state: &Tree) -> Result<SnapshotPlan, StorageIoError>;

    /// Called right after `snapshot_plan`, still with exclusive access: a guard the builder
    /// keeps until it has read the whole lazy range, then drops. A logic whose commands may
    /// remove keys inside the planned range (a partition's retention trim) defers those
    /// removals while a hold is alive, so a snapshot never misses a key its pinned state
    /// claims. The default holds nothing.
    fn snapshot_hold(&self) -> Option<SnapshotHold> {
        None
    }

    /// Bytes of state the logic retains, if it tracks them (a partition: its retained
    /// batches). A snapshot is then also due once the commands applied since the last one
    /// outgrow them (see `state::schedule`), so a log holding mostly what retention has
    /// already removed is purged. The default tracks nothing.
    fn retained_bytes(&self) -> Option<u64> {
        None
    }
}

/// Kept alive by a snapshot builder while it reads a plan's lazy range; see
/// [`GroupLogic::snapshot_hold`].
pub type SnapshotHold = Box<dyn std::any::Any + Send + Sync>;

/// The contents of a snapshot, as chosen by a [`GroupLogic`].
///
/// Small, changing state (counters, metadata) goes in `pinned`, copied at once; the bulk
/// (record batches) goes in `lazy`, a key range streamed from the tree into the snapshot file
/// later, so a large partition is never held in memory.
#[derive(Debug, Default, Clone)]
pub struct SnapshotPlan {
    /// Pairs copied when the plan is made.
    pub pinned: Vec<(Vec<u8>, Vec<u8>)>,
    /// A key range `[start, end)` (`end` None = unbounded) read from the state tree by the
    /// builder. Keys under [`RESERVED_KEY_PREFIX`] are skipped.
    pub lazy: Option<(Vec<u8>, Option<Vec<u8>>)>,
}
