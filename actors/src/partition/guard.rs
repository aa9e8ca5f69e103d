//! Guarded appends: publishes whose records carry ids (idempotent publish) or whose request
//! expects an offset (optimistic concurrency). Both are decided when the entry is applied,
//! on every replica alike, from the replicated state alone (the id table, the high
//! watermark, the key index) and the leader's stamp in the entry — never from a replica's
//! clock or the topic settings as a replica happens to see them.
//!
//! An entry joins the requests of several publishes; each keeps its own guard and gets its
//! own [`RequestOutcome`]: a request whose expectation fails stores nothing, a record whose
//! id was stored within the window is left out and reported with the original offset, and
//! every other record is stored, in entry order, at the next offset.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use foldhash::HashMapExt;
use psubd_raft::{StorageIoError, WriteBatch};
use serde::{Deserialize, Serialize};

use super::id_table::{IdPrefix, IdTable, RecordId};
use crate::record::{batch_count, RecordIter, BATCH_HEADER_LEN};

/// What one publish request asks of its partition beyond storing its records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestGuard {
    /// The ids of the request's records that carry one: (position in the request, id),
    /// ascending by position.
    pub ids: Vec<(u32, RecordId)>,
    /// A condition on the partition that must hold for anything to be stored.
    pub expect: Option<Expectation>,
}

impl RequestGuard {
    /// True when the request asks for nothing: a plain append.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.expect.is_none()
    }
}

/// A condition a request's records are stored under (412 `offset_mismatch` otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expectation {
    /// `?expected_offset=N`: the partition's next offset must be `N`.
    NextOffset(u64),
    /// `If-Match` on a key: the key's latest live record must be at `offset` (`None`: the
    /// key must have no live record). Compacted topics only (they keep the key index).
    KeyOffset {
        /// The key.
        key: Bytes,
        /// Its expected latest offset.
        offset: Option<u64>,
    },
}

/// The guard of one entry, stamped by the leader that built it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EntryGuard {
    /// The leader's clock when it built the entry: ids expire by it.
    pub stamped_ms: i64,
    /// The topic's `duplicate_window_ms` as the leader saw it.
    pub window_ms: u64,
    /// One per request of the entry, in entry order: its record count and its guard.
    pub requests: Vec<(u32, RequestGuard)>,
}

/// What one request of a guarded entry came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOutcome {
    /// Stored. The records not in `duplicates` got consecutive offsets from
    /// `base_offset`, in request order.
    Written {
        /// Offset of the request's first stored record (the next offset if none was).
        base_offset: u64,
        /// Records left out as duplicates: (position in the request, original offset),
        /// ascending by position.
        duplicates: Vec<(u32, u64)>,
    },
    /// The partition's next offset was not the expected one; nothing was stored.
    NextOffsetMismatch {
        /// The partition's next offset.
        next_offset: u64,
    },
    /// The key's latest offset was not the expected one; nothing was stored.
    KeyOffsetMismatch {
        /// The key's latest live offset, if it has one.
        key_offset: Option<u64>,
    },
}

/// What a guarded entry stores and answers.
#[derive(Debug)]
pub(super) struct Decided {
    /// The stored batch to append (header included) and its record count; `None` when
    /// no record is stored.
    pub append: Option<(Bytes, u32)>,
    /// One per request, in entry order.
    pub outcomes: Vec<RequestOutcome>,
}

/// Decides a guarded entry whose stored batch is `stored`, at a partition whose next
/// offset is `next_offset`: checks each request's expectation, looks up and remembers its
/// ids (staging the id table's changes in `batch`), and builds the batch of the records
/// kept. `key_offset` reads a key's latest live offset from the key index as staged.
/// `None` when the entry does not match its guard (never built by a leader): the caller
/// skips it, alike on every replica, and nothing was changed.
///
/// The records are only decoded when the entry needs them: to leave some out, or to see
/// the keys an `If-Match` later in the entry depends on. An entry whose records are all
/// stored (the common case) is appended as it came, like a plain one.
///
/// # Errors
/// Storage I/O from `key_offset`.
pub(super) fn decide(
    guard: &EntryGuard,
    stored: &Bytes,
    next_offset: u64,
    ids: &mut IdTable,
    mut key_offset: impl FnMut(&[u8]) -> Result<Option<u64>, StorageIoError>,
    batch: &mut WriteBatch,
) -> Result<Option<Decided>, StorageIoError> {
    let Ok(total) = batch_count(stored) else {
        return Ok(None);
    };
    let counted: u64 = guard.requests.iter().map(|(n, _)| u64::from(*n)).sum();
    if counted != u64::from(total) {
        return Ok(None);
    }
    // Keys stored by earlier requests of this entry: a later `If-Match` in the same entry
    // must see them (the key index is only staged after the whole entry).
    let tracks_keys = guard
        .requests
        .iter()
        .any(|(_, g)| matches!(g.expect, Some(Expectation::KeyOffset { .. })));
    let mut slices = None;
    if tracks_keys {
        let Some(found) = record_slices(stored, total) else {
            return Ok(None);
        };
        slices = Some(found);
    }
    let mut stored_keys: HashMap<&[u8], Option<u64>> = HashMap::new();
    // First decide, changing nothing: what each request comes to, which records are left
    // out (by index in the entry) and which ids to remember.
    // Sized once: growing them (rehashing) showed in the profile, about 1 % of node CPU.
    let id_count: usize = guard.requests.iter().map(|(_, g)| g.ids.len()).sum();
    let mut fresh: foldhash::HashMap<RecordId, u64> = foldhash::HashMap::with_capacity(id_count);
    let mut remember: Vec<(u64, IdPrefix)> = Vec::with_capacity(id_count);
    let mut dropped: Vec<usize> = Vec::new();
    let mut next = next_offset;
    let mut outcomes = Vec::with_capacity(guard.requests.len());
    let mut start = 0usize;
    for (count, request) in &guard.requests {
        let own = start..start + *count as usize;
        start = own.end;
        let refusal = match &request.expect {
            Some(Expectation::NextOffset(expected)) if *expected != next => {
                Some(RequestOutcome::NextOffsetMismatch { next_offset: next })
            }
            Some(Expectation::KeyOffset { key, offset }) => {
                let current = match stored_keys.get(key.as_ref()) {
                    Some(current) => *current,
                    None => key_offset(key)?,
                };
                (current != *offset).then_some(RequestOutcome::KeyOffsetMismatch {
                    key_offset: current,
                })
            }
            _ => None,
        };
        if let Some(refusal) = refusal {
            outcomes.push(refusal);
            dropped.extend(own);
            continue;
        }
        let base_offset = next;
        let mut duplicates = Vec::new();
        let mut request_ids = request.ids.iter().peekable();
        for (position, index) in own.enumerate() {
            let position = position as u32;
            let id = request_ids
                .next_if(|(at, _)| *at == position)
                .map(|(_, id)| *id);
            if let Some(id) = id {
                let original = fresh
                    .get(&id)
                    .copied()
                    .or_else(|| ids.original(&id, guard.stamped_ms, guard.window_ms));
                if let Some(original) = original {
                    duplicates.push((position, original));
                    dropped.push(index);
                    continue;
                }
                fresh.insert(id, next);
                remember.push((next, id.prefix()));
            }
            if let Some(record) = slices.as_ref().and_then(|s: &Vec<&[u8]>| s.get(index)) {
                if let Some(Ok(view)) = RecordIter::run(record).next() {
                    if let Some(key) = view.key {
                        stored_keys.insert(key, view.value.is_some().then_some(next));
                    }
                }
            }
            next += 1;
        }
        outcomes.push(RequestOutcome::Written {
            base_offset,
            duplicates,
        });
    }
    let count = total - dropped.len() as u32;
    let append = if count == 0 {
        None
    } else if dropped.is_empty() {
        Some((stored.clone(), count))
    } else {
        let slices = match slices {
            Some(slices) => slices,
            None => match record_slices(stored, total) {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        Some((keep_all_but(&slices, &dropped), count))
    };
    // Then change the id table: the entry is decided and will be stored as decided.
    ids.expire(guard.stamped_ms, guard.window_ms, batch);
    ids.remember_entry(remember, guard.stamped_ms, batch);
    Ok(Some(Decided { append, outcomes }))
}

/// A stored batch of `records` but those at the `dropped` indexes (ascending).
fn keep_all_but(records: &[&[u8]], dropped: &[usize]) -> Bytes {
    let mut dropped = dropped.iter().peekable();
    let kept: Vec<&[u8]> = records
        .iter()
        .enumerate()
        .filter(|(index, _)| dropped.next_if(|d| **d == *index).is_none())
        .map(|(_, record)| *record)
        .collect();
    let len: usize = kept.iter().map(|r| r.len()).sum();
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + len);
    out.put_u32_le(kept.len() as u32);
    for record in kept {
        out.put_slice(record);
    }
    out.freeze()
}

/// The byte run of each of the `total` records of `stored`, if they all decode and
/// nothing follows them.
fn record_slices(stored: &[u8], total: u32) -> Option<Vec<&[u8]>> {
    let mut records = RecordIter::batch(stored).ok()?;
    let mut slices = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let before = records.remaining();
        records.next()?.ok()?;
        let len = before.len() - records.remaining().len();
        slices.push(&before[..len]);
    }
    records.remaining().is_empty().then_some(slices)
}
