//! The id table of a partition: the record ids (idempotency keys) stored recently, so that
//! a publish retried after an unknown outcome is recognised instead of stored twice.
//!
//! Decided at apply, on every replica alike (see [`super::guard`]): the table is part of
//! the partition's replicated state, written in the same apply batch as the records it
//! names and carried in snapshots (pinned: it changes with every append), so replicas
//! agree after failovers, restarts and snapshot installs.
//!
//! Layout: one state-tree value per guarded entry that stored ids — its *id set* —, not
//! one per id: `b"u" ++ offset of its first id's record (u64 BE)` →
//! `stamped_ms i64 LE ++ (offset u64 LE ++ digest 16 bytes)*` ([`super::layout::id_set_key`]).
//! A batch of a hundred records with ids costs one insert, and expiry removes a whole set
//! with one delete. The in-memory maps are the lookup; the sets are what restarts and
//! snapshot installs rebuild them from. An id is kept as the first 16 bytes of its
//! SHA-256 ([`RecordId::of`]): fixed-size entries, and a client cannot craft two ids that
//! collide to suppress another's record.
//!
//! Expiry is by the leader's clock stamped into each guarded entry (never a replica's
//! own), so every replica expires the same sets at the same entry. Memory is bounded: past
//! [`MAX_IDS_PER_PARTITION`] ids the oldest sets are forgotten whole (never the one just
//! stored), so a partition replica holds at most that many ids plus one entry's, about
//! 80 bytes each: about 8 MiB.

use std::collections::{BTreeMap, HashMap};

use psubd_raft::{StorageIoError, Tree, WriteBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{id_set_key, id_set_offset, IDS_END, ID_PREFIX};

/// Most ids one partition remembers (but for the entry just applied); past it the oldest
/// entries' ids are forgotten first, so a producer writing unique ids faster than this
/// many per duplicate window gets a shorter window.
pub const MAX_IDS_PER_PARTITION: usize = 100_000;

/// Length of a stored id digest.
const DIGEST_LEN: usize = 16;

/// A record id as the partition remembers it: the first 16 bytes of its SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordId(pub [u8; DIGEST_LEN]);

impl RecordId {
    /// The id of a record whose client-given id is `id` (1 to 256 bytes, checked at the
    /// edge).
    pub fn of(id: &[u8]) -> Self {
        let digest = Sha256::digest(id);
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&digest[..DIGEST_LEN]);
        Self(out)
    }
}

/// Where a remembered id's record was stored, and when (its entry's stamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Remembered {
    offset: u64,
    stamped_ms: i64,
}

impl Remembered {
    /// Still within the duplicate window of an entry stamped `now_ms`. A stamp from the
    /// future (a new leader's clock behind the old one's) counts as within it.
    fn within(&self, now_ms: i64, window_ms: u64) -> bool {
        within(self.stamped_ms, now_ms, window_ms)
    }
}

fn within(stamped_ms: i64, now_ms: i64, window_ms: u64) -> bool {
    let age = now_ms.saturating_sub(stamped_ms);
    age < 0 || (age as u64) < window_ms
}

/// The ids one guarded entry stored: its stamp and the offset range of its records (the
/// ids still in it are those of the table's `by_offset` in that range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IdSet {
    stamped_ms: i64,
    last_offset: u64,
}

/// Bytes of a set value's stamp, and of each of its ids.
const STAMP_LEN: usize = 8;
const PAIR_LEN: usize = 8 + DIGEST_LEN;

/// A set's tree value: its stamp, then each id's offset and digest.
fn encode_set(stamped_ms: i64, ids: impl Iterator<Item = (u64, RecordId)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(STAMP_LEN + PAIR_LEN);
    out.extend_from_slice(&stamped_ms.to_le_bytes());
    for (offset, id) in ids {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&id.0);
    }
    out
}

/// A set's stamp and ids from its tree value; `None` if it does not decode.
fn decode_set(raw: &[u8]) -> Option<(i64, Vec<(u64, RecordId)>)> {
    let (stamp, pairs) = raw.split_first_chunk::<STAMP_LEN>()?;
    if pairs.len() % PAIR_LEN != 0 {
        return None;
    }
    let ids = pairs
        .chunks_exact(PAIR_LEN)
        .map(|pair| {
            let (offset, digest) = pair.split_first_chunk::<8>()?;
            Some((
                u64::from_le_bytes(*offset),
                RecordId(digest.try_into().ok()?),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((i64::from_le_bytes(*stamp), ids))
}

/// See the module docs. Changes are staged in the apply batch as they are made; the table
/// in memory always equals the tree once the apply call's batch is written.
#[derive(Debug)]
pub(super) struct IdTable {
    ids: HashMap<RecordId, Remembered>,
    /// The same ids by offset, oldest first. Invariant: exactly the entries of `ids`, each
    /// under its own offset.
    by_offset: BTreeMap<u64, RecordId>,
    /// The sets stored, by first offset, oldest first: the expiry and eviction order.
    /// Sets never overlap (each covers its own entry's offsets); an id stored again
    /// leaves its older set (which keeps its key until it goes).
    sets: BTreeMap<u64, IdSet>,
    /// Most ids kept (but for the newest set).
    cap: usize,
}

impl Default for IdTable {
    fn default() -> Self {
        Self::with_cap(MAX_IDS_PER_PARTITION)
    }
}

impl IdTable {
    /// A table keeping at most `cap` ids (but for the newest set).
    pub(super) fn with_cap(cap: usize) -> Self {
        Self {
            ids: HashMap::new(),
            by_offset: BTreeMap::new(),
            sets: BTreeMap::new(),
            cap: cap.max(1),
        }
    }

    /// Ids remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Rebuilds the table from `state` (at open and after a snapshot install), set by set
    /// in offset order, so an id stored again ends at its latest offset as it did when
    /// applied. A value that does not decode (this code writes none) is ignored, alike on
    /// every replica.
    ///
    /// # Errors
    /// Storage I/O.
    pub(super) fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.ids.clear();
        self.by_offset.clear();
        self.sets.clear();
        for item in state.range(&[ID_PREFIX], Some(&IDS_END)) {
            let (key, value) = item?;
            let (Some(first), Some((stamped_ms, ids))) = (id_set_offset(&key), decode_set(&value))
            else {
                continue;
            };
            self.insert_set(first, stamped_ms, &ids);
        }
        Ok(())
    }

    /// The offset of the record stored under `id`, if it was stored within `window_ms`
    /// of an entry stamped `now_ms`.
    pub(super) fn original(&self, id: &RecordId, now_ms: i64, window_ms: u64) -> Option<u64> {
        self.ids
            .get(id)
            .filter(|r| r.within(now_ms, window_ms))
            .map(|r| r.offset)
    }

    /// Remembers the ids one entry stamped `now_ms` stored, each with its record's offset
    /// (ascending, none remembered yet within the window), as one set; then forgets the
    /// oldest sets while more than the cap of ids are kept.
    pub(super) fn remember_entry(
        &mut self,
        stored: &[(RecordId, u64)],
        now_ms: i64,
        batch: &mut WriteBatch,
    ) {
        let Some(&(_, first)) = stored.first() else {
            return;
        };
        let pairs: Vec<(u64, RecordId)> =
            stored.iter().map(|(id, offset)| (*offset, *id)).collect();
        batch.insert(
            id_set_key(first).to_vec(),
            encode_set(now_ms, pairs.iter().copied()),
        );
        self.insert_set(first, now_ms, &pairs);
        while self.ids.len() > self.cap {
            match self.sets.first_key_value() {
                Some((&oldest, _)) if oldest != first => self.forget_set(oldest, batch),
                _ => break,
            }
        }
    }

    /// Forgets the oldest sets that are outside the window of an entry stamped `now_ms`.
    /// Stops at the first one still inside it: stamps follow offsets but for clock changes
    /// between leaders, and a stale set left behind is still refused by [`Self::original`].
    pub(super) fn expire(&mut self, now_ms: i64, window_ms: u64, batch: &mut WriteBatch) {
        while let Some((&first, set)) = self.sets.first_key_value() {
            if within(set.stamped_ms, now_ms, window_ms) {
                break;
            }
            self.forget_set(first, batch);
        }
    }

    /// The table as state-tree pairs, one per set, for a snapshot (pinned: it changes at
    /// every guarded append). A set lists the ids still in it, so installing the snapshot
    /// rebuilds this very table.
    pub(super) fn pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.sets
            .iter()
            .map(|(&first, set)| {
                let ids = self
                    .by_offset
                    .range(first..=set.last_offset)
                    .map(|(offset, id)| (*offset, *id));
                (id_set_key(first).to_vec(), encode_set(set.stamped_ms, ids))
            })
            .collect()
    }

    /// Adds a set in memory; an id already remembered moves to its new offset.
    fn insert_set(&mut self, first: u64, stamped_ms: i64, ids: &[(u64, RecordId)]) {
        let last_offset = ids.iter().map(|(offset, _)| *offset).max().unwrap_or(first);
        self.sets.insert(
            first,
            IdSet {
                stamped_ms,
                last_offset,
            },
        );
        for &(offset, id) in ids {
            let remembered = Remembered { offset, stamped_ms };
            if let Some(old) = self.ids.insert(id, remembered) {
                self.by_offset.remove(&old.offset);
            }
            if let Some(displaced) = self.by_offset.insert(offset, id) {
                // Two ids at one offset cannot happen (an offset holds one record); keep
                // the invariant anyway.
                if displaced != id {
                    self.ids.remove(&displaced);
                }
            }
        }
    }

    /// Forgets the set at `first` and the ids still in it, and deletes its value.
    fn forget_set(&mut self, first: u64, batch: &mut WriteBatch) {
        let Some(set) = self.sets.remove(&first) else {
            return;
        };
        let ids: Vec<(u64, RecordId)> = self
            .by_offset
            .range(first..=set.last_offset)
            .map(|(offset, id)| (*offset, *id))
            .collect();
        for (offset, id) in ids {
            self.by_offset.remove(&offset);
            self.ids.remove(&id);
        }
        batch.remove(id_set_key(first).to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> RecordId {
        RecordId::of(&n.to_le_bytes())
    }

    #[test]
    fn ids_are_remembered_within_the_window_only() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        let a = RecordId::of(b"a");
        table.remember_entry(&[(a, 7)], 1_000, &mut batch);
        assert_eq!(table.original(&a, 1_000, 500), Some(7));
        assert_eq!(table.original(&a, 1_499, 500), Some(7));
        assert_eq!(table.original(&a, 1_500, 500), None);
        // A stamp behind the stored one (a new leader's slower clock) is within the window.
        assert_eq!(table.original(&a, 900, 500), Some(7));
        assert_eq!(table.original(&RecordId::of(b"b"), 1_000, 500), None);
        table.expire(1_499, 500, &mut batch);
        assert_eq!(table.len(), 1);
        table.expire(1_500, 500, &mut batch);
        assert_eq!(table.len(), 0);
        assert!(table.sets.is_empty() && table.by_offset.is_empty());
    }

    #[test]
    fn an_entry_is_one_set_and_expires_whole() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        table.remember_entry(&[(id(0), 10), (id(1), 12), (id(2), 13)], 1_000, &mut batch);
        table.remember_entry(&[(id(3), 14)], 2_000, &mut batch);
        assert_eq!(table.sets.len(), 2);
        assert_eq!(table.original(&id(1), 1_000, 500), Some(12));
        table.expire(1_600, 500, &mut batch);
        assert_eq!(table.len(), 1);
        assert_eq!(table.original(&id(3), 1_600, 500), Some(14));
        assert_eq!(table.sets.keys().copied().collect::<Vec<_>>(), vec![14]);
    }

    #[test]
    fn the_oldest_sets_are_evicted_past_the_cap_but_never_the_newest() {
        let mut table = IdTable::with_cap(3);
        let mut batch = WriteBatch::default();
        for offset in 0..5u64 {
            table.remember_entry(&[(id(offset), offset)], 0, &mut batch);
        }
        assert_eq!(table.len(), 3);
        for offset in 0..2u64 {
            assert_eq!(
                table.original(&id(offset), 0, 1_000),
                None,
                "offset {offset}"
            );
        }
        for offset in 2..5u64 {
            assert_eq!(table.original(&id(offset), 0, 1_000), Some(offset));
        }
        // An entry larger than the cap is kept whole; the older sets all go.
        let big: Vec<(RecordId, u64)> = (10..15u64).map(|o| (id(o), o)).collect();
        table.remember_entry(&big, 0, &mut batch);
        assert_eq!(table.len(), 5);
        assert_eq!(table.sets.len(), 1);
        assert_eq!(table.original(&id(12), 0, 1_000), Some(12));
    }

    #[test]
    fn an_id_stored_again_moves_to_its_new_set() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        table.remember_entry(&[(id(0), 0), (id(1), 1)], 0, &mut batch);
        // Expired (window 1,000) but its set is still there: stored again at offset 9.
        table.remember_entry(&[(id(0), 9)], 5_000, &mut batch);
        assert_eq!(table.original(&id(0), 5_000, 1_000), Some(9));
        assert_eq!(table.by_offset.len(), table.ids.len());
        // Forgetting the old set leaves the id at its new offset.
        table.expire(5_000, 1_000, &mut batch);
        assert_eq!(table.original(&id(0), 5_000, 1_000), Some(9));
        assert_eq!(table.original(&id(1), 5_000, u64::MAX), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn set_values_round_trip_and_garbage_is_refused() {
        let ids = vec![(1 << 40, id(1)), ((1 << 40) + 3, id(2))];
        let raw = encode_set(-3, ids.iter().copied());
        assert_eq!(decode_set(&raw), Some((-3, ids)));
        assert_eq!(
            decode_set(&encode_set(5, std::iter::empty())),
            Some((5, vec![]))
        );
        assert_eq!(decode_set(&[1, 2, 3]), None);
        assert_eq!(decode_set(&raw[..raw.len() - 1]), None);
    }
}
