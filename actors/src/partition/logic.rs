//! The state machine logic of a partition's Raft group: decodes each command and hands it
//! to the part that owns it — the [`BatchStore`] (appends, trims), the [`KeyIndex`] and
//! the [`Compactor`] (compacted topics), the [`IdTable`] (guarded appends, decided by
//! [`guard::decide`]), the [`DelayQueue`] (delayed records, appended through the same path
//! as any append when released) — then publishes what was written to the readers.

use std::sync::Arc;

use psubd_raft::{
    Command, CommandResponse, GroupLogic, SnapshotHold, SnapshotPlan, StorageIoError, Tree,
    WriteBatch,
};
use tracing::warn;

use super::batch_store::BatchStore;
use super::command::{offset_response, outcomes_response, PartitionCommand};
use super::compaction::Compactor;
use super::delay_queue::{DelayOutcome, DelayQueue};
use super::guard::{self, EntryGuard};
use super::id_table::IdTable;
use super::key_index::KeyIndex;
use super::layout::{batch_key, BOUNDS_KEY, INDEX_END, PROGRESS_KEY};
use super::reader::PartitionReader;
use super::shared::Shared;
use super::stored::SPARSE_FLAG;
use crate::record::batch_count;
use crate::topic::CleanupPolicy;

/// The state machine logic of one partition group.
pub struct PartitionLogic {
    shared: Arc<Shared>,
    store: BatchStore,
    /// The topic is compacted: keep the key index and apply `Compact` commands.
    compacted: bool,
    /// The key index as staged in the current apply call (compacted topics).
    keys: KeyIndex,
    /// Compaction progress including the current apply call (compacted topics).
    compactor: Compactor,
    /// Record ids stored recently, including the current apply call.
    ids: IdTable,
    /// Delayed records not yet released, including the current apply call's.
    delays: DelayQueue,
}

impl PartitionLogic {
    /// A logic (of a `delete` topic) and the reader that shares its state.
    pub fn new() -> (Self, PartitionReader) {
        Self::with_policy(CleanupPolicy::Delete)
    }

    /// A logic for a topic with `policy` and the reader that shares its state. Only
    /// compacted topics keep a key index and apply `Compact` commands.
    pub fn with_policy(policy: CleanupPolicy) -> (Self, PartitionReader) {
        let compacted = policy == CleanupPolicy::Compact;
        let shared = Shared::new();
        (
            Self {
                shared: shared.clone(),
                store: BatchStore::new(compacted),
                compacted,
                keys: KeyIndex::default(),
                compactor: Compactor::default(),
                ids: IdTable::default(),
                delays: DelayQueue::default(),
            },
            PartitionReader::new(shared),
        )
    }

    /// Applies a guarded append: [`guard::decide`] picks the records to store and each
    /// request's outcome; the kept records are then appended like any batch. Answers the
    /// outcomes.
    fn append_guarded(
        &mut self,
        entry: &EntryGuard,
        stored: &bytes::Bytes,
        state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        let keys = &self.keys;
        let key_offset = |key: &[u8]| {
            Ok(keys
                .get(state, key)?
                .filter(|entry| !entry.tombstone)
                .map(|entry| entry.offset))
        };
        let next_offset = self.store.bounds().next_offset;
        let decided = guard::decide(entry, stored, next_offset, &mut self.ids, key_offset, batch)?;
        let Some(decided) = decided else {
            warn!("skipping guarded append command that does not match its guard");
            return Ok(CommandResponse::default());
        };
        if let Some((kept, _count)) = &decided.append {
            self.append(kept, batch)?;
        }
        outcomes_response(&decided.outcomes)
    }

    /// Applies an append of `stored` (a stored batch, header included): its records get
    /// the offsets from the high watermark on. Answers the batch's base offset.
    fn append(
        &mut self,
        stored: &[u8],
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        let count = match batch_count(stored) {
            // The sparse flag is reserved for compaction's output.
            Ok(count) if count & SPARSE_FLAG != 0 => {
                warn!("skipping append command with a reserved count");
                return Ok(CommandResponse::default());
            }
            Ok(count) => count,
            Err(error) => {
                // The leader validated this batch; a bad one is skipped on every replica
                // alike, so replicas stay identical.
                warn!(%error, "skipping undecodable append command");
                return Ok(CommandResponse::default());
            }
        };
        let base = self.store.bounds().next_offset;
        if count > 0 {
            if self.compacted {
                if let Err(error) = self.keys.index_appended(base, stored, batch) {
                    // Undecodable records index nothing, alike on every replica.
                    warn!(%error, "append command's records did not decode for the key index");
                }
            }
            self.store.append(stored, count, batch)?;
        }
        Ok(offset_response(base))
    }
}

impl GroupLogic for PartitionLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.shared.set_tree(state);
        self.store.load(state)?;
        self.ids.load(state)?;
        self.keys.written();
        self.compactor.load(state)?;
        self.shared.publish_compaction(self.compactor.progress());
        self.delays.load(state)?;
        self.shared.publish_delays(self.delays.summary());
        self.shared.reset_bounds(self.store.bounds());
        Ok(())
    }

    fn apply(
        &mut self,
        index: u64,
        command: &Command,
        state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        self.store.collect_garbage(self.shared.is_held(), batch);
        match PartitionCommand::decode(command) {
            PartitionCommand::Append(stored) => self.append(&stored, batch),
            PartitionCommand::GuardedAppend(entry, stored) => {
                self.append_guarded(&entry, &stored, state, batch)
            }
            PartitionCommand::Trim(requested) => {
                let log_start = self.store.trim(requested, batch)?;
                self.store.collect_garbage(self.shared.is_held(), batch);
                Ok(offset_response(log_start))
            }
            PartitionCommand::Compact(compact) => {
                if self.compacted {
                    let holds = self.shared.hold_bounds();
                    self.compactor.apply(
                        &compact,
                        &mut self.store,
                        &mut self.keys,
                        &holds,
                        state,
                        batch,
                    )?;
                }
                Ok(CommandResponse::default())
            }
            PartitionCommand::Delay(delayed) => {
                let outcome = self.delays.queue(index, &delayed, batch);
                if outcome == DelayOutcome::Malformed {
                    warn!("skipping delay command whose records do not decode");
                }
                Ok(outcome.response())
            }
            PartitionCommand::Release(release) => {
                match self.delays.release(&release, state, batch)? {
                    // Appended as any batch: offsets from the high watermark on.
                    Some(released) => self.append(&released.stored, batch),
                    None => Ok(CommandResponse::default()),
                }
            }
            PartitionCommand::Skip(reason) => {
                warn!(reason, "skipping partition command");
                Ok(CommandResponse::default())
            }
        }
    }

    fn applied(&mut self) {
        self.shared.publish_index(self.store.take_changes());
        self.delays.written();
        self.shared.publish_delays(self.delays.summary());
        if self.compacted {
            self.keys.written();
            self.store.written();
            self.shared.publish_compaction(self.compactor.progress());
        }
        self.shared.publish_bounds(self.store.bounds());
    }

    fn snapshot_plan(&self, state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        // The delay queue changes while a build reads (records come and go), so it is
        // copied now; it is bounded (`delay_queue::MAX_DELAYED_BYTES`).
        let mut pinned = DelayQueue::snapshot_pairs(state)?;
        let bounds = match state.get(BOUNDS_KEY)? {
            Some(raw) => raw.to_vec(),
            None => {
                pinned.extend(self.ids.pairs());
                return Ok(SnapshotPlan { pinned, lazy: None });
            }
        };
        let next_offset = self.store.bounds().next_offset;
        // Batches below next_offset never change once written, and the ones retention
        // removes stay in the tree while the snapshot hold taken next is alive, so they may
        // be streamed after this point while appends and trims continue. The range starts
        // at the oldest retained batch (it may straddle the log start), not at the log start.
        let first = self.store.index().first_base().unwrap_or(next_offset);
        // A compacted topic's snapshot also carries the key index, read after the batches
        // (see `key_index`), and pins the compaction progress. Compaction goes on while the
        // range is read, so a compacted topic's batches are not a cut at the plan but one
        // that replaying the log after it repairs (see `compaction`, "Every replica
        // converges"). Batches appended meanwhile may come along: replay writes the same
        // bytes under the same keys.
        pinned.push((BOUNDS_KEY.to_vec(), bounds));
        // The id table changes at every guarded append, so it is copied now (bounded by
        // its cap); its keys sort after every lazy range (see `layout`).
        pinned.extend(self.ids.pairs());
        let end = if self.compacted {
            if let Some(progress) = state.get(PROGRESS_KEY)? {
                pinned.push((PROGRESS_KEY.to_vec(), progress.to_vec()));
            }
            INDEX_END.to_vec()
        } else {
            batch_key(next_offset).to_vec()
        };
        Ok(SnapshotPlan {
            pinned,
            lazy: Some((batch_key(first).to_vec(), Some(end))),
        })
    }

    fn retained_bytes(&self) -> Option<u64> {
        Some(self.store.index().stored_bytes() + self.delays.summary().bytes)
    }

    fn snapshot_hold(&self) -> Option<SnapshotHold> {
        // Right after the plan, with no apply in between: the plan's high watermark.
        let bound = self.store.bounds().next_offset;
        Some(Box::new(self.shared.hold(bound)))
    }
}
