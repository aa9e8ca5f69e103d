//! The newest entries of a group's log, kept decoded in memory.
//!
//! What a group appends is read back almost at once: the leader's replication sends it to
//! the followers, and every replica's state machine applies it once committed. Serving those
//! reads from memory saves a positional read into a fresh buffer, a checksum and a decode
//! per entry (about 7 % of the profile samples under the group-consumer load). The entries
//! share their payload with the caller (`Bytes`), so keeping them costs no copy.
//!
//! Bounded per group by [`MAX_TAIL_BYTES`] and [`MAX_TAIL_ENTRIES`]; an entry larger than the
//! byte bound is never kept (reads of it go to the segment file, as all others may).
//!
//! Invariant: the tail is empty, or holds consecutive entries ending with the log's last
//! entry, each identical to the stored one. The segment log keeps it by recording every
//! append, clearing it at a truncation and dropping what a purge hides.

use std::collections::VecDeque;

use openraft::EntryPayload;

use crate::types::typ;

/// Payload bytes kept per group: a few record-batch entries, which is what replication and
/// apply read back while one entry per partition is in flight. With many groups per node the
/// bound is per group, so it stays small.
pub(crate) const MAX_TAIL_BYTES: usize = 128 << 10;

/// Entries kept per group, however small.
pub(crate) const MAX_TAIL_ENTRIES: usize = 64;

/// The cost of an entry against [`MAX_TAIL_BYTES`]: its payload plus a fixed share for the
/// entry itself.
fn entry_bytes(entry: &typ::Entry) -> usize {
    const ENTRY_OVERHEAD: usize = 64;
    match &entry.payload {
        EntryPayload::Normal(command) => command.0.len() + ENTRY_OVERHEAD,
        EntryPayload::Blank | EntryPayload::Membership(_) => ENTRY_OVERHEAD,
    }
}

/// Whether an entry is small enough to be kept at all.
pub(crate) fn fits(entry: &typ::Entry) -> bool {
    entry_bytes(entry) <= MAX_TAIL_BYTES
}

/// The newest entries of one group's log (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct LogTail {
    entries: VecDeque<typ::Entry>,
    bytes: usize,
}

impl LogTail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Index of the last entry kept.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index)
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Records an append of consecutive entries starting at index `first`, of which `kept`
    /// is the suffix worth keeping (the entries after the last one that does not [`fits`]).
    pub(crate) fn appended(&mut self, first: u64, kept: &[typ::Entry]) {
        let kept_first = kept.first().map(|e| e.log_id.index);
        let continues = match self.last_index() {
            Some(last) => Some(last.saturating_add(1)) == kept_first,
            None => true,
        };
        // Whatever the tail held before no longer reaches the log's end without the entries
        // not kept: start again from what is kept.
        if kept_first != Some(first) || !continues {
            self.clear();
        }
        for entry in kept {
            self.bytes += entry_bytes(entry);
            self.entries.push_back(entry.clone());
        }
        while self.bytes > MAX_TAIL_BYTES || self.entries.len() > MAX_TAIL_ENTRIES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= entry_bytes(&old),
                None => break,
            }
        }
    }

    /// Drops the entries at and below `index` (a purge hides them).
    pub(crate) fn purged(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= entry_bytes(&old);
            }
        }
    }

    /// The entries `[start, end)` if the tail holds all of them, `start < end`.
    pub(crate) fn range(&self, start: u64, end: u64) -> Option<Vec<typ::Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || start >= end || end > last.saturating_add(1) {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, TypeConfig};
    use bytes::Bytes;
    use openraft::{CommittedLeaderId, Entry, LogId};

    fn entry(index: u64, payload: usize) -> typ::Entry {
        Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command(Bytes::from(vec![index as u8; payload]))),
        }
    }

    fn indexes(entries: &[typ::Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn keeps_the_newest_entries_within_its_bounds() {
        let mut tail = LogTail::default();
        let batch: Vec<_> = (1..=100).map(|i| entry(i, 10)).collect();
        tail.appended(1, &batch);
        // At most MAX_TAIL_ENTRIES, the newest.
        assert_eq!(
            tail.range(37, 101).map(|e| indexes(&e)),
            Some((37..=100).collect())
        );
        assert_eq!(tail.range(36, 101), None);
        // Bytes: 40 KiB entries, three fit in 128 KiB.
        tail.appended(
            101,
            &(101..=110).map(|i| entry(i, 40 << 10)).collect::<Vec<_>>(),
        );
        assert_eq!(
            tail.range(108, 111).map(|e| indexes(&e)),
            Some(vec![108, 109, 110])
        );
        assert_eq!(tail.range(107, 111), None);
        assert!(tail.bytes <= MAX_TAIL_BYTES);
        // Past the end, or empty: not served.
        assert_eq!(tail.range(109, 112), None);
        assert_eq!(tail.range(109, 109), None);
    }

    #[test]
    fn an_entry_not_kept_or_a_gap_starts_it_again() {
        let mut tail = LogTail::default();
        tail.appended(1, &(1..=5).map(|i| entry(i, 10)).collect::<Vec<_>>());
        // Entries 6..=8 appended, 6 too large to keep: only 7 and 8 are kept.
        let big = entry(6, MAX_TAIL_BYTES);
        assert!(!fits(&big));
        tail.appended(6, &[entry(7, 10), entry(8, 10)]);
        assert_eq!(tail.range(5, 9), None);
        assert_eq!(tail.range(7, 9).map(|e| indexes(&e)), Some(vec![7, 8]));
        // Nothing kept of an append: empty.
        tail.appended(9, &[]);
        assert_eq!(tail.last_index(), None);
        // An append that does not continue the tail replaces it.
        tail.appended(20, &[entry(20, 10)]);
        tail.appended(30, &[entry(30, 10)]);
        assert_eq!(tail.range(20, 21), None);
        assert_eq!(tail.range(30, 31).map(|e| indexes(&e)), Some(vec![30]));
    }

    #[test]
    fn a_purge_drops_what_it_hides() {
        let mut tail = LogTail::default();
        tail.appended(1, &(1..=10).map(|i| entry(i, 100)).collect::<Vec<_>>());
        tail.purged(4);
        assert_eq!(tail.range(4, 11), None);
        assert_eq!(tail.range(5, 11).map(|e| e.len()), Some(6));
        tail.purged(20);
        assert_eq!(tail.last_index(), None);
        assert_eq!(tail.bytes, 0);
    }
}
