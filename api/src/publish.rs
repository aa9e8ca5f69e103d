//! Publishing over HTTP (docs/api.md § Publish): JSON batches, raw bodies for curl, and
//! NDJSON streams. Presentation only: parses the request into a
//! [`PublishBatch`](crate::service::publish::PublishBatch), publishes it through the
//! service and renders the reports. The JSON shape of a record (`PublishRecord`) is
//! shared with the WebSocket `publish` operation.
//!
//! Every request is validated whole before anything is written: a bad record anywhere
//! means a 4xx and nothing written.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use psubd_actors::record::ValueKind;
use psubd_wire::{Accepted, DelayedReport, DeliveryReport, FailedRecord, RecordReport};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;
use tracing::instrument;

use crate::error::ApiError;
use crate::json::{self, media_type, Query};
use crate::limits::Limits;
use crate::service::publish::{
    total_failure, Acks, Delivered, NewRecord, Placement, PublishBatch, Published,
};
use crate::service::Caller;
use crate::state::AppState;
use psubd_actors::partition::guard::Expectation;

/// The raw-body mode's header carrying the record's id.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Most NDJSON lines published as one request: the stream's batch bound.
const STREAM_CHUNK: usize = 1000;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/topics/{topic}/records", post(publish))
        .route("/v1/topics/{topic}/records:stream", post(publish_stream))
        .with_state(state)
}

/// How values (and keys) are written in the JSON body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
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
    /// Store the records only if the partition's next offset is this.
    expected_offset: Option<String>,
}

/// The `expected_offset` parameter, if given.
fn expected_offset(raw: Option<&str>) -> Result<Option<Expectation>, ApiError> {
    raw.map(|raw| {
        raw.parse::<u64>()
            .map(Expectation::NextOffset)
            .map_err(|_| ApiError::InvalidRequest {
                message: format!("expected_offset must be an offset (0 or more), not '{raw}'"),
            })
    })
    .transpose()
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

/// One record as JSON clients write it.
#[derive(Deserialize)]
pub(crate) struct PublishRecord<'a> {
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
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(default)]
    deliver_at_ms: Option<i64>,
    #[serde(default)]
    delay_ms: Option<i64>,
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

/// Decodes one JSON record, borrowing key and value from the body where it can.
fn to_record(encoding: Encoding, raw: PublishRecord<'_>) -> Result<NewRecord<'_>, ApiError> {
    let key_text = raw.key.map(|k| k.0);
    let (kind, key, value): (ValueKind, Option<Part<'_>>, Option<Part<'_>>) = match encoding {
        Encoding::Json => (
            ValueKind::Json,
            key_text.map(cow_bytes),
            raw.value.map(|v| Cow::Borrowed(v.get().as_bytes())),
        ),
        Encoding::String => {
            let value = match raw.value {
                None => None,
                Some(v) => Some(cow_bytes(
                    serde_json::from_str::<Text<'_>>(v.get())
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
    Ok(NewRecord {
        partition: raw.partition,
        timestamp_ms: raw.timestamp_ms,
        kind,
        key,
        value,
        headers: raw.headers.unwrap_or_default().into_iter().collect(),
        id: raw.id.map(|id| cow_bytes(id.0)),
        deliver_at_ms: raw.deliver_at_ms,
        delay_ms: raw.delay_ms,
    })
}

/// A raw publish's due time headers (`Deliver-At-Ms`, `Delay-Ms`), as integers.
///
/// # Errors
/// 400 for a value that is not an integer.
fn due_headers(headers: &HeaderMap) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let parse = |name: &str| {
        headers
            .get(name)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .ok_or_else(|| ApiError::InvalidRequest {
                        message: format!("the {name} header must be an integer (ms)"),
                    })
            })
            .transpose()
    };
    Ok((parse("deliver-at-ms")?, parse("delay-ms")?))
}

fn cow_bytes(text: Cow<'_, str>) -> Cow<'_, [u8]> {
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

/// Validates and pushes a request's JSON records into `batch`: every record is checked
/// before anything is sent, so a bad one anywhere means a 4xx and nothing written.
///
/// # Errors
/// 413 / 400 for the record count, then the first refused record's error.
pub(crate) fn push_records<'a>(
    batch: &mut PublishBatch,
    records: Vec<PublishRecord<'a>>,
    encoding: Encoding,
) -> Result<(), ApiError> {
    batch.check_count(records.len())?;
    for raw in records {
        batch.push(to_record(encoding, raw)?)?;
    }
    Ok(())
}

async fn read_body(limits: &Limits, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limits.max_request_bytes)
        .await
        .map_err(|_| ApiError::RequestTooLarge {
            limit: limits.max_request_bytes,
        })
}

/// One record's report: its offset, or its error body with the partition it was meant for.
pub(crate) fn report(d: &Delivered) -> RecordReport {
    match &d.result {
        Ok(Placement::Offset(offset)) => RecordReport::Delivered(DeliveryReport {
            partition: d.partition,
            offset: *offset,
            timestamp_ms: d.timestamp_ms,
            duplicate: d.duplicate,
        }),
        Ok(Placement::Delayed { deliver_at_ms }) => RecordReport::Delayed(DelayedReport {
            partition: d.partition,
            delayed: true,
            deliver_at_ms: *deliver_at_ms,
            timestamp_ms: d.timestamp_ms,
        }),
        Err(error) => RecordReport::Failed(FailedRecord {
            partition: Some(d.partition),
            error: error.body(),
        }),
    }
}

/// A report for a line refused before it was routed: no partition.
fn refused(error: ApiError) -> RecordReport {
    RecordReport::Failed(FailedRecord {
        partition: None,
        error: error.body(),
    })
}

/// Builds the answer. 200: every record is committed. When every record failed: 503 (507
/// when a replica is short of disk space) if nothing can have been written, else 504. A
/// mix of committed and failed records is 207 Multi-Status with a report per record,
/// never a 200 (a client checking only the status must not lose records) nor a 503
/// (which promises nothing was written).
fn answer(reports: Vec<Delivered>, raw_mode: bool) -> Response {
    if let Some(error) = total_failure(&reports) {
        return error.into_response();
    }
    let failed = reports.iter().any(|d| d.result.is_err());
    let status = if failed {
        StatusCode::MULTI_STATUS
    } else {
        StatusCode::OK
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
            result: Ok(placement),
            ..
        }) = reports.first()
        {
            let headers = response.headers_mut();
            headers.insert("x-partition", HeaderValue::from(*partition));
            match placement {
                Placement::Offset(offset) => {
                    headers.insert("x-offset", HeaderValue::from(*offset));
                }
                Placement::Delayed { deliver_at_ms } => {
                    headers.insert("x-deliver-at-ms", HeaderValue::from(*deliver_at_ms));
                }
            }
        }
    }
    response
}

/// `{"offsets":[...]}` (a [`psubd_wire::PublishResponse`]), written straight into the
/// body: delivered records are the hot path, so they skip serde; delayed and failed ones
/// are serialised from their [`RecordReport`].
fn offsets_json(reports: &[Delivered]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + reports.len() * 64);
    out.extend_from_slice(b"{\"offsets\":[");
    for (i, d) in reports.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = match &d.result {
            Ok(Placement::Offset(offset)) if d.duplicate => write!(
                out,
                "{{\"duplicate\":true,\"offset\":{offset},\"partition\":{},\"timestamp_ms\":{}}}",
                d.partition, d.timestamp_ms
            ),
            Ok(Placement::Offset(offset)) => write!(
                out,
                "{{\"offset\":{offset},\"partition\":{},\"timestamp_ms\":{}}}",
                d.partition, d.timestamp_ms
            ),
            Ok(Placement::Delayed { .. }) | Err(_) => {
                serde_json::to_writer(&mut out, &report(d)).map_err(std::io::Error::other)
            }
        };
    }
    out.extend_from_slice(b"]}");
    out
}

#[instrument(skip_all, fields(topic = %topic))]
async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
    Query(params): Query<PublishParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let acks = Acks::parse(params.acks.as_deref())?;
    let expectation = expected_offset(params.expected_offset.as_deref())?;
    let media = media_type(&headers);
    // A body without a Content-Type is refused, as on every JSON route (`json.rs`).
    let raw_mode = match media.as_deref() {
        Some("application/json") => false,
        Some("application/octet-stream") | Some("text/plain") => true,
        other => {
            return Err(ApiError::UnsupportedMediaType {
                content_type: other.unwrap_or("none").to_string(),
                expected: "application/json, application/octet-stream or text/plain",
            })
        }
    };
    let partition = params
        .partition
        .as_deref()
        .map(|p| {
            p.parse::<i64>().map_err(|_| ApiError::InvalidRequest {
                message: format!("partition must be an integer, not '{p}'"),
            })
        })
        .transpose()?;
    if !raw_mode && (partition.is_some() || params.key.is_some()) {
        return Err(ApiError::InvalidRequest {
            message: "the key and partition query parameters are for a raw body; \
                      a JSON body gives them per record"
                .into(),
        });
    }
    let body = read_body(state.service.limits(), body).await?;
    let mut batch = state.service.begin_publish(&caller, &topic).await?;
    if raw_mode {
        let key: Option<&[u8]> = headers
            .get("x-key")
            .map(|v| v.as_bytes())
            .or(params.key.as_deref().map(str::as_bytes));
        let kind = if media.as_deref() == Some("text/plain") {
            std::str::from_utf8(&body).map_err(|_| ApiError::InvalidRequest {
                message: "text/plain body is not UTF-8".into(),
            })?;
            ValueKind::String
        } else {
            ValueKind::Binary
        };
        let id = headers
            .get(IDEMPOTENCY_KEY)
            .map(|v| Cow::Borrowed(v.as_bytes()));
        let (deliver_at_ms, delay_ms) = due_headers(&headers)?;
        batch.push(NewRecord {
            partition,
            timestamp_ms: None,
            kind,
            key: key.map(Cow::Borrowed),
            value: Some(Cow::Borrowed(&body[..])),
            headers: Vec::new(),
            id,
            deliver_at_ms,
            delay_ms,
        })?;
    } else {
        let text = std::str::from_utf8(&body).map_err(|_| ApiError::InvalidJson {
            message: "body is not UTF-8".into(),
        })?;
        json::expect_object(&body, "body")?;
        let parsed: PublishBody<'_> =
            serde_json::from_str(text).map_err(|e| ApiError::InvalidJson {
                message: format!("invalid JSON body: {e}"),
            })?;
        let encoding = params.encoding.unwrap_or(parsed.encoding);
        push_records(&mut batch, parsed.records, encoding)?;
    }
    if let Some(expectation) = expectation {
        batch.expect(expectation)?;
    }
    Ok(match state.service.publish(&caller, batch, acks).await? {
        Published::Accepted(count) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                accepted: count as u64,
            }),
        )
            .into_response(),
        Published::Delivered(reports) => answer(reports, raw_mode),
    })
}

#[instrument(skip_all, fields(topic = %topic))]
async fn publish_stream(
    State(state): State<AppState>,
    caller: Caller,
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
    Acks::parse(params.acks.as_deref())?;
    if params.expected_offset.is_some() {
        // A stream's lines are published in chunks as they arrive: no one offset to expect.
        return Err(ApiError::InvalidRequest {
            message: "expected_offset is for a batch publish, not a stream".into(),
        });
    }
    // The topic is looked up once; each chunk publishes a batch for it.
    let template = state.service.begin_publish(&caller, &topic).await?;
    let encoding = params.encoding.unwrap_or_default();
    let limits = *state.service.limits();
    let max_line = limits.max_record_bytes * 2 + limits.max_header_bytes + 1024;
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let lines = FramedRead::new(reader, LinesCodec::new_with_max_length(max_line));
    // Lines that are already buffered are published together as one request (one append
    // per partition), and chunks go one after another: records of a stream are stored in
    // line order within each partition, and a fast producer still gets large batches.
    let reports = lines.ready_chunks(STREAM_CHUNK).then(move |chunk| {
        let state = state.clone();
        let caller = caller.clone();
        let batch = template.empty_like();
        async move {
            let mut out = Vec::new();
            for report in publish_lines(&state, &caller, batch, encoding, chunk, max_line).await {
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
    caller: &Caller,
    mut batch: PublishBatch,
    encoding: Encoding,
    lines: Vec<Result<String, LinesCodecError>>,
    max_line: usize,
) -> Vec<RecordReport> {
    let max_record_bytes = state.service.limits().max_record_bytes;
    // Each line is either refused on its own (its report is ready) or routed.
    let mut slots: Vec<Result<usize, RecordReport>> = Vec::with_capacity(lines.len());
    for line in &lines {
        let slot = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => json::expect_object(line.as_bytes(), "line")
                .and_then(|()| {
                    serde_json::from_str::<PublishRecord<'_>>(line).map_err(|e| {
                        ApiError::InvalidJson {
                            message: format!("invalid JSON line: {e}"),
                        }
                    })
                })
                .and_then(|parsed| to_record(encoding, parsed))
                .and_then(|record| batch.push(record))
                .map_err(refused),
            Err(LinesCodecError::MaxLineLengthExceeded) => Err(refused(ApiError::RecordTooLarge {
                size: max_line,
                limit: max_record_bytes,
            })),
            Err(LinesCodecError::Io(e)) => Err(refused(ApiError::InvalidRequest {
                message: format!("reading the stream: {e}"),
            })),
        };
        slots.push(slot);
    }
    let delivered = if batch.is_empty() {
        Vec::new()
    } else {
        state.service.deliver(caller, batch).await
    };
    slots
        .into_iter()
        .map(|slot| match slot {
            Ok(index) => delivered.get(index).map(report).unwrap_or_else(|| {
                refused(ApiError::Internal {
                    detail: "no delivery report".into(),
                })
            }),
            Err(report) => report,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use psubd_wire::PublishResponse;

    use super::*;

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

    #[test]
    fn written_offsets_answer_equals_the_serde_json_one() {
        let reports = vec![
            Delivered {
                partition: 2,
                result: Ok(Placement::Offset(41)),
                timestamp_ms: 1_700_000_000_123,
                duplicate: false,
            },
            Delivered {
                partition: 1,
                result: Ok(Placement::Offset(7)),
                timestamp_ms: 5,
                duplicate: true,
            },
            Delivered {
                partition: 1,
                result: Ok(Placement::Delayed {
                    deliver_at_ms: 1_700_000_001_000,
                }),
                timestamp_ms: 1_700_000_001_000,
                duplicate: false,
            },
            Delivered {
                partition: 0,
                result: Err(ApiError::Unavailable {
                    reason: "no leader".into(),
                }),
                timestamp_ms: -1,
                duplicate: false,
            },
        ];
        let written: serde_json::Value = serde_json::from_slice(&offsets_json(&reports)).unwrap();
        let typed = PublishResponse {
            offsets: reports.iter().map(report).collect(),
        };
        assert_eq!(written, serde_json::to_value(&typed).unwrap());
        let text = String::from_utf8(offsets_json(&reports[..1])).unwrap();
        assert_eq!(
            text,
            r#"{"offsets":[{"offset":41,"partition":2,"timestamp_ms":1700000000123}]}"#
        );
    }
}
