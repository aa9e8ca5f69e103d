//! Fetch by offset (docs/api.md § Fetch by offset), with long-poll.
//!
//! Records are rendered straight from their stored encodings into the response body:
//! JSON values are written as stored (they were validated at publish), strings are
//! escaped, binary values are base64.

use std::io::Write;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use psubd_actors::partition::FetchedRecords;
use psubd_actors::record::{RecordView, ValueKind};
use serde::Deserialize;
use tracing::instrument;

use crate::error::ApiError;
use crate::forward::OffsetSpec;
use crate::state::AppState;

/// Default and largest `max_records`.
const DEFAULT_MAX_RECORDS: u32 = 500;
const MAX_MAX_RECORDS: u32 = 10_000;
/// Default and largest `max_bytes`.
const DEFAULT_MAX_BYTES: u32 = 1 << 20;
const MAX_MAX_BYTES: u32 = 16 << 20;
/// Longest long-poll.
pub const MAX_TIMEOUT_MS: u64 = 30_000;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(fetch),
        )
        .with_state(state)
}

#[derive(Deserialize)]
struct FetchParams {
    offset: Option<String>,
    max_records: Option<String>,
    max_bytes: Option<String>,
    timeout_ms: Option<String>,
    /// `replica=local`: read only this node's replica (see [`read_local_replica`]).
    replica: Option<String>,
}

/// Parses an optional non-negative integer query parameter.
///
/// # Errors
/// 400 naming the parameter.
pub(crate) fn number<T: std::str::FromStr>(
    name: &str,
    raw: Option<&str>,
    default: T,
) -> Result<T, ApiError> {
    match raw {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| ApiError::InvalidRequest {
            message: format!("{name} must be a non-negative integer, not '{text}'"),
        }),
    }
}

/// How much one fetch may return and how long it may wait: the `max_records`,
/// `max_bytes` and `timeout_ms` parameters of every fetch route, clamped to their limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBounds {
    /// Most records.
    pub max_records: u32,
    /// Most bytes of record encodings (one record always fits).
    pub max_bytes: u32,
    /// Longest long-poll.
    pub timeout_ms: u64,
}

impl ReadBounds {
    /// Parses the three parameters, with their defaults.
    ///
    /// # Errors
    /// 400 when one is not a non-negative integer.
    pub fn parse(
        max_records: Option<&str>,
        max_bytes: Option<&str>,
        timeout_ms: Option<&str>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            max_records: number("max_records", max_records, DEFAULT_MAX_RECORDS)?
                .clamp(1, MAX_MAX_RECORDS),
            max_bytes: number("max_bytes", max_bytes, DEFAULT_MAX_BYTES)?.clamp(1, MAX_MAX_BYTES),
            timeout_ms: number("timeout_ms", timeout_ms, 0u64)?.min(MAX_TIMEOUT_MS),
        })
    }
}

/// Parses `offset=N|earliest|latest`.
///
/// # Errors
/// 400 for anything else.
pub fn parse_offset(raw: Option<&str>) -> Result<OffsetSpec, ApiError> {
    match raw {
        None | Some("earliest") => Ok(OffsetSpec::Earliest),
        Some("latest") => Ok(OffsetSpec::Latest),
        Some(text) => text
            .parse()
            .map(OffsetSpec::At)
            .map_err(|_| ApiError::InvalidRequest {
                message: format!(
                    "offset must be a non-negative integer, 'earliest' or 'latest', not '{text}'"
                ),
            }),
    }
}

/// Parses a partition number and checks it against the topic.
///
/// # Errors
/// 400 when not a number, 404 when out of range.
pub fn parse_partition(topic: &str, raw: &str, partitions: u32) -> Result<u32, ApiError> {
    let partition: u64 = raw.parse().map_err(|_| ApiError::InvalidRequest {
        message: format!("partition must be a non-negative integer, not '{raw}'"),
    })?;
    if partition >= u64::from(partitions) {
        return Err(ApiError::PartitionNotFound {
            topic: topic.to_string(),
            partition,
        });
    }
    Ok(partition as u32)
}

#[instrument(skip_all, fields(topic = %topic, partition = %partition))]
async fn fetch(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    Query(params): Query<FetchParams>,
) -> Result<Response, ApiError> {
    let meta = state.edge.topic(&topic).await?;
    let partition = parse_partition(&topic, &partition, meta.config.partitions)?;
    let offset = parse_offset(params.offset.as_deref())?;
    let ReadBounds {
        max_records,
        max_bytes,
        timeout_ms,
    } = ReadBounds::parse(
        params.max_records.as_deref(),
        params.max_bytes.as_deref(),
        params.timeout_ms.as_deref(),
    )?;
    let placement = &meta.partitions[partition as usize];
    let fetched = match params.replica.as_deref() {
        None => {
            state
                .edge
                .fetch(placement, offset, max_records, max_bytes, timeout_ms)
                .await?
        }
        Some("local") => read_local_replica(
            &state,
            &topic,
            partition,
            placement,
            offset,
            max_records,
            max_bytes,
        )?,
        Some(other) => {
            return Err(ApiError::InvalidRequest {
                message: format!("replica must be 'local' or absent, not '{other}'"),
            })
        }
    };
    state
        .metrics
        .records_fetched
        .with_label_values(&[&topic])
        .inc_by(u64::from(fetched.count));
    let body = render(&topic, partition, &fetched)?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `replica=local`: reads this node's own replica of the partition and nothing else — no
/// forwarding to the leader, no long-poll, no leadership check — so a replica that lost a
/// suffix is seen as it is. The answer's `high_watermark` is this replica's own end. For
/// checking replicas against each other (the chaos harness's final reads), not for
/// clients: a follower's replica may lag.
///
/// # Errors
/// 400 when this node holds no replica of the partition, 416 outside this replica's log,
/// 503 while the replica is opening or its stored records cannot be read.
fn read_local_replica(
    state: &AppState,
    topic: &str,
    partition: u32,
    placement: &psubd_actors::topic::PartitionPlacement,
    offset: OffsetSpec,
    max_records: u32,
    max_bytes: u32,
) -> Result<FetchedRecords, ApiError> {
    use psubd_actors::partition::ReadError;
    let broker = state.edge.broker();
    let Some(handle) = broker.partition(placement.group) else {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "node {} holds no replica of partition {partition} of topic '{topic}' (replica=local reads only this node's replica)",
                broker.node_id()
            ),
        });
    };
    let bounds = handle.reader.bounds();
    let offset = match offset {
        OffsetSpec::Earliest => bounds.log_start,
        OffsetSpec::Latest => bounds.next_offset,
        OffsetSpec::At(n) => n,
    };
    handle
        .reader
        .read(offset, max_records, max_bytes as usize)
        .map_err(|e| match e {
            ReadError::OutOfRange {
                offset,
                log_start,
                high_watermark,
            } => ApiError::OffsetOutOfRange {
                offset,
                log_start_offset: log_start,
                high_watermark,
            },
            other => ApiError::Unavailable {
                reason: format!("local replica: {other}"),
            },
        })
}

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
