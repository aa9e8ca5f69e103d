//! The key index of a compacted topic's partition: the latest (offset, timestamp,
//! tombstone?) of every key, kept in the partition's state tree and served as key views.
//!
//! Layout: `b"k" ++ key bytes` → [`KeyEntry`] (17 bytes). One entry per live or
//! recently deleted key, never one per record; memory stays bounded because the index lives
//! in sled, not in a map. Only compacted topics keep it.
//!
//! Maintained at apply on every replica, in log order, so every replica holds the same
//! index at the same applied offset. Within one apply call the writes are staged (not yet
//! readable from the tree), so [`KeyIndex`] keeps the entries written by earlier commands
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

use super::layout::index_key;
use super::stored::StoredBatch;
use crate::record::RecordCodecError;

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

    pub(super) fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..16].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[16] = u8::from(self.tombstone);
        out
    }

    pub(super) fn decode(raw: &[u8]) -> Result<Self, StorageIoError> {
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

/// The index entry of `key` in `tree`.
///
/// # Errors
/// Storage I/O, or an entry that does not decode.
pub(super) fn lookup(tree: &Tree, key: &[u8]) -> Result<Option<KeyEntry>, StorageIoError> {
    tree.get(&index_key(key))?
        .map(|raw| KeyEntry::decode(&raw))
        .transpose()
}

/// The index as seen by the commands of one apply call: the tree plus what earlier commands
/// of the call staged. See the module docs.
#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    /// Entries staged in the current apply call; `None` = removed.
    overlay: HashMap<Bytes, Option<KeyEntry>>,
}

impl KeyIndex {
    /// The entry of `key`, as staged so far.
    ///
    /// # Errors
    /// Storage I/O, or an entry that does not decode.
    pub(super) fn get(&self, tree: &Tree, key: &[u8]) -> Result<Option<KeyEntry>, StorageIoError> {
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
    pub(super) fn index_appended(
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
    pub(super) fn remove(&mut self, key: Bytes, batch: &mut WriteBatch) {
        batch.remove(index_key(&key));
        self.overlay.insert(key, None);
    }

    /// Forgets the overlay: the apply call's batch is written, the tree has it all.
    pub(super) fn written(&mut self) {
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
}
