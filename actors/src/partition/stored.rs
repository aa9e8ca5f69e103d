//! The stored batch: what one value under a batch key holds, in its two forms, and the
//! summary retention keeps of it.
//!
//! ```text
//! dense   [count u32 LE][records…]                       offsets base .. base + count
//! sparse  [count | SPARSE_FLAG u32 LE][end u64 LE]
//!         [count × offset u64 LE][records…]              explicit offsets, covers .. end
//! ```
//!
//! A dense batch is the bytes of the Raft entry that carried it (or a piece of them, see
//! [`MAX_STORED_RUN_BYTES`]), stored under its base offset. A sparse batch is compaction's
//! output: the survivors of several consecutive batches with their ORIGINAL offsets
//! (offsets never change and are never reused), stored under the key of the LAST batch it
//! replaced. That key choice is what keeps concurrent readers correct: a reader walks batch
//! keys upwards, and a rewrite moves records only to a key at or after every key it
//! removes, atomically; so a reader that finds a replaced key gone still meets its records
//! further on (possibly twice, which readers skip by offset). Readers therefore find the
//! batch holding an offset by scanning upwards from the greatest key at or below it, and
//! skip records below the offset they want.

use bytes::{BufMut, Bytes, BytesMut};

use super::layout::BATCH_KEY_BYTES;
use crate::record::{
    batch_count, BatchPiece, RecordCodecError, RecordIter, RecordView, BATCH_HEADER_LEN,
};

/// Most record bytes in one stored batch: an appended batch larger than this (a Raft entry
/// coalesces many requests, up to megabytes) is stored as several.
///
/// Why: sled keeps a written page in memory until its cache's eviction processes the
/// page's accesses, which it does per shard (256) only after 64 queued accesses, so the
/// resident set grows with the size of the pages written, whatever the cache capacity.
/// A leaf page holds up to 16 values: with whole entries as values the nodes' resident
/// memory grew with everything written (over 600 MB per node after 20 s of the batch
/// load, a heap profile showed the stored values as 85 % of it). Measured with sled
/// alone, three trees written in batches: 8 KB values level off near 110 MB resident
/// (16 MiB cache), 16 KB near 175 MB, 32 KB near 255 MB, 200 KB values never. A fetch
/// reads a few more, smaller values.
pub const MAX_STORED_RUN_BYTES: usize = 8 << 10;

/// Set in a stored batch's count word when the batch is sparse. Dense counts never reach
/// it (an entry holds at most a few thousand records; apply refuses a count with it set).
pub const SPARSE_FLAG: u32 = 0x8000_0000;

/// Bytes of a sparse batch's header: count word and end offset.
const SPARSE_HEADER_LEN: usize = BATCH_HEADER_LEN + 8;

/// One stored batch, parsed enough to walk its records with their offsets.
#[derive(Clone, Copy, Debug)]
pub enum StoredBatch<'a> {
    /// Offsets `base .. base + count`.
    Dense {
        /// First offset (the batch's key).
        base: u64,
        /// Records.
        count: u32,
        /// The record run.
        records: &'a [u8],
    },
    /// Explicit offsets; the batch covers offsets up to `end` (exclusive).
    Sparse {
        /// One past the last offset the replaced batches held.
        end: u64,
        /// `count` offsets, u64 LE each, ascending.
        offsets: &'a [u8],
        /// The record run.
        records: &'a [u8],
    },
}

impl<'a> StoredBatch<'a> {
    /// Parses a stored batch found under key `key_base`.
    ///
    /// # Errors
    /// [`RecordCodecError::Truncated`] when the header or offset table is cut short.
    pub fn parse(key_base: u64, stored: &'a [u8]) -> Result<Self, RecordCodecError> {
        let word: [u8; 4] = stored
            .get(..BATCH_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(RecordCodecError::Truncated)?;
        let word = u32::from_le_bytes(word);
        if word & SPARSE_FLAG == 0 {
            return Ok(StoredBatch::Dense {
                base: key_base,
                count: word,
                records: &stored[BATCH_HEADER_LEN..],
            });
        }
        let count = (word & !SPARSE_FLAG) as usize;
        let end: [u8; 8] = stored
            .get(BATCH_HEADER_LEN..SPARSE_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(RecordCodecError::Truncated)?;
        let table_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(SPARSE_HEADER_LEN))
            .ok_or(RecordCodecError::Truncated)?;
        let offsets = stored
            .get(SPARSE_HEADER_LEN..table_end)
            .ok_or(RecordCodecError::Truncated)?;
        Ok(StoredBatch::Sparse {
            end: u64::from_le_bytes(end),
            offsets,
            records: &stored[table_end..],
        })
    }

    /// One past the last offset this batch covers.
    pub fn end(&self) -> u64 {
        match self {
            StoredBatch::Dense { base, count, .. } => base + u64::from(*count),
            StoredBatch::Sparse { end, .. } => *end,
        }
    }

    /// The records with their offsets and encodings, in offset order.
    pub fn records(&self) -> BatchRecords<'a> {
        match *self {
            StoredBatch::Dense { base, records, .. } => BatchRecords {
                iter: RecordIter::run(records),
                next_dense: Some(base),
                offsets: &[],
            },
            StoredBatch::Sparse {
                offsets, records, ..
            } => BatchRecords {
                iter: RecordIter::run(records),
                next_dense: None,
                offsets,
            },
        }
    }
}

/// A record of a stored batch: its offset, its encoding, and the decoded view.
pub struct StoredRecord<'a> {
    /// The record's offset.
    pub offset: u64,
    /// Its postcard encoding (a slice of the stored batch).
    pub encoded: &'a [u8],
    /// The decoded record, borrowing `encoded`.
    pub view: RecordView<'a>,
}

/// Iterator over a stored batch's records; see [`StoredBatch::records`].
pub struct BatchRecords<'a> {
    iter: RecordIter<'a>,
    /// The next offset of a dense batch; `None` for a sparse one.
    next_dense: Option<u64>,
    offsets: &'a [u8],
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = Result<StoredRecord<'a>, RecordCodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        let before = self.iter.remaining();
        let view = match self.iter.next()? {
            Ok(view) => view,
            Err(error) => return Some(Err(error)),
        };
        let encoded = &before[..before.len() - self.iter.remaining().len()];
        let offset = match self.next_dense.as_mut() {
            Some(next) => {
                let offset = *next;
                *next += 1;
                offset
            }
            None => {
                let Some((raw, rest)) = self.offsets.split_first_chunk::<8>() else {
                    // More records than offsets: the batch is corrupt.
                    self.iter = RecordIter::run(&[]);
                    return Some(Err(RecordCodecError::Truncated));
                };
                self.offsets = rest;
                u64::from_le_bytes(*raw)
            }
        };
        Some(Ok(StoredRecord {
            offset,
            encoded,
            view,
        }))
    }
}

/// Encodes a sparse batch from survivors (ascending offsets) covering offsets up to `end`.
pub fn encode_sparse(survivors: &[(u64, &[u8])], end: u64) -> Bytes {
    let body: usize = survivors.iter().map(|(_, e)| e.len()).sum();
    let mut out = BytesMut::with_capacity(SPARSE_HEADER_LEN + survivors.len() * 8 + body);
    out.put_u32_le(survivors.len() as u32 | SPARSE_FLAG);
    out.put_u64_le(end);
    for (offset, _) in survivors {
        out.put_u64_le(*offset);
    }
    for (_, encoded) in survivors {
        out.put_slice(encoded);
    }
    out.freeze()
}

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

impl BatchSummary {
    /// Summarises the stored batch found under key `base`; one that does not decode (it
    /// cannot, the leader validated it) counts as expired, alike on every replica. A sparse
    /// batch (compaction's output) counts as spanning from its key to its end, so that
    /// `base + count` is where the next batch starts, as for a dense one.
    pub fn at(base: u64, stored: &[u8]) -> Self {
        match StoredBatch::parse(base, stored) {
            Ok(sparse @ StoredBatch::Sparse { .. }) => {
                let max_timestamp_ms = sparse
                    .records()
                    .filter_map(Result::ok)
                    .map(|r| r.view.timestamp_ms)
                    .max()
                    .unwrap_or(i64::MIN);
                BatchSummary {
                    count: u32::try_from(sparse.end().saturating_sub(base)).unwrap_or(u32::MAX),
                    bytes: stored.len() as u64 + BATCH_KEY_BYTES,
                    max_timestamp_ms,
                }
            }
            _ => Self::of_stored(stored).unwrap_or(BatchSummary {
                count: batch_count(stored).unwrap_or(0),
                bytes: stored.len() as u64,
                max_timestamp_ms: i64::MIN,
            }),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::record::{join_batch, EncodedRecords, Record, ValueKind};

    /// A string record with `key` (none: keyless) and `value` (none: a tombstone).
    pub(in crate::partition) fn record(key: Option<&str>, value: Option<&str>, ts: i64) -> Record {
        Record {
            timestamp_ms: ts,
            kind: ValueKind::String,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
        }
    }

    /// The offsets and values of the stored batch keyed `base`.
    pub(in crate::partition) fn offsets_and_values(
        base: u64,
        stored: &[u8],
    ) -> Vec<(u64, Option<String>)> {
        StoredBatch::parse(base, stored)
            .unwrap()
            .records()
            .map(|r| {
                let r = r.unwrap();
                (
                    r.offset,
                    r.view.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn dense_and_sparse_batches_yield_their_offsets() {
        let encoded =
            EncodedRecords::encode(&[record(Some("a"), Some("1"), 0), record(None, Some("2"), 0)])
                .unwrap();
        let stored = join_batch([&encoded].into_iter());
        let batch = StoredBatch::parse(40, &stored).unwrap();
        assert_eq!((batch.records().count(), batch.end()), (2, 42));
        assert_eq!(
            offsets_and_values(40, &stored),
            vec![(40, Some("1".into())), (41, Some("2".into()))]
        );

        let a = EncodedRecords::encode(&[record(Some("a"), Some("x"), 0)]).unwrap();
        let b = EncodedRecords::encode(&[record(Some("b"), None, 0)]).unwrap();
        let sparse = encode_sparse(&[(3, &a.bytes), (17, &b.bytes)], 25);
        let batch = StoredBatch::parse(10, &sparse).unwrap();
        assert_eq!((batch.records().count(), batch.end()), (2, 25));
        assert_eq!(
            offsets_and_values(10, &sparse),
            vec![(3, Some("x".into())), (17, None)]
        );
        // A sparse batch spans from its key to its end.
        assert_eq!(BatchSummary::at(10, &sparse).count, 15);
    }

    #[test]
    fn a_truncated_sparse_batch_is_an_error_not_a_panic() {
        let a = EncodedRecords::encode(&[record(Some("a"), Some("x"), 0)]).unwrap();
        let sparse = encode_sparse(&[(3, &a.bytes)], 4);
        assert!(StoredBatch::parse(0, &sparse[..10]).is_err());
        // A count that promises more offsets than stored.
        let mut lying = sparse.to_vec();
        lying[0] = 9;
        assert!(StoredBatch::parse(0, &lying).is_err());
    }
}
