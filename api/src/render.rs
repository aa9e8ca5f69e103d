//! The JSON form of stored records, written straight from their stored encodings: JSON
//! values as stored (they were validated at publish), strings escaped, binary values in
//! base64. Shared by every answer that carries records (fetch, member fetch, key views,
//! streams, the WebSocket), so a record looks the same everywhere. Written by hand rather
//! than through `psubd_wire::Record` for speed (no value re-parsed, no map per record);
//! the tests here and `tests/tests/wire.rs` check it is exactly that type's JSON.

use std::io::Write;

use base64::Engine as _;
use psubd_actors::partition::FetchedRecords;
use psubd_actors::record::{RecordView, ValueKind};

use crate::error::ApiError;

/// Renders a fetch answer: `{"records":[…],"next_offset":N,"high_watermark":H}`. Each
/// record carries its own offset (a compacted topic's are not consecutive), and
/// `next_offset` is the read's: past any compacted gap it crossed.
///
/// # Errors
/// 500 when stored bytes do not decode (logged).
pub fn render(topic: &str, partition: u32, fetched: &FetchedRecords) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(fetched.bytes.len() * 2 + 128);
    out.extend_from_slice(b"{\"records\":[");
    for (i, record) in fetched.iter().enumerate() {
        let (offset, record) = record.map_err(|e| ApiError::Internal {
            detail: format!("stored record: {e}"),
        })?;
        if i > 0 {
            out.push(b',');
        }
        write_record(&mut out, topic, partition, offset, &record);
    }
    let _ = write!(
        out,
        "],\"next_offset\":{},\"high_watermark\":{}}}",
        fetched.next_offset, fetched.high_watermark
    );
    Ok(out)
}

/// Writes one record object. Writing into a `Vec` cannot fail.
pub fn write_record(
    out: &mut Vec<u8>,
    topic: &str,
    partition: u32,
    offset: u64,
    record: &RecordView<'_>,
) {
    out.extend_from_slice(b"{\"topic\":");
    let _ = serde_json::to_writer(&mut *out, topic);
    let _ = write!(
        out,
        ",\"partition\":{partition},\"offset\":{offset},\"timestamp_ms\":{},\"key\":",
        record.timestamp_ms
    );
    // Keys are strings in every encoding (see publish): only values may be binary.
    write_bytes(out, ValueKind::String, record.key);
    out.extend_from_slice(b",\"value\":");
    match (record.kind, record.value) {
        (ValueKind::Json, Some(value)) => out.extend_from_slice(value),
        (kind, value) => write_bytes(out, kind, value),
    }
    out.extend_from_slice(b",\"headers\":{");
    for (i, (name, value)) in record.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, name);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(value));
    }
    out.push(b'}');
    if record.kind == ValueKind::Binary {
        out.extend_from_slice(b",\"encoding\":\"base64\"");
    }
    out.push(b'}');
}

fn write_bytes(out: &mut Vec<u8>, kind: ValueKind, bytes: Option<&[u8]>) {
    match bytes {
        None => out.extend_from_slice(b"null"),
        Some(bytes) if kind == ValueKind::Binary => {
            out.push(b'"');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            out.push(b'"');
        }
        Some(bytes) => {
            let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use psubd_actors::record::{EncodedRecords, Record};

    use super::*;

    #[test]
    fn rendered_records_are_valid_json_with_values_as_published() {
        let records = vec![
            Record {
                timestamp_ms: 5,
                kind: ValueKind::Json,
                key: Some(Bytes::from_static(b"k\"1")),
                value: Some(Bytes::from_static(b"{\"a\":[1,2]}")),
                headers: vec![("h".into(), Bytes::from_static(b"v"))],
            },
            Record {
                timestamp_ms: 6,
                kind: ValueKind::Binary,
                key: None,
                value: Some(Bytes::from_static(&[0, 255])),
                headers: vec![],
            },
            Record {
                timestamp_ms: 7,
                kind: ValueKind::String,
                key: None,
                value: None,
                headers: vec![],
            },
        ];
        let encoded = EncodedRecords::encode(&records).unwrap();
        let fetched = FetchedRecords {
            first_offset: 10,
            count: 3,
            bytes: encoded.bytes.clone(),
            offsets: Vec::new(),
            next_offset: 13,
            log_start: 0,
            high_watermark: 13,
        };
        let body: serde_json::Value =
            serde_json::from_slice(&render("t", 2, &fetched).unwrap()).unwrap();
        assert_eq!(body["next_offset"], 13);
        assert_eq!(body["records"][0]["offset"], 10);
        assert_eq!(body["records"][2]["offset"], 12);
        assert_eq!(body["records"][0]["key"], "k\"1");
        assert_eq!(body["records"][0]["value"]["a"][1], 2);
        assert_eq!(body["records"][0]["headers"]["h"], "v");
        assert_eq!(body["records"][1]["value"], "AP8=");
        assert_eq!(body["records"][1]["key"], serde_json::Value::Null);
        assert_eq!(body["records"][1]["encoding"], "base64");
        assert_eq!(body["records"][2]["value"], serde_json::Value::Null);
        // The hand-written JSON is exactly psubd-wire's `FetchResponse`: it decodes, and
        // re-encodes to the same JSON.
        let typed: psubd_wire::FetchResponse = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), body);

        // Compacted: each record at its own offset, next_offset past the gaps.
        let sparse = FetchedRecords {
            offsets: vec![10, 14, 20],
            next_offset: 25,
            high_watermark: 25,
            ..fetched
        };
        let body: serde_json::Value =
            serde_json::from_slice(&render("t", 2, &sparse).unwrap()).unwrap();
        let offsets: Vec<u64> = body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![10, 14, 20]);
        assert_eq!(body["next_offset"], 25);
    }
}
