//! The key index of a compacted topic's partition: the latest (offset, timestamp,
//! tombstone?) of every key, kept in the partition's state tree and served as key views.
//!
//! Layout: `b"k" ++ key bytes` → [`KeyEntry`] (17 bytes). One entry per live or
//! recently deleted key, never one per record; memory stays bounded because the index lives
//! in sled, not in a map. Only compacted topics keep it.
//!
//! Maintained at apply on every replica, in log order, so every replica holds the same
//! index at the same applied offset. Within one apply call the writes are staged (not yet
//! readable from the tree), so [`StagedIndex`] keeps the entries written by earlier commands
//! of the same call in a small overlay that later commands (a `Compact` after appends)
//! consult first; it is cleared when the call's batch is written.
//!
//! Snapshots carry the index (the partition's snapshot range covers `k` keys after the
//! batches) instead of rebuilding it from the batches on install: the index is not a pure
//! function of the stored batches once compaction has dropped tombstones, and carrying it
//! costs nothing at install time. The build reads the range while applies go on, so index
//! entries may be newer than the plan: they then name offsets the installing replica
//! applies when it replays the log after the snapshot (a key view treats them as "not
//! applied yet"), or miss a tombstone's entry that a later compaction window purged, which
//! that window's replay drops with its tombstone (see [`super::compaction`], "Every replica
//! converges").

use std::collections::HashMap;

use bytes::Bytes;
use psubd_raft::{StorageIoError, Tree, WriteBatch};
use serde::{Deserialize, Serialize};

use super::compaction::StoredBatch;
use super::log::{PartitionReader, ReadError};
use crate::record::RecordCodecError;

/// Prefix of index keys.
pub const INDEX_PREFIX: u8 = b'k';

/// First key after every index key: the end of the index range.
pub const INDEX_END: [u8; 1] = [INDEX_PREFIX + 1];

/// Most index entries one scan looks at (live or not), so a range full of tombstones
/// cannot make one request walk the whole index.
pub const MAX_SCAN_EXAMINED: usize = 10_000;

/// A key's latest record as the index holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Offset of the key's latest record.
    pub offset: u64,
    /// That record's timestamp.
    pub timestamp_ms: i64,
    /// The latest record is a tombstone: the key is deleted.
    pub tombstone: bool,
}

impl KeyEntry {
    const LEN: usize = 17;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[16] = u8::from(self.tombstone);
        out
    }

    fn decode(raw: &[u8]) -> Result<Self, StorageIoError> {
        let bad = || StorageIoError::Codec {
            what: "key index entry",
            source: postcard::Error::DeserializeUnexpectedEnd,
        };
        let raw: &[u8; Self::LEN] = raw.try_into().map_err(|_| bad())?;
        let (offset, rest) = raw.split_first_chunk::<8>().ok_or_else(bad)?;
        let (timestamp, flag) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        Ok(Self {
            offset: u64::from_le_bytes(*offset),
            timestamp_ms: i64::from_le_bytes(*timestamp),
            tombstone: flag.first().copied().unwrap_or(0) != 0,
        })
    }
}

/// The tree key of `key`'s index entry.
pub fn index_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(INDEX_PREFIX);
    out.extend_from_slice(key);
    out
}

/// The index entry of `key` in `tree`.
///
/// # Errors
/// Storage I/O, or an entry that does not decode.
pub fn lookup(tree: &Tree, key: &[u8]) -> Result<Option<KeyEntry>, StorageIoError> {
    tree.get(&index_key(key))?
        .map(|raw| KeyEntry::decode(&raw))
        .transpose()
}

/// The index as seen by the commands of one apply call: the tree plus what earlier commands
/// of the call staged. See the module docs.
#[derive(Debug, Default)]
pub struct StagedIndex {
    /// Entries staged in the current apply call; `None` = removed.
    overlay: HashMap<Bytes, Option<KeyEntry>>,
}

impl StagedIndex {
    /// The entry of `key`, as staged so far.
    ///
    /// # Errors
    /// Storage I/O, or an entry that does not decode.
    pub fn get(&self, tree: &Tree, key: &[u8]) -> Result<Option<KeyEntry>, StorageIoError> {
        match self.overlay.get(key) {
            Some(staged) => Ok(*staged),
            None => lookup(tree, key),
        }
    }

    /// Stages every keyed record of an appended batch stored at `base`: each becomes its
    /// key's latest. Returns how many records were indexed.
    ///
    /// # Errors
    /// [`RecordCodecError`] when the batch does not decode (nothing is staged then).
    pub fn index_appended(
        &mut self,
        base: u64,
        stored: &[u8],
        batch: &mut WriteBatch,
    ) -> Result<usize, RecordCodecError> {
        let mut latest: Vec<(Bytes, KeyEntry)> = Vec::new();
        for record in StoredBatch::parse(base, stored)?.records() {
            let record = record?;
            if let Some(key) = record.view.key {
                latest.push((
                    Bytes::copy_from_slice(key),
                    KeyEntry {
                        offset: record.offset,
                        timestamp_ms: record.view.timestamp_ms,
                        tombstone: record.view.value.is_none(),
                    },
                ));
            }
        }
        let indexed = latest.len();
        for (key, entry) in latest {
            batch.insert(index_key(&key), entry.encode().to_vec());
            self.overlay.insert(key, Some(entry));
        }
        Ok(indexed)
    }

    /// Stages the removal of `key`'s entry (its tombstone was dropped by compaction).
    pub fn remove(&mut self, key: Bytes, batch: &mut WriteBatch) {
        batch.remove(index_key(&key));
        self.overlay.insert(key, None);
    }

    /// Forgets the overlay: the apply call's batch is written, the tree has it all.
    pub fn written(&mut self) {
        self.overlay.clear();
    }
}

/// A key's latest live record, read on one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The record's key.
    pub key: Bytes,
    /// Its offset.
    pub offset: u64,
    /// The record's encoding (one postcard record; see `RecordIter::run`).
    pub encoded: Bytes,
}

/// One page of a key scan on one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyScan {
    /// Live keys in ascending order with their latest records.
    pub records: Vec<KeyRecord>,
    /// The scan stopped early (limit or examination bound): keys after the last one
    /// looked at may remain. Resume after `last_examined`.
    pub more: bool,
    /// The last index key looked at (live or not).
    pub last_examined: Option<Bytes>,
}

/// Times a key view re-reads the index when the record it named was rewritten meanwhile.
const LOOKUP_RETRIES: usize = 3;

impl PartitionReader {
    /// The latest live record of `key` on this replica: `None` when the key is absent or
    /// deleted.
    ///
    /// # Errors
    /// [`ReadError::NotReady`] while the replica opens, or when its index names an offset it
    /// has not applied yet (it is replaying its log after a snapshot install; retry);
    /// [`ReadError::Storage`] on I/O or decode failures.
    pub fn latest(&self, key: &[u8]) -> Result<Option<KeyRecord>, ReadError> {
        let tree = self.state_tree().ok_or(ReadError::NotReady)?;
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
        let tree = self.state_tree().ok_or(ReadError::NotReady)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_an_error() {
        let entry = KeyEntry {
            offset: 1 << 40,
            timestamp_ms: -5,
            tombstone: true,
        };
        assert_eq!(KeyEntry::decode(&entry.encode()).unwrap(), entry);
        assert!(KeyEntry::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn index_keys_sort_by_key_bytes_under_their_prefix() {
        assert!(index_key(b"a") < index_key(b"ab"));
        assert!(index_key(b"ab") < index_key(b"b"));
        assert!(index_key(&[0xff; 4]).as_slice() < INDEX_END.as_slice());
    }
}
