//! Records and record batches: the unit of storage and replication.
//!
//! A publish request's records are encoded once, at the edge, as concatenated postcard
//! [`Record`]s. The partition actor joins the encodings of every request it batches into
//! one Raft entry; the partition's state machine stores that byte run as stored batches
//! of at most a few KiB each ([`split_run`] cuts it at record boundaries), keyed by their
//! base offsets. A fetch decodes a stored batch as borrowed
//! [`RecordView`]s (no copy of keys or values) and slices out the offsets it wants.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// How a record's key and value were given, so a fetch renders them back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueKind {
    /// The value is JSON text (validated at publish); the key is UTF-8.
    Json,
    /// The value and key are UTF-8 strings.
    String,
    /// The value and key are arbitrary bytes (rendered as base64).
    Binary,
}

/// A record as published. Field order is the wire format: keep it in step with
/// [`RecordView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch: the producer's, or the edge's clock at publish.
    pub timestamp_ms: i64,
    /// How key and value are to be rendered.
    pub kind: ValueKind,
    /// Optional key; it picks the partition when none is given.
    pub key: Option<Bytes>,
    /// The value; `None` is a tombstone (compacted topics).
    pub value: Option<Bytes>,
    /// Headers in the order given.
    pub headers: Vec<(String, Bytes)>,
}

/// A stored record decoded in place: every slice borrows the stored batch.
#[derive(Debug, Deserialize)]
pub struct RecordView<'a> {
    /// See [`Record::timestamp_ms`].
    pub timestamp_ms: i64,
    /// See [`Record::kind`].
    pub kind: ValueKind,
    /// See [`Record::key`].
    #[serde(borrow)]
    pub key: Option<&'a [u8]>,
    /// See [`Record::value`].
    #[serde(borrow)]
    pub value: Option<&'a [u8]>,
    /// See [`Record::headers`].
    #[serde(borrow)]
    pub headers: Vec<(&'a str, &'a [u8])>,
}

/// A record to encode, borrowing its parts from wherever they are (the request body,
/// usually): the edge encodes each record straight from the parsed JSON into its
/// partition's run, with no owned [`Record`] in between. Its encoding is byte for byte
/// that of the equal [`Record`] (field order and serde shapes match; a test checks it).
#[derive(Debug, Serialize)]
pub struct RecordRef<'a> {
    /// See [`Record::timestamp_ms`].
    pub timestamp_ms: i64,
    /// See [`Record::kind`].
    pub kind: ValueKind,
    /// See [`Record::key`].
    pub key: Option<RawBytes<'a>>,
    /// See [`Record::value`].
    pub value: Option<RawBytes<'a>>,
    /// See [`Record::headers`].
    pub headers: Vec<(&'a str, RawBytes<'a>)>,
}

/// Borrowed bytes that serialise as serde bytes, as [`Bytes`] does (a plain `&[u8]`
/// serialises as a sequence, which would change the encoding's meaning elsewhere).
#[derive(Clone, Copy, Debug)]
pub struct RawBytes<'a>(pub &'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl RecordRef<'_> {
    /// Bytes of key and value, the size the record limit applies to.
    pub fn payload_len(&self) -> usize {
        self.key.map_or(0, |k| k.0.len()) + self.value.map_or(0, |v| v.0.len())
    }

    /// Bytes of header names and values, the size the header limit applies to.
    pub fn headers_len(&self) -> usize {
        self.headers.iter().map(|(k, v)| k.len() + v.0.len()).sum()
    }

    /// Appends this record's encoding to `run` (one record of an [`EncodedRecords`] run).
    ///
    /// # Errors
    /// Only if postcard fails to serialise, which for these types means out of memory.
    pub fn encode_into(&self, run: &mut Vec<u8>) -> Result<(), RecordCodecError> {
        run.reserve(16 + self.payload_len() + self.headers_len() + 4 * self.headers.len());
        let out = postcard::to_extend(self, std::mem::take(run))
            .map_err(|source| RecordCodecError::Decode { source })?;
        *run = out;
        Ok(())
    }
}

/// Errors decoding stored or forwarded record bytes. Stored bytes were encoded by this
/// code, so a decode failure means corruption or a version mismatch, never user input.
#[derive(Debug, thiserror::Error)]
pub enum RecordCodecError {
    /// A record did not decode.
    #[error("record bytes do not decode: {source}")]
    Decode {
        /// The postcard error.
        source: postcard::Error,
    },
    /// A batch header was shorter than its fixed size.
    #[error("record batch is truncated")]
    Truncated,
}

/// The records of one publish request, encoded: `count` postcard [`Record`]s back to back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncodedRecords {
    /// How many records `bytes` holds.
    pub count: u32,
    /// The concatenated encodings.
    pub bytes: Bytes,
}

impl EncodedRecords {
    /// Encodes records for the partition actor, borrowing them (no per-record clone).
    ///
    /// # Errors
    /// Only if postcard fails to serialise, which for these types means out of memory.
    pub fn encode<'a>(
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<Self, RecordCodecError> {
        let mut out = Vec::new();
        let mut count = 0u32;
        for record in records {
            out.reserve(encoded_size_hint(record));
            out = postcard::to_extend(record, out)
                .map_err(|source| RecordCodecError::Decode { source })?;
            count += 1;
        }
        Ok(Self {
            count,
            bytes: Bytes::from(out),
        })
    }

    /// A run built record by record with [`RecordRef::encode_into`].
    pub fn from_run(count: u32, run: Vec<u8>) -> Self {
        Self {
            count,
            bytes: Bytes::from(run),
        }
    }

    /// Size in bytes, for batching limits.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn encoded_size_hint(record: &Record) -> usize {
    16 + record.key.as_ref().map_or(0, |k| k.len())
        + record.value.as_ref().map_or(0, |v| v.len())
        + record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
}

/// Size of a stored batch's header: the record count as a little-endian u32.
pub const BATCH_HEADER_LEN: usize = 4;

/// Joins the record runs of several requests into one stored batch
/// (`[count u32 LE][records…]`), the payload of one Raft entry.
pub fn join_batch<'a>(parts: impl Iterator<Item = &'a EncodedRecords> + Clone) -> Bytes {
    let count: u32 = parts.clone().map(|p| p.count).sum();
    let len: usize = parts.clone().map(|p| p.bytes.len()).sum();
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + len);
    out.put_u32_le(count);
    for part in parts {
        out.put_slice(&part.bytes);
    }
    out.freeze()
}

/// One stretch of a stored batch, cut at record boundaries by [`split_run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPiece<'a> {
    /// Records before this piece in the batch: its base offset is the batch's plus this.
    pub skip: u32,
    /// Records in the piece (the count its stored header gets).
    pub count: u32,
    /// The piece's record run, without header.
    pub run: &'a [u8],
    /// Newest record timestamp in the piece, or `i64::MIN` if a record did not decode.
    pub max_timestamp_ms: i64,
}

/// Cuts the record run of a stored batch whose header says `total` records into pieces
/// whose runs stay within `max_run_bytes`, at record boundaries; a record larger than that
/// is a piece of its own.
///
/// The header's count is authoritative, so every replica cuts alike whatever the bytes
/// hold: the pieces' counts add up to `total`, and a run that stops decoding (or bytes
/// beyond the last counted record) stay whole in the last piece.
pub fn split_run(run: &[u8], total: u32, max_run_bytes: usize) -> Vec<BatchPiece<'_>> {
    let mut records = RecordIter::run(run);
    let mut pieces = Vec::new();
    // The piece being gathered: where its run starts, its records, its newest timestamp.
    let mut start = run;
    let (mut skip, mut count, mut max_timestamp_ms) = (0u32, 0u32, i64::MIN);
    while skip + count < total {
        let before = records.remaining();
        let Some(Ok(view)) = records.next() else {
            // Undecodable: the rest of the bytes and of the count form the last piece.
            max_timestamp_ms = i64::MIN;
            break;
        };
        let gathered = start.len() - records.remaining().len();
        if count > 0 && gathered > max_run_bytes {
            // This record would overflow the piece: close the piece before it.
            let len = start.len() - before.len();
            pieces.push(BatchPiece {
                skip,
                count,
                run: &start[..len],
                max_timestamp_ms,
            });
            (start, skip, count, max_timestamp_ms) = (before, skip + count, 0, i64::MIN);
        }
        count += 1;
        max_timestamp_ms = max_timestamp_ms.max(view.timestamp_ms);
    }
    pieces.push(BatchPiece {
        skip,
        count: total - skip,
        run: start,
        max_timestamp_ms,
    });
    pieces
}

/// Reads a stored batch's record count.
///
/// # Errors
/// [`RecordCodecError::Truncated`] if the batch is shorter than its header.
pub fn batch_count(batch: &[u8]) -> Result<u32, RecordCodecError> {
    let header: [u8; BATCH_HEADER_LEN] = batch
        .get(..BATCH_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(RecordCodecError::Truncated)?;
    Ok(u32::from_le_bytes(header))
}

/// Iterates the records of a stored batch (or of a record run without header), borrowing.
pub struct RecordIter<'a> {
    rest: &'a [u8],
}

impl<'a> RecordIter<'a> {
    /// Iterates a stored batch, skipping its header.
    ///
    /// # Errors
    /// [`RecordCodecError::Truncated`] if the batch is shorter than its header.
    pub fn batch(batch: &'a [u8]) -> Result<Self, RecordCodecError> {
        let rest = batch
            .get(BATCH_HEADER_LEN..)
            .ok_or(RecordCodecError::Truncated)?;
        Ok(Self { rest })
    }

    /// Iterates a run of records with no header.
    pub fn run(run: &'a [u8]) -> Self {
        Self { rest: run }
    }

    /// The undecoded remainder: the byte run of every record not yet returned.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, RecordCodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match postcard::take_from_bytes::<RecordView<'a>>(self.rest) {
            Ok((view, rest)) => {
                self.rest = rest;
                Some(Ok(view))
            }
            Err(source) => {
                self.rest = &[];
                Some(Err(RecordCodecError::Decode { source }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u8) -> Record {
        Record {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            kind: ValueKind::Json,
            key: Some(Bytes::from(vec![b'k', i])),
            value: Some(Bytes::from(format!("{{\"n\":{i}}}"))),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
        }
    }

    #[test]
    fn joined_batches_decode_in_request_order() {
        let a = EncodedRecords::encode(&[record(1), record(2)]).unwrap();
        let b = EncodedRecords::encode(&[record(3)]).unwrap();
        let batch = join_batch([&a, &b].into_iter());
        assert_eq!(batch_count(&batch).unwrap(), 3);
        let keys: Vec<Vec<u8>> = RecordIter::batch(&batch)
            .unwrap()
            .map(|r| r.unwrap().key.unwrap().to_vec())
            .collect();
        assert_eq!(keys, vec![vec![b'k', 1], vec![b'k', 2], vec![b'k', 3]]);
    }

    #[test]
    fn view_matches_the_published_record() {
        let original = Record {
            value: None,
            ..record(9)
        };
        let enc = EncodedRecords::encode(std::slice::from_ref(&original)).unwrap();
        let view = RecordIter::run(&enc.bytes).next().unwrap().unwrap();
        assert_eq!(view.timestamp_ms, original.timestamp_ms);
        assert_eq!(view.kind, original.kind);
        assert_eq!(view.key, original.key.as_deref());
        assert_eq!(view.value, None);
        assert_eq!(view.headers, vec![("h", &b"v"[..])]);
    }

    #[test]
    fn a_borrowed_record_encodes_exactly_as_the_owned_one() {
        for original in [
            record(3),
            Record {
                key: None,
                value: None,
                headers: Vec::new(),
                kind: ValueKind::Binary,
                timestamp_ms: -5,
            },
        ] {
            let borrowed = RecordRef {
                timestamp_ms: original.timestamp_ms,
                kind: original.kind,
                key: original.key.as_deref().map(RawBytes),
                value: original.value.as_deref().map(RawBytes),
                headers: original
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), RawBytes(v)))
                    .collect(),
            };
            let mut run = Vec::new();
            borrowed.encode_into(&mut run).unwrap();
            borrowed.encode_into(&mut run).unwrap();
            let owned = EncodedRecords::encode([&original, &original]).unwrap();
            assert_eq!(run, owned.bytes.to_vec());
        }
    }

    /// A batch of records whose values are `sizes` bytes long, timestamps 1, 2, 3...
    fn sized_batch(sizes: &[usize]) -> Bytes {
        let records: Vec<Record> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Record {
                timestamp_ms: i as i64 + 1,
                value: Some(Bytes::from(vec![b'v'; size])),
                ..record(i as u8)
            })
            .collect();
        join_batch(std::iter::once(&EncodedRecords::encode(&records).unwrap()))
    }

    fn split(batch: &[u8], max: usize) -> Vec<BatchPiece<'_>> {
        split_run(&batch[BATCH_HEADER_LEN..], batch_count(batch).unwrap(), max)
    }

    #[test]
    fn split_pieces_stay_within_the_bound_and_rejoin_to_the_batch() {
        let sizes: Vec<usize> = (0..200).map(|i| (i * 37) % 300).collect();
        let batch = sized_batch(&sizes);
        for max in [1, 100, 1000, 4096, 1 << 20] {
            let pieces = split(&batch, max);
            let mut rejoined = Vec::new();
            let mut next = 0u32;
            for piece in &pieces {
                assert_eq!(piece.skip, next, "pieces are contiguous");
                let views: Vec<_> = RecordIter::run(piece.run).map(|r| r.unwrap()).collect();
                assert_eq!(views.len(), piece.count as usize);
                assert!(piece.run.len() <= max || piece.count == 1, "max {max}");
                let newest = views.iter().map(|v| v.timestamp_ms).max().unwrap();
                assert_eq!(piece.max_timestamp_ms, newest);
                assert_eq!(views[0].timestamp_ms, i64::from(piece.skip) + 1);
                rejoined.extend_from_slice(piece.run);
                next += piece.count;
            }
            assert_eq!(next, 200);
            assert_eq!(rejoined, batch[BATCH_HEADER_LEN..].to_vec());
        }
        assert_eq!(split(&batch, 1 << 20).len(), 1);
        assert_eq!(split(&batch, 1).len(), 200);
    }

    #[test]
    fn split_keeps_an_undecodable_tail_and_the_header_count_in_the_last_piece() {
        let batch = sized_batch(&[50, 50, 50]);
        let mut damaged = batch.to_vec();
        damaged[0] = 5; // claims 5 records
        damaged.extend_from_slice(&[0xff, 0xff, 0xff]);
        let pieces = split(&damaged, 60);
        let counts: Vec<u32> = pieces.iter().map(|p| p.count).collect();
        assert_eq!(counts.iter().sum::<u32>(), 5);
        let last = pieces.last().unwrap();
        assert!(last.run.ends_with(&[0xff, 0xff, 0xff]));
        assert_eq!(last.max_timestamp_ms, i64::MIN);

        // Fewer records claimed than stored: the extra bytes ride in the last piece.
        let mut short = batch.to_vec();
        short[0] = 2;
        let pieces = split(&short, 60);
        assert_eq!(pieces.iter().map(|p| p.count).sum::<u32>(), 2);
        assert_eq!(
            pieces.last().unwrap().run.len() + pieces[0].run.len(),
            short.len() - 4
        );
    }

    #[test]
    fn truncated_batch_is_an_error_not_a_panic() {
        assert!(matches!(
            batch_count(&[1, 2]),
            Err(RecordCodecError::Truncated)
        ));
        let mut iter = RecordIter::run(&[0xff, 0xff, 0xff]);
        assert!(matches!(iter.next(), Some(Err(_))));
        assert!(iter.next().is_none());
    }
}
