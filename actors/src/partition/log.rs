//! A partition's replicated log: the state machine logic of a partition's Raft group,
//! and the reader the fetch path uses without going through the actor.
//!
//! State tree layout (one tree per partition group):
//! - `b"b" ++ base_offset (u64 BE)` → a stored record batch (`[count u32 LE][records…]`):
//!   the Raft entry that carried it, cut into pieces of at most [`MAX_STORED_RUN_BYTES`]
//!   of records when it is larger: one value per few KiB of records, never one key per
//!   record.
//! - `b"m"` → [`LogBounds`] (postcard).
//!
//! - `b"k" ++ key` → the key index of a compacted topic (see [`super::key_index`]).
//! - `b"n"` → compaction progress of a compacted topic (see [`super::compaction`]); pinned
//!   in snapshots.
//!
//! A batch is either dense (the Raft entry's bytes, offsets `base..base + count`) or sparse
//! (compaction's output, explicit offsets, stored under the key of the last batch it
//! replaced): see [`super::compaction`] for the forms and why readers scan upwards.
//!
//! Retention (see [`super::retention`]) moves the log start forward with a replicated
//! `Trim` command; the batches wholly below it leave the tree at apply. While a snapshot
//! build is reading the batch range, those removals wait (a snapshot must hold every batch
//! its bounds claim) and happen at the first apply after the build lets go.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use psubd_raft::{
    Command, CommandResponse, GroupLogic, SnapshotHold, SnapshotPlan, StorageIoError, Tree, Value,
    WriteBatch,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use super::compaction::{CompactCommand, CompactionProgress, StoredBatch, SPARSE_FLAG};
use super::key_index::{StagedIndex, INDEX_END};
use super::retention::{BatchIndex, BatchSummary};
use crate::record::{
    batch_count, split_run, RecordCodecError, RecordIter, RecordView, BATCH_HEADER_LEN,
};
use crate::topic::CleanupPolicy;

const BATCH_PREFIX: u8 = b'b';
const BOUNDS_KEY: &[u8] = b"m";
/// Most record bytes in one stored batch: an appended batch larger than this (a Raft entry
/// coalesces many requests, up to megabytes) is stored as several.
///
/// Why: sled keeps a written page in memory until its cache's eviction processes the
/// page's accesses, which it does per shard (256) only after 64 queued accesses, so the
/// resident set grows with the size of the pages written, whatever the cache capacity.
/// A leaf page holds up to 16 values: with whole entries as values the nodes' resident
/// memory grew with everything written (over 600 MB per node after 20 s of the batch
/// load, a heap profile showed the stored values as 85 % of it). Measured with sled
/// alone, three trees written in batches: 8 KB values level off near 110 MB resident
/// (16 MiB cache), 16 KB near 175 MB, 32 KB near 255 MB, 200 KB values never. A fetch
/// reads a few more, smaller values.
pub(super) const MAX_STORED_RUN_BYTES: usize = 8 << 10;
/// Compaction progress (compacted topics).
pub(super) const PROGRESS_KEY: &[u8] = b"n";

/// Tag of an append command: the rest of the command is a stored batch.
const TAG_APPEND: u8 = 1;
/// Tag of a trim command: the rest is the new log start (u64 LE).
const TAG_TRIM: u8 = 2;
/// Tag of a compact command of an earlier format (no window): skipped on every replica.
const TAG_COMPACT_UNWINDOWED: u8 = 3;
/// Tag of a compact command: the rest is a postcard [`CompactCommand`].
const TAG_COMPACT: u8 = 4;

/// The replicated bounds of a partition's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBounds {
    /// First offset still stored. Invariant: `log_start <= next_offset`.
    pub log_start: u64,
    /// Offset the next appended record gets: the high watermark. Offsets are dense and
    /// never reused.
    pub next_offset: u64,
}

pub(super) fn batch_key(base_offset: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = BATCH_PREFIX;
    key[1..].copy_from_slice(&base_offset.to_be_bytes());
    key
}

pub(super) fn base_offset_of(key: &[u8]) -> Option<u64> {
    match key {
        [BATCH_PREFIX, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// Builds the Raft command that appends `batch` (a stored batch, header included).
pub fn append_command(batch: &[u8]) -> Command {
    let mut out = BytesMut::with_capacity(1 + batch.len());
    out.extend_from_slice(&[TAG_APPEND]);
    out.extend_from_slice(batch);
    Command(out.freeze())
}

/// Builds the Raft command that moves the log start to `new_log_start` (retention). Apply
/// never moves it backwards nor past the high watermark, so a stale or repeated trim is
/// harmless.
pub fn trim_command(new_log_start: u64) -> Command {
    let mut out = BytesMut::with_capacity(9);
    out.extend_from_slice(&[TAG_TRIM]);
    out.extend_from_slice(&new_log_start.to_le_bytes());
    Command(out.freeze())
}

/// Builds the Raft command that compacts the next chunk of a compacted topic's log.
pub fn compact_command(compact: &CompactCommand) -> Command {
    let mut out = vec![TAG_COMPACT];
    // Encoding four integers cannot fail; an empty command would be skipped at apply.
    out.extend(postcard::to_stdvec(compact).unwrap_or_default());
    Command(Bytes::from(out))
}

/// Decodes the response to an append: the base offset of the batch.
pub fn decode_append_response(response: &CommandResponse) -> Option<u64> {
    let raw: [u8; 8] = response.0.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

/// What the state machine shares with readers. Readers only ever see written state:
/// `bounds` is published after the apply batch that produced it is written.
#[derive(Debug)]
pub(super) struct Shared {
    tree: OnceLock<Tree>,
    pub(super) bounds: watch::Sender<LogBounds>,
    /// The retained batches as written, for the retention tick and disk usage.
    index: Mutex<BatchIndex>,
    /// The high watermark of the plan of each snapshot build reading the batch range right
    /// now (see [`SnapshotRangeHold`]). Taken alone, never with another lock of `Shared`.
    holds: Mutex<Vec<u64>>,
    /// Compaction progress as written (compacted topics), for the leader's tick.
    pub(super) compaction: Mutex<CompactionProgress>,
}

/// A change to the batch index, staged at apply and published in `applied`.
pub(super) enum IndexChange {
    Insert(u64, BatchSummary),
    Remove(u64),
    TrimTo(u64),
    Reset(BatchIndex),
}

impl Shared {
    fn holds(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.holds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The plan high watermarks of the snapshot builds reading the batch range now: empty
    /// when none is.
    pub(super) fn hold_bounds(&self) -> Vec<u64> {
        self.holds().clone()
    }
}

/// While a snapshot build reads the batch range: keeps trimmed batches in the tree, and
/// keeps compaction from moving records across the plan's high watermark (`bound`).
struct SnapshotRangeHold {
    shared: Arc<Shared>,
    bound: u64,
}

impl Drop for SnapshotRangeHold {
    fn drop(&mut self) {
        let mut holds = self.shared.holds();
        if let Some(at) = holds.iter().position(|bound| *bound == self.bound) {
            holds.swap_remove(at);
        }
    }
}

/// The state machine logic of one partition group.
pub struct PartitionLogic {
    pub(super) shared: Arc<Shared>,
    /// Bounds including the entries applied but not yet written.
    pub(super) staged: LogBounds,
    /// The retained batches including those applied but not yet written.
    pub(super) index: BatchIndex,
    /// Index changes not yet published to readers.
    pub(super) changes: Vec<IndexChange>,
    /// The topic is compacted: keep the key index and apply `Compact` commands.
    pub(super) compacted: bool,
    /// The key index as staged in the current apply call (compacted topics).
    pub(super) keys: StagedIndex,
    /// Compaction progress including the current apply call (compacted topics).
    pub(super) progress: CompactionProgress,
    /// Batches staged by the current apply call and not yet in the tree (compacted topics):
    /// a `Compact` later in the call reads its window through them. `None` = removed.
    pub(super) staged_batches: BTreeMap<u64, Option<Bytes>>,
    /// Base offsets of batches below the log start still in the tree: removed at the first
    /// apply with no snapshot build holding the range. Never read (reads check the bounds).
    garbage: Vec<u64>,
}

/// Reads a partition's committed records on this replica.
#[derive(Clone, Debug)]
pub struct PartitionReader {
    shared: Arc<Shared>,
}

/// Records read from a partition, with their offsets. Compaction leaves gaps in a
/// compacted topic's offsets, so a read may carry records whose offsets are not
/// consecutive: take offsets from [`FetchedRecords::iter`] (or
/// [`FetchedRecords::offset_of`]), never as `first_offset + i`, and continue from
/// `next_offset`, never from the last offset plus one. Travels between nodes in forward
/// answers (serde).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchedRecords {
    /// Offset of the first record in `bytes`; when there is none, equal to `next_offset`.
    pub first_offset: u64,
    /// Records in `bytes`.
    pub count: u32,
    /// Concatenated record encodings (see [`crate::record::RecordIter::run`]).
    pub bytes: Bytes,
    /// The offset of each record, ascending. Empty when the records are dense
    /// (`first_offset`, `first_offset + 1`, …), as they are on every topic that was never
    /// compacted. Invariant: empty or `count` long.
    pub offsets: Vec<u64>,
    /// Where the next read starts: past the last record returned and past any gap
    /// compaction left after it that this read crossed (at the high watermark when the
    /// read reached it). Never below a returned offset, so continuing from it re-reads
    /// nothing.
    pub next_offset: u64,
    /// First offset stored when read.
    pub log_start: u64,
    /// High watermark when read.
    pub high_watermark: u64,
}

impl FetchedRecords {
    /// The offset of the `i`-th record.
    pub fn offset_of(&self, i: usize) -> u64 {
        self.offsets
            .get(i)
            .copied()
            .unwrap_or(self.first_offset + i as u64)
    }

    /// The records with their offsets, in offset order, decoded in place.
    pub fn iter(&self) -> FetchedIter<'_> {
        FetchedIter {
            fetched: self,
            records: RecordIter::run(&self.bytes),
            index: 0,
        }
    }
}

/// Iterates a [`FetchedRecords`] as `(offset, record)` pairs: see [`FetchedRecords::iter`].
pub struct FetchedIter<'a> {
    fetched: &'a FetchedRecords,
    records: RecordIter<'a>,
    index: usize,
}

impl<'a> FetchedIter<'a> {
    /// The encodings of the records not yet returned (callers budget by their size).
    pub fn remaining(&self) -> &'a [u8] {
        self.records.remaining()
    }
}

impl<'a> Iterator for FetchedIter<'a> {
    type Item = Result<(u64, RecordView<'a>), RecordCodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        let record = self.records.next()?;
        let offset = self.fetched.offset_of(self.index);
        self.index += 1;
        Some(record.map(|view| (offset, view)))
    }
}

/// Why a read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The offset is below the log start or above the high watermark.
    #[error("offset {offset} is outside [{log_start}, {high_watermark}]")]
    OutOfRange {
        /// The requested offset.
        offset: u64,
        /// First stored offset.
        log_start: u64,
        /// The high watermark.
        high_watermark: u64,
    },
    /// The replica has not loaded its state yet, or its state changed under the read (a
    /// snapshot being loaded): retry.
    #[error("partition replica is still opening or reloading")]
    NotReady,
    /// Stored bytes failed to read or decode.
    #[error("stored batch unreadable: {0}")]
    Storage(String),
}

impl PartitionLogic {
    /// A logic (of a `delete` topic) and the reader that shares its state.
    pub fn new() -> (Self, PartitionReader) {
        Self::with_policy(CleanupPolicy::Delete)
    }

    /// A logic for a topic with `policy` and the reader that shares its state. Only
    /// compacted topics keep a key index and apply `Compact` commands.
    pub fn with_policy(policy: CleanupPolicy) -> (Self, PartitionReader) {
        let (bounds, _) = watch::channel(LogBounds::default());
        let shared = Arc::new(Shared {
            tree: OnceLock::new(),
            bounds,
            index: Mutex::new(BatchIndex::default()),
            holds: Mutex::new(Vec::new()),
            compaction: Mutex::new(CompactionProgress::default()),
        });
        (
            Self {
                shared: shared.clone(),
                staged: LogBounds::default(),
                index: BatchIndex::default(),
                changes: Vec::new(),
                garbage: Vec::new(),
                compacted: policy == CleanupPolicy::Compact,
                keys: StagedIndex::default(),
                progress: CompactionProgress::default(),
                staged_batches: BTreeMap::new(),
            },
            PartitionReader { shared },
        )
    }

    fn stage_bounds(&self, batch: &mut WriteBatch) -> Result<(), StorageIoError> {
        let bounds = postcard::to_stdvec(&self.staged).map_err(|e| StorageIoError::Codec {
            what: "partition bounds",
            source: e,
        })?;
        batch.insert(BOUNDS_KEY, bounds);
        Ok(())
    }

    /// Moves the log start to `requested` (clamped to the high watermark; never backwards)
    /// and forgets the batches wholly below it. Returns the log start after.
    fn trim(&mut self, requested: u64, batch: &mut WriteBatch) -> Result<u64, StorageIoError> {
        let new_start = requested.min(self.staged.next_offset);
        if new_start <= self.staged.log_start {
            return Ok(self.staged.log_start);
        }
        self.staged.log_start = new_start;
        self.stage_bounds(batch)?;
        self.garbage.extend(self.index.trim_to(new_start));
        self.changes.push(IndexChange::TrimTo(new_start));
        Ok(new_start)
    }

    /// Removes trimmed batches from the tree unless a snapshot build is reading the range.
    fn collect_garbage(&mut self, batch: &mut WriteBatch) {
        if self.garbage.is_empty() || !self.shared.holds().is_empty() {
            return;
        }
        for base in self.garbage.drain(..) {
            batch.remove(batch_key(base).to_vec());
        }
    }
}

/// Summarises a stored batch; one that does not decode (it cannot, the leader validated it)
/// counts as expired, alike on every replica.
/// A sparse batch (compaction's output) counts as spanning from its key to its end, so
/// that `base + count` is where the next batch starts, as for a dense one.
pub(super) fn summarize_at(base: u64, stored: &[u8]) -> BatchSummary {
    match StoredBatch::parse(base, stored) {
        Ok(sparse @ StoredBatch::Sparse { .. }) => {
            let max_timestamp_ms = sparse
                .records()
                .filter_map(Result::ok)
                .map(|r| r.view.timestamp_ms)
                .max()
                .unwrap_or(i64::MIN);
            BatchSummary {
                count: u32::try_from(sparse.end().saturating_sub(base)).unwrap_or(u32::MAX),
                bytes: stored.len() as u64 + 9,
                max_timestamp_ms,
            }
        }
        _ => summarize(stored, batch_count(stored).unwrap_or(0)),
    }
}

fn summarize(stored: &[u8], count: u32) -> BatchSummary {
    BatchSummary::of_stored(stored).unwrap_or(BatchSummary {
        count,
        bytes: stored.len() as u64,
        max_timestamp_ms: i64::MIN,
    })
}

impl PartitionLogic {
    /// Stages an appended batch of `count > 0` records at `base` as stored batches of at
    /// most [`MAX_STORED_RUN_BYTES`] of records each (one record may be larger), and
    /// indexes them. Each stored batch is copied once into the engine's value; the pieces
    /// of a large batch are assembled in one reused buffer first.
    fn store_pieces(&mut self, base: u64, stored: &[u8], count: u32, batch: &mut WriteBatch) {
        let run = stored.get(BATCH_HEADER_LEN..).unwrap_or_default();
        let pieces = split_run(run, count, MAX_STORED_RUN_BYTES);
        if let [piece] = pieces.as_slice() {
            let summary = BatchSummary::of_piece(piece);
            self.stage_batch(base, Value::from(stored), summary, batch);
            return;
        }
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

    /// Stages one stored batch at `base` and its index entry.
    fn stage_batch(
        &mut self,
        base: u64,
        stored: Value,
        summary: BatchSummary,
        batch: &mut WriteBatch,
    ) {
        if self.compacted {
            // Shares the value's buffer.
            self.staged_batches
                .insert(base, Some(stored.clone().into_bytes()));
        }
        batch.insert_value(batch_key(base).to_vec(), stored);
        self.index.insert(base, summary);
        self.changes.push(IndexChange::Insert(base, summary));
    }
}

impl GroupLogic for PartitionLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        let _ = self.shared.tree.set(state.clone());
        self.staged = match state.get(BOUNDS_KEY)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(|e| StorageIoError::Codec {
                what: "partition bounds",
                source: e,
            })?,
            None => LogBounds::default(),
        };
        self.index = BatchIndex::default();
        self.garbage.clear();
        self.staged_batches.clear();
        let end = [BATCH_PREFIX + 1];
        for item in state.range(&[BATCH_PREFIX], Some(&end)) {
            let (key, stored) = item?;
            let Some(base) = base_offset_of(&key) else {
                continue;
            };
            let summary = summarize_at(base, &stored);
            if base + u64::from(summary.count) <= self.staged.log_start {
                // Trimmed before a restart, or received in an older snapshot.
                self.garbage.push(base);
            } else {
                self.index.insert(base, summary);
            }
        }
        self.keys.written();
        self.progress = match state.get(PROGRESS_KEY)? {
            Some(raw) => postcard::from_bytes(&raw).unwrap_or_default(),
            None => CompactionProgress::default(),
        };
        *self
            .shared
            .compaction
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = self.progress;
        self.changes.clear();
        self.changes.push(IndexChange::Reset(self.index.clone()));
        self.shared.bounds.send_replace(self.staged);
        Ok(())
    }

    fn apply(
        &mut self,
        _index: u64,
        command: &Command,
        state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        self.collect_garbage(batch);
        match command.0.first() {
            Some(&TAG_APPEND) => {
                let stored = command.0.slice(1..);
                let count = match batch_count(&stored) {
                    // The sparse flag is reserved for compaction's output.
                    Ok(count) if count & SPARSE_FLAG != 0 => {
                        warn!("skipping append command with a reserved count");
                        return Ok(CommandResponse::default());
                    }
                    Ok(count) => count,
                    Err(error) => {
                        // The leader validated this batch; a bad one is skipped on every
                        // replica alike, so replicas stay identical.
                        warn!(%error, "skipping undecodable append command");
                        return Ok(CommandResponse::default());
                    }
                };
                let base = self.staged.next_offset;
                if count > 0 {
                    if self.compacted {
                        if let Err(error) = self.keys.index_appended(base, &stored, batch) {
                            // Undecodable records index nothing, alike on every replica.
                            warn!(%error, "append command's records did not decode for the key index");
                        }
                    }
                    self.store_pieces(base, &stored, count, batch);
                    self.staged.next_offset += u64::from(count);
                    self.stage_bounds(batch)?;
                }
                Ok(CommandResponse(Bytes::copy_from_slice(&base.to_le_bytes())))
            }
            Some(&TAG_TRIM) => {
                let Some(raw) = command
                    .0
                    .get(1..9)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                else {
                    warn!("skipping undecodable trim command");
                    return Ok(CommandResponse::default());
                };
                let log_start = self.trim(u64::from_le_bytes(raw), batch)?;
                self.collect_garbage(batch);
                Ok(CommandResponse(Bytes::copy_from_slice(
                    &log_start.to_le_bytes(),
                )))
            }
            Some(&TAG_COMPACT_UNWINDOWED) => {
                warn!("skipping compact command of an earlier format");
                Ok(CommandResponse::default())
            }
            Some(&TAG_COMPACT) => {
                let Ok(compact) = postcard::from_bytes::<CompactCommand>(&command.0[1..]) else {
                    warn!("skipping undecodable compact command");
                    return Ok(CommandResponse::default());
                };
                self.compact(&compact, state, batch)
            }
            _ => {
                warn!("skipping unknown partition command");
                Ok(CommandResponse::default())
            }
        }
    }

    fn applied(&mut self) {
        if !self.changes.is_empty() {
            let mut index = self
                .shared
                .index
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for change in self.changes.drain(..) {
                match change {
                    IndexChange::Insert(base, summary) => index.insert(base, summary),
                    IndexChange::Remove(base) => index.remove(base),
                    IndexChange::TrimTo(log_start) => drop(index.trim_to(log_start)),
                    IndexChange::Reset(fresh) => *index = fresh,
                }
            }
        }
        if self.compacted {
            self.keys.written();
            self.staged_batches.clear();
            *self
                .shared
                .compaction
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = self.progress;
        }
        self.shared.bounds.send_if_modified(|current| {
            let changed = *current != self.staged;
            *current = self.staged;
            changed
        });
    }

    fn snapshot_plan(&self, state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        let bounds = match state.get(BOUNDS_KEY)? {
            Some(raw) => raw.to_vec(),
            None => {
                return Ok(SnapshotPlan {
                    pinned: Vec::new(),
                    lazy: None,
                })
            }
        };
        // Batches below next_offset never change once written, and the ones retention
        // removes stay in the tree while the snapshot hold taken next is alive, so they may
        // be streamed after this point while appends and trims continue. The range starts
        // at the oldest retained batch (it may straddle the log start), not at the log start.
        let first = self.index.first_base().unwrap_or(self.staged.next_offset);
        // A compacted topic's snapshot also carries the key index, read after the batches
        // (see `key_index`), and pins the compaction progress. Compaction goes on while the
        // range is read, so a compacted topic's batches are not a cut at the plan but one
        // that replaying the log after it repairs (see `compaction`, "Every replica
        // converges"). Batches appended meanwhile may come along: replay writes the same
        // bytes under the same keys.
        let mut pinned = vec![(BOUNDS_KEY.to_vec(), bounds)];
        let end = if self.compacted {
            if let Some(progress) = state.get(PROGRESS_KEY)? {
                pinned.push((PROGRESS_KEY.to_vec(), progress.to_vec()));
            }
            INDEX_END.to_vec()
        } else {
            batch_key(self.staged.next_offset).to_vec()
        };
        Ok(SnapshotPlan {
            pinned,
            lazy: Some((batch_key(first).to_vec(), Some(end))),
        })
    }

    fn retained_bytes(&self) -> Option<u64> {
        Some(self.index.stored_bytes())
    }

    fn snapshot_hold(&self) -> Option<SnapshotHold> {
        // Right after the plan, with no apply in between: the plan's high watermark.
        let bound = self.staged.next_offset;
        self.shared.holds().push(bound);
        Some(Box::new(SnapshotRangeHold {
            shared: self.shared.clone(),
            bound,
        }))
    }
}

impl PartitionReader {
    /// The current bounds (high watermark and log start) of this replica.
    pub fn bounds(&self) -> LogBounds {
        *self.shared.bounds.borrow()
    }

    /// `OutOfRange` when `offset` is below the log start as it is now: a read that found
    /// nothing at `offset` after a trim removed it answers as if the trim had come first.
    fn refuse_if_trimmed(&self, offset: u64) -> Result<(), ReadError> {
        let now = self.bounds();
        if offset < now.log_start {
            return Err(ReadError::OutOfRange {
                offset,
                log_start: now.log_start,
                high_watermark: now.next_offset,
            });
        }
        Ok(())
    }

    /// Stored size of the retained batches on this replica, in bytes.
    pub fn stored_bytes(&self) -> u64 {
        self.with_index(BatchIndex::stored_bytes)
    }

    /// Runs `f` over the retained batches as written on this replica (the retention tick
    /// plans its trims from it). Keep `f` short: applies wait for the same lock.
    pub fn with_index<R>(&self, f: impl FnOnce(&BatchIndex) -> R) -> R {
        let index = self
            .shared
            .index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&index)
    }

    /// A watch that changes whenever the bounds do: long-polls wait on it.
    pub fn subscribe(&self) -> watch::Receiver<LogBounds> {
        self.shared.bounds.subscribe()
    }

    /// The state shared with the logic (compaction progress).
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The partition's state tree, once loaded (key views read the index from it).
    pub(super) fn state_tree(&self) -> Option<&Tree> {
        self.shared.tree.get()
    }

    /// Reads committed records from `offset` on, with their offsets: at most
    /// `max_records`, and at most `max_bytes` of encodings except that one record is
    /// always returned. The read crosses the gaps compaction left (a compacted range
    /// yields its survivors at their original offsets; an `offset` inside a gap starts at
    /// the next survivor), so a compacted topic reads in full pages. An empty answer
    /// (nothing from `offset` on) has `next_offset` at the high watermark.
    ///
    /// # Errors
    /// [`ReadError::OutOfRange`] outside `[log_start, high_watermark]`.
    pub fn read(
        &self,
        offset: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<FetchedRecords, ReadError> {
        let tree = self.shared.tree.get().ok_or(ReadError::NotReady)?;
        let bounds = self.bounds();
        if offset < bounds.log_start || offset > bounds.next_offset {
            return Err(ReadError::OutOfRange {
                offset,
                log_start: bounds.log_start,
                high_watermark: bounds.next_offset,
            });
        }
        let mut out = FetchedRecords {
            first_offset: bounds.next_offset,
            count: 0,
            bytes: Bytes::new(),
            offsets: Vec::new(),
            next_offset: bounds.next_offset,
            log_start: bounds.log_start,
            high_watermark: bounds.next_offset,
        };
        if offset == bounds.next_offset || max_records == 0 {
            out.first_offset = offset;
            out.next_offset = offset;
            return Ok(out);
        }
        let storage = |e: StorageIoError| ReadError::Storage(e.to_string());
        let decode = |e: RecordCodecError| ReadError::Storage(e.to_string());
        // The greatest batch key at or below `offset`: no batch keyed lower holds an offset
        // at or above it. A sparse batch is keyed above its first offsets, so the one
        // holding `offset` may come later in key order: scan upwards from here.
        let start_key = match tree.get_at_or_before(&batch_key(offset)).map_err(storage)? {
            Some((key, _)) if base_offset_of(&key).is_some() => key.to_vec(),
            _ => batch_key(bounds.log_start).to_vec(),
        };
        let end_key = batch_key(bounds.next_offset);
        let mut buf = BytesMut::new();
        // The next offset wanted: records below it are skipped (before `offset`, or a second
        // copy met while a compaction rewrote batches under the scan).
        let mut expected = offset;
        // Where a read stopped by a limit continues; `None` when it ran to the end.
        let mut stopped_at = None;
        // Batch keys after the last one scanned (from the start key on, before any).
        let mut unscanned_from = base_offset_of(&start_key).unwrap_or(bounds.log_start);
        'batches: for item in tree.range(&start_key, Some(&end_key)) {
            let (key, stored) = item.map_err(storage)?;
            let Some(base) = base_offset_of(&key) else {
                break;
            };
            unscanned_from = base + 1;
            for record in StoredBatch::parse(base, &stored).map_err(decode)?.records() {
                let record = record.map_err(decode)?;
                if record.offset < expected {
                    continue;
                }
                if out.count == 0 {
                    if record.offset != offset {
                        // Either compaction removed `offset` (fine: start at the survivor),
                        // or the batch holding it left the tree after the bounds were read
                        // (a trim): then answer as if the trim had come first.
                        self.refuse_if_trimmed(offset)?;
                    }
                    out.first_offset = record.offset;
                } else if buf.len() + record.encoded.len() > max_bytes {
                    // The record that did not fit is the next to read: past any gap before it.
                    stopped_at = Some(record.offset);
                    break 'batches;
                }
                buf.extend_from_slice(record.encoded);
                out.offsets.push(record.offset);
                out.count += 1;
                expected = record.offset + 1;
                if out.count >= max_records {
                    stopped_at = Some(expected);
                    break 'batches;
                }
            }
        }
        if out.count == 0 {
            // Nothing from `offset` on: compacted away, or trimmed after the bounds were read.
            self.refuse_if_trimmed(offset)?;
        }
        match stopped_at {
            Some(next) => out.next_offset = next,
            // The scan ran to the end, so the answer says "nothing more below the high
            // watermark": true only if it met every batch the bounds it read account for.
            // A batch those bounds count but the scan did not meet means the state changed
            // under it (a snapshot reloading it): answering the high watermark as the next
            // offset would make a reader skip that batch. Found by the chaos harness (a
            // consumer-group member skipped 50 records).
            None => {
                let missed = self
                    .with_index(|index| index.holds_batch_in(unscanned_from, bounds.next_offset));
                if missed {
                    return Err(ReadError::NotReady);
                }
            }
        }
        if out.offsets.windows(2).all(|w| w[1] == w[0] + 1) {
            // Dense: the offsets are implied by `first_offset`.
            out.offsets.clear();
        }
        out.bytes = buf.freeze();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use psubd_raft::{NodeStorage, StateMachine};

    use super::super::compaction::next_window_end;
    use super::*;
    use crate::record::{join_batch, EncodedRecords, Record, RecordIter, ValueKind};

    fn records(from: u32, count: u32, size: usize) -> EncodedRecords {
        let records: Vec<Record> = (from..from + count)
            .map(|i| Record {
                timestamp_ms: i as i64,
                kind: ValueKind::String,
                key: None,
                value: Some(Bytes::from(format!("{i:0size$}"))),
                headers: Vec::new(),
            })
            .collect();
        EncodedRecords::encode(&records).unwrap()
    }

    fn entry(index: u64, command: Command) -> Entry<psubd_raft::TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    /// The offsets of a read, as its iterator yields them.
    fn offsets(fetched: &FetchedRecords) -> Vec<u64> {
        fetched.iter().map(|r| r.unwrap().0).collect()
    }

    fn values(fetched: &FetchedRecords) -> Vec<String> {
        RecordIter::run(&fetched.bytes)
            .map(|r| {
                String::from_utf8(r.unwrap().value.unwrap().to_vec())
                    .unwrap()
                    .trim_start_matches('0')
                    .to_string()
            })
            .collect()
    }

    /// A fresh partition replica (group 7) in a temporary directory: the directory (kept
    /// alive), its storage (to reopen the replica), the reader and the state machine.
    fn open_partition() -> (
        tempfile::TempDir,
        NodeStorage,
        PartitionReader,
        StateMachine,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::new();
        let sm = storage.state_machine(7, Box::new(logic)).unwrap();
        (dir, storage, reader, sm)
    }

    #[tokio::test]
    async fn offsets_are_dense_across_batches_and_reads_slice_them() {
        let (_dir, _storage, reader, mut sm) = open_partition();
        // Entry 1 carries two requests (3 + 2 records), entry 2 one request (4 records).
        let a = records(1, 3, 4);
        let b = records(4, 2, 4);
        let c = records(6, 4, 4);
        let responses = sm
            .apply(vec![
                entry(1, append_command(&join_batch([&a, &b].into_iter()))),
                entry(2, append_command(&join_batch([&c].into_iter()))),
            ])
            .await
            .unwrap();
        assert_eq!(decode_append_response(&responses[0]), Some(0));
        assert_eq!(decode_append_response(&responses[1]), Some(5));
        assert_eq!(
            reader.bounds(),
            LogBounds {
                log_start: 0,
                next_offset: 9
            }
        );

        // A read starting inside the first batch crosses into the second.
        let fetched = reader.read(2, 100, 1 << 20).unwrap();
        assert_eq!(
            (fetched.first_offset, fetched.count, fetched.high_watermark),
            (2, 7, 9)
        );
        assert_eq!(values(&fetched), vec!["3", "4", "5", "6", "7", "8", "9"]);

        // max_records and max_bytes cut the answer; one record always fits.
        assert_eq!(reader.read(4, 2, 1 << 20).unwrap().count, 2);
        assert_eq!(reader.read(0, 100, 1).unwrap().count, 1);

        // The end of the log is an empty answer; past it, out of range.
        assert_eq!(reader.read(9, 100, 1 << 20).unwrap().count, 0);
        assert!(matches!(
            reader.read(10, 100, 1 << 20),
            Err(ReadError::OutOfRange {
                high_watermark: 9,
                ..
            })
        ));
    }

    /// Regression (chaos harness, power and kill faults, seed 10): a read whose scan misses a
    /// batch the bounds count (the state was being reloaded under it) must not answer the
    /// high watermark as its next offset, or a group member skips that batch for good.
    #[tokio::test]
    async fn a_read_that_misses_a_counted_batch_is_refused_not_skipped() {
        use super::super::retention::BatchSummary;
        let (_dir, _storage, reader, mut sm) = open_partition();
        sm.apply(vec![
            entry(
                1,
                append_command(&join_batch([&records(0, 3, 4)].into_iter())),
            ),
            entry(
                2,
                append_command(&join_batch([&records(3, 3, 4)].into_iter())),
            ),
        ])
        .await
        .unwrap();
        assert_eq!(reader.read(0, 100, 1 << 20).unwrap().next_offset, 6);
        // The index (published with the bounds) counts a batch the tree scan cannot meet,
        // as while a snapshot load has cleared the tree and not yet written it back.
        let summary = BatchSummary {
            count: 1,
            bytes: 20,
            max_timestamp_ms: 0,
        };
        reader.shared.index.lock().unwrap().insert(5, summary);
        assert!(matches!(
            reader.read(0, 100, 1 << 20),
            Err(ReadError::NotReady)
        ));
        // A read stopped by its limit before the missing batch is still exact.
        assert_eq!(reader.read(0, 2, 1 << 20).unwrap().next_offset, 2);
    }

    #[tokio::test]
    async fn a_large_entry_is_stored_in_bounded_batches_that_read_as_one_log() {
        let (_dir, storage, reader, mut sm) = open_partition();
        // 40 records of 1,000 bytes in one entry, then a small entry.
        let large = join_batch([&records(1, 40, 1000)].into_iter());
        assert!(large.len() > 4 * MAX_STORED_RUN_BYTES);
        let small = join_batch([&records(41, 2, 4)].into_iter());
        sm.apply(vec![
            entry(1, append_command(&large)),
            entry(2, append_command(&small)),
        ])
        .await
        .unwrap();

        let keys = batch_keys(sm.tree());
        assert!(keys.len() >= 5, "stored as {keys:?}");
        assert_eq!((keys[0], *keys.last().unwrap()), (0, 40));
        let mut stored_total = 0;
        for (key, value) in sm
            .tree()
            .range(&[BATCH_PREFIX], Some(&[BATCH_PREFIX + 1]))
            .map(Result::unwrap)
        {
            assert!(
                value.len() <= BATCH_HEADER_LEN + MAX_STORED_RUN_BYTES,
                "batch {key:?}"
            );
            stored_total += value.len() as u64 + 9;
        }
        assert_eq!(reader.stored_bytes(), stored_total);

        // Reads cross the pieces in order, from the start and from inside a piece.
        let all = reader.read(0, 1000, 1 << 20).unwrap();
        assert_eq!(offsets(&all), (0..42).collect::<Vec<u64>>());
        let expected: Vec<String> = (1..=42).map(|i| i.to_string()).collect();
        assert_eq!(values(&all), expected);
        let middle = reader.read(13, 5, 1 << 20).unwrap();
        assert_eq!(offsets(&middle), (13..18).collect::<Vec<u64>>());

        // A trim inside the second piece removes only the first.
        sm.apply(vec![entry(3, trim_command(keys[1] + 1))])
            .await
            .unwrap();
        assert_eq!(batch_keys(sm.tree()), keys[1..].to_vec());
        let read = reader.read(keys[1] + 1, 1000, 1 << 20).unwrap();
        assert_eq!(read.first_offset, keys[1] + 1);
        assert_eq!(*offsets(&read).last().unwrap(), 41);

        // A reopened replica indexes the same pieces.
        let before = reader.with_index(|index| index.clone());
        drop(sm);
        let (logic, reopened) = PartitionLogic::new();
        let _sm = storage.state_machine(7, Box::new(logic)).unwrap();
        assert_eq!(reopened.with_index(|index| index.clone()), before);
    }

    fn batch_keys(tree: &Tree) -> Vec<u64> {
        tree.range(&[BATCH_PREFIX], Some(&[BATCH_PREFIX + 1]))
            .map(|item| base_offset_of(&item.unwrap().0).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn trim_moves_the_log_start_removes_whole_batches_and_accounts_bytes() {
        let (_dir, _storage, reader, mut sm) = open_partition();
        let batches: Vec<Bytes> = (0..3)
            .map(|i| join_batch([&records(i * 5, 5, 8)].into_iter()))
            .collect();
        let total: u64 = batches.iter().map(|b| b.len() as u64 + 9).sum();
        sm.apply(
            batches
                .iter()
                .enumerate()
                .map(|(i, b)| entry(i as u64 + 1, append_command(b)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        assert_eq!(reader.stored_bytes(), total);

        // A trim inside the second batch removes only the first (whole batches only).
        sm.apply(vec![entry(4, trim_command(7))]).await.unwrap();
        assert_eq!(
            reader.bounds(),
            LogBounds {
                log_start: 7,
                next_offset: 15
            }
        );
        assert_eq!(reader.stored_bytes(), total - (batches[0].len() as u64 + 9));
        assert_eq!(batch_keys(sm.tree()), vec![5, 10]);
        assert!(matches!(
            reader.read(6, 10, 1 << 20),
            Err(ReadError::OutOfRange { log_start: 7, .. })
        ));
        let fetched = reader.read(7, 100, 1 << 20).unwrap();
        assert_eq!((fetched.first_offset, fetched.count), (7, 8));

        // Never backwards, never past the high watermark; offsets continue after it.
        sm.apply(vec![entry(5, trim_command(3)), entry(6, trim_command(99))])
            .await
            .unwrap();
        assert_eq!(
            reader.bounds(),
            LogBounds {
                log_start: 15,
                next_offset: 15
            }
        );
        assert_eq!(reader.stored_bytes(), 0);
        assert!(batch_keys(sm.tree()).is_empty());
        let next = join_batch([&records(15, 2, 8)].into_iter());
        let responses = sm
            .apply(vec![entry(7, append_command(&next))])
            .await
            .unwrap();
        assert_eq!(decode_append_response(&responses[0]), Some(15));
    }

    #[tokio::test]
    async fn a_snapshot_keeps_every_batch_its_bounds_claim_while_trims_run() {
        let (_dir, _storage, reader, mut sm) = open_partition();
        let batches: Vec<Bytes> = (0..4)
            .map(|i| join_batch([&records(i * 5, 5, 8)].into_iter()))
            .collect();
        sm.apply(
            batches
                .iter()
                .enumerate()
                .map(|(i, b)| entry(i as u64 + 1, append_command(b)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        sm.apply(vec![entry(5, trim_command(5))]).await.unwrap();

        // The plan is taken at log start 5; a trim to 15 lands before the range is read.
        let mut builder = sm.get_snapshot_builder().await;
        sm.apply(vec![entry(6, trim_command(15))]).await.unwrap();
        assert_eq!(reader.bounds().log_start, 15);
        sm.apply(vec![entry(7, append_command(&batches[0]))])
            .await
            .unwrap();
        // Held: the trimmed batches are still in the tree (but not readable).
        assert_eq!(batch_keys(sm.tree()), vec![5, 10, 15, 20]);
        assert!(reader.read(10, 1, 1 << 20).is_err());
        let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
        drop(builder);
        // Released: the next apply removes them.
        let more = join_batch([&records(25, 1, 8)].into_iter());
        sm.apply(vec![entry(8, append_command(&more))])
            .await
            .unwrap();
        assert_eq!(batch_keys(sm.tree()), vec![15, 20, 25]);

        // A fresh replica installing the snapshot has log start 5 and every batch from it.
        let other = tempfile::tempdir().unwrap();
        let other_storage = NodeStorage::open(other.path(), 1 << 20).unwrap();
        let (logic, other_reader) = PartitionLogic::new();
        let mut other_sm = other_storage.state_machine(7, Box::new(logic)).unwrap();
        other_sm
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(
            other_reader.bounds(),
            LogBounds {
                log_start: 5,
                next_offset: 20
            }
        );
        assert_eq!(other_reader.read(5, 100, 1 << 20).unwrap().count, 15);
        assert_eq!(batch_keys(other_sm.tree()), vec![5, 10, 15]);
        let retained: u64 = batches[1..].iter().map(|b| b.len() as u64 + 9).sum();
        assert_eq!(other_reader.stored_bytes(), retained);
    }

    /// Each phase runs in its own runtime; the first closes its storage, and the second
    /// waits for the database lock to be released, as a restarted process would find it.
    #[test]
    fn state_survives_reopen_and_a_bad_command_is_skipped_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let storage = NodeStorage::open(&path, 1 << 20).unwrap();
            let (logic, _) = PartitionLogic::new();
            let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
            let batch = join_batch([&records(0, 5, 2)].into_iter());
            let garbage = Command(Bytes::from_static(&[TAG_APPEND, 1]));
            sm.apply(vec![entry(1, append_command(&batch)), entry(2, garbage)])
                .await
                .unwrap();
            storage.close().await.unwrap();
        });
        NodeStorage::wait_until_released(&path, std::time::Duration::from_secs(10)).unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let storage = NodeStorage::open(&path, 1 << 20).unwrap();
            let (logic, reader) = PartitionLogic::new();
            let _sm = storage.state_machine(7, Box::new(logic)).unwrap();
            assert_eq!(reader.bounds().next_offset, 5);
            assert_eq!(reader.read(0, 100, 1 << 20).unwrap().count, 5);
        });
    }

    fn keyed(key: &str, value: Option<&str>, ts: i64) -> Record {
        Record {
            timestamp_ms: ts,
            kind: ValueKind::String,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
        }
    }

    fn append(records: &[Record]) -> Command {
        let encoded = EncodedRecords::encode(records).unwrap();
        append_command(&join_batch([&encoded].into_iter()))
    }

    /// A whole pass over the batches below `pass_end` in one window, on a topic whose
    /// `delete_retention_ms` is 100.
    fn compact(pass_end: u64, now_ms: i64) -> Command {
        compact_command(&CompactCommand {
            pass_end,
            from: 0,
            to: pass_end,
            purge_before_ms: now_ms - 100,
        })
    }

    /// A pass over the batches below `pass_end` in the windows a leader holding `tree`
    /// would choose (at most 64 batches each), with `delete_retention_ms` 100.
    fn pass_in_windows(tree: &Tree, pass_end: u64, now_ms: i64) -> Vec<Command> {
        let mut commands = Vec::new();
        let mut from = 0;
        loop {
            let to = next_window_end(tree, from, pass_end).unwrap();
            commands.push(compact_command(&CompactCommand {
                pass_end,
                from,
                to,
                purge_before_ms: now_ms - 100,
            }));
            if to >= pass_end {
                return commands;
            }
            from = to;
        }
    }

    fn value_of(reader: &PartitionReader, key: &str) -> Option<(u64, String)> {
        reader.latest(key.as_bytes()).unwrap().map(|r| {
            let record = RecordIter::run(&r.encoded).next().unwrap().unwrap();
            (
                r.offset,
                String::from_utf8(record.value.unwrap().to_vec()).unwrap(),
            )
        })
    }

    /// The key index follows appends; a compact command (even in the same apply call as
    /// the appends it compacts) keeps the latest record per key at its original offset,
    /// drops old tombstones with their key, and reads slice the sparse batch.
    #[tokio::test]
    async fn compaction_keeps_latest_per_key_and_reads_slice_sparse_batches() {
        let dir = tempfile::tempdir().unwrap();
        let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
        let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
        sm.apply(vec![
            // 0..3
            entry(
                1,
                append(&[
                    keyed("a", Some("a0"), 0),
                    keyed("b", Some("b1"), 0),
                    keyed("c", Some("c2"), 0),
                ]),
            ),
            // 3..6: c deleted long ago, a updated, d deleted just now
            entry(
                2,
                append(&[
                    keyed("c", None, 0),
                    keyed("a", Some("a4"), 0),
                    keyed("d", None, 1_000),
                ]),
            ),
        ])
        .await
        .unwrap();
        assert_eq!(value_of(&reader, "a"), Some((4, "a4".into())));
        assert_eq!(value_of(&reader, "c"), None, "tombstoned");
        // Same apply call: an append of b, then a compaction up to 6 (written end 6).
        sm.apply(vec![
            entry(3, append(&[keyed("b", Some("b6"), 0)])),
            entry(4, compact(6, 1_050)),
        ])
        .await
        .unwrap();
        // The pass covered 0..6 in one chunk: survivors a@4 and d@5 (tombstone too young);
        // b@1 dropped (b6 is newer), c's tombstone purged.
        let fetched = reader.read(0, 100, 1 << 20).unwrap();
        assert_eq!((fetched.first_offset, fetched.count), (4, 3));
        assert!(
            fetched.offsets.is_empty(),
            "4, 5, 6 are consecutive: implied"
        );
        assert_eq!(fetched.next_offset, 7);
        assert_eq!(offsets(&fetched), vec![4, 5, 6]);
        assert_eq!(value_of(&reader, "b"), Some((6, "b6".into())));
        assert_eq!(value_of(&reader, "a"), Some((4, "a4".into())));
        assert_eq!(value_of(&reader, "c"), None);
        assert!(
            super::super::key_index::lookup(reader.state_tree().unwrap(), b"c")
                .unwrap()
                .is_none(),
            "c's index entry went with its tombstone"
        );
        // Offsets never move: reads from inside the gap start at the next survivor.
        let from_one = reader.read(1, 100, 1 << 20).unwrap();
        assert_eq!(from_one.first_offset, 4);
        // max_records stops the read; next_offset then follows the last record.
        let one = reader.read(0, 1, 1 << 20).unwrap();
        assert_eq!((one.offsets.len(), one.count, one.next_offset), (0, 1, 5));
        // A later pass (after the tombstone aged) drops d and its key.
        sm.apply(vec![entry(5, compact(7, 5_000))]).await.unwrap();
        let fetched = reader.read(0, 100, 1 << 20).unwrap();
        assert_eq!(fetched.offsets, vec![4, 6]);
        assert_eq!(offsets(&fetched), vec![4, 6]);
        assert_eq!(
            reader.bounds().next_offset,
            7,
            "the high watermark never moves back"
        );
        // New appends continue the offsets.
        let responses = sm
            .apply(vec![entry(6, append(&[keyed("a", Some("a7"), 0)]))])
            .await
            .unwrap();
        assert_eq!(decode_append_response(&responses[0]), Some(7));
        assert_eq!(value_of(&reader, "a"), Some((7, "a7".into())));
        let scan = reader.scan_keys(b"", b"", 10).unwrap();
        let keys: Vec<_> = scan.records.iter().map(|r| r.key.clone()).collect();
        assert_eq!(
            keys,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
    }

    /// Reads cross compacted gaps and sparse batches up to the limits: every
    /// record comes with its original offset, `next_offset` continues past the gaps, and
    /// paging by records or by bytes yields every survivor exactly once.
    #[tokio::test]
    async fn reads_cross_sparse_batches_with_original_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
        let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
        // Entry i holds x{i}, hot, y{i} at 3i, 3i+1, 3i+2 (values name their offset); the
        // last entry a value and an old tombstone of "gone" at 300, 301.
        let value = |offset: u64| format!("v{offset:05}");
        let mut entries: Vec<_> = (0..100u64)
            .map(|i| {
                entry(
                    i + 1,
                    append(&[
                        keyed(&format!("x{i:03}"), Some(&value(3 * i)), 0),
                        keyed("hot", Some(&value(3 * i + 1)), 0),
                        keyed(&format!("y{i:03}"), Some(&value(3 * i + 2)), 0),
                    ]),
                )
            })
            .collect();
        entries.push(entry(
            101,
            append(&[keyed("gone", Some(&value(300)), 0), keyed("gone", None, 0)]),
        ));
        sm.apply(entries).await.unwrap();
        // One window per command (at most 64 batches).
        let compacts: Vec<_> = pass_in_windows(sm.tree(), 302, 5_000)
            .into_iter()
            .enumerate()
            .map(|(i, command)| entry(102 + i as u64, command))
            .collect();
        assert_eq!(compacts.len(), 2);
        sm.apply(compacts).await.unwrap();
        assert!(
            batch_keys(sm.tree()).len() > 1,
            "the survivors span several stored batches"
        );
        // Survivors: x{i} and y{i}, hot only at 298; 300 and 301 gone (a trailing gap).
        let mut survivors: Vec<u64> = (0..100u64).flat_map(|i| [3 * i, 3 * i + 2]).collect();
        survivors.push(298);
        survivors.sort_unstable();
        let check = |fetched: &FetchedRecords| {
            for record in fetched.iter() {
                let (offset, view) = record.unwrap();
                assert_eq!(view.value, Some(value(offset).as_bytes()), "at {offset}");
            }
        };

        // One read returns every survivor at its offset and continues past the trailing gap.
        let all = reader.read(0, 1_000, 1 << 20).unwrap();
        check(&all);
        assert_eq!(offsets(&all), survivors);
        assert_eq!((all.first_offset, all.count as usize), (0, survivors.len()));
        assert_eq!((all.next_offset, all.high_watermark), (302, 302));

        // Limited by records: next_offset follows the last record; pages cover all once.
        let some = reader.read(0, 50, 1 << 20).unwrap();
        assert_eq!(offsets(&some), survivors[..50]);
        assert_eq!(some.next_offset, survivors[49] + 1);
        let page_through = |max_records: u32, max_bytes: usize| {
            let (mut offset, mut seen, mut pages) = (0, Vec::new(), 0);
            loop {
                let page = reader.read(offset, max_records, max_bytes).unwrap();
                check(&page);
                assert!(page.next_offset > offset || page.count == 0);
                if page.count == 0 {
                    assert_eq!(page.next_offset, 302);
                    return (seen, pages);
                }
                seen.extend(offsets(&page));
                offset = page.next_offset;
                pages += 1;
            }
        };
        assert_eq!(page_through(7, 1 << 20), (survivors.clone(), 29));

        // Limited by bytes: the record that did not fit is where the next read starts
        // (past the gap before it); one record always fits.
        let size = reader.read(0, 1, 1 << 20).unwrap().bytes.len();
        let ten = reader.read(0, 1_000, 10 * size).unwrap();
        assert_eq!(offsets(&ten), survivors[..10]);
        assert_eq!(ten.next_offset, survivors[10]);
        assert_eq!(page_through(1_000, 10 * size), (survivors.clone(), 21));
        let tiny = reader.read(0, 1_000, 1).unwrap();
        assert_eq!((offsets(&tiny), tiny.next_offset), (vec![0], 2));

        // From inside a gap: the next survivor; from inside the trailing gap: empty, at
        // the high watermark.
        let from_gap = reader.read(1, 3, 1 << 20).unwrap();
        assert_eq!(
            (offsets(&from_gap), from_gap.next_offset),
            (vec![2, 3, 5], 6)
        );
        let last = reader.read(299, 100, 1 << 20).unwrap();
        assert_eq!((offsets(&last), last.next_offset), (vec![299], 302));
        let trailing = reader.read(300, 100, 1 << 20).unwrap();
        assert_eq!(
            (trailing.count, trailing.first_offset, trailing.next_offset),
            (0, 302, 302)
        );
        let end = reader.read(302, 100, 1 << 20).unwrap();
        assert_eq!((end.count, end.next_offset), (0, 302));
    }

    /// Records and key views of a replica, for comparing replicas: every stored record with
    /// its offset and value (`None` for a tombstone), and the view of keys k0..k9.
    type Content = (Vec<(u64, Option<String>)>, Vec<Option<(u64, String)>>);

    fn content(reader: &PartitionReader) -> Content {
        let fetched = reader
            .read(reader.bounds().log_start, 10_000, 1 << 30)
            .unwrap();
        let records = fetched
            .iter()
            .map(|r| {
                let (offset, view) = r.unwrap();
                let value = view.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                (offset, value)
            })
            .collect();
        let views = (0..10)
            .map(|k| value_of(reader, &format!("k{k}")))
            .collect();
        (records, views)
    }

    /// A compaction pass applied while a snapshot build holds the batch range runs
    /// at once (it is not skipped, so no later write is needed for this replica to catch
    /// up) and leaves the same records and key views as on a replica with no build; a
    /// replica that installs the snapshot built meanwhile and replays the log after it ends
    /// up with them too — including the survivors below the plan's high watermark, which a
    /// rewrite into the batch above it would have let the replayed appends overwrite.
    #[tokio::test]
    async fn compaction_under_a_snapshot_hold_converges_with_other_replicas() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let storages: Vec<_> = dirs
            .iter()
            .map(|d| NodeStorage::open(d.path(), 1 << 20).unwrap())
            .collect();
        let mut replicas = Vec::new();
        for storage in &storages {
            let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
            replicas.push((storage.state_machine(7, Box::new(logic)).unwrap(), reader));
        }
        let (mut held, mut free, mut fresh) = {
            let mut it = replicas.into_iter();
            (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
        };
        // Before the plan: 40 batches of 3 updates over k0..k9 (values name their offset),
        // then old tombstones of k8 and k9.
        let value = |offset: u64| format!("v{offset}");
        let mut before: Vec<_> = (0..40u64)
            .map(|i| {
                let records: Vec<Record> = (0..3)
                    .map(|j| {
                        keyed(
                            &format!("k{}", (3 * i + j) % 10),
                            Some(&value(3 * i + j)),
                            0,
                        )
                    })
                    .collect();
                entry(i + 1, append(&records))
            })
            .collect();
        before.push(entry(
            41,
            append(&[keyed("k8", None, 0), keyed("k9", None, 0)]),
        ));
        for sm in [&mut held.0, &mut free.0] {
            sm.apply(before.clone()).await.unwrap();
        }
        let plan_high_watermark = held.1.bounds().next_offset;
        assert_eq!(plan_high_watermark, 122);

        // A snapshot build on `held` plans now and reads the range later.
        let mut builder = held.0.get_snapshot_builder().await;
        // After the plan: updates of k0 and k1, a fresh tombstone of k2, then one pass over
        // everything (the window spans the plan's high watermark), as the leader `free`
        // chooses it; k8's and k9's tombstones are old, k2's is young.
        let mut after = vec![
            entry(42, append(&[keyed("k0", Some(&value(122)), 0)])),
            entry(
                43,
                append(&[keyed("k1", Some(&value(123)), 0), keyed("k2", None, 1_000)]),
            ),
        ];
        for sm in [&mut held.0, &mut free.0] {
            sm.apply(after.clone()).await.unwrap();
        }
        let pass = pass_in_windows(free.0.tree(), 125, 1_000);
        assert_eq!(
            pass.len(),
            1,
            "one window, across the plan's high watermark"
        );
        after.push(entry(44, pass[0].clone()));
        for sm in [&mut held.0, &mut free.0] {
            sm.apply(vec![after[2].clone()]).await.unwrap();
        }

        // The held replica compacted at once, to what the free one holds: k3..k7 at their
        // last offsets, k0 and k1 updated, k2's young tombstone; k8, k9 gone with their keys.
        let want = content(&free.1);
        assert_eq!(content(&held.1), want);
        let offsets_kept: Vec<u64> = want.0.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets_kept, vec![113, 114, 115, 116, 117, 122, 123, 124]);
        assert_eq!(want.0[7], (124, None), "k2's tombstone is young: kept");
        assert_eq!(want.1[8], None);
        assert!(
            super::super::key_index::lookup(held.1.state_tree().unwrap(), b"k9")
                .unwrap()
                .is_none()
        );
        assert_eq!(held.1.compaction_progress(), free.1.compaction_progress());
        // Only the layout differs: the held replica kept its survivors below the plan's high
        // watermark in a batch below it.
        assert_eq!(batch_keys(free.0.tree()), vec![123]);
        assert_eq!(batch_keys(held.0.tree()), vec![120, 123]);

        // The snapshot read now sees the rewritten batches under the plan's bounds. A fresh
        // replica installs it and replays the log after the plan: it ends up alike.
        let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
        drop(builder);
        fresh
            .0
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(fresh.1.bounds().next_offset, plan_high_watermark);
        fresh.0.apply(after.clone()).await.unwrap();
        assert_eq!(content(&fresh.1), want);

        // The hold is over: a later pass (k2's tombstone aged) is applied alike everywhere.
        let later = entry(45, pass_in_windows(free.0.tree(), 125, 5_000)[0].clone());
        for sm in [&mut held.0, &mut free.0, &mut fresh.0] {
            sm.apply(vec![later.clone()]).await.unwrap();
        }
        let want = content(&free.1);
        assert_eq!(want.0.len(), 7, "k2's tombstone is gone");
        assert_eq!(content(&held.1), want);
        assert_eq!(content(&fresh.1), want);
        assert_eq!(
            batch_keys(held.0.tree()),
            vec![123],
            "no hold: merged again"
        );
    }

    /// A window reads the batches that earlier commands of the same apply call staged
    /// (appends and rewrites not yet in the tree): two passes and the appends between them in
    /// one apply call leave what they leave when applied one by one.
    #[tokio::test]
    async fn windows_in_one_apply_call_see_what_earlier_commands_staged() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut replicas = Vec::new();
        for dir in &dirs {
            let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
            let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
            let sm = storage.state_machine(7, Box::new(logic)).unwrap();
            replicas.push((storage, sm, reader));
        }
        let value = |offset: u64| format!("v{offset}");
        let entries: Vec<_> = vec![
            append(&[
                keyed("k0", Some(&value(0)), 0),
                keyed("k1", Some(&value(1)), 0),
            ]),
            append(&[keyed("k0", Some(&value(2)), 0), keyed("k2", None, 0)]),
            compact(4, 1_000),
            append(&[keyed("k1", Some(&value(4)), 0)]),
            compact(5, 1_000),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, command)| entry(i as u64 + 1, command))
        .collect();
        let (_, together, together_reader) = &mut replicas[0];
        together.apply(entries.clone()).await.unwrap();
        let want = content(together_reader);
        let (_, one_by_one, one_by_one_reader) = &mut replicas[1];
        for entry in entries {
            one_by_one.apply(vec![entry]).await.unwrap();
        }
        assert_eq!(content(one_by_one_reader), want);
        let offsets: Vec<u64> = want.0.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            vec![2, 4],
            "k0 and k1 at their latest; k2's old tombstone gone"
        );
    }
}
