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

use super::batch_index::{BatchIndex, LogBounds};
use crate::topic::{CleanupPolicy, TopicConfig};

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
/// if any: `None` for compacted topics, or when nothing has expired. `index` and `bounds`
/// are the replica's as written.
pub(super) fn due_trim(
    index: &BatchIndex,
    bounds: LogBounds,
    config: &TopicConfig,
    now_ms: i64,
) -> Option<u64> {
    let policy = RetentionPolicy::of_topic(config)?;
    plan_trim(index, bounds, policy, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::stored::BatchSummary;

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
}
