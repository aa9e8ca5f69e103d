//! Duplicate detection, as NATS's benchmarks report `%dupe`.
//!
//! Each producer loop has one request in flight and numbers its records in order, so on a
//! partition the sequence numbers of one loop only grow. A record whose sequence is at or
//! below the last one seen from the same loop on the same partition was written twice
//! (a retry after 504 or a lost connection, or a redelivery after a group rebalance).
//! This needs a few bytes per (partition, loop) instead of a set of every record seen.

/// Partitions above this are not tracked (a guard against absurd numbers in an answer).
const MAX_TRACKED_PARTITIONS: usize = 1 << 16;

/// No record seen yet from this loop on this partition.
const NONE: u64 = u64::MAX;

/// Last sequence seen per (partition, producer loop).
#[derive(Debug, Default, Clone)]
pub struct DuplicateTracker {
    last: Vec<Vec<u64>>,
}

impl DuplicateTracker {
    /// Notes a record; returns true if it is a duplicate.
    pub fn observe(&mut self, partition: u32, producer: u16, seq: u64) -> bool {
        let p = partition as usize;
        if p >= MAX_TRACKED_PARTITIONS {
            return false;
        }
        if self.last.len() <= p {
            self.last.resize_with(p + 1, Vec::new);
        }
        let per_loop = &mut self.last[p];
        let i = producer as usize;
        if per_loop.len() <= i {
            per_loop.resize(i + 1, NONE);
        }
        let last = &mut per_loop[i];
        if *last != NONE && seq <= *last {
            return true;
        }
        *last = seq;
        false
    }

    /// Forgets a partition (a read-only run wraps around to its start).
    pub fn reset(&mut self, partition: u32) {
        if let Some(per_loop) = self.last.get_mut(partition as usize) {
            per_loop.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_sequence_is_a_duplicate_per_partition_and_loop() {
        let mut t = DuplicateTracker::default();
        assert!(!t.observe(0, 1, 0));
        assert!(!t.observe(0, 1, 1));
        assert!(!t.observe(0, 2, 0)); // another loop
        assert!(!t.observe(1, 1, 0)); // another partition
        assert!(!t.observe(0, 1, 5)); // gaps are fine (records went elsewhere)
        assert!(t.observe(0, 1, 1)); // a retried batch
        assert!(t.observe(0, 1, 5));
        t.reset(0);
        assert!(!t.observe(0, 1, 0));
    }
}
