//! What a partition replica retains: the replicated bounds of its log and an index of its
//! stored batches (one small summary per batch), so retention plans trims and the disk
//! usage is known without decoding a batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stored::BatchSummary;

/// The replicated bounds of a partition's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBounds {
    /// First offset still stored. Invariant: `log_start <= next_offset`.
    pub log_start: u64,
    /// Offset the next appended record gets: the high watermark. Offsets are dense and
    /// never reused.
    pub next_offset: u64,
}

/// The retained batches of a partition replica, by base offset, with their total size,
/// and a time index over them.
///
/// Invariant: holds exactly the stored batches that still hold an offset at or above the
/// log start, and `stored_bytes` is the sum of their sizes.
///
/// The time index answers "the first batch holding a record stamped at or after T" with a
/// lookup: `time_marks` maps each newest timestamp seen so far, at the moment a batch
/// raised it, to that batch's base (Kafka's time index keeps the same monotone marks). A
/// retained batch holding a record at or after T is never before the first mark at or after
/// T, unless the batch that raised the mark past T was trimmed since: `trimmed_max` is the
/// highest mark trimmed away, and a query at or below it walks the batch summaries instead.
#[derive(Clone, Debug, Default)]
pub struct BatchIndex {
    batches: BTreeMap<u64, BatchSummary>,
    stored_bytes: u64,
    /// Newest timestamp so far → the base of the batch that raised it to that.
    time_marks: BTreeMap<i64, u64>,
    /// The highest mark removed by a trim, if any.
    trimmed_max: Option<i64>,
}

/// Two indexes are equal when they retain the same batches: the time marks are derived
/// from the batches' history and answer alike.
impl PartialEq for BatchIndex {
    fn eq(&self, other: &Self) -> bool {
        self.batches == other.batches && self.stored_bytes == other.stored_bytes
    }
}

impl Eq for BatchIndex {}

impl BatchIndex {
    /// Records a batch stored at `base`.
    pub fn insert(&mut self, base: u64, summary: BatchSummary) {
        if let Some(old) = self.batches.insert(base, summary) {
            self.stored_bytes = self.stored_bytes.saturating_sub(old.bytes);
        }
        self.stored_bytes += summary.bytes;
        let newest = self.time_marks.last_key_value().map(|(ts, _)| *ts);
        if newest.is_none_or(|newest| summary.max_timestamp_ms > newest) {
            self.time_marks.insert(summary.max_timestamp_ms, base);
        }
    }

    /// The base of the first retained batch holding a record stamped at or after
    /// `timestamp_ms`; `None` when no retained batch does. See the type's docs.
    pub fn first_batch_at_or_after(&self, timestamp_ms: i64) -> Option<u64> {
        if self
            .trimmed_max
            .is_some_and(|trimmed| timestamp_ms <= trimmed)
        {
            return self
                .batches
                .iter()
                .find(|(_, summary)| summary.max_timestamp_ms >= timestamp_ms)
                .map(|(base, _)| *base);
        }
        self.time_marks
            .range(timestamp_ms..)
            .next()
            .map(|(_, base)| *base)
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
        // Marks rise with their bases (only appends, in offset order, raise the newest
        // stamp), so the trimmed ones are at the front.
        while let Some((&ts, &base)) = self.time_marks.first_key_value() {
            if base >= log_start || self.batches.contains_key(&base) {
                break;
            }
            self.time_marks.remove(&ts);
            self.trimmed_max = Some(self.trimmed_max.map_or(ts, |max| max.max(ts)));
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

/// A change to the batch index, staged at apply and published to readers once the apply
/// call's batch is written.
#[derive(Debug)]
pub(super) enum IndexChange {
    Insert(u64, BatchSummary),
    Remove(u64),
    TrimTo(u64),
    Reset(BatchIndex),
}

impl BatchIndex {
    /// Applies a staged change (see [`IndexChange`]).
    pub(super) fn apply(&mut self, change: IndexChange) {
        match change {
            IndexChange::Insert(base, summary) => self.insert(base, summary),
            IndexChange::Remove(base) => self.remove(base),
            IndexChange::TrimTo(log_start) => drop(self.trim_to(log_start)),
            IndexChange::Reset(fresh) => *self = fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_accounts_bytes_and_keeps_straddling_batches() {
        let summary = |count, max_timestamp_ms| BatchSummary {
            count,
            bytes: 100,
            max_timestamp_ms,
        };
        let mut index = BatchIndex::default();
        index.insert(0, summary(10, 100));
        index.insert(10, summary(5, 200));
        index.insert(15, summary(15, 300));
        assert_eq!(index.stored_bytes(), 300);
        assert_eq!(index.trim_to(12), vec![0]);
        assert_eq!(index.stored_bytes(), 200);
        assert_eq!(index.first_base(), Some(10));
        assert!(index.holds_batch_in(11, 16) && !index.holds_batch_in(16, 30));
        assert_eq!(index.trim_to(30), vec![10, 15]);
        assert_eq!(index.stored_bytes(), 0);
        assert!(index.is_empty());
    }

    #[test]
    fn the_time_index_finds_the_first_batch_stamped_at_or_after_a_time() {
        let summary = |max_timestamp_ms| BatchSummary {
            count: 10,
            bytes: 100,
            max_timestamp_ms,
        };
        let mut index = BatchIndex::default();
        // Stamps out of order: 0..10 newest 100, 10..20 newest 300, 20..30 newest 200,
        // 30..40 newest 400.
        for (base, ts) in [(0, 100), (10, 300), (20, 200), (30, 400)] {
            index.insert(base, summary(ts));
        }
        assert_eq!(index.first_batch_at_or_after(i64::MIN), Some(0));
        assert_eq!(index.first_batch_at_or_after(100), Some(0));
        assert_eq!(index.first_batch_at_or_after(150), Some(10));
        assert_eq!(index.first_batch_at_or_after(250), Some(10));
        assert_eq!(index.first_batch_at_or_after(301), Some(30));
        assert_eq!(index.first_batch_at_or_after(401), None);
        // Trimming the batch that raised the newest stamp to 300 leaves the batch at 20
        // (newest 200) first for 150: the marks alone would say 30.
        index.trim_to(20);
        assert_eq!(index.first_batch_at_or_after(150), Some(20));
        assert_eq!(index.first_batch_at_or_after(250), Some(30));
        assert_eq!(index.first_batch_at_or_after(350), Some(30));
        assert_eq!(index.first_batch_at_or_after(401), None);
    }
}
