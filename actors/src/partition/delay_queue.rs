//! The delay queue of a partition: records published with a due time (`deliver_at_ms`,
//! `delay_ms`) wait here, in the partition's replicated state, until the leader releases
//! them into the log.
//!
//! - A `Delay` command (one publish request's delayed records, each with its due time)
//!   puts the records in the queue, keyed by [`QueueKey`] (due time, then the log index
//!   and position of the entry that queued it). It is a Raft entry like any append, so it
//!   is acknowledged once committed on a majority, and survives what an append survives.
//!   Nothing is appended to the log: readers (fetch, streams, key views, groups) cannot
//!   see a queued record.
//! - A `Release` command names a time `T` (the leader's clock, carried in the entry so
//!   every replica decides alike) and bounds: applying it moves the records due at or
//!   before `T`, oldest due first, at most [`RELEASE_MAX_RECORDS`] and
//!   [`RELEASE_MAX_BYTES`] of them, out of the queue and onto the end of the log, in one
//!   apply. So a delayed record's offset is assigned at release. A release applied twice
//!   (a new leader proposing again) finds those records gone: none is ever appended twice.
//! - The queue is bounded ([`MAX_DELAYED_RECORDS`], [`MAX_DELAYED_BYTES`]); a `Delay`
//!   that would overflow it is refused at apply, alike on every replica, and changes
//!   nothing.
//!
//! The queue's keys stay in the tree (read back at release and at load); in memory every
//! replica keeps each queued record's key and size, and the records queued by the current
//! apply call (a release later in the same call needs their bytes before the tree has
//! them).

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use psubd_raft::{CommandResponse, StorageIoError, Tree, WriteBatch};
use serde::{Deserialize, Serialize};

use super::layout::{QueueKey, QUEUE_END, QUEUE_PREFIX};
use crate::record::{EncodedRecords, RecordIter, BATCH_HEADER_LEN};

/// Most records waiting in one partition's delay queue. With [`MAX_DELAYED_BYTES`] it
/// bounds a replica's memory for the queue's index (a few tens of bytes per record) and
/// the copy a snapshot makes of the queue.
pub const MAX_DELAYED_RECORDS: u64 = 100_000;
/// Most bytes of record encodings waiting in one partition's delay queue.
pub const MAX_DELAYED_BYTES: u64 = 32 << 20;
/// Most records one release moves into the log (the next release follows at once).
pub const RELEASE_MAX_RECORDS: u32 = 10_000;
/// Most bytes of records one release moves into the log (one record is always moved).
pub const RELEASE_MAX_BYTES: u32 = 1 << 20;

/// One request's delayed records for one partition, as the edge sends them: the records
/// encoded as for an append, and one due time per record, in the same order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DelayedRecords {
    /// Due times, ms since the epoch, one per record.
    pub due_ms: Vec<i64>,
    /// The records.
    pub records: EncodedRecords,
}

impl DelayedRecords {
    /// Checks what a peer sent: one due time per record, and records that decode and are
    /// as many as the run says.
    ///
    /// # Errors
    /// What is wrong, for the refusal.
    pub fn check(&self) -> Result<(), String> {
        let mut decoded = 0u32;
        for record in RecordIter::run(&self.records.bytes) {
            record.map_err(|e| format!("a delayed record does not decode: {e}"))?;
            decoded += 1;
        }
        if decoded != self.records.count || self.due_ms.len() != decoded as usize {
            return Err(format!(
                "a delay says {} records and holds {decoded} with {} due times",
                self.records.count,
                self.due_ms.len()
            ));
        }
        Ok(())
    }

    /// The body of the `Delay` command: `[count u32 LE][count × due i64 LE][records…]`.
    pub(super) fn encode_command_body(&self, out: &mut BytesMut) {
        out.reserve(4 + 8 * self.due_ms.len() + self.records.bytes.len());
        out.put_u32_le(self.due_ms.len() as u32);
        for due in &self.due_ms {
            out.put_i64_le(*due);
        }
        out.put_slice(&self.records.bytes);
    }

    /// Decodes the body of a `Delay` command; `None` when it is malformed.
    pub(super) fn decode_command_body(body: &Bytes) -> Option<Self> {
        let count = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
        let dues_end = 4usize.checked_add((count as usize).checked_mul(8)?)?;
        let due_ms = body
            .get(4..dues_end)?
            .chunks_exact(8)
            .map(|raw| raw.try_into().map(i64::from_le_bytes))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Self {
            due_ms,
            records: EncodedRecords {
                count,
                bytes: body.slice(dues_end..),
            },
        })
    }
}

/// The body of a `Release` command: release what is due at or before `up_to_ms`, within
/// the bounds given (the leader's, carried so every replica releases alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCommand {
    /// Release records due at or before this time (the leader's clock), ms since the epoch.
    pub up_to_ms: i64,
    /// Most records to move.
    pub max_records: u32,
    /// Most bytes of records to move (one record is always moved).
    pub max_bytes: u32,
}

/// What applying a `Delay` came to (the command's response, one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayOutcome {
    /// Every record is queued.
    Queued,
    /// The queue would overflow its bounds: nothing was queued.
    Full,
    /// The command did not decode (never built by a leader): nothing was queued.
    Malformed,
}

impl DelayOutcome {
    /// The command response carrying this outcome.
    pub(super) fn response(self) -> CommandResponse {
        let byte = match self {
            Self::Queued => 1,
            Self::Full => 2,
            Self::Malformed => 3,
        };
        CommandResponse(Bytes::copy_from_slice(&[byte]))
    }

    /// Decodes a `Delay` command's response.
    pub fn decode(response: &CommandResponse) -> Option<Self> {
        match response.0.first()? {
            1 => Some(Self::Queued),
            2 => Some(Self::Full),
            3 => Some(Self::Malformed),
            _ => None,
        }
    }
}

/// The delay queue as readers see it once written: how much waits, and when the first
/// record is due (the leader's release timer reads it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelaySummary {
    /// Records waiting.
    pub records: u64,
    /// Bytes of their encodings.
    pub bytes: u64,
    /// The earliest due time among them.
    pub earliest_due_ms: Option<i64>,
}

/// Records a release moved out of the queue: a stored batch to append.
pub(super) struct Released {
    /// `[count u32 LE][records…]`, in due order, at least one record.
    pub stored: Bytes,
}

/// A key and value of the state tree, as a snapshot plan pins it.
pub(super) type Pair = (Vec<u8>, Vec<u8>);

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct DelayQueue {
    /// Every queued record's key and encoded size, including the current apply call's.
    pending: BTreeMap<QueueKey, u32>,
    /// Sum of the sizes in `pending`.
    bytes: u64,
    /// Records queued by the current apply call, not in the tree yet.
    staged: BTreeMap<QueueKey, Bytes>,
}

impl DelayQueue {
    /// Reads the queue from `state` (at open and after a snapshot install).
    pub(super) fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.pending.clear();
        self.staged.clear();
        self.bytes = 0;
        for item in state.range(&[QUEUE_PREFIX], Some(&QUEUE_END)) {
            let (key, value) = item?;
            if let Some(key) = QueueKey::decode(&key) {
                self.pending.insert(key, value.len() as u32);
                self.bytes += value.len() as u64;
            }
        }
        Ok(())
    }

    /// Queues the records of the `Delay` command at log `index`, unless that would take the
    /// queue past its bounds.
    pub(super) fn queue(
        &mut self,
        index: u64,
        delayed: &DelayedRecords,
        batch: &mut WriteBatch,
    ) -> DelayOutcome {
        let mut records = Vec::with_capacity(delayed.due_ms.len());
        let mut run = RecordIter::run(&delayed.records.bytes);
        loop {
            let before = run.remaining();
            match run.next() {
                None => break,
                Some(Ok(_)) => {
                    let len = before.len() - run.remaining().len();
                    let start = delayed.records.bytes.len() - before.len();
                    records.push(delayed.records.bytes.slice(start..start + len));
                }
                Some(Err(_)) => return DelayOutcome::Malformed,
            }
        }
        if records.len() != delayed.due_ms.len() || records.len() != delayed.records.count as usize
        {
            return DelayOutcome::Malformed;
        }
        let added_bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self.pending.len() as u64 + records.len() as u64 > MAX_DELAYED_RECORDS
            || self.bytes + added_bytes > MAX_DELAYED_BYTES
        {
            return DelayOutcome::Full;
        }
        for (position, (record, due_ms)) in records.into_iter().zip(&delayed.due_ms).enumerate() {
            let key = QueueKey {
                due_ms: *due_ms,
                index,
                position: position as u32,
            };
            batch.insert(key.encode().to_vec(), record.to_vec());
            self.pending.insert(key, record.len() as u32);
            self.staged.insert(key, record);
        }
        self.bytes += added_bytes;
        DelayOutcome::Queued
    }

    /// Takes the records due at or before `command.up_to_ms` out of the queue, in due
    /// order, within the command's bounds; `None` when none is due.
    pub(super) fn release(
        &mut self,
        command: &ReleaseCommand,
        state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<Option<Released>, StorageIoError> {
        let mut taken = Vec::new();
        let mut taken_bytes = 0u64;
        for (key, size) in &self.pending {
            if key.due_ms > command.up_to_ms || taken.len() >= command.max_records as usize {
                break;
            }
            if !taken.is_empty() && taken_bytes + u64::from(*size) > u64::from(command.max_bytes) {
                break;
            }
            taken.push(*key);
            taken_bytes += u64::from(*size);
        }
        if taken.is_empty() {
            return Ok(None);
        }
        let mut stored = BytesMut::with_capacity(BATCH_HEADER_LEN + taken_bytes as usize);
        stored.put_u32_le(0);
        let mut count = 0u32;
        for key in taken {
            let record = match self.staged.remove(&key) {
                Some(record) => Some(record),
                None => state.get(&key.encode())?.map(|value| value.into_bytes()),
            };
            // A key the index holds but the tree does not would mean the two disagree;
            // the tree is identical on every replica, so skipping it is alike everywhere.
            if let Some(record) = record {
                stored.put_slice(&record);
                count += 1;
            }
            batch.remove(key.encode().to_vec());
            if let Some(size) = self.pending.remove(&key) {
                self.bytes = self.bytes.saturating_sub(u64::from(size));
            }
        }
        if count == 0 {
            return Ok(None);
        }
        stored[..BATCH_HEADER_LEN].copy_from_slice(&count.to_le_bytes());
        Ok(Some(Released {
            stored: stored.freeze(),
        }))
    }

    /// Forgets what the apply call staged: its batch is written, the tree has it.
    pub(super) fn written(&mut self) {
        self.staged.clear();
    }

    /// The queue as staged.
    pub(super) fn summary(&self) -> DelaySummary {
        DelaySummary {
            records: self.pending.len() as u64,
            bytes: self.bytes,
            earliest_due_ms: self.pending.keys().next().map(|key| key.due_ms),
        }
    }

    /// Every queued record's pair, as a snapshot pins them.
    pub(super) fn snapshot_pairs(state: &Tree) -> Result<Vec<Pair>, StorageIoError> {
        state
            .range(&[QUEUE_PREFIX], Some(&QUEUE_END))
            .map(|item| item.map(|(key, value)| (key.to_vec(), value.to_vec())))
            .collect()
    }
}
