//! Publishing (docs/api.md § Publish): JSON batches, raw bodies for curl, and NDJSON streams.
//!
//! Every request is validated whole before anything is written: a bad record anywhere
//! means a 4xx and nothing written. Records are grouped by partition, each group goes to
//! its partition leader as one append, and offsets come back in request order.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use psubd_actors::partition::Appended;
use psubd_actors::record::{EncodedRecords, RawBytes, Record, RecordRef, ValueKind};
use psubd_actors::topic::TopicMeta;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;
use tracing::instrument;

use crate::error::ApiError;
use crate::json::media_type;
use crate::state::{AppState, Limits};

/// Most NDJSON lines published as one request: the stream's batch bound.
const STREAM_CHUNK: usize = 1000;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/topics/{topic}/records", post(publish))
        .route("/v1/topics/{topic}/records:stream", post(publish_stream))
        .with_state(state)
}

/// Acknowledgement level, from `?acks=`.
///
/// There is no leader-only level (Kafka's `acks=1`): offsets are assigned when an entry is
/// committed and applied, so a leader could not report them before the commit, and an
/// answer without offsets is what `acks=0` already gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcksParam {
    All,
    None,
}

/// How values (and keys) are written in the JSON body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Json,
    String,
    Base64,
}

#[derive(Deserialize)]
struct PublishParams {
    #[serde(default)]
    acks: Option<String>,
    key: Option<String>,
    partition: Option<String>,
    encoding: Option<Encoding>,
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    records: Vec<PublishRecord<'a>>,
    #[serde(default)]
    encoding: Encoding,
}

/// A JSON string, borrowed from the body unless it holds escapes (which must be decoded):
/// most keys and `encoding: string` values are copied once, into their encoding.
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct PublishRecord<'a> {
    #[serde(borrow, default)]
    key: Option<Text<'a>>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    partition: Option<i64>,
    #[serde(default)]
    timestamp_ms: Option<i64>,
}

/// A validated record and its partition, borrowing what it can from the request body.
struct Checked<'a> {
    partition: u32,
    timestamp_ms: i64,
    kind: ValueKind,
    key: Option<Cow<'a, [u8]>>,
    value: Option<Cow<'a, [u8]>>,
    /// Sorted by name (a JSON object's names are unique).
    headers: Vec<(String, String)>,
}

/// Where one record of a request went: its partition and its place in that partition's
/// run (its offset is the run's base offset plus `position`).
struct Slot {
    partition: u32,
    position: u32,
    timestamp_ms: i64,
}

/// One partition's share of a request: its records, encoded back to back.
#[derive(Default)]
struct Run {
    count: u32,
    bytes: Vec<u8>,
}

/// A request's records, encoded into one run per partition as they are validated: no
/// owned copy of a record is kept, and nothing is grouped afterwards.
#[derive(Default)]
struct Batches {
    runs: BTreeMap<u32, Run>,
    /// One per record, in request order.
    slots: Vec<Slot>,
}

impl Batches {
    /// Encodes a validated record into its partition's run; returns its slot index.
    fn push(&mut self, record: &Checked<'_>) -> Result<usize, ApiError> {
        let run = self.runs.entry(record.partition).or_default();
        RecordRef {
            timestamp_ms: record.timestamp_ms,
            kind: record.kind,
            key: record.key.as_deref().map(RawBytes),
            value: record.value.as_deref().map(RawBytes),
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), RawBytes(v.as_bytes())))
                .collect(),
        }
        .encode_into(&mut run.bytes)
        .map_err(|e| ApiError::Internal {
            detail: format!("record encoding: {e}"),
        })?;
        self.slots.push(Slot {
            partition: record.partition,
            position: run.count,
            timestamp_ms: record.timestamp_ms,
        });
        run.count += 1;
        Ok(self.slots.len() - 1)
    }

    fn len(&self) -> usize {
        self.slots.len()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_acks(raw: Option<&str>) -> Result<AcksParam, ApiError> {
    match raw {
        None | Some("all") | Some("-1") => Ok(AcksParam::All),
        Some("0") => Ok(AcksParam::None),
        Some("1") => Err(ApiError::InvalidRequest {
            message: "acks=1 is not supported: offsets are assigned at commit, so use \
                      acks=all (the default) or acks=0"
                .into(),
        }),
        Some(other) => Err(ApiError::InvalidRequest {
            message: format!("acks must be all or 0, not '{other}'"),
        }),
    }
}

/// A stable hash, so a key maps to the same partition on every node and release (the
/// same function places consumer groups).
fn key_hash(key: &[u8]) -> u64 {
    psubd_actors::stable_hash::fnv1a(key)
}

fn choose_partition(
    state: &AppState,
    topic: &TopicMeta,
    explicit: Option<i64>,
    key: Option<&[u8]>,
) -> Result<u32, ApiError> {
    let count = topic.config.partitions;
    match (explicit, key) {
        (Some(p), _) => {
            if p < 0 || p >= i64::from(count) {
                return Err(ApiError::PartitionNotFound {
                    topic: topic.name.clone(),
                    partition: p.max(0) as u64,
                });
            }
            Ok(p as u32)
        }
        (None, Some(key)) => Ok((key_hash(key) % u64::from(count)) as u32),
        (None, None) => {
            Ok((state.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(count)) as u32)
        }
    }
}

pub(crate) fn check_sizes(limits: &Limits, record: &Record) -> Result<(), ApiError> {
    let size =
        record.key.as_ref().map_or(0, |k| k.len()) + record.value.as_ref().map_or(0, |v| v.len());
    let header_size: usize = record.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    check_lengths(limits, size, header_size)
}

fn check_checked(limits: &Limits, record: &Checked<'_>) -> Result<(), ApiError> {
    let size =
        record.key.as_ref().map_or(0, |k| k.len()) + record.value.as_ref().map_or(0, |v| v.len());
    let header_size: usize = record.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    check_lengths(limits, size, header_size)
}

fn check_lengths(limits: &Limits, size: usize, header_size: usize) -> Result<(), ApiError> {
    if size > limits.max_record_bytes {
        return Err(ApiError::RecordTooLarge {
            size,
            limit: limits.max_record_bytes,
        });
    }
    if header_size > limits.max_header_bytes {
        return Err(ApiError::HeadersTooLarge {
            size: header_size,
            limit: limits.max_header_bytes,
        });
    }
    Ok(())
}

fn decode_base64(what: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| ApiError::InvalidRequest {
            message: format!("{what} is not valid base64: {e}"),
        })
}

/// A key or value: borrowed from the body, or decoded (escapes, base64).
type Part<'a> = Cow<'a, [u8]>;

/// Validates one record of a JSON body, borrowing key and value from it where it can.
fn to_record<'a>(
    state: &AppState,
    topic: &TopicMeta,
    encoding: Encoding,
    raw: PublishRecord<'a>,
) -> Result<Checked<'a>, ApiError> {
    let key_text = raw.key.map(|k| k.0);
    let (kind, key, value): (ValueKind, Option<Part<'a>>, Option<Part<'a>>) = match encoding {
        Encoding::Json => (
            ValueKind::Json,
            key_text.map(cow_bytes),
            raw.value.map(|v| Cow::Borrowed(v.get().as_bytes())),
        ),
        Encoding::String => {
            let value = match raw.value {
                None => None,
                Some(v) => Some(cow_bytes(
                    serde_json::from_str::<Text<'a>>(v.get())
                        .map_err(|_| ApiError::InvalidRequest {
                            message: "with encoding 'string', value must be a JSON string".into(),
                        })?
                        .0,
                )),
            };
            (ValueKind::String, key_text.map(cow_bytes), value)
        }
        Encoding::Base64 => {
            let value = match raw.value {
                None => None,
                Some(v) => {
                    let text = serde_json::from_str::<Text<'_>>(v.get()).map_err(|_| {
                        ApiError::InvalidRequest {
                            message: "with encoding 'base64', value must be a base64 string".into(),
                        }
                    })?;
                    Some(Cow::Owned(decode_base64("value", &text.0)?))
                }
            };
            let key = key_text
                .as_deref()
                .map(|k| decode_base64("key", k).map(Cow::Owned))
                .transpose()?;
            (ValueKind::Binary, key, value)
        }
    };
    let partition = choose_partition(state, topic, raw.partition, key.as_deref())?;
    let record = Checked {
        partition,
        timestamp_ms: raw.timestamp_ms.unwrap_or_else(now_ms),
        kind,
        key,
        value,
        headers: raw.headers.unwrap_or_default().into_iter().collect(),
    };
    check_checked(&state.limits, &record)?;
    Ok(record)
}

fn cow_bytes(text: Cow<'_, str>) -> Cow<'_, [u8]> {
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

async fn read_body(limits: &Limits, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limits.max_request_bytes)
        .await
        .map_err(|_| ApiError::RequestTooLarge {
            limit: limits.max_request_bytes,
        })
}

/// One record's delivery report.
struct Delivered {
    partition: u32,
    result: Result<u64, ApiError>,
    timestamp_ms: i64,
}

/// Appends a request's records, one append per partition, concurrently; reports per
/// record in request order.
async fn append_all(state: &AppState, topic: &TopicMeta, batches: Batches) -> Vec<Delivered> {
    let Batches { runs, slots } = batches;
    let partitions: Vec<u32> = runs.keys().copied().collect();
    let appends = runs.into_iter().map(|(partition, run)| {
        let placement = topic.partitions.get(partition as usize);
        let encoded = EncodedRecords::from_run(run.count, run.bytes);
        async move {
            match placement {
                Some(placement) => state.edge.append(placement, encoded).await,
                None => Err(ApiError::PartitionNotFound {
                    topic: topic.name.clone(),
                    partition: u64::from(partition),
                }),
            }
        }
    });
    let results: Vec<Result<Appended, ApiError>> = futures::future::join_all(appends).await;
    let outcome = |partition: u32| {
        partitions
            .binary_search(&partition)
            .ok()
            .and_then(|i| results.get(i))
    };
    let mut published = 0u64;
    let reports: Vec<Delivered> = slots
        .iter()
        .map(|slot| {
            let result = match outcome(slot.partition) {
                Some(Ok(appended)) => {
                    published += 1;
                    Ok(appended.base_offset + u64::from(slot.position))
                }
                Some(Err(error)) => Err(clone_error(error)),
                None => Err(ApiError::Internal {
                    detail: "no append for a partition of the request".into(),
                }),
            };
            Delivered {
                partition: slot.partition,
                result,
                timestamp_ms: slot.timestamp_ms,
            }
        })
        .collect();
    state
        .metrics
        .records_published
        .with_label_values(&[&topic.name])
        .inc_by(published);
    reports
}

/// Errors are reported once per record; this rebuilds one for each.
fn clone_error(error: &ApiError) -> ApiError {
    match error {
        ApiError::OutcomeUnknown { reason } => ApiError::OutcomeUnknown {
            reason: reason.clone(),
        },
        ApiError::Unavailable { reason } => ApiError::Unavailable {
            reason: reason.clone(),
        },
        ApiError::InsufficientStorage { reason } => ApiError::InsufficientStorage {
            reason: reason.clone(),
        },
        other => ApiError::Internal {
            detail: other.to_string(),
        },
    }
}

fn report_json(d: &Delivered) -> serde_json::Value {
    match &d.result {
        Ok(offset) => {
            json!({"partition": d.partition, "offset": offset, "timestamp_ms": d.timestamp_ms})
        }
        Err(error) => {
            let mut body = error.body();
            body["partition"] = json!(d.partition);
            body
        }
    }
}

/// Builds the answer. 200: every record is committed. When every record failed: 503 (507
/// when a replica is short of disk space) if nothing can have been written, else 504. A mix of committed and failed records is
/// 207 Multi-Status with a report per record, never a 200 (a client checking only the
/// status must not lose records) nor a 503 (which promises nothing was written).
fn answer(reports: Vec<Delivered>, raw_mode: bool) -> Response {
    let failed = reports.iter().filter(|d| d.result.is_err()).count();
    if failed > 0 && failed == reports.len() {
        let unknown = reports
            .iter()
            .find(|d| matches!(d.result, Err(ApiError::OutcomeUnknown { .. })));
        let first = unknown
            .or(reports.first())
            .and_then(|d| d.result.as_ref().err());
        if let Some(error) = first {
            return clone_error(error).into_response();
        }
    }
    let status = if failed == 0 {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        offsets_json(&reports),
    )
        .into_response();
    if raw_mode {
        if let Some(Delivered {
            partition,
            result: Ok(offset),
            ..
        }) = reports.first()
        {
            let headers = response.headers_mut();
            headers.insert("x-partition", HeaderValue::from(*partition));
            headers.insert("x-offset", HeaderValue::from(*offset));
        }
    }
    response
}

/// `{"offsets":[...]}`, written straight into the body: the same JSON `report_json`
/// gives (names in the same order), without a `serde_json::Value` map per record.
fn offsets_json(reports: &[Delivered]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + reports.len() * 64);
    out.extend_from_slice(b"{\"offsets\":[");
    for (i, d) in reports.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = match &d.result {
            Ok(offset) => write!(
                out,
                "{{\"offset\":{offset},\"partition\":{},\"timestamp_ms\":{}}}",
                d.partition, d.timestamp_ms
            ),
            Err(_) => {
                serde_json::to_writer(&mut out, &report_json(d)).map_err(std::io::Error::other)
            }
        };
    }
    out.extend_from_slice(b"]}");
    out
}

#[instrument(skip_all, fields(topic = %topic))]
async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    Query(params): Query<PublishParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let acks = parse_acks(params.acks.as_deref())?;
    let media = media_type(&headers);
    let raw_mode = match media.as_deref() {
        Some("application/json") | None => false,
        Some("application/octet-stream") | Some("text/plain") => true,
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType {
                content_type: other.to_string(),
                expected: "application/json, application/octet-stream or text/plain",
            })
        }
    };
    let body = read_body(&state.limits, body).await?;
    let meta = state.edge.topic(&topic).await?;
    let mut batches = Batches::default();
    if raw_mode {
        let key: Option<&[u8]> = headers
            .get("x-key")
            .map(|v| v.as_bytes())
            .or(params.key.as_deref().map(str::as_bytes));
        let partition = params
            .partition
            .map(|p| {
                p.parse::<i64>().map_err(|_| ApiError::InvalidRequest {
                    message: format!("partition must be an integer, not '{p}'"),
                })
            })
            .transpose()?;
        let kind = if media.as_deref() == Some("text/plain") {
            std::str::from_utf8(&body).map_err(|_| ApiError::InvalidRequest {
                message: "text/plain body is not UTF-8".into(),
            })?;
            ValueKind::String
        } else {
            ValueKind::Binary
        };
        let record = Checked {
            partition: choose_partition(&state, &meta, partition, key)?,
            timestamp_ms: now_ms(),
            kind,
            key: key.map(Cow::Borrowed),
            value: Some(Cow::Borrowed(&body[..])),
            headers: Vec::new(),
        };
        check_checked(&state.limits, &record)?;
        batches.push(&record)?;
    } else {
        let text = std::str::from_utf8(&body).map_err(|_| ApiError::InvalidJson {
            message: "body is not UTF-8".into(),
        })?;
        let parsed: PublishBody<'_> =
            serde_json::from_str(text).map_err(|e| ApiError::InvalidJson {
                message: format!("invalid JSON body: {e}"),
            })?;
        if parsed.records.len() > state.limits.max_records_per_request {
            return Err(ApiError::TooManyRecords {
                count: parsed.records.len(),
                limit: state.limits.max_records_per_request,
            });
        }
        if parsed.records.is_empty() {
            return Err(ApiError::InvalidRequest {
                message: "records must not be empty".into(),
            });
        }
        let encoding = params.encoding.unwrap_or(parsed.encoding);
        // Every record is validated before anything is sent: a bad one anywhere means a
        // 4xx and nothing written.
        for raw in parsed.records {
            batches.push(&to_record(&state, &meta, encoding, raw)?)?;
        }
    }
    if acks == AcksParam::None {
        let permit =
            state
                .unacked
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ApiError::Unavailable {
                    reason: "node shutting down".into(),
                })?;
        let count = batches.len();
        let background = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            append_all(&background, &meta, batches).await;
        });
        return Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": count }))).into_response());
    }
    Ok(answer(append_all(&state, &meta, batches).await, raw_mode))
}

#[instrument(skip_all, fields(topic = %topic))]
async fn publish_stream(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    Query(params): Query<PublishParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match media_type(&headers).as_deref() {
        Some("application/x-ndjson") | Some("application/jsonl") => {}
        other => {
            return Err(ApiError::UnsupportedMediaType {
                content_type: other.unwrap_or("none").to_string(),
                expected: "application/x-ndjson",
            })
        }
    }
    parse_acks(params.acks.as_deref())?;
    let meta = state.edge.topic(&topic).await?;
    let encoding = params.encoding.unwrap_or_default();
    let max_line = state.limits.max_record_bytes * 2 + state.limits.max_header_bytes + 1024;
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let lines = FramedRead::new(reader, LinesCodec::new_with_max_length(max_line));
    // Lines that are already buffered are published together as one request (one append
    // per partition), and chunks go one after another: records of a stream are stored in
    // line order within each partition, and a fast producer still gets large batches.
    let reports = lines.ready_chunks(STREAM_CHUNK).then(move |chunk| {
        let state = state.clone();
        let meta = meta.clone();
        async move {
            let mut out = Vec::new();
            for report in publish_lines(&state, &meta, encoding, chunk, max_line).await {
                // Serialising a JSON value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut out, &report);
                out.push(b'\n');
            }
            Ok::<_, std::io::Error>(Bytes::from(out))
        }
    });
    let mut response = Response::new(Body::from_stream(reports));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// Publishes one chunk of NDJSON lines; one report per non-blank line, in line order.
async fn publish_lines(
    state: &AppState,
    meta: &TopicMeta,
    encoding: Encoding,
    lines: Vec<Result<String, LinesCodecError>>,
    max_line: usize,
) -> Vec<serde_json::Value> {
    // Each line is either refused on its own (its report is ready) or routed.
    let mut slots: Vec<Result<usize, serde_json::Value>> = Vec::with_capacity(lines.len());
    let mut batches = Batches::default();
    for line in &lines {
        let slot = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => serde_json::from_str::<PublishRecord<'_>>(line)
                .map_err(|e| ApiError::InvalidJson {
                    message: format!("invalid JSON line: {e}"),
                })
                .and_then(|parsed| to_record(state, meta, encoding, parsed))
                .and_then(|record| batches.push(&record))
                .map_err(|error| error.body()),
            Err(LinesCodecError::MaxLineLengthExceeded) => Err(ApiError::RecordTooLarge {
                size: max_line,
                limit: state.limits.max_record_bytes,
            }
            .body()),
            Err(LinesCodecError::Io(e)) => Err(ApiError::InvalidRequest {
                message: format!("reading the stream: {e}"),
            }
            .body()),
        };
        slots.push(slot);
    }
    let delivered = if batches.len() == 0 {
        Vec::new()
    } else {
        append_all(state, meta, batches).await
    };
    slots
        .into_iter()
        .map(|slot| match slot {
            Ok(index) => delivered.get(index).map(report_json).unwrap_or_else(|| {
                ApiError::Internal {
                    detail: "no delivery report".into(),
                }
                .body()
            }),
            Err(report) => report,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_stable() {
        // Fixed values: changing the hash would move keys between partitions.
        assert_eq!(key_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn json_strings_are_borrowed_unless_escaped() {
        let plain: Text<'_> = serde_json::from_str(r#""hello""#).unwrap();
        assert!(matches!(plain.0, Cow::Borrowed("hello")));
        let escaped: Text<'_> = serde_json::from_str(r#""a\"b\u00e9""#).unwrap();
        assert!(matches!(&escaped.0, Cow::Owned(s) if s == "a\"bé"));
        assert!(serde_json::from_str::<Text<'_>>("42").is_err());
        let record: PublishRecord<'_> =
            serde_json::from_str(r#"{"key":"k1","value":{"n":1},"headers":{"b":"2","a":"1"}}"#)
                .unwrap();
        assert!(matches!(record.key.map(|k| k.0), Some(Cow::Borrowed("k1"))));
        assert_eq!(record.value.map(|v| v.get()), Some(r#"{"n":1}"#));
    }

    fn checked(partition: u32, key: &'static str, value: &'static str) -> Checked<'static> {
        Checked {
            partition,
            timestamp_ms: 1_700_000_000_000 + i64::from(partition),
            kind: ValueKind::String,
            key: Some(Cow::Borrowed(key.as_bytes())),
            value: Some(Cow::Owned(value.as_bytes().to_vec())),
            headers: vec![("h".into(), "v".into())],
        }
    }

    #[test]
    fn batches_keep_request_order_per_partition_and_encode_every_record() {
        let mut batches = Batches::default();
        for (p, k, v) in [(1, "a", "x"), (0, "b", "y"), (1, "c", "z")] {
            batches.push(&checked(p, k, v)).unwrap();
        }
        let places: Vec<(u32, u32)> = batches
            .slots
            .iter()
            .map(|s| (s.partition, s.position))
            .collect();
        assert_eq!(places, vec![(1, 0), (0, 0), (1, 1)]);
        let run = &batches.runs[&1];
        assert_eq!(run.count, 2);
        type Decoded = (Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);
        let decoded: Vec<Decoded> = psubd_actors::record::RecordIter::run(&run.bytes)
            .map(|r| {
                let r = r.unwrap();
                assert_eq!(r.kind, ValueKind::String);
                (
                    r.key.unwrap().to_vec(),
                    r.value.unwrap().to_vec(),
                    r.headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_vec()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                (
                    b"a".to_vec(),
                    b"x".to_vec(),
                    vec![("h".into(), b"v".to_vec())]
                ),
                (
                    b"c".to_vec(),
                    b"z".to_vec(),
                    vec![("h".into(), b"v".to_vec())]
                ),
            ]
        );
    }

    #[test]
    fn written_offsets_answer_equals_the_serde_json_one() {
        let reports = vec![
            Delivered {
                partition: 2,
                result: Ok(41),
                timestamp_ms: 1_700_000_000_123,
            },
            Delivered {
                partition: 0,
                result: Err(ApiError::Unavailable {
                    reason: "no leader".into(),
                }),
                timestamp_ms: -1,
            },
        ];
        let written: serde_json::Value = serde_json::from_slice(&offsets_json(&reports)).unwrap();
        let offsets: Vec<serde_json::Value> = reports.iter().map(report_json).collect();
        assert_eq!(written, json!({ "offsets": offsets }));
        let text = String::from_utf8(offsets_json(&reports[..1])).unwrap();
        assert_eq!(
            text,
            r#"{"offsets":[{"offset":41,"partition":2,"timestamp_ms":1700000000123}]}"#
        );
    }

    #[test]
    fn acks_values() {
        assert_eq!(parse_acks(None).unwrap(), AcksParam::All);
        assert!(parse_acks(Some("1")).is_err());
        assert_eq!(parse_acks(Some("0")).unwrap(), AcksParam::None);
        assert!(parse_acks(Some("2")).is_err());
    }
}
