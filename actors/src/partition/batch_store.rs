//! The stored batches of a partition replica as one apply call sees them: the log bounds
//! and the batch index including what the call staged, the batches the call staged (for a
//! compaction window later in the same call), and the trimmed batches still in the tree.
//!
//! Retention moves the log start forward with a replicated `Trim` command; the batches
//! wholly below it leave the tree at apply. While a snapshot build is reading the batch
//! range, those removals wait (a snapshot must hold every batch its bounds claim) and
//! happen at the first apply after the build lets go.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes};
use psubd_raft::{StorageIoError, Tree, Value, WriteBatch};

use super::batch_index::{BatchIndex, IndexChange, LogBounds};
use super::layout::{base_offset_of, batch_key, BATCHES_END, BATCH_PREFIX, BOUNDS_KEY};
use super::stored::{BatchSummary, MAX_STORED_RUN_BYTES};
use crate::record::{split_run, BATCH_HEADER_LEN};

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct BatchStore {
    /// Bounds including the entries applied but not yet written.
    bounds: LogBounds,
    /// The retained batches including those applied but not yet written.
    index: BatchIndex,
    /// Index changes not yet published to readers.
    changes: Vec<IndexChange>,
    /// Base offsets of batches below the log start still in the tree: removed at the first
    /// apply with no snapshot build holding the range. Never read (reads check the bounds).
    garbage: Vec<u64>,
    /// Batches staged by the current apply call and not yet in the tree, kept only for
    /// compacted topics (a `Compact` later in the call reads its window through them).
    /// `None` = removed.
    staged: Option<BTreeMap<u64, Option<Bytes>>>,
}

impl BatchStore {
    /// A store; `keeps_staged` for compacted topics (see the `staged` field).
    pub(super) fn new(keeps_staged: bool) -> Self {
        Self {
            staged: keeps_staged.then(BTreeMap::new),
            ..Self::default()
        }
    }

    /// Reads the bounds and indexes the batches of `state` (at open and after a snapshot
    /// install). The fresh index is published at the next [`BatchStore::take_changes`].
    pub(super) fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.bounds = match state.get(BOUNDS_KEY)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(|e| StorageIoError::Codec {
                what: "partition bounds",
                source: e,
            })?,
            None => LogBounds::default(),
        };
        self.index = BatchIndex::default();
        self.garbage.clear();
        self.written();
        for item in state.range(&[BATCH_PREFIX], Some(&BATCHES_END)) {
            let (key, stored) = item?;
            let Some(base) = base_offset_of(&key) else {
                continue;
            };
            let summary = BatchSummary::at(base, &stored);
            if base + u64::from(summary.count) <= self.bounds.log_start {
                // Trimmed before a restart, or received in an older snapshot.
                self.garbage.push(base);
            } else {
                self.index.insert(base, summary);
            }
        }
        self.changes.clear();
        self.changes.push(IndexChange::Reset(self.index.clone()));
        Ok(())
    }

    /// The bounds as staged.
    pub(super) fn bounds(&self) -> LogBounds {
        self.bounds
    }

    /// The retained batches as staged.
    pub(super) fn index(&self) -> &BatchIndex {
        &self.index
    }

    /// Stages an appended batch of `count > 0` records (`stored`, header included) at the
    /// high watermark, as stored batches of at most [`MAX_STORED_RUN_BYTES`] of records
    /// each (one record may be larger), indexes them and moves the high watermark past
    /// them. Each stored batch is copied once into the engine's value; the pieces of a large
    /// batch are assembled in one reused buffer first.
    pub(super) fn append(
        &mut self,
        stored: &[u8],
        count: u32,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        let base = self.bounds.next_offset;
        let run = stored.get(BATCH_HEADER_LEN..).unwrap_or_default();
        let pieces = split_run(run, count, MAX_STORED_RUN_BYTES);
        if let [piece] = pieces.as_slice() {
            let summary = BatchSummary::of_piece(piece);
            self.stage_batch(base, Value::from(stored), summary, batch);
        } else {
            let mut assembled = Vec::with_capacity(BATCH_HEADER_LEN + MAX_STORED_RUN_BYTES);
            for piece in &pieces {
                assembled.clear();
                assembled.put_u32_le(piece.count);
                assembled.extend_from_slice(piece.run);
                let summary = BatchSummary::of_piece(piece);
                let at = base + u64::from(piece.skip);
                self.stage_batch(at, Value::from(&assembled[..]), summary, batch);
            }
        }
        self.bounds.next_offset += u64::from(count);
        self.stage_bounds(batch)
    }

    /// Stages one stored batch at `base` and its index entry.
    fn stage_batch(
        &mut self,
        base: u64,
        stored: Value,
        summary: BatchSummary,
        batch: &mut WriteBatch,
    ) {
        if let Some(staged) = self.staged.as_mut() {
            // Shares the value's buffer.
            staged.insert(base, Some(stored.clone().into_bytes()));
        }
        batch.insert_value(batch_key(base).to_vec(), stored);
        self.index.insert(base, summary);
        self.changes.push(IndexChange::Insert(base, summary));
    }

    fn stage_bounds(&self, batch: &mut WriteBatch) -> Result<(), StorageIoError> {
        let bounds = postcard::to_stdvec(&self.bounds).map_err(|e| StorageIoError::Codec {
            what: "partition bounds",
            source: e,
        })?;
        batch.insert(BOUNDS_KEY, bounds);
        Ok(())
    }

    /// Moves the log start to `requested` (clamped to the high watermark; never backwards)
    /// and forgets the batches wholly below it. Returns the log start after.
    pub(super) fn trim(
        &mut self,
        requested: u64,
        batch: &mut WriteBatch,
    ) -> Result<u64, StorageIoError> {
        let new_start = requested.min(self.bounds.next_offset);
        if new_start <= self.bounds.log_start {
            return Ok(self.bounds.log_start);
        }
        self.bounds.log_start = new_start;
        self.stage_bounds(batch)?;
        self.garbage.extend(self.index.trim_to(new_start));
        self.changes.push(IndexChange::TrimTo(new_start));
        Ok(new_start)
    }

    /// Removes trimmed batches from the tree, unless a snapshot build is reading the range
    /// (`held`).
    pub(super) fn collect_garbage(&mut self, held: bool, batch: &mut WriteBatch) {
        if self.garbage.is_empty() || held {
            return;
        }
        for base in self.garbage.drain(..) {
            batch.remove(batch_key(base).to_vec());
        }
    }

    /// The batches keyed in `[from, end)` as this apply call sees them: the tree, then what
    /// earlier commands of the call staged (appends, rewrites).
    pub(super) fn window(
        &self,
        state: &Tree,
        from: u64,
        end: u64,
    ) -> Result<Vec<(u64, Bytes)>, StorageIoError> {
        let mut found = BTreeMap::new();
        if from >= end {
            return Ok(Vec::new());
        }
        for item in state.range(&batch_key(from), Some(&batch_key(end))) {
            let (key, stored) = item?;
            let Some(base) = base_offset_of(&key) else {
                break;
            };
            found.insert(base, stored.into_bytes());
        }
        for (base, staged) in self
            .staged
            .iter()
            .flat_map(|staged| staged.range(from..end))
        {
            match staged {
                Some(stored) => found.insert(*base, stored.clone()),
                None => found.remove(base),
            };
        }
        Ok(found.into_iter().collect())
    }

    /// Stages the replacement of the consecutive batches `part` by compaction's output:
    /// every key but the last goes, the last one gets `replacement`, or goes too when
    /// nothing survived (see [`super::stored`] for why the last key).
    pub(super) fn replace(
        &mut self,
        part: &[(u64, Bytes)],
        replacement: Option<Bytes>,
        batch: &mut WriteBatch,
    ) {
        let last_key = part.last().map(|(base, _)| *base);
        for (base, _) in part {
            if Some(*base) != last_key || replacement.is_none() {
                batch.remove(batch_key(*base).to_vec());
                self.stage_removed(*base);
            }
        }
        if let (Some(last), Some(replacement)) = (last_key, replacement) {
            let summary = BatchSummary::at(last, &replacement);
            self.stage_batch(last, Value::from(replacement.as_ref()), summary, batch);
        }
    }

    fn stage_removed(&mut self, base: u64) {
        if let Some(staged) = self.staged.as_mut() {
            staged.insert(base, None);
        }
        self.index.remove(base);
        self.changes.push(IndexChange::Remove(base));
    }

    /// The index changes staged since the last call, to publish once written.
    pub(super) fn take_changes(&mut self) -> Vec<IndexChange> {
        std::mem::take(&mut self.changes)
    }

    /// Forgets the batches the apply call staged: its batch is written, the tree has them.
    pub(super) fn written(&mut self) {
        if let Some(staged) = self.staged.as_mut() {
            staged.clear();
        }
    }
}
