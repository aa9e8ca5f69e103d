//! A partition's replicated log: the state machine logic of a partition's Raft group,
//! and the reader the fetch path uses without going through the actor.
//!
//! State tree layout (one tree per partition group):
//! - `b"b" ++ base_offset (u64 BE)` → a stored record batch (`[count u32 LE][records…]`),
//!   exactly the bytes of the Raft entry that carried it: one value per batch, never one
//!   key per record.
//! - `b"m"` → [`LogBounds`] (postcard).

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use psubd_raft::{
    Command, CommandResponse, GroupLogic, SnapshotPlan, StorageIoError, Tree, WriteBatch,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::record::{batch_count, RecordIter};

const BATCH_PREFIX: u8 = b'b';
const BOUNDS_KEY: &[u8] = b"m";

/// Tag of an append command: the rest of the command is a stored batch.
const TAG_APPEND: u8 = 1;

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
}

/// The state machine logic of one partition group.
pub struct PartitionLogic {
    shared: Arc<Shared>,
    /// Bounds including the entries applied but not yet written.
    staged: LogBounds,
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
        });
        (
            Self {
                shared: shared.clone(),
                staged: LogBounds::default(),
            },
            PartitionReader { shared },
        )
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
                    batch.insert(batch_key(base).to_vec(), stored.to_vec());
                    self.staged.next_offset += u64::from(count);
                    let bounds =
                        postcard::to_stdvec(&self.staged).map_err(|e| StorageIoError::Codec {
                            what: "partition bounds",
                            source: e,
                        })?;
                    batch.insert(BOUNDS_KEY, bounds);
                }
                Ok(CommandResponse(Bytes::copy_from_slice(&base.to_le_bytes())))
            }
            _ => {
                warn!("skipping unknown partition command");
                Ok(CommandResponse::default())
            }
        }
    }

    fn applied(&mut self) {
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
        // Batches below next_offset never change once written (retention only removes
        // them), so they may be streamed after this point while appends continue.
        Ok(SnapshotPlan {
            pinned: vec![(BOUNDS_KEY.to_vec(), bounds)],
            lazy: Some((
                batch_key(self.staged.log_start).to_vec(),
                Some(batch_key(self.staged.next_offset).to_vec()),
            )),
        })
    }
}

impl PartitionReader {
    /// The current bounds (high watermark and log start) of this replica.
    pub fn bounds(&self) -> LogBounds {
        *self.shared.bounds.borrow()
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
