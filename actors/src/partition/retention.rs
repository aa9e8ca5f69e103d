//! Retention: which stored batches of a partition have expired, by age and by size.
//!
//! The decision is the leader's alone: its maintenance tick runs [`plan_trim`] over the
//! [`BatchIndex`] of its applied state and proposes a `Trim { new_log_start }` through
//! Raft, so every replica removes exactly the same batches at the same log position
//! (docs/architecture.md § Fetch path: retention moves the log start forward, offsets are never
//! reused). Replicas never decide on their own, so clocks may differ between nodes.
//!
//! Whole batches only: a batch is the unit of storage, and a trim never splits one. The
//! index keeps a small summary per batch (record count, stored size, newest timestamp)
//! so the tick never decodes stored batches.

use std::collections::BTreeMap;

use crate::partition::log::{LogBounds, PartitionReader};
use crate::record::{batch_count, BatchPiece, RecordCodecError, RecordIter, BATCH_HEADER_LEN};
use crate::topic::{CleanupPolicy, TopicConfig};

/// Bytes a stored batch's key adds to its value (prefix + base offset).
const BATCH_KEY_BYTES: u64 = 9;

/// What retention needs to know about one stored batch, computed once at apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    /// Records in the batch: it holds offsets `base .. base + count`.
    pub count: u32,
    /// Stored size (key and value) in bytes.
    pub bytes: u64,
    /// Newest record timestamp in the batch (ms since the epoch): the batch expires by
    /// age only once its newest record has.
    pub max_timestamp_ms: i64,
}

impl BatchSummary {
    /// Summarises a stored batch (`[count u32 LE][records…]`).
    ///
    /// # Errors
    /// [`RecordCodecError`] if the batch does not decode (corruption).
    pub fn of_stored(stored: &[u8]) -> Result<Self, RecordCodecError> {
        let count = batch_count(stored)?;
        let mut max_timestamp_ms = i64::MIN;
        for record in RecordIter::batch(stored)? {
            max_timestamp_ms = max_timestamp_ms.max(record?.timestamp_ms);
        }
        Ok(Self {
            count,
            bytes: stored.len() as u64 + BATCH_KEY_BYTES,
            max_timestamp_ms,
        })
    }

    /// Summarises a piece of an appended batch, stored as a batch of its own.
    pub fn of_piece(piece: &BatchPiece<'_>) -> Self {
        Self {
            count: piece.count,
            bytes: (BATCH_HEADER_LEN + piece.run.len()) as u64 + BATCH_KEY_BYTES,
            max_timestamp_ms: piece.max_timestamp_ms,
        }
    }
}

/// The retained batches of a partition replica, by base offset, with their total size.
///
/// Invariant: holds exactly the stored batches that still hold an offset at or above the
/// log start, and `stored_bytes` is the sum of their sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchIndex {
    batches: BTreeMap<u64, BatchSummary>,
    stored_bytes: u64,
}

impl BatchIndex {
    /// Records a batch stored at `base`.
    pub fn insert(&mut self, base: u64, summary: BatchSummary) {
        if let Some(old) = self.batches.insert(base, summary) {
            self.stored_bytes = self.stored_bytes.saturating_sub(old.bytes);
        }
        self.stored_bytes += summary.bytes;
    }

    /// Forgets every batch wholly below `log_start` and returns their base offsets, in
    /// order. A batch that straddles `log_start` stays (it is still partly readable).
    pub fn trim_to(&mut self, log_start: u64) -> Vec<u64> {
        let mut removed = Vec::new();
        while let Some((&base, summary)) = self.batches.first_key_value() {
            if base + u64::from(summary.count) > log_start {
                break;
            }
            self.stored_bytes = self.stored_bytes.saturating_sub(summary.bytes);
            self.batches.remove(&base);
            removed.push(base);
        }
        removed
    }

    /// Forgets the batch stored at `base` (compaction replaced it).
    pub fn remove(&mut self, base: u64) {
        if let Some(old) = self.batches.remove(&base) {
            self.stored_bytes = self.stored_bytes.saturating_sub(old.bytes);
        }
    }

    /// Total stored size of the retained batches, in bytes.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// True when a retained batch is keyed in `[from, to)`.
    pub fn holds_batch_in(&self, from: u64, to: u64) -> bool {
        from < to && self.batches.range(from..to).next().is_some()
    }

    /// Base offset of the oldest retained batch.
    pub fn first_base(&self) -> Option<u64> {
        self.batches.keys().next().copied()
    }

    /// Retained batches, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &BatchSummary)> {
        self.batches.iter().map(|(base, summary)| (*base, summary))
    }

    /// Number of retained batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// True when no batch is retained.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// A topic's deletion settings as retention applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Age limit in ms; negative keeps forever.
    pub retention_ms: i64,
    /// Size limit per partition in bytes; negative is unbounded.
    pub retention_bytes: i64,
}

impl RetentionPolicy {
    /// The policy of a topic, or `None` when age and size retention do not apply to it
    /// (compacted topics keep the latest value per key instead).
    pub fn of_topic(config: &TopicConfig) -> Option<Self> {
        match config.cleanup_policy {
            CleanupPolicy::Delete => Some(Self {
                retention_ms: config.retention_ms,
                retention_bytes: config.retention_bytes,
            }),
            CleanupPolicy::Compact => None,
        }
    }
}

/// The log start a trim should move to now, if any: the oldest batches go while their
/// newest record is older than `now_ms - retention_ms`, or while the retained size is over
/// `retention_bytes`. Stops at the first batch kept, so the log stays one contiguous range.
/// Never returns a value at or below the current log start, nor past `next_offset`.
pub fn plan_trim(
    index: &BatchIndex,
    bounds: LogBounds,
    policy: RetentionPolicy,
    now_ms: i64,
) -> Option<u64> {
    let cutoff = (policy.retention_ms >= 0).then(|| now_ms.saturating_sub(policy.retention_ms));
    let size_limit = u64::try_from(policy.retention_bytes).ok();
    let mut remaining = index.stored_bytes();
    let mut new_start = bounds.log_start;
    for (base, summary) in index.iter() {
        let expired = cutoff.is_some_and(|cutoff| summary.max_timestamp_ms < cutoff);
        let oversize = size_limit.is_some_and(|limit| remaining > limit);
        if !(expired || oversize) {
            break;
        }
        remaining = remaining.saturating_sub(summary.bytes);
        new_start = new_start.max(base + u64::from(summary.count));
    }
    let new_start = new_start.min(bounds.next_offset);
    (new_start > bounds.log_start).then_some(new_start)
}

/// The trim the leader's maintenance tick should propose now for a topic with `config`,
/// if any: `None` for compacted topics, or when nothing has expired.
pub fn due_trim(reader: &PartitionReader, config: &TopicConfig, now_ms: i64) -> Option<u64> {
    let policy = RetentionPolicy::of_topic(config)?;
    let bounds = reader.bounds();
    reader.with_index(|index| plan_trim(index, bounds, policy, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(count: u32, bytes: u64, max_timestamp_ms: i64) -> BatchSummary {
        BatchSummary {
            count,
            bytes,
            max_timestamp_ms,
        }
    }

    /// Three batches: offsets 0..10 (ts 100), 10..15 (ts 200), 15..30 (ts 300), 100 bytes each.
    fn index() -> (BatchIndex, LogBounds) {
        let mut index = BatchIndex::default();
        index.insert(0, summary(10, 100, 100));
        index.insert(10, summary(5, 100, 200));
        index.insert(15, summary(15, 100, 300));
        (
            index,
            LogBounds {
                log_start: 0,
                next_offset: 30,
            },
        )
    }

    fn age(ms: i64) -> RetentionPolicy {
        RetentionPolicy {
            retention_ms: ms,
            retention_bytes: -1,
        }
    }

    fn size(bytes: i64) -> RetentionPolicy {
        RetentionPolicy {
            retention_ms: -1,
            retention_bytes: bytes,
        }
    }

    #[test]
    fn age_drops_whole_batches_whose_newest_record_expired() {
        let (index, bounds) = index();
        // Cutoff 50: nothing is older.
        assert_eq!(plan_trim(&index, bounds, age(950), 1_000), None);
        // Cutoff 150: only the first batch (newest record at 100) is older.
        assert_eq!(plan_trim(&index, bounds, age(850), 1_000), Some(10));
        assert_eq!(plan_trim(&index, bounds, age(900), 1_050), Some(10));
        // Cutoff 250: the first two.
        assert_eq!(plan_trim(&index, bounds, age(750), 1_000), Some(15));
        // Everything expired: the log empties up to the high watermark, never past it.
        assert_eq!(plan_trim(&index, bounds, age(0), 1_000), Some(30));
        // A record exactly at the cutoff is not older than it.
        assert_eq!(plan_trim(&index, bounds, age(900), 1_000), None);
    }

    #[test]
    fn age_stops_at_the_first_batch_kept() {
        let mut index = BatchIndex::default();
        index.insert(0, summary(10, 100, 100));
        // A producer timestamp in the future keeps its batch, and everything after it.
        index.insert(10, summary(5, 100, 9_999));
        index.insert(15, summary(15, 100, 100));
        let bounds = LogBounds {
            log_start: 0,
            next_offset: 30,
        };
        assert_eq!(plan_trim(&index, bounds, age(500), 1_000), Some(10));
    }

    #[test]
    fn size_drops_the_oldest_until_under_the_limit() {
        let (index, bounds) = index();
        assert_eq!(plan_trim(&index, bounds, size(300), 0), None);
        assert_eq!(plan_trim(&index, bounds, size(299), 0), Some(10));
        assert_eq!(plan_trim(&index, bounds, size(200), 0), Some(10));
        assert_eq!(plan_trim(&index, bounds, size(150), 0), Some(15));
        assert_eq!(plan_trim(&index, bounds, size(0), 0), Some(30));
    }

    #[test]
    fn unlimited_keeps_everything_and_compacted_topics_have_no_policy() {
        let (index, bounds) = index();
        assert_eq!(plan_trim(&index, bounds, size(-1), i64::MAX), None);
        let config = TopicConfig {
            partitions: 1,
            replication_factor: 1,
            retention_ms: 1,
            retention_bytes: 1,
            cleanup_policy: CleanupPolicy::Compact,
            delete_retention_ms: 1,
        };
        assert_eq!(RetentionPolicy::of_topic(&config), None);
    }

    #[test]
    fn never_moves_backwards_or_past_the_high_watermark() {
        let (mut index, _) = index();
        index.trim_to(10);
        let bounds = LogBounds {
            log_start: 12,
            next_offset: 30,
        };
        // The straddling batch 10..15 was already partly trimmed: dropping it moves to 15.
        assert_eq!(plan_trim(&index, bounds, size(150), 0), Some(15));
        let past = LogBounds {
            log_start: 12,
            next_offset: 14,
        };
        assert_eq!(plan_trim(&index, past, size(0), 0), Some(14));
        let at_end = LogBounds {
            log_start: 30,
            next_offset: 30,
        };
        assert_eq!(plan_trim(&index, at_end, size(0), 0), None);
    }

    #[test]
    fn the_index_accounts_bytes_and_keeps_straddling_batches() {
        let (mut index, _) = index();
        assert_eq!(index.stored_bytes(), 300);
        assert_eq!(index.trim_to(12), vec![0]);
        assert_eq!(index.stored_bytes(), 200);
        assert_eq!(index.first_base(), Some(10));
        assert_eq!(index.trim_to(30), vec![10, 15]);
        assert_eq!(index.stored_bytes(), 0);
        assert!(index.is_empty());
    }
}
