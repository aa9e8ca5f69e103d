//! The layout of a partition's state tree (one tree per partition group): every key the
//! partition's state machine writes, and nothing else, so the layout reads in one place.
//!
//! - `b"b" ++ base_offset (u64 BE)` → a stored batch ([`super::stored`]): the Raft entry
//!   that carried it, cut into pieces of at most [`super::stored::MAX_STORED_RUN_BYTES`]
//!   of records when it is larger (one value per few KiB of records, never one key per
//!   record), or a sparse batch compaction wrote.
//! - `b"k" ++ key` → the key index of a compacted topic ([`super::key_index`]).
//! - `b"m"` → the log bounds ([`super::batch_index::LogBounds`], postcard).
//! - `b"n"` → compaction progress of a compacted topic ([`super::compaction`]); pinned in
//!   snapshots.
//! - `b"q" ++ due_ms (i64, order-preserving BE) ++ log index (u64 BE) ++ position (u32 BE)`
//!   → one delayed record's encoding, waiting in the delay queue ([`super::delay_queue`]);
//!   pinned in snapshots.
//! - `b"u" ++ first offset (u64 BE)` → the ids one guarded entry stored, one value per
//!   entry ([`super::id_table`]); pinned in snapshots. It sorts after every batch and index key, so no snapshot's lazy
//!   range (which must only ever lose keys while it is read) holds one.
//!
//! Key order is part of the design: batch keys sort by base offset (big-endian), so a
//! reader walks a partition in offset order, and the key index sorts after every batch, so
//! one snapshot range `[b…, k+1)` carries the batches first and then the index. The delay
//! queue and the id table sort after both, outside every range a snapshot streams: they
//! change while a snapshot build reads, so they are copied at the plan instead. Queue
//! keys sort by due time, then publish order, which is the order of release.

/// Prefix of stored batches.
pub(super) const BATCH_PREFIX: u8 = b'b';
/// The log bounds.
pub(super) const BOUNDS_KEY: &[u8] = b"m";
/// Compaction progress (compacted topics).
pub(super) const PROGRESS_KEY: &[u8] = b"n";
/// Prefix of key index entries.
pub(super) const INDEX_PREFIX: u8 = b'k';
/// First key after every index key: the end of the index range.
pub(super) const INDEX_END: [u8; 1] = [INDEX_PREFIX + 1];
/// First key after every batch key: the end of the batch range.
pub(super) const BATCHES_END: [u8; 1] = [BATCH_PREFIX + 1];
/// Prefix of remembered record ids.
pub(super) const ID_PREFIX: u8 = b'u';
/// First key after every id key: the end of the id range.
pub(super) const IDS_END: [u8; 1] = [ID_PREFIX + 1];
/// Bytes a stored batch's key adds to its value (prefix + base offset).
pub(super) const BATCH_KEY_BYTES: u64 = 9;
/// Prefix of the delay queue.
pub(super) const QUEUE_PREFIX: u8 = b'q';
/// First key after every queue key: the end of the delay queue's range.
pub(super) const QUEUE_END: [u8; 1] = [QUEUE_PREFIX + 1];
/// Length of a queue key.
pub(super) const QUEUE_KEY_LEN: usize = 21;

/// A delayed record's place in the delay queue: its due time, then the log index of the
/// entry that queued it and its position in that entry, so records due at the same
/// millisecond leave in the order they were published. Every replica derives the same
/// key from the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey {
    /// When the record is due, ms since the epoch.
    pub due_ms: i64,
    /// The Raft log index of the entry that queued it.
    pub index: u64,
    /// Its position among that entry's records.
    pub position: u32,
}

impl QueueKey {
    /// The tree key. The due time's sign bit is flipped so that keys sort as times do.
    pub(super) fn encode(&self) -> [u8; QUEUE_KEY_LEN] {
        let mut key = [0u8; QUEUE_KEY_LEN];
        key[0] = QUEUE_PREFIX;
        key[1..9].copy_from_slice(&((self.due_ms as u64) ^ (1 << 63)).to_be_bytes());
        key[9..17].copy_from_slice(&self.index.to_be_bytes());
        key[17..].copy_from_slice(&self.position.to_be_bytes());
        key
    }

    /// The queue key a tree key names; `None` for any other key.
    pub(super) fn decode(key: &[u8]) -> Option<Self> {
        let key: &[u8; QUEUE_KEY_LEN] = key.try_into().ok()?;
        if key[0] != QUEUE_PREFIX {
            return None;
        }
        let due = u64::from_be_bytes(key[1..9].try_into().ok()?) ^ (1 << 63);
        Some(Self {
            due_ms: due as i64,
            index: u64::from_be_bytes(key[9..17].try_into().ok()?),
            position: u32::from_be_bytes(key[17..].try_into().ok()?),
        })
    }
}

/// The tree key of the batch stored at `base_offset`.
pub(super) fn batch_key(base_offset: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = BATCH_PREFIX;
    key[1..].copy_from_slice(&base_offset.to_be_bytes());
    key
}

/// The base offset a batch key names; `None` for any other key.
pub(super) fn base_offset_of(key: &[u8]) -> Option<u64> {
    match key {
        [BATCH_PREFIX, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

/// The tree key of `key`'s index entry.
pub(super) fn index_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(INDEX_PREFIX);
    out.extend_from_slice(key);
    out
}

/// The tree key of the id set whose first id's record is at `first_offset`.
pub(super) fn id_set_key(first_offset: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = ID_PREFIX;
    key[1..].copy_from_slice(&first_offset.to_be_bytes());
    key
}

/// The first offset an id set's tree key names; `None` for any other key.
pub(super) fn id_set_offset(key: &[u8]) -> Option<u64> {
    match key {
        [ID_PREFIX, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keys_round_trip_and_sort_by_offset() {
        assert_eq!(base_offset_of(&batch_key(1 << 40)), Some(1 << 40));
        assert!(batch_key(255) < batch_key(256));
        assert!(batch_key(u64::MAX).as_slice() < BATCHES_END.as_slice());
        assert_eq!(base_offset_of(&index_key(b"x")), None);
    }

    #[test]
    fn queue_keys_round_trip_and_sort_by_due_time_then_publish_order() {
        let key = |due_ms, index, position| QueueKey {
            due_ms,
            index,
            position,
        };
        let ordered = [
            key(-5, 9, 0),
            key(0, 1, 0),
            key(1_700_000_000_000, 3, 7),
            key(1_700_000_000_000, 4, 0),
            key(1_700_000_000_001, 1, 0),
            key(i64::MAX, u64::MAX, u32::MAX),
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0].encode() < pair[1].encode(), "{pair:?}");
        }
        for k in ordered {
            assert_eq!(QueueKey::decode(&k.encode()), Some(k));
            assert!(INDEX_END.as_slice() < k.encode().as_slice());
            assert!(k.encode().as_slice() < QUEUE_END.as_slice());
        }
        assert_eq!(QueueKey::decode(&batch_key(1)), None);
    }

    #[test]
    fn index_keys_sort_by_key_bytes_after_every_batch() {
        assert!(index_key(b"a") < index_key(b"ab"));
        assert!(index_key(b"ab") < index_key(b"b"));
        assert!(index_key(&[0xff; 4]).as_slice() < INDEX_END.as_slice());
        assert!(BATCHES_END.as_slice() <= index_key(b"").as_slice());
    }

    #[test]
    fn id_keys_sort_after_every_lazily_snapshotted_key() {
        assert!(INDEX_END.as_slice() <= id_set_key(0).as_slice());
        assert!(id_set_key(u64::MAX).as_slice() < IDS_END.as_slice());
        assert!(IDS_END.as_slice() < psubd_raft::RESERVED_KEY_PREFIX.as_slice());
        assert_ne!(&id_set_key(0)[..1], BOUNDS_KEY);
        assert_ne!(&id_set_key(0)[..1], PROGRESS_KEY);
        assert_eq!(id_set_offset(&id_set_key(1 << 40)), Some(1 << 40));
        assert!(id_set_key(255) < id_set_key(256));
        assert_eq!(id_set_offset(&batch_key(3)), None);
    }
}
