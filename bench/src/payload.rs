//! The value format and the publish bodies.
//!
//! Every value starts with a fixed-width ASCII header that consumers read back:
//!
//! ```text
//! pb RR TTTTTTTTTTTTT PPPP SSSSSSSSSSS  padding…
//!    run send-time µs producer sequence            (all lower-case hex, no spaces)
//! ```
//!
//! ASCII so the value travels as a JSON string with `encoding: string` and its size on
//! the wire equals its stored size; fixed width so a body is built once per partition and
//! each request only copies it and overwrites the headers in place (no per-record
//! allocation or formatting in the hot loop).

use bytes::Bytes;

/// Length of the header at the start of every value; the smallest allowed `--record-size`.
pub const HEADER_LEN: usize = 32;

const MAGIC: &[u8; 2] = b"pb";
const RUN_AT: usize = 2;
const RUN_LEN: usize = 2;
const TS_AT: usize = RUN_AT + RUN_LEN;
const TS_LEN: usize = 13;
const PRODUCER_AT: usize = TS_AT + TS_LEN;
const PRODUCER_LEN: usize = 4;
const SEQ_AT: usize = PRODUCER_AT + PRODUCER_LEN;
const SEQ_LEN: usize = HEADER_LEN - SEQ_AT;

/// Filler after the header: printable, nothing JSON would escape.
const PADDING: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What a consumer learns from a value written by this tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which run wrote it (runs share the topic; a consumer ignores other runs' records).
    pub run: u8,
    /// Wall-clock send time of the request, µs since the Unix epoch.
    pub sent_at_us: u64,
    /// The producer loop that wrote it.
    pub producer: u16,
    /// Position in that loop's stream: strictly increasing per loop, so a value at or
    /// below the last one seen on a partition is a duplicate.
    pub seq: u64,
}

/// Writes `header` into the first [`HEADER_LEN`] bytes of `dst`.
///
/// # Panics
///
/// If `dst` is shorter than [`HEADER_LEN`]; callers slice templates they built.
pub fn write_header(dst: &mut [u8], header: &Header) {
    let dst = &mut dst[..HEADER_LEN];
    dst[..2].copy_from_slice(MAGIC);
    put_hex(&mut dst[RUN_AT..RUN_AT + RUN_LEN], u64::from(header.run));
    put_hex(&mut dst[TS_AT..TS_AT + TS_LEN], header.sent_at_us);
    put_hex(
        &mut dst[PRODUCER_AT..PRODUCER_AT + PRODUCER_LEN],
        u64::from(header.producer),
    );
    put_hex(&mut dst[SEQ_AT..SEQ_AT + SEQ_LEN], header.seq);
}

/// Reads the header of a value; `None` for a value this tool did not write.
pub fn read_header(value: &[u8]) -> Option<Header> {
    if value.len() < HEADER_LEN || &value[..2] != MAGIC {
        return None;
    }
    Some(Header {
        run: u8::try_from(get_hex(&value[RUN_AT..RUN_AT + RUN_LEN])?).ok()?,
        sent_at_us: get_hex(&value[TS_AT..TS_AT + TS_LEN])?,
        producer: u16::try_from(get_hex(&value[PRODUCER_AT..PRODUCER_AT + PRODUCER_LEN])?).ok()?,
        seq: get_hex(&value[SEQ_AT..SEQ_AT + SEQ_LEN])?,
    })
}

/// Fixed-width lower-case hex, most significant digit first; higher bits than fit are
/// dropped (13 digits of µs last until the year 2112).
fn put_hex(dst: &mut [u8], mut v: u64) {
    for b in dst.iter_mut().rev() {
        *b = HEX[(v & 0xF) as usize];
        v >>= 4;
    }
}

fn get_hex(src: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &b in src {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// A publish body for one partition, built once; [`RequestTemplate::build`] copies it and
/// stamps each record's header.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    body: Vec<u8>,
    /// Where each record's header starts in `body`, in request order.
    header_at: Vec<usize>,
    /// Where each record's `id` starts in `body` (empty without ids): the record's header
    /// again, unique per record of a run.
    id_at: Vec<usize>,
}

impl RequestTemplate {
    /// A JSON body: `records` records of `record_size`-byte string values, all with an
    /// explicit `partition` so one request is one partition's batch; with `ids`, each
    /// record also has a unique `id` (idempotent publish).
    pub fn json(partition: u32, records: u32, record_size: usize, ids: bool) -> Self {
        let mut body = Vec::with_capacity(32 + records as usize * (record_size + 80));
        body.extend_from_slice(br#"{"encoding":"string","records":["#);
        let mut header_at = Vec::with_capacity(records as usize);
        let mut id_at = Vec::new();
        for i in 0..records {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(br#"{"partition":"#);
            body.extend_from_slice(partition.to_string().as_bytes());
            if ids {
                body.extend_from_slice(br#","id":""#);
                id_at.push(body.len());
                body.extend(std::iter::repeat_n(b'0', HEADER_LEN));
                body.push(b'"');
            }
            body.extend_from_slice(br#","value":""#);
            header_at.push(body.len());
            push_value(&mut body, record_size);
            body.extend_from_slice(br#""}"#);
        }
        body.extend_from_slice(b"]}");
        RequestTemplate {
            body,
            header_at,
            id_at,
        }
    }

    /// A raw body: the value itself (partition and acks go in the query string).
    pub fn raw(record_size: usize) -> Self {
        let mut body = Vec::with_capacity(record_size);
        push_value(&mut body, record_size);
        RequestTemplate {
            body,
            header_at: vec![0],
            id_at: Vec::new(),
        }
    }

    /// Records in one request.
    pub fn records(&self) -> u64 {
        self.header_at.len() as u64
    }

    /// A body whose records carry `first_seq`, `first_seq + 1`, … One allocation and one
    /// copy per request, none per record.
    pub fn build(&self, run: u8, sent_at_us: u64, producer: u16, first_seq: u64) -> Bytes {
        let mut body = self.body.clone();
        for (i, &at) in self.header_at.iter().enumerate() {
            let header = Header {
                run,
                sent_at_us,
                producer,
                seq: first_seq + i as u64,
            };
            write_header(&mut body[at..], &header);
            if let Some(&id_at) = self.id_at.get(i) {
                write_header(&mut body[id_at..], &header);
            }
        }
        Bytes::from(body)
    }
}

/// Appends a value placeholder: header space (stamped per request) and padding.
fn push_value(body: &mut Vec<u8>, record_size: usize) {
    body.extend(std::iter::repeat_n(b'0', HEADER_LEN));
    let mut left = record_size.saturating_sub(HEADER_LEN);
    while left > 0 {
        let n = left.min(PADDING.len());
        body.extend_from_slice(&PADDING[..n]);
        left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            run: 7,
            sent_at_us: 1_700_000_000_123_456,
            producer: 513,
            seq: 99_999_999,
        };
        let mut buf = [0u8; HEADER_LEN];
        write_header(&mut buf, &h);
        assert_eq!(read_header(&buf), Some(h));
        assert_eq!(read_header(b"not ours at all, not ours at all"), None);
        assert_eq!(read_header(b"pb"), None);
    }

    #[test]
    fn json_template_is_valid_json_with_sized_values() {
        let t = RequestTemplate::json(11, 3, 100, false);
        let body = t.build(1, 42, 2, 10);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["encoding"], "string");
        let records = v["records"].as_array().unwrap();
        assert_eq!(records.len(), 3);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["partition"], 11);
            let value = r["value"].as_str().unwrap();
            assert_eq!(value.len(), 100);
            let h = read_header(value.as_bytes()).unwrap();
            assert_eq!((h.run, h.sent_at_us, h.producer), (1, 42, 2));
            assert_eq!(h.seq, 10 + i as u64);
        }
    }

    #[test]
    fn json_template_with_ids_gives_each_record_its_header_as_id() {
        let t = RequestTemplate::json(0, 3, 50, true);
        let body = t.build(1, 42, 2, 10);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let records = v["records"].as_array().unwrap();
        let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
        for (r, id) in records.iter().zip(&ids) {
            assert_eq!(&r["value"].as_str().unwrap()[..HEADER_LEN], *id);
        }
        assert!(ids[0] != ids[1] && ids[1] != ids[2]);
    }

    #[test]
    fn raw_template_is_the_value() {
        let t = RequestTemplate::raw(40);
        let body = t.build(3, 5, 6, 7);
        assert_eq!(body.len(), 40);
        assert_eq!(read_header(&body).map(|h| h.seq), Some(7));
    }
}
