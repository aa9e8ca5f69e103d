//! A partition's replicated log: the state machine logic of a partition's Raft group,
//! and the reader the fetch path uses without going through the actor.
//!
//! State tree layout (one tree per partition group):
//! - `b"b" ++ base_offset (u64 BE)` → a stored record batch (`[count u32 LE][records…]`),
//!   exactly the bytes of the Raft entry that carried it: one value per batch, never one
//!   key per record.
//! - `b"m"` → [`LogBounds`] (postcard).
//!
//! Retention (see [`super::retention`]) moves the log start forward with a replicated
//! `Trim` command; the batches wholly below it leave the tree at apply. While a snapshot
//! build is reading the batch range, those removals wait (a snapshot must hold every batch
//! its bounds claim) and happen at the first apply after the build lets go.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use psubd_raft::{
    Command, CommandResponse, GroupLogic, SnapshotHold, SnapshotPlan, StorageIoError, Tree,
    WriteBatch,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use super::retention::{BatchIndex, BatchSummary};
use crate::record::{batch_count, RecordIter};

const BATCH_PREFIX: u8 = b'b';
const BOUNDS_KEY: &[u8] = b"m";

/// Tag of an append command: the rest of the command is a stored batch.
const TAG_APPEND: u8 = 1;
/// Tag of a trim command: the rest is the new log start (u64 LE).
const TAG_TRIM: u8 = 2;

/// The replicated bounds of a partition's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBounds {
    /// First offset still stored. Invariant: `log_start <= next_offset`.
    pub log_start: u64,
    /// Offset the next appended record gets: the high watermark. Offsets are dense and
    /// never reused.
    pub next_offset: u64,
}

fn batch_key(base_offset: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = BATCH_PREFIX;
    key[1..].copy_from_slice(&base_offset.to_be_bytes());
    key
}

fn base_offset_of(key: &[u8]) -> Option<u64> {
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

/// Decodes the response to an append: the base offset of the batch.
pub fn decode_append_response(response: &CommandResponse) -> Option<u64> {
    let raw: [u8; 8] = response.0.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

/// What the state machine shares with readers. Readers only ever see written state:
/// `bounds` is published after the apply batch that produced it is written.
#[derive(Debug)]
struct Shared {
    tree: OnceLock<Tree>,
    bounds: watch::Sender<LogBounds>,
    /// The retained batches as written, for the retention tick and disk usage.
    index: Mutex<BatchIndex>,
    /// Snapshot builds reading the batch range right now (see [`SnapshotRangeHold`]).
    snapshot_holds: AtomicUsize,
}

/// A change to the batch index, staged at apply and published in `applied`.
enum IndexChange {
    Insert(u64, BatchSummary),
    TrimTo(u64),
    Reset(BatchIndex),
}

/// Keeps trimmed batches in the tree while a snapshot build reads the batch range.
struct SnapshotRangeHold(Arc<Shared>);

impl Drop for SnapshotRangeHold {
    fn drop(&mut self) {
        self.0.snapshot_holds.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The state machine logic of one partition group.
pub struct PartitionLogic {
    shared: Arc<Shared>,
    /// Bounds including the entries applied but not yet written.
    staged: LogBounds,
    /// The retained batches including those applied but not yet written.
    index: BatchIndex,
    /// Index changes not yet published to readers.
    changes: Vec<IndexChange>,
    /// Base offsets of batches below the log start still in the tree: removed at the first
    /// apply with no snapshot build holding the range. Never read (reads check the bounds).
    garbage: Vec<u64>,
}

/// Reads a partition's committed records on this replica.
#[derive(Clone, Debug)]
pub struct PartitionReader {
    shared: Arc<Shared>,
}

/// A run of fetched records: `count` encoded records starting at `first_offset`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchedRecords {
    /// Offset of the first record in `bytes`.
    pub first_offset: u64,
    /// Records in `bytes`.
    pub count: u32,
    /// Concatenated record encodings (see [`crate::record::RecordIter::run`]).
    pub bytes: Bytes,
    /// First offset stored when read.
    pub log_start: u64,
    /// High watermark when read.
    pub high_watermark: u64,
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
    /// The replica has not loaded its state yet.
    #[error("partition replica is still opening")]
    NotReady,
    /// Stored bytes failed to read or decode.
    #[error("stored batch unreadable: {0}")]
    Storage(String),
}

impl PartitionLogic {
    /// A logic and the reader that shares its state.
    pub fn new() -> (Self, PartitionReader) {
        let (bounds, _) = watch::channel(LogBounds::default());
        let shared = Arc::new(Shared {
            tree: OnceLock::new(),
            bounds,
            index: Mutex::new(BatchIndex::default()),
            snapshot_holds: AtomicUsize::new(0),
        });
        (
            Self {
                shared: shared.clone(),
                staged: LogBounds::default(),
                index: BatchIndex::default(),
                changes: Vec::new(),
                garbage: Vec::new(),
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
        if self.garbage.is_empty() || self.shared.snapshot_holds.load(Ordering::Acquire) > 0 {
            return;
        }
        for base in self.garbage.drain(..) {
            batch.remove(batch_key(base).to_vec());
        }
    }
}

/// Summarises a stored batch; one that does not decode (it cannot, the leader validated it)
/// counts as expired, alike on every replica.
fn summarize(stored: &[u8], count: u32) -> BatchSummary {
    BatchSummary::of_stored(stored).unwrap_or(BatchSummary {
        count,
        bytes: stored.len() as u64,
        max_timestamp_ms: i64::MIN,
    })
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
        let end = [BATCH_PREFIX + 1];
        for item in state.range(&[BATCH_PREFIX], Some(&end)) {
            let (key, stored) = item?;
            let Some(base) = base_offset_of(&key) else {
                continue;
            };
            let count = batch_count(&stored).unwrap_or(0);
            if base + u64::from(count) <= self.staged.log_start {
                // Trimmed before a restart, or received in an older snapshot.
                self.garbage.push(base);
            } else {
                self.index.insert(base, summarize(&stored, count));
            }
        }
        self.changes.clear();
        self.changes.push(IndexChange::Reset(self.index.clone()));
        self.shared.bounds.send_replace(self.staged);
        Ok(())
    }

    fn apply(
        &mut self,
        _index: u64,
        command: &Command,
        _state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        self.collect_garbage(batch);
        match command.0.first() {
            Some(&TAG_APPEND) => {
                let stored = command.0.slice(1..);
                let count = match batch_count(&stored) {
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
                    let summary = summarize(&stored, count);
                    batch.insert(batch_key(base).to_vec(), stored.to_vec());
                    self.staged.next_offset += u64::from(count);
                    self.stage_bounds(batch)?;
                    self.index.insert(base, summary);
                    self.changes.push(IndexChange::Insert(base, summary));
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
                    IndexChange::TrimTo(log_start) => drop(index.trim_to(log_start)),
                    IndexChange::Reset(fresh) => *index = fresh,
                }
            }
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
        Ok(SnapshotPlan {
            pinned: vec![(BOUNDS_KEY.to_vec(), bounds)],
            lazy: Some((
                batch_key(first).to_vec(),
                Some(batch_key(self.staged.next_offset).to_vec()),
            )),
        })
    }

    fn snapshot_hold(&self) -> Option<SnapshotHold> {
        self.shared.snapshot_holds.fetch_add(1, Ordering::AcqRel);
        Some(Box::new(SnapshotRangeHold(self.shared.clone())))
    }
}

impl PartitionReader {
    /// The current bounds (high watermark and log start) of this replica.
    pub fn bounds(&self) -> LogBounds {
        *self.shared.bounds.borrow()
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

    /// Reads committed records from `offset`: at most `max_records`, and at most
    /// `max_bytes` of encodings except that one record is always returned.
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
            first_offset: offset,
            count: 0,
            bytes: Bytes::new(),
            log_start: bounds.log_start,
            high_watermark: bounds.next_offset,
        };
        if offset == bounds.next_offset || max_records == 0 {
            return Ok(out);
        }
        let storage = |e: StorageIoError| ReadError::Storage(e.to_string());
        let start_key = match tree.get_at_or_before(&batch_key(offset)).map_err(storage)? {
            Some((key, _)) if base_offset_of(&key).is_some() => key.to_vec(),
            _ => batch_key(bounds.log_start).to_vec(),
        };
        let end_key = batch_key(bounds.next_offset);
        let mut buf = BytesMut::new();
        'batches: for item in tree.range(&start_key, Some(&end_key)) {
            let (key, stored) = item.map_err(storage)?;
            let Some(base) = base_offset_of(&key) else {
                break;
            };
            let mut records =
                RecordIter::batch(&stored).map_err(|e| ReadError::Storage(e.to_string()))?;
            let mut position = base;
            loop {
                let before = records.remaining();
                let Some(record) = records.next() else { break };
                record.map_err(|e| ReadError::Storage(e.to_string()))?;
                if position >= offset {
                    if out.count == 0 && position != offset {
                        // The batch holding `offset` left the tree after the bounds were
                        // read (a trim): answer as if the trim had come first.
                        let bounds = self.bounds();
                        return Err(ReadError::OutOfRange {
                            offset,
                            log_start: bounds.log_start,
                            high_watermark: bounds.next_offset,
                        });
                    }
                    let encoded = &before[..before.len() - records.remaining().len()];
                    if out.count > 0 && buf.len() + encoded.len() > max_bytes {
                        break 'batches;
                    }
                    buf.extend_from_slice(encoded);
                    out.count += 1;
                    if out.count >= max_records {
                        break 'batches;
                    }
                }
                position += 1;
            }
        }
        if out.count == 0 {
            // Every batch from `offset` on left the tree after the bounds were read.
            let bounds = self.bounds();
            return Err(ReadError::OutOfRange {
                offset,
                log_start: bounds.log_start,
                high_watermark: bounds.next_offset,
            });
        }
        out.bytes = buf.freeze();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use psubd_raft::NodeStorage;

    use super::*;
    use crate::record::{join_batch, EncodedRecords, Record, ValueKind};

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

    #[tokio::test]
    async fn offsets_are_dense_across_batches_and_reads_slice_them() {
        let dir = tempfile::tempdir().unwrap();
        let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::new();
        let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
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

    fn batch_keys(tree: &Tree) -> Vec<u64> {
        tree.range(&[BATCH_PREFIX], Some(&[BATCH_PREFIX + 1]))
            .map(|item| base_offset_of(&item.unwrap().0).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn trim_moves_the_log_start_removes_whole_batches_and_accounts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::new();
        let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::new();
        let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
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

    /// Each phase runs in its own runtime: dropping it stops the storage's flusher
    /// task, which releases the database lock, as a process exit would.
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
            storage.flush().await.unwrap();
        });
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let storage = NodeStorage::open(&path, 1 << 20).unwrap();
            let (logic, reader) = PartitionLogic::new();
            let _sm = storage.state_machine(7, Box::new(logic)).unwrap();
            assert_eq!(reader.bounds().next_offset, 5);
            assert_eq!(reader.read(0, 100, 1 << 20).unwrap().count, 5);
        });
    }
}
