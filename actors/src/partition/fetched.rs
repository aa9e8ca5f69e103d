//! Records read from a partition replica, as they travel to the edge and between nodes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::record::{RecordCodecError, RecordIter, RecordView};

/// Records read from a partition, with their offsets. Compaction leaves gaps in a
/// compacted topic's offsets, so a read may carry records whose offsets are not
/// consecutive: take offsets from [`FetchedRecords::iter`] (or
/// [`FetchedRecords::offset_of`]), never as `first_offset + i`, and continue from
/// `next_offset`, never from the last offset plus one. Travels between nodes in forward
/// answers (serde).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchedRecords {
    /// Offset of the first record in `bytes`; when there is none, equal to `next_offset`.
    pub first_offset: u64,
    /// Records in `bytes`.
    pub count: u32,
    /// Concatenated record encodings (see [`crate::record::RecordIter::run`]).
    pub bytes: Bytes,
    /// The offset of each record, ascending. Empty when the records are dense
    /// (`first_offset`, `first_offset + 1`, …), as they are on every topic that was never
    /// compacted. Invariant: empty or `count` long.
    pub offsets: Vec<u64>,
    /// Where the next read starts: past the last record returned and past any gap
    /// compaction left after it that this read crossed (at the high watermark when the
    /// read reached it). Never below a returned offset, so continuing from it re-reads
    /// nothing.
    pub next_offset: u64,
    /// First offset stored when read.
    pub log_start: u64,
    /// High watermark when read.
    pub high_watermark: u64,
}

impl FetchedRecords {
    /// The offset of the `i`-th record.
    pub fn offset_of(&self, i: usize) -> u64 {
        self.offsets
            .get(i)
            .copied()
            .unwrap_or(self.first_offset + i as u64)
    }

    /// The records with their offsets, in offset order, decoded in place.
    pub fn iter(&self) -> FetchedIter<'_> {
        FetchedIter {
            fetched: self,
            records: RecordIter::run(&self.bytes),
            index: 0,
        }
    }
}

/// Iterates a [`FetchedRecords`] as `(offset, record)` pairs: see [`FetchedRecords::iter`].
pub struct FetchedIter<'a> {
    fetched: &'a FetchedRecords,
    records: RecordIter<'a>,
    index: usize,
}

impl<'a> FetchedIter<'a> {
    /// The encodings of the records not yet returned (callers budget by their size).
    pub fn remaining(&self) -> &'a [u8] {
        self.records.remaining()
    }
}

impl<'a> Iterator for FetchedIter<'a> {
    type Item = Result<(u64, RecordView<'a>), RecordCodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        let record = self.records.next()?;
        let offset = self.fetched.offset_of(self.index);
        self.index += 1;
        Some(record.map(|view| (offset, view)))
    }
}
