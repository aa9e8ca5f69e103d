//! The reader of a partition replica: committed records by offset, key views of a
//! compacted topic, and what the leader's maintenance tick reads, served from the state as
//! written without going through the actor.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use psubd_raft::StorageIoError;
use tokio::sync::watch;

use super::batch_index::{BatchIndex, LogBounds};
use super::compaction::{self, CompactCommand, CompactionProgress};
use super::delay_queue::DelaySummary;
use super::fetched::FetchedRecords;
use super::key_index::{lookup, KeyEntry, KeyRecord, KeyScan, MAX_SCAN_EXAMINED};
use super::layout::{base_offset_of, batch_key, index_key, INDEX_END};
use super::retention;
use super::shared::Shared;
use super::stored::StoredBatch;
use crate::record::RecordCodecError;
use crate::topic::TopicConfig;

/// Reads a partition's committed records on this replica.
#[derive(Clone, Debug)]
pub struct PartitionReader {
    shared: Arc<Shared>,
}

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

/// Times a key view re-reads the index when the record it named was rewritten meanwhile.
const LOOKUP_RETRIES: usize = 3;

impl PartitionReader {
    /// The reader of the state `shared` publishes.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The current bounds (high watermark and log start) of this replica.
    pub fn bounds(&self) -> LogBounds {
        self.shared.bounds()
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

    /// Runs `f` over the retained batches as written on this replica. Keep `f` short:
    /// applies wait for the same lock.
    pub fn with_index<R>(&self, f: impl FnOnce(&BatchIndex) -> R) -> R {
        self.shared.with_index(f)
    }

    /// A watch that changes whenever the bounds do: long-polls wait on it.
    pub fn subscribe(&self) -> watch::Receiver<LogBounds> {
        self.shared.subscribe()
    }

    /// Compaction progress as written on this replica (the leader's tick reads it).
    pub fn compaction_progress(&self) -> CompactionProgress {
        self.shared.compaction()
    }

    /// The delay queue on this replica as written: records waiting, their bytes, the
    /// earliest due time (see [`super::delay_queue`]).
    pub fn delays(&self) -> DelaySummary {
        self.shared.delays()
    }

    /// The trim retention asks for on this replica now, if any (see [`retention`]).
    pub fn due_trim(&self, config: &TopicConfig, now_ms: i64) -> Option<u64> {
        let bounds = self.bounds();
        self.with_index(|index| retention::due_trim(index, bounds, config, now_ms))
    }

    /// The compaction command due on this replica now, if any (see the compaction
    /// module); `None` too while the replica has not loaded.
    pub fn due_compaction(&self, config: &TopicConfig, now_ms: i64) -> Option<CompactCommand> {
        compaction::due_compaction(
            self.compaction_progress(),
            self.bounds().next_offset,
            self.shared.tree()?,
            config,
            now_ms,
        )
    }

    /// The offset of the first record on this replica stamped at or after `timestamp_ms`,
    /// from the log start on; the high watermark when there is none. The time index finds
    /// the batch to start from; the read then looks at a few pages at most (the batch it
    /// names holds such a record, unless compaction dropped it since).
    ///
    /// # Errors
    /// As [`PartitionReader::read`].
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<u64, ReadError> {
        const PAGE_RECORDS: u32 = 1_000;
        let bounds = self.bounds();
        let Some(base) = self.with_index(|index| index.first_batch_at_or_after(timestamp_ms))
        else {
            return Ok(bounds.next_offset);
        };
        let mut offset = base.clamp(bounds.log_start, bounds.next_offset);
        loop {
            let page = match self.read(offset, PAGE_RECORDS, usize::MAX) {
                // Trimmed meanwhile: the first record now is at the new log start or later.
                Err(ReadError::OutOfRange {
                    log_start,
                    high_watermark,
                    ..
                }) if offset < log_start => {
                    offset = log_start.min(high_watermark);
                    continue;
                }
                other => other?,
            };
            for record in page.iter() {
                let (at, record) = record.map_err(|e| ReadError::Storage(e.to_string()))?;
                if record.timestamp_ms >= timestamp_ms {
                    return Ok(at);
                }
            }
            if page.count == 0 {
                return Ok(page.next_offset);
            }
            offset = page.next_offset;
        }
    }

    /// The state shared with the logic (tests reach into the published index).
    #[cfg(test)]
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
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
        let tree = self.shared.tree().ok_or(ReadError::NotReady)?;
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

    /// The latest live record of `key` on this replica: `None` when the key is absent or
    /// deleted.
    ///
    /// # Errors
    /// [`ReadError::NotReady`] while the replica opens, or when its index names an offset it
    /// has not applied yet (it is replaying its log after a snapshot install; retry);
    /// [`ReadError::Storage`] on I/O or decode failures.
    pub fn latest(&self, key: &[u8]) -> Result<Option<KeyRecord>, ReadError> {
        let tree = self.shared.tree().ok_or(ReadError::NotReady)?;
        let storage = |e: StorageIoError| ReadError::Storage(e.to_string());
        for _ in 0..LOOKUP_RETRIES {
            let Some(entry) = lookup(tree, key).map_err(storage)? else {
                return Ok(None);
            };
            if entry.tombstone {
                return Ok(None);
            }
            if let Some(record) = self.record_at(key, entry.offset)? {
                return Ok(Some(record));
            }
        }
        Err(ReadError::NotReady)
    }

    /// Scans live keys that start with `prefix`, from `start` (inclusive) on, returning at
    /// most `limit` of them.
    ///
    /// # Errors
    /// As [`PartitionReader::latest`].
    pub fn scan_keys(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyScan, ReadError> {
        let tree = self.shared.tree().ok_or(ReadError::NotReady)?;
        let storage = |e: StorageIoError| ReadError::Storage(e.to_string());
        let from = index_key(if start > prefix { start } else { prefix });
        let mut out = KeyScan::default();
        for (examined, item) in tree.range(&from, Some(&INDEX_END)).enumerate() {
            let (raw_key, raw_entry) = item.map_err(storage)?;
            let key = raw_key.get(1..).unwrap_or_default();
            if !key.starts_with(prefix) {
                break;
            }
            if out.records.len() >= limit || examined >= MAX_SCAN_EXAMINED {
                out.more = true;
                break;
            }
            out.last_examined = Some(Bytes::copy_from_slice(key));
            let entry = KeyEntry::decode(&raw_entry).map_err(storage)?;
            if entry.tombstone {
                continue;
            }
            // Read through `latest` so a record rewritten meanwhile is found again.
            if let Some(record) = self.latest(key)? {
                out.records.push(record);
            }
        }
        Ok(out)
    }

    /// The record of `key` at `offset`, if this replica stores it there.
    fn record_at(&self, key: &[u8], offset: u64) -> Result<Option<KeyRecord>, ReadError> {
        let bounds = self.bounds();
        if offset >= bounds.next_offset {
            // The index is ahead of the applied log (snapshot install, then replay).
            return Err(ReadError::NotReady);
        }
        if offset < bounds.log_start {
            return Ok(None);
        }
        let fetched = match self.read(offset, 1, usize::MAX) {
            Ok(fetched) => fetched,
            Err(ReadError::OutOfRange { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        if fetched.count == 0 || fetched.first_offset != offset {
            return Ok(None);
        }
        Ok(Some(KeyRecord {
            key: Bytes::copy_from_slice(key),
            offset,
            encoded: fetched.bytes,
        }))
    }
}
