//! Log compaction of `cleanup_policy: compact` topics: the rewrite of a chunk of batches
//! that keeps only the latest record of each key, and the [`Compactor`] that applies the
//! leader's `Compact` commands on every replica.
//!
//! Compaction writes sparse batches (see [`super::stored`] for the two stored forms and why
//! a rewrite keeps its survivors under the key of the last batch it replaced).
//!
//! # The rewrite
//!
//! The partition leader proposes `Compact { pass_end, from, to, purge_before_ms }` through
//! Raft on its maintenance tick. A *pass* walks every batch keyed below `pass_end` (the
//! leader's high watermark when the pass started) in *windows*: the command names its window
//! of batch keys `[from, to)`, chosen by the leader from its own batches (at most
//! [`MAX_CHUNK_BATCHES`] batches or [`MAX_CHUNK_BYTES`] bytes there), and a window with
//! `from == 0` starts a new pass. The tombstone cut-off `purge_before_ms` is fixed when the
//! pass starts and carried by every window of it. A record survives when the key index
//! ([`super::key_index`]) names its offset as its key's latest, except a tombstone older than
//! the cut-off, which is dropped together with its index entry. Keyless records are dropped:
//! a compacted topic keeps the latest value per key, and a record without a key is nobody's
//! latest.
//!
//! Why dropping a tombstone is safe: every record of its key below it was in the log when the
//! pass started (the pass only walks keys below what was applied then), and the index then
//! already named the tombstone (or something newer) as latest, so the pass dropped those
//! records at their turn, before it reached the tombstone. A reader of the log never sees a
//! key come back after its tombstone is gone.
//!
//! # Every replica converges
//!
//! Every replica applies every `Compact` command, at once, snapshot build or not, and what a
//! command does depends only on the command, the key index and the records stored in its
//! window, never on how this replica's batches happen to be laid out (compaction may have
//! merged them differently on a replica that installed a snapshot) nor on its own progress:
//! the window and the cut-off travel in the command. So once the leader's last pass (started
//! after the last write) is applied, every replica has walked every record below the high
//! watermark with the same index and the same cut-off, and stores the same records at the
//! same offsets. The leader proposes passes from its own progress, which is therefore
//! enough: there is no replica-local catch-up that only a later write would trigger.
//!
//! Compaction does not pause while a snapshot build reads the batches. An earlier version
//! skipped the command then, and a replica that skipped the last pass kept records the leader
//! had dropped until the next write. Deferring the command to the end of the build would not do
//! either: only an apply can write, only the leader proposes, and an idle topic gets no further
//! apply. Pausing is not needed. This takes more latitude than `GroupLogic::snapshot_plan`
//! describes (keys of the lazy range only ever removed); appends already add keys there, and
//! this logic relies on replaying the log after the snapshot to repair its cut, as follows. The
//! build reads the batches after its plan, key by key, so it may see some windows applied after
//! the plan: a rewrite is atomic and only moves records to a key at or above every key it
//! removes, so the build sees each record of the plan at least once, sometimes twice (a removed
//! batch read before the rewrite and the replacement read after), and misses only records a
//! later window dropped. A replica that installs the snapshot replays every command after the
//! plan, those windows included: the window that made a duplicate processes both copies and
//! keeps one (all copies lie in its window), and a record missing from the cut was dropped by
//! one of those windows, whose replay drops it anyway. The key index the build reads can only
//! be newer than the plan: a replayed window may then drop a superseded record earlier than the
//! leader did, never keep one the leader drops, and the leader's next pass (due, since the log
//! grew) drops it too. One thing replay could not repair: survivors of batches below the plan's
//! high watermark moved into a batch keyed above it, which replaying the appends above it
//! overwrites. So while a build holds the range ([`super::shared`]), a window that
//! spans the plan's high watermark is rewritten as two parts, one on each side. The snapshot
//! also pins the replica's [`CompactionProgress`], so a replica that installs it knows what the
//! pass it joins has found (young tombstones kept) should it become the leader.

use bytes::Bytes;
use psubd_raft::{StorageIoError, Tree, WriteBatch};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::batch_store::BatchStore;
use super::key_index::KeyIndex;
use super::layout::{base_offset_of, batch_key, PROGRESS_KEY};
use super::stored::{encode_sparse, StoredBatch, MAX_STORED_RUN_BYTES};
use crate::record::{RecordCodecError, RecordView};
use crate::topic::{CleanupPolicy, TopicConfig};

/// Most batches one `Compact` command rewrites: bounds the work of one apply.
pub const MAX_CHUNK_BATCHES: usize = 64;

/// Most stored bytes one `Compact` command reads (at least one batch is always taken).
pub const MAX_CHUNK_BYTES: usize = 4 << 20;

/// Below this many stored bytes, consecutive batches that lost nothing are still merged
/// into one, so a compacted log does not stay split into many tiny batches; no larger than
/// an appended batch is stored, so merging does not bring back the large values the piece
/// bound keeps out of sled (see [`MAX_STORED_RUN_BYTES`]).
pub const MERGE_BELOW_BYTES: usize = MAX_STORED_RUN_BYTES;

/// The command a partition leader proposes to compact one window of a pass (see the module
/// docs). Everything a replica needs is in it, so every replica does the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactCommand {
    /// The pass walks batches keyed below this: the leader's high watermark when the pass
    /// started.
    pub pass_end: u64,
    /// First batch key of this window; 0 starts a new pass.
    pub from: u64,
    /// Batch keys below this (and below `pass_end`) are this window's. At `pass_end` or
    /// above, this window ends the pass.
    pub to: u64,
    /// Tombstones with a timestamp below this are dropped; fixed for the whole pass
    /// (`i64::MIN` keeps them all).
    pub purge_before_ms: i64,
}

/// The tombstone cut-off of a pass started at `now_ms` on a topic with
/// `delete_retention_ms` (-1: tombstones are kept forever).
pub fn purge_before_ms(now_ms: i64, delete_retention_ms: i64) -> i64 {
    if delete_retention_ms < 0 {
        return i64::MIN;
    }
    now_ms.saturating_sub(delete_retention_ms)
}

/// Where compaction stands on one replica. Stored in the partition's state tree (so a
/// restart knows it), pinned in snapshots, and read by the leader's maintenance tick to
/// choose the next window. Every field but `tombstones_kept` and `dropped` follows from the
/// commands alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionProgress {
    /// A pass is under way.
    pub active: bool,
    /// The pass walks batch keys below this.
    pub pass_end: u64,
    /// The next batch key (a base offset) the pass looks at: where the next window starts.
    pub cursor: u64,
    /// The pass's tombstone cut-off (see [`CompactCommand::purge_before_ms`]).
    pub purge_before_ms: i64,
    /// `pass_end` of the last pass that finished: the leader starts a new pass once the log
    /// grew past it.
    pub last_pass_end: u64,
    /// The pass kept a tombstone that was not old enough to drop: another pass is due
    /// later even if nothing new arrives.
    pub tombstones_kept: bool,
    /// Records dropped since the partition opened (a figure for logs and tests).
    pub dropped: u64,
}

/// What one record's fate is, given the key index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it: it is its key's latest.
    Keep,
    /// Keep it: the latest, a tombstone too young to drop.
    KeepTombstone,
    /// Drop it: a newer record of its key exists, it has no key, or it is a duplicate.
    Drop,
    /// Drop it and its key's index entry: an old tombstone that is its key's latest.
    Purge,
}

/// Decides one record's fate. `latest` is the key index's offset for the record's key.
pub fn verdict(
    offset: u64,
    view: &RecordView<'_>,
    latest: Option<u64>,
    purge_before_ms: i64,
) -> Verdict {
    if view.key.is_none() || latest != Some(offset) {
        return Verdict::Drop;
    }
    match view.value {
        Some(_) => Verdict::Keep,
        None if view.timestamp_ms < purge_before_ms => Verdict::Purge,
        None => Verdict::KeepTombstone,
    }
}

/// The result of compacting one chunk of consecutive batches.
#[derive(Debug, Default)]
pub struct ChunkRewrite {
    /// The chunk's batches should be replaced (something was dropped, or small batches are
    /// merged). When false, nothing is written.
    pub rewrite: bool,
    /// The replacement (a sparse batch), stored under the chunk's last key; `None` when
    /// nothing survived (every key of the chunk is removed).
    pub replacement: Option<Bytes>,
    /// Keys whose index entry goes (purged tombstones).
    pub purged: Vec<Bytes>,
    /// Records dropped.
    pub dropped: u64,
    /// A tombstone too young to drop was kept.
    pub tombstones_kept: bool,
    /// Offsets below this were kept (the chunk's highest survivor + 1, or the input value).
    pub kept_below: u64,
}

/// Compacts one chunk: `batches` are consecutive stored batches `(key base, bytes)` in key
/// order. `latest(key)` answers the key index (as staged so far in this apply).
///
/// # Errors
/// [`RecordCodecError`] when a stored batch does not decode.
pub fn compact_chunk<F>(
    batches: &[(u64, Bytes)],
    mut latest: F,
    purge_before_ms: i64,
    kept_below: u64,
) -> Result<ChunkRewrite, RecordCodecError>
where
    F: FnMut(&[u8]) -> Option<u64>,
{
    let mut out = ChunkRewrite {
        kept_below,
        ..ChunkRewrite::default()
    };
    let mut survivors: Vec<(u64, &[u8])> = Vec::new();
    let mut end = 0u64;
    let mut stored_bytes = 0usize;
    for (base, stored) in batches {
        stored_bytes += stored.len();
        let batch = StoredBatch::parse(*base, stored)?;
        end = end.max(batch.end());
        for record in batch.records() {
            let record = record?;
            if record.offset < out.kept_below {
                out.dropped += 1;
                continue;
            }
            let latest = record.view.key.and_then(&mut latest);
            match verdict(record.offset, &record.view, latest, purge_before_ms) {
                Verdict::Keep => survivors.push((record.offset, record.encoded)),
                Verdict::KeepTombstone => {
                    out.tombstones_kept = true;
                    survivors.push((record.offset, record.encoded));
                }
                Verdict::Drop => out.dropped += 1,
                Verdict::Purge => {
                    out.dropped += 1;
                    if let Some(key) = record.view.key {
                        out.purged.push(Bytes::copy_from_slice(key));
                    }
                }
            }
            if let Some((offset, _)) = survivors.last() {
                out.kept_below = out.kept_below.max(offset + 1);
            }
        }
    }
    let merge = batches.len() > 1 && stored_bytes < MERGE_BELOW_BYTES;
    out.rewrite = out.dropped > 0 || merge;
    if out.rewrite && !survivors.is_empty() {
        out.replacement = Some(encode_sparse(&survivors, end));
    }
    Ok(out)
}

/// Applies `Compact` commands on one replica and keeps its [`CompactionProgress`].
#[derive(Debug, Default)]
pub(super) struct Compactor {
    /// Progress including the current apply call.
    progress: CompactionProgress,
}

impl Compactor {
    /// Reads the stored progress (at open and after a snapshot install); one that does not
    /// decode starts over, which costs a pass, never a record.
    pub(super) fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.progress = match state.get(PROGRESS_KEY)? {
            Some(raw) => postcard::from_bytes(&raw).unwrap_or_default(),
            None => CompactionProgress::default(),
        };
        Ok(())
    }

    /// The progress as staged.
    pub(super) fn progress(&self) -> CompactionProgress {
        self.progress
    }

    /// Applies a `Compact` command: rewrites the batches of its window as the module docs
    /// say, snapshot build or not. `holds` are the plan high watermarks of the snapshot
    /// builds reading the batch range now.
    ///
    /// The window is read whole (the batches in the tree and those staged by earlier
    /// commands of this apply call): its size is bounded by the leader's choice, and a
    /// replica whose batches are laid out differently holds the same offsets in it.
    ///
    /// # Errors
    /// Storage I/O only; a batch that does not decode leaves its part of the window as it
    /// is, alike on every replica holding it.
    pub(super) fn apply(
        &mut self,
        command: &CompactCommand,
        store: &mut BatchStore,
        keys: &mut KeyIndex,
        holds: &[u64],
        state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        let follows_pass = self.start_window(command);
        let end = command.to.min(command.pass_end);
        let mut window = store.window(state, command.from, end)?;
        // Trimmed batches still in the tree are not compaction's to touch.
        let log_start = store.bounds().log_start;
        window.retain(|(base, stored)| {
            StoredBatch::parse(*base, stored).map_or(true, |b| b.end() > log_start)
        });
        // While a snapshot build holds the range, no rewrite moves records across the high
        // watermark of its plan (see the module docs).
        let side = |base: u64| holds.iter().filter(|bound| **bound <= base).count();
        let mut kept_below = 0u64;
        let (mut dropped, mut tombstones_kept) = (0u64, false);
        for part in window.chunk_by(|a, b| side(a.0) == side(b.0)) {
            let Some(rewrite) = rewrite_of(part, keys, state, command, kept_below)? else {
                continue;
            };
            kept_below = rewrite.kept_below;
            dropped += rewrite.dropped;
            tombstones_kept |= rewrite.tombstones_kept;
            if rewrite.rewrite {
                store.replace(part, rewrite.replacement, batch);
                for key in rewrite.purged {
                    keys.remove(key, batch);
                }
            }
        }
        let progress = &mut self.progress;
        progress.dropped += dropped;
        if follows_pass {
            progress.tombstones_kept |= tombstones_kept;
            progress.cursor = progress.cursor.max(command.to);
            if command.to >= command.pass_end {
                progress.active = false;
                progress.last_pass_end = command.pass_end;
            }
        }
        debug!(
            batches = window.len(),
            dropped,
            active = progress.active,
            "compaction window applied"
        );
        self.stage_progress(batch)
    }

    /// Moves the progress to the command's window. Returns false for a late copy of a
    /// window of the pass that already ended (the leader proposed it again after a timeout):
    /// redoing its window is harmless, reopening its pass would walk it twice.
    fn start_window(&mut self, command: &CompactCommand) -> bool {
        let progress = &mut self.progress;
        if command.from == 0 {
            *progress = CompactionProgress {
                active: true,
                pass_end: command.pass_end,
                cursor: 0,
                purge_before_ms: command.purge_before_ms,
                last_pass_end: progress.last_pass_end,
                tombstones_kept: false,
                dropped: progress.dropped,
            };
        } else if progress.active && progress.pass_end == command.pass_end {
            // The pass goes on.
        } else if !progress.active && progress.last_pass_end == command.pass_end {
            return false;
        } else {
            // Joining a pass under way: after a snapshot install from before its start, or a
            // restart whose stored progress did not decode.
            progress.active = true;
            progress.pass_end = command.pass_end;
            progress.cursor = command.from;
            progress.purge_before_ms = command.purge_before_ms;
        }
        true
    }

    fn stage_progress(&self, batch: &mut WriteBatch) -> Result<(), StorageIoError> {
        let raw = postcard::to_stdvec(&self.progress).map_err(|e| StorageIoError::Codec {
            what: "compaction progress",
            source: e,
        })?;
        batch.insert(PROGRESS_KEY, raw);
        Ok(())
    }
}

/// Compacts one part of a window against the key index as staged. `None` when a batch
/// of the part does not decode (the part is left as it is).
fn rewrite_of(
    part: &[(u64, Bytes)],
    keys: &KeyIndex,
    state: &Tree,
    command: &CompactCommand,
    kept_below: u64,
) -> Result<Option<ChunkRewrite>, StorageIoError> {
    let mut lookup_error = None;
    let rewrite = compact_chunk(
        part,
        |key| match keys.get(state, key) {
            Ok(entry) => entry.map(|e| e.offset),
            Err(error) => {
                lookup_error.get_or_insert(error);
                // Treated as "latest" so nothing is dropped on an I/O error.
                None
            }
        },
        command.purge_before_ms,
        kept_below,
    );
    if let Some(error) = lookup_error {
        return Err(error);
    }
    match rewrite {
        Ok(rewrite) => Ok(Some(rewrite)),
        Err(error) => {
            warn!(%error, "a stored batch did not decode; its part of the compaction window is left as is");
            Ok(None)
        }
    }
}

/// Where a window starting at batch key `from` ends, on the batches of `tree`: before the
/// first batch past [`MAX_CHUNK_BATCHES`] batches or [`MAX_CHUNK_BYTES`] bytes (at least one
/// batch is always taken), or at `pass_end`. Always above `from` when `from < pass_end`.
///
/// # Errors
/// Storage I/O.
pub fn next_window_end(tree: &Tree, from: u64, pass_end: u64) -> Result<u64, StorageIoError> {
    if from >= pass_end {
        return Ok(pass_end);
    }
    let (mut batches, mut bytes) = (0usize, 0usize);
    for item in tree.range(&batch_key(from), Some(&batch_key(pass_end))) {
        let (key, stored) = item?;
        let Some(base) = base_offset_of(&key) else {
            break;
        };
        if batches > 0 && (batches >= MAX_CHUNK_BATCHES || bytes + stored.len() > MAX_CHUNK_BYTES) {
            return Ok(base);
        }
        batches += 1;
        bytes += stored.len();
    }
    Ok(pass_end)
}

/// The compaction command the leader's maintenance tick should propose now, if any: the
/// next window of the pass under way, or the first window of a new pass when the log grew
/// since the last pass or the last pass kept a tombstone that may have aged since. `None`
/// for topics that are not compacted, and when this replica's batches cannot be read (the
/// next tick tries again). `progress`, `high_watermark` and `tree` are the replica's as
/// written.
pub(super) fn due_compaction(
    progress: CompactionProgress,
    high_watermark: u64,
    tree: &Tree,
    config: &TopicConfig,
    now_ms: i64,
) -> Option<CompactCommand> {
    if config.cleanup_policy != CleanupPolicy::Compact {
        return None;
    }
    let (pass_end, from, purge_before) = if progress.active {
        (progress.pass_end, progress.cursor, progress.purge_before_ms)
    } else if high_watermark > progress.last_pass_end || progress.tombstones_kept {
        (
            high_watermark,
            0,
            purge_before_ms(now_ms, config.delete_retention_ms),
        )
    } else {
        return None;
    };
    let to = match next_window_end(tree, from, pass_end) {
        Ok(to) => to,
        Err(error) => {
            warn!(%error, "could not read the batches to choose a compaction window");
            return None;
        }
    };
    Some(CompactCommand {
        pass_end,
        from,
        to,
        purge_before_ms: purge_before,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::partition::stored::tests::{offsets_and_values, record};
    use crate::record::{join_batch, EncodedRecords, Record};

    fn dense(records: &[Record]) -> Bytes {
        let encoded = EncodedRecords::encode(records).unwrap();
        join_batch([&encoded].into_iter())
    }

    /// The latest offset per key over the given batches, as the key index holds it.
    fn index_of(batches: &[(u64, Bytes)]) -> HashMap<Vec<u8>, u64> {
        let mut index = HashMap::new();
        for (base, stored) in batches {
            for r in StoredBatch::parse(*base, stored).unwrap().records() {
                let r = r.unwrap();
                if let Some(key) = r.view.key {
                    index.insert(key.to_vec(), r.offset);
                }
            }
        }
        index
    }

    #[test]
    fn compaction_keeps_the_latest_per_key_with_original_offsets() {
        // Offsets 0..4: a=1 b=1 (no key) a=2 ; 4..7: b=2 c=tombstone(old) d=tombstone(new)
        let first = dense(&[
            record(Some("a"), Some("a1"), 10),
            record(Some("b"), Some("b1"), 10),
            record(None, Some("nokey"), 10),
            record(Some("a"), Some("a2"), 10),
        ]);
        let second = dense(&[
            record(Some("b"), Some("b2"), 10),
            record(Some("c"), None, 10),
            record(Some("d"), None, 5_000),
        ]);
        let batches = vec![(0u64, first), (4u64, second)];
        let index = index_of(&batches);
        let rewrite = compact_chunk(&batches, |k| index.get(k).copied(), 1_000, 0).unwrap();
        assert!(rewrite.rewrite);
        assert_eq!(
            rewrite.dropped, 4,
            "a1, b1, the keyless record and c's old tombstone"
        );
        assert_eq!(rewrite.purged, vec![Bytes::from_static(b"c")]);
        assert!(
            rewrite.tombstones_kept,
            "d's tombstone is too young to drop"
        );
        let sparse = rewrite.replacement.unwrap();
        assert_eq!(
            offsets_and_values(4, &sparse),
            vec![(3, Some("a2".into())), (4, Some("b2".into())), (6, None)]
        );
        assert_eq!(StoredBatch::parse(4, &sparse).unwrap().end(), 7);
        assert_eq!(rewrite.kept_below, 7);

        // Compacting the result again changes nothing.
        let again = vec![(4u64, sparse)];
        let rewrite = compact_chunk(&again, |k| index.get(k).copied(), 1_000, 0).unwrap();
        assert!(!rewrite.rewrite);
        assert_eq!(rewrite.dropped, 0);
    }

    #[test]
    fn nothing_surviving_removes_the_chunk_and_duplicates_are_dropped() {
        let stored = dense(&[record(Some("a"), Some("a1"), 0)]);
        let batches = vec![(0u64, stored.clone())];
        let gone = compact_chunk(&batches, |_| Some(99), 0, 0).unwrap();
        assert!(gone.rewrite && gone.replacement.is_none());

        // A second copy of offset 0 after the pass kept it is dropped.
        let dup = compact_chunk(&batches, |_| Some(0), 0, 1).unwrap();
        assert_eq!(dup.dropped, 1);
    }

    #[test]
    fn small_batches_that_lost_nothing_are_merged_once() {
        let a = dense(&[record(Some("a"), Some("1"), 0)]);
        let b = dense(&[record(Some("b"), Some("1"), 0)]);
        let batches = vec![(0u64, a), (1u64, b)];
        let index = index_of(&batches);
        let merged = compact_chunk(&batches, |k| index.get(k).copied(), 0, 0).unwrap();
        assert!(merged.rewrite);
        let sparse = merged.replacement.unwrap();
        assert_eq!(offsets_and_values(1, &sparse).len(), 2);
        let once = compact_chunk(&[(1, sparse)], |k| index.get(k).copied(), 0, 0).unwrap();
        assert!(!once.rewrite);
    }
}
