//! The id table of a partition: the record ids (idempotency keys) stored recently, so that
//! a publish retried after an unknown outcome is recognised instead of stored twice.
//!
//! Decided at apply, on every replica alike (see [`super::guard`]): the table is part of
//! the partition's replicated state, written in the same apply batch as the records it
//! names and carried in snapshots (pinned: it changes with every append), so replicas
//! agree after failovers, restarts and snapshot installs.
//!
//! Layout: one state-tree value per guarded entry that stored ids — its *id set* —, not
//! one per id: `b"u" ++ offset of its first id's record (u64 BE)` → the entry's stamp and
//! each id's offset and digest prefix, 13 bytes an id ([`encode_set`],
//! [`super::layout::id_set_key`]). A batch of a hundred records with ids costs one insert,
//! and expiry removes a whole set with one delete. The in-memory maps are the lookup; the
//! sets are what restarts and snapshot installs rebuild them from. An id travels as the
//! first 16 bytes of its SHA-256 ([`RecordId::of`]) and is kept as the first 12
//! ([`IdPrefix`]): fixed-size entries, and a client cannot craft two ids that collide to
//! suppress another's record.
//!
//! The sets' bytes are most of what ids cost: sled copies every value it is given into its
//! log and again whenever it rewrites the leaf holding it, on every replica. Measured with
//! batches of 100 records with ids, not writing the sets at all gave 1.19× the rate of
//! writing them at 24 bytes an id, and writing 13 bytes an id 1.10× (docs/benchmarks.md).
//!
//! Expiry is by the leader's clock stamped into each guarded entry (never a replica's
//! own), so every replica expires the same sets at the same entry. Memory is bounded: past
//! [`MAX_IDS_PER_PARTITION`] ids listed in sets the oldest sets are forgotten whole (never
//! the one just stored). A partition replica's sets list at most that many ids plus one
//! entry's (24 bytes each in memory) and its lookup at most an eighth more (17 bytes a
//! bucket, forgotten ones until the next sweep): about 5 MiB in all.
//!
//! The lookup is kept small because every record with an id costs a probe into it, and a
//! probe that misses the CPU cache was the main cost of ids when measured: it maps the
//! first 8 bytes of a digest to its record's offset, and a hit is confirmed against the
//! kept prefix in that offset's set. Two live ids sharing those 8 bytes (about one in
//! 10^14 per record at the cap) leave only the newer in the lookup: the older would be
//! stored again if retried, never refused. It hashes with foldhash seeded per process: a
//! digest prefix is already uniform, and SipHash was a few per cent of node CPU.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use psubd_raft::{StorageIoError, Tree, WriteBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{id_set_key, id_set_offset, IDS_END, ID_PREFIX};

/// Most ids one partition remembers (but for the entry just applied); past it the oldest
/// entries' ids are forgotten first, so a producer writing unique ids faster than this
/// many per duplicate window gets a shorter window.
pub const MAX_IDS_PER_PARTITION: usize = 100_000;

/// Length of an id digest as records carry it in Raft entries.
const DIGEST_LEN: usize = 16;

/// Length of the digest prefix the table keeps (in memory and in the tree). 96 bits: a
/// new id wrongly taken for a live one (its record left out) is about one in 10^24 per
/// record at the cap; and 4 bytes fewer an id than the whole digest, in the sets whose
/// bytes are most of what ids cost (see the module docs).
const PREFIX_LEN: usize = 12;

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

    /// What the table keeps of this id.
    pub(super) fn prefix(&self) -> IdPrefix {
        let mut out = [0u8; PREFIX_LEN];
        out.copy_from_slice(&self.0[..PREFIX_LEN]);
        IdPrefix(out)
    }
}

/// The first [`PREFIX_LEN`] bytes of an id's digest: what the table keeps of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IdPrefix([u8; PREFIX_LEN]);

impl IdPrefix {
    /// The id's key in the lookup: its first 8 bytes.
    fn short_key(&self) -> u64 {
        let mut short = [0u8; 8];
        short.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(short)
    }
}

/// Size of the lookup past which it is swept of forgotten ids: an eighth over the cap,
/// so at the default cap it stays under 7/8 of 2^17 entries and hashbrown keeps 2^17
/// buckets (about 2.2 MiB) rather than doubling.
fn sweep_above(cap: usize) -> usize {
    cap.saturating_add(cap / 8)
}

/// Whether a stamp is still within the duplicate window of an entry stamped `now_ms`. A
/// stamp from the future (a new leader's clock behind the old one's) counts as within it.
fn within(stamped_ms: i64, now_ms: i64, window_ms: u64) -> bool {
    let age = now_ms.saturating_sub(stamped_ms);
    age < 0 || (age as u64) < window_ms
}

/// The ids one guarded entry stored: its stamp and each id with its record's offset
/// (ascending), as written to the tree. An id stored again later stays listed here; the
/// table's lookup then names the newer offset, and forgetting this set leaves it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdSet {
    stamped_ms: i64,
    ids: Vec<(u64, IdPrefix)>,
}

/// First byte of a set's tree value: its format. Sets written before this format (one
/// without the byte, whole digests and absolute offsets) do not decode and are ignored.
const SET_FORMAT: u8 = 2;

/// A set's tree value (its first offset is in its key, [`id_set_key`]):
/// `SET_FORMAT ++ stamp i64 LE ++ (offset delta LEB128 ++ prefix 12 bytes)*`, each delta
/// from the offset before it (the first from the key's, so 0). Records with ids are mostly
/// consecutive, so an id costs 13 bytes.
fn encode_set(first: u64, stamped_ms: i64, ids: &[(u64, IdPrefix)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + (PREFIX_LEN + 1) * ids.len());
    out.push(SET_FORMAT);
    out.extend_from_slice(&stamped_ms.to_le_bytes());
    let mut previous = first;
    for (offset, prefix) in ids {
        put_leb128(&mut out, offset.wrapping_sub(previous));
        out.extend_from_slice(&prefix.0);
        previous = *offset;
    }
    out
}

/// A set from its tree value under the key of `first`; `None` if it does not decode, or its
/// offsets do not start at `first` and ascend.
fn decode_set(first: u64, raw: &[u8]) -> Option<IdSet> {
    let (&format, rest) = raw.split_first()?;
    let (stamp, mut rest) = rest.split_first_chunk::<8>()?;
    if format != SET_FORMAT {
        return None;
    }
    let mut ids = Vec::with_capacity(rest.len() / (PREFIX_LEN + 1));
    let mut previous = first;
    while !rest.is_empty() {
        let (delta, after) = take_leb128(rest)?;
        let (prefix, after) = after.split_first_chunk::<PREFIX_LEN>()?;
        let offset = previous.checked_add(delta)?;
        if (ids.is_empty() && delta != 0) || (!ids.is_empty() && delta == 0) {
            return None;
        }
        ids.push((offset, IdPrefix(*prefix)));
        previous = offset;
        rest = after;
    }
    Some(IdSet {
        stamped_ms: i64::from_le_bytes(*stamp),
        ids,
    })
}

/// Appends `value` as an unsigned LEB128 varint.
fn put_leb128(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An unsigned LEB128 varint from the front of `raw`, and what follows it; `None` if it is
/// cut short or longer than a u64.
fn take_leb128(raw: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (at, byte) in raw.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if at == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * at);
        if byte & 0x80 == 0 {
            return Some((value, &raw[at + 1..]));
        }
    }
    None
}

/// See the module docs. Changes are staged in the apply batch as they are made; the sets
/// in memory always equal the tree once the apply call's batch is written.
///
/// Forgetting a set does not remove its ids from the lookup one by one (a random access
/// into a table of megabytes per id, the main cost of deduplication when measured): sets
/// are only ever forgotten oldest first, so every id of a forgotten set has an offset
/// below `floor`, and [`Self::original`] ignores those. The lookup is swept of them in
/// one sequential pass once it holds an eighth more than the cap ([`sweep_above`]).
#[derive(Debug)]
pub(super) struct IdTable {
    /// The lookup: each id's latest record offset by [`short_key`], including ids of
    /// forgotten sets (below `floor`) until the next sweep.
    ids: HashMap<u64, u64>,
    /// The sets stored, by first offset, oldest first: the expiry and eviction order.
    sets: BTreeMap<u64, IdSet>,
    /// Every id of a forgotten set is below this offset; every id of a set kept is at or
    /// above it.
    floor: u64,
    /// Ids listed by all sets: what the cap bounds.
    listed: usize,
    /// Most ids listed (but for the newest set).
    cap: usize,
}

impl Default for IdTable {
    fn default() -> Self {
        Self::with_cap(MAX_IDS_PER_PARTITION)
    }
}

impl IdTable {
    /// A table listing at most `cap` ids (but for the newest set).
    pub(super) fn with_cap(cap: usize) -> Self {
        Self {
            ids: HashMap::new(),
            sets: BTreeMap::new(),
            floor: 0,
            listed: 0,
            cap: cap.max(1),
        }
    }

    /// Ids remembered (those of the sets kept).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids
            .values()
            .filter(|offset| **offset >= self.floor)
            .count()
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
        self.sets.clear();
        self.floor = 0;
        self.listed = 0;
        for item in state.range(&[ID_PREFIX], Some(&IDS_END)) {
            let (key, value) = item?;
            let Some(first) = id_set_offset(&key) else {
                continue;
            };
            let Some(set) = decode_set(first, &value) else {
                continue;
            };
            self.insert_set(first, set);
        }
        Ok(())
    }

    /// The offset of the record stored under `id`, if it was stored within `window_ms`
    /// of an entry stamped `now_ms`.
    pub(super) fn original(&self, id: &RecordId, now_ms: i64, window_ms: u64) -> Option<u64> {
        let prefix = id.prefix();
        let offset = *self.ids.get(&prefix.short_key())?;
        if offset < self.floor {
            return None;
        }
        // Sets hold disjoint, ascending offset ranges: the set of `offset` is the last one
        // starting at or before it.
        let (_, set) = self.sets.range(..=offset).next_back()?;
        let at = set.ids.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        (set.ids[at].1 == prefix && within(set.stamped_ms, now_ms, window_ms)).then_some(offset)
    }

    /// Remembers the ids one entry stamped `now_ms` stored, each with its record's offset
    /// (ascending, none remembered within the window), as one set; then forgets the
    /// oldest sets while more than the cap of ids are listed.
    pub(super) fn remember_entry(
        &mut self,
        stored: Vec<(u64, IdPrefix)>,
        now_ms: i64,
        batch: &mut WriteBatch,
    ) {
        let Some(&(first, _)) = stored.first() else {
            return;
        };
        batch.insert(
            id_set_key(first).to_vec(),
            encode_set(first, now_ms, &stored),
        );
        self.insert_set(
            first,
            IdSet {
                stamped_ms: now_ms,
                ids: stored,
            },
        );
        while self.listed > self.cap {
            match self.sets.first_key_value() {
                Some((&oldest, _)) if oldest != first => self.forget_set(oldest, batch),
                _ => break,
            }
        }
        if self.ids.len() > sweep_above(self.cap) {
            let floor = self.floor;
            self.ids.retain(|_, offset| *offset >= floor);
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

    /// The table as state-tree pairs, one per set as written, for a snapshot (pinned: it
    /// changes at every guarded append).
    pub(super) fn pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.sets
            .iter()
            .map(|(&first, set)| {
                (
                    id_set_key(first).to_vec(),
                    encode_set(first, set.stamped_ms, &set.ids),
                )
            })
            .collect()
    }

    /// Adds a set in memory (above every set kept: sets come in offset order); an id
    /// already remembered moves to its new offset.
    fn insert_set(&mut self, first: u64, set: IdSet) {
        for (offset, id) in &set.ids {
            self.ids.insert(id.short_key(), *offset);
        }
        self.listed += set.ids.len();
        self.sets.insert(first, set);
    }

    /// Forgets the oldest set, at `first`, and deletes its value; its ids fall below the
    /// floor.
    fn forget_set(&mut self, first: u64, batch: &mut WriteBatch) {
        let Some(set) = self.sets.remove(&first) else {
            return;
        };
        self.listed -= set.ids.len();
        let above = set.ids.iter().map(|(offset, _)| offset + 1).max();
        self.floor = self.floor.max(above.unwrap_or(first + 1));
        batch.remove(id_set_key(first).to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> IdPrefix {
        RecordId::of(&n.to_le_bytes()).prefix()
    }

    /// The full id of [`id`]'s `n`, as a lookup is asked with.
    fn full(n: u64) -> RecordId {
        RecordId::of(&n.to_le_bytes())
    }

    #[test]
    fn ids_are_remembered_within_the_window_only() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        let a = RecordId::of(b"a");
        table.remember_entry(vec![(7, a.prefix())], 1_000, &mut batch);
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
        assert!(table.sets.is_empty() && table.listed == 0);
    }

    #[test]
    fn an_entry_is_one_set_and_expires_whole() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        table.remember_entry(
            vec![(10, id(0)), (12, id(1)), (13, id(2))],
            1_000,
            &mut batch,
        );
        table.remember_entry(vec![(14, id(3))], 2_000, &mut batch);
        assert_eq!(table.sets.len(), 2);
        assert_eq!(table.original(&full(1), 1_000, 500), Some(12));
        table.expire(1_600, 500, &mut batch);
        assert_eq!(table.len(), 1);
        assert_eq!(table.original(&full(3), 1_600, 500), Some(14));
        assert_eq!(table.sets.keys().copied().collect::<Vec<_>>(), vec![14]);
    }

    #[test]
    fn the_oldest_sets_are_evicted_past_the_cap_but_never_the_newest() {
        let mut table = IdTable::with_cap(3);
        let mut batch = WriteBatch::default();
        for offset in 0..5u64 {
            table.remember_entry(vec![(offset, id(offset))], 0, &mut batch);
        }
        assert_eq!(table.len(), 3);
        for offset in 0..2u64 {
            assert_eq!(
                table.original(&full(offset), 0, 1_000),
                None,
                "offset {offset}"
            );
        }
        for offset in 2..5u64 {
            assert_eq!(table.original(&full(offset), 0, 1_000), Some(offset));
        }
        // An entry larger than the cap is kept whole; the older sets all go.
        let big: Vec<(u64, IdPrefix)> = (10..15u64).map(|o| (o, id(o))).collect();
        table.remember_entry(big, 0, &mut batch);
        assert_eq!(table.len(), 5);
        assert_eq!(table.sets.len(), 1);
        assert_eq!(table.original(&full(12), 0, 1_000), Some(12));
    }

    #[test]
    fn forgotten_ids_are_ignored_and_swept_past_an_eighth_over_the_cap() {
        let mut table = IdTable::with_cap(4);
        let mut batch = WriteBatch::default();
        assert_eq!(sweep_above(4), 4);
        assert_eq!(sweep_above(MAX_IDS_PER_PARTITION), 112_500);
        for offset in 0..20u64 {
            table.remember_entry(vec![(offset, id(offset))], 0, &mut batch);
            assert!(
                table.ids.len() <= 4,
                "swept at {offset}: {}",
                table.ids.len()
            );
        }
        assert_eq!(table.len(), 4);
        for offset in 0..16u64 {
            assert_eq!(
                table.original(&full(offset), 0, 1_000),
                None,
                "offset {offset}"
            );
        }
        for offset in 16..20u64 {
            assert_eq!(table.original(&full(offset), 0, 1_000), Some(offset));
        }
        // A forgotten id stored again is remembered at its new offset.
        table.remember_entry(vec![(20, id(3))], 0, &mut batch);
        assert_eq!(table.original(&full(3), 0, 1_000), Some(20));
    }

    #[test]
    fn an_id_stored_again_moves_to_its_new_set() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        table.remember_entry(vec![(0, id(0)), (1, id(1))], 0, &mut batch);
        // Expired (window 1,000) but its set is still there: stored again at offset 9.
        table.remember_entry(vec![(9, id(0))], 5_000, &mut batch);
        assert_eq!(table.original(&full(0), 5_000, 1_000), Some(9));
        assert_eq!((table.len(), table.listed), (2, 3));
        // Forgetting the old set leaves the id at its new offset.
        table.expire(5_000, 1_000, &mut batch);
        assert_eq!(table.original(&full(0), 5_000, 1_000), Some(9));
        assert_eq!(table.original(&full(1), 5_000, u64::MAX), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_lookup_hit_is_confirmed_against_the_kept_prefix() {
        let mut table = IdTable::default();
        let mut batch = WriteBatch::default();
        let stored = full(1);
        // Another id with the same first 8 bytes (a short-key collision).
        let mut twin = stored;
        twin.0[PREFIX_LEN - 1] ^= 0xff;
        table.remember_entry(vec![(4, stored.prefix())], 0, &mut batch);
        assert_eq!(table.original(&stored, 0, 1_000), Some(4));
        assert_eq!(table.original(&twin, 0, 1_000), None);
        // Stored later, the twin takes the key: it is found, the older id no longer is
        // (a retry of it would be stored again, never refused).
        table.remember_entry(vec![(5, twin.prefix())], 0, &mut batch);
        assert_eq!(table.original(&twin, 0, 1_000), Some(5));
        assert_eq!(table.original(&stored, 0, 1_000), None);
    }

    #[test]
    fn set_values_round_trip_and_garbage_is_refused() {
        let first = 1 << 40;
        let set = IdSet {
            stamped_ms: -3,
            ids: vec![(first, id(1)), (first + 1, id(2)), (first + 300, id(3))],
        };
        let raw = encode_set(first, set.stamped_ms, &set.ids);
        // Format byte, stamp, then 13 bytes an id but for the 2-byte delta of 299.
        assert_eq!(raw.len(), 1 + 8 + 13 * 3 + 1);
        assert_eq!(decode_set(first, &raw), Some(set.clone()));
        let empty = decode_set(9, &encode_set(9, 5, &[])).map(|s| (s.stamped_ms, s.ids.len()));
        assert_eq!(empty, Some((5, 0)));
        assert_eq!(decode_set(first, &[1, 2, 3]), None);
        assert_eq!(decode_set(first, &raw[..raw.len() - 1]), None);
        // The first id is at the key's offset (delta 0), and offsets ascend.
        let off_key = encode_set(first, 0, &[(first + 1, id(1))]);
        assert_eq!(decode_set(first, &off_key), None);
        let repeated = encode_set(first, 0, &[(first, id(1)), (first, id(2))]);
        assert_eq!(decode_set(first, &repeated), None);
        // The format before this one (no format byte, whole digests) is refused.
        let mut old = (-3i64).to_le_bytes().to_vec();
        old.extend_from_slice(&first.to_le_bytes());
        old.extend_from_slice(&full(1).0);
        assert_eq!(decode_set(first, &old), None);
    }

    #[test]
    fn leb128_round_trips_and_refuses_overlong_values() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_leb128(&mut out, value);
            out.push(7);
            assert_eq!(take_leb128(&out), Some((value, &[7u8][..])), "{value}");
        }
        assert_eq!(take_leb128(&[0x80]), None);
        assert_eq!(take_leb128(&[0xff; 10]), None);
        assert_eq!(
            take_leb128(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
    }
}
