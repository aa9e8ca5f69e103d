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
//! - `b"u" ++ id digest (16 bytes)` → a remembered record id ([`super::id_table`]);
//!   pinned in snapshots. It sorts after every batch and index key, so no snapshot's lazy
//!   range (which must only ever lose keys while it is read) holds one.
//!
//! Key order is part of the design: batch keys sort by base offset (big-endian), so a
//! reader walks a partition in offset order, and the key index sorts after every batch, so
//! one snapshot range `[b…, k+1)` carries the batches first and then the index.

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

/// The tree key of a remembered id's digest.
pub(super) fn id_key(digest: &[u8; 16]) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = ID_PREFIX;
    key[1..].copy_from_slice(digest);
    key
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
    fn index_keys_sort_by_key_bytes_after_every_batch() {
        assert!(index_key(b"a") < index_key(b"ab"));
        assert!(index_key(b"ab") < index_key(b"b"));
        assert!(index_key(&[0xff; 4]).as_slice() < INDEX_END.as_slice());
        assert!(BATCHES_END.as_slice() <= index_key(b"").as_slice());
    }

    #[test]
    fn id_keys_sort_after_every_lazily_snapshotted_key() {
        assert!(INDEX_END.as_slice() <= id_key(&[0; 16]).as_slice());
        assert!(id_key(&[0xff; 16]).as_slice() < IDS_END.as_slice());
        assert!(IDS_END.as_slice() < psubd_raft::RESERVED_KEY_PREFIX.as_slice());
        assert_ne!(&id_key(&[0; 16])[..1], BOUNDS_KEY);
        assert_ne!(&id_key(&[0; 16])[..1], PROGRESS_KEY);
    }
}
