//! The id table of a partition: the record ids (idempotency keys) stored recently, so that
//! a publish retried after an unknown outcome is recognised instead of stored twice.
//!
//! Decided at apply, on every replica alike (see [`super::guard`]): the table is part of
//! the partition's replicated state, written in the same apply batch as the records it
//! names and carried in snapshots (pinned: it changes with every append), so replicas
//! agree after failovers, restarts and snapshot installs.
//!
//! Layout: `b"u" ++ digest (16 bytes)` → `offset u64 LE ++ stamped_ms i64 LE`, one key per
//! remembered id ([`super::layout::id_key`]). An id is kept as the first 16 bytes of its
//! SHA-256 ([`RecordId::of`]): fixed-size entries, and a client cannot craft two ids that
//! collide to suppress another's record.
//!
//! Expiry is by the leader's clock stamped into each guarded entry (never a replica's
//! own), so every replica expires the same ids at the same entry. Memory is bounded: the
//! table holds at most [`MAX_IDS_PER_PARTITION`] ids (the oldest by offset go first), about
//! 80 bytes each, so at most about 8 MiB per partition replica.

use std::collections::{BTreeMap, HashMap};

use psubd_raft::{StorageIoError, Tree, WriteBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{id_key, IDS_END, ID_PREFIX};

/// Most ids one partition remembers; past it the oldest are forgotten first, so a producer
/// writing unique ids faster than this many per duplicate window gets a shorter window.
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

/// Where a remembered id's record was stored, and when (the entry's stamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Remembered {
    offset: u64,
    stamped_ms: i64,
}

impl Remembered {
    const LEN: usize = 16;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.offset.to_le_bytes());
        out[8..].copy_from_slice(&self.stamped_ms.to_le_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let raw: &[u8; Self::LEN] = raw.try_into().ok()?;
        let (offset, stamped) = raw.split_first_chunk::<8>()?;
        Some(Self {
            offset: u64::from_le_bytes(*offset),
            stamped_ms: i64::from_le_bytes(stamped.try_into().ok()?),
        })
    }

    /// Still within the duplicate window of an entry stamped `now_ms`. A stamp from the
    /// future (a new leader's clock behind the old one's) counts as within it.
    fn within(&self, now_ms: i64, window_ms: u64) -> bool {
        let age = now_ms.saturating_sub(self.stamped_ms);
        age < 0 || (age as u64) < window_ms
    }
}

/// See the module docs. Changes are staged in the apply batch as they are made; the table
/// in memory always equals the tree once the apply call's batch is written.
#[derive(Debug)]
pub(super) struct IdTable {
    ids: HashMap<RecordId, Remembered>,
    /// The same ids by offset, oldest first: the eviction order. Invariant: exactly the
    /// entries of `ids`, each under its own offset.
    by_offset: BTreeMap<u64, RecordId>,
    /// Most ids kept.
    cap: usize,
}

impl Default for IdTable {
    fn default() -> Self {
        Self::with_cap(MAX_IDS_PER_PARTITION)
    }
}

impl IdTable {
    /// A table keeping at most `cap` ids.
    pub(super) fn with_cap(cap: usize) -> Self {
        Self {
            ids: HashMap::new(),
            by_offset: BTreeMap::new(),
            cap: cap.max(1),
        }
    }

    /// Ids remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Rebuilds the table from `state` (at open and after a snapshot install). An entry
    /// that does not decode (this code writes none) is ignored, alike on every replica.
    ///
    /// # Errors
    /// Storage I/O.
    pub(super) fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.ids.clear();
        self.by_offset.clear();
        for item in state.range(&[ID_PREFIX], Some(&IDS_END)) {
            let (key, value) = item?;
            let Some(digest) = key
                .get(1..)
                .and_then(|d| <[u8; DIGEST_LEN]>::try_from(d).ok())
            else {
                continue;
            };
            let Some(remembered) = Remembered::decode(&value) else {
                continue;
            };
            self.insert(RecordId(digest), remembered);
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

    /// Remembers that `id`'s record is stored at `offset` by an entry stamped `now_ms`
    /// (replacing an expired entry of the same id), then forgets the oldest ids past the
    /// cap.
    pub(super) fn remember(
        &mut self,
        id: RecordId,
        offset: u64,
        now_ms: i64,
        batch: &mut WriteBatch,
    ) {
        let remembered = Remembered {
            offset,
            stamped_ms: now_ms,
        };
        if let Some(old) = self.ids.get(&id) {
            self.by_offset.remove(&old.offset);
        }
        self.insert(id, remembered);
        batch.insert(id_key(&id.0).to_vec(), remembered.encode().to_vec());
        while self.ids.len() > self.cap {
            let Some((_, oldest)) = self.by_offset.pop_first() else {
                break;
            };
            self.forget(&oldest, batch);
        }
    }

    /// Forgets the oldest ids that are outside the window of an entry stamped `now_ms`.
    /// Stops at the first one still inside it: stamps follow offsets but for clock changes
    /// between leaders, and a stale entry left behind is still refused by [`Self::original`].
    pub(super) fn expire(&mut self, now_ms: i64, window_ms: u64, batch: &mut WriteBatch) {
        while let Some((&offset, &id)) = self.by_offset.first_key_value() {
            match self.ids.get(&id) {
                Some(r) if r.within(now_ms, window_ms) => break,
                _ => {
                    self.by_offset.remove(&offset);
                    self.forget(&id, batch);
                }
            }
        }
    }

    /// The table as state-tree pairs, for a snapshot (pinned: it changes at every
    /// guarded append).
    pub(super) fn pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.ids
            .iter()
            .map(|(id, r)| (id_key(&id.0).to_vec(), r.encode().to_vec()))
            .collect()
    }

    fn insert(&mut self, id: RecordId, remembered: Remembered) {
        if let Some(displaced) = self.by_offset.insert(remembered.offset, id) {
            // Two ids at one offset cannot happen (an offset holds one record); keep the
            // invariant anyway.
            if displaced != id {
                self.ids.remove(&displaced);
            }
        }
        self.ids.insert(id, remembered);
    }

    fn forget(&mut self, id: &RecordId, batch: &mut WriteBatch) {
        self.ids.remove(id);
        batch.remove(id_key(&id.0).to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_remembered_within_the_window_only() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        let a = RecordId::of(b"a");
        table.remember(a, 7, 1_000, &mut batch);
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
    }

    #[test]
    fn the_oldest_ids_are_evicted_past_the_cap() {
        let mut table = IdTable::with_cap(3);
        let mut batch = WriteBatch::default();
        for offset in 0..5u64 {
            table.remember(RecordId::of(&offset.to_le_bytes()), offset, 0, &mut batch);
        }
        assert_eq!(table.len(), 3);
        for offset in 0..2u64 {
            let id = RecordId::of(&offset.to_le_bytes());
            assert_eq!(table.original(&id, 0, 1_000), None, "offset {offset}");
        }
        for offset in 2..5u64 {
            let id = RecordId::of(&offset.to_le_bytes());
            assert_eq!(table.original(&id, 0, 1_000), Some(offset));
        }
        // An expired id stored again moves to its new offset, and the old one goes.
        let id = RecordId::of(&2u64.to_le_bytes());
        table.remember(id, 9, 5_000, &mut batch);
        assert_eq!(table.original(&id, 5_000, 1_000), Some(9));
        assert_eq!(table.by_offset.len(), table.ids.len());
    }

    #[test]
    fn remembered_entries_round_trip_and_garbage_is_refused() {
        let r = Remembered {
            offset: 1 << 40,
            stamped_ms: -3,
        };
        assert_eq!(Remembered::decode(&r.encode()), Some(r));
        assert_eq!(Remembered::decode(&[1, 2, 3]), None);
    }
}
