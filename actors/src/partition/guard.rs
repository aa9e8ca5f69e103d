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
use psubd_raft::{StorageIoError, WriteBatch};
use serde::{Deserialize, Serialize};

use super::id_table::{IdTable, RecordId};
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
    let Some(records) = record_slices(guard, stored) else {
        return Ok(None);
    };
    // Keys stored by earlier requests of this entry, newest last: a later `If-Match` in
    // the same entry must see them (the key index is only staged after the whole entry).
    let tracks_keys = guard
        .requests
        .iter()
        .any(|(_, g)| matches!(g.expect, Some(Expectation::KeyOffset { .. })));
    let mut stored_keys: HashMap<&[u8], Option<u64>> = HashMap::new();
    ids.expire(guard.stamped_ms, guard.window_ms, batch);
    let mut next = next_offset;
    let mut kept: Vec<&[u8]> = Vec::with_capacity(records.len());
    let mut outcomes = Vec::with_capacity(guard.requests.len());
    let mut start = 0usize;
    for (count, request) in &guard.requests {
        let own = &records[start..start + *count as usize];
        start += *count as usize;
        match &request.expect {
            Some(Expectation::NextOffset(expected)) if *expected != next => {
                outcomes.push(RequestOutcome::NextOffsetMismatch { next_offset: next });
                continue;
            }
            Some(Expectation::KeyOffset { key, offset }) => {
                let current = match stored_keys.get(key.as_ref()) {
                    Some(current) => *current,
                    None => key_offset(key)?,
                };
                if current != *offset {
                    outcomes.push(RequestOutcome::KeyOffsetMismatch {
                        key_offset: current,
                    });
                    continue;
                }
            }
            _ => {}
        }
        let base_offset = next;
        let mut duplicates = Vec::new();
        let mut request_ids = request.ids.iter().peekable();
        for (position, record) in own.iter().enumerate() {
            let position = position as u32;
            let id = request_ids
                .next_if(|(at, _)| *at == position)
                .map(|(_, id)| *id);
            if let Some(id) = id {
                if let Some(original) = ids.original(&id, guard.stamped_ms, guard.window_ms) {
                    duplicates.push((position, original));
                    continue;
                }
                ids.remember(id, next, guard.stamped_ms, batch);
            }
            if tracks_keys {
                if let Some(Ok(view)) = RecordIter::run(record.bytes).next() {
                    if let Some(key) = view.key {
                        stored_keys.insert(key, view.value.is_some().then_some(next));
                    }
                }
            }
            kept.push(record.bytes);
            next += 1;
        }
        outcomes.push(RequestOutcome::Written {
            base_offset,
            duplicates,
        });
    }
    let count = kept.len() as u32;
    let append = if count == 0 {
        None
    } else if count as usize == records.len() {
        Some((stored.clone(), count))
    } else {
        let len: usize = kept.iter().map(|r| r.len()).sum();
        let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + len);
        out.put_u32_le(count);
        for record in kept {
            out.put_slice(record);
        }
        Some((out.freeze(), count))
    };
    Ok(Some(Decided { append, outcomes }))
}

/// One record's bytes within a stored batch.
struct RecordSlice<'a> {
    bytes: &'a [u8],
}

/// The byte run of each record of `stored`, if the batch decodes and holds exactly the
/// records its guard counts.
fn record_slices<'a>(guard: &EntryGuard, stored: &'a [u8]) -> Option<Vec<RecordSlice<'a>>> {
    let total = batch_count(stored).ok()?;
    let counted: u64 = guard.requests.iter().map(|(n, _)| u64::from(*n)).sum();
    if counted != u64::from(total) {
        return None;
    }
    let mut records = RecordIter::batch(stored).ok()?;
    let mut slices = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let before = records.remaining();
        records.next()?.ok()?;
        let len = before.len() - records.remaining().len();
        slices.push(RecordSlice {
            bytes: &before[..len],
        });
    }
    records.remaining().is_empty().then_some(slices)
}
