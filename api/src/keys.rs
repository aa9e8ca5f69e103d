//! Key views of compacted topics: the latest value per key, served from the key index
//! every replica keeps at apply (see `psubd_actors::partition::key_index`).
//!
//! - `GET /v1/topics/{t}/keys/{key}?min_offset=N&timeout_ms=T` → the key's latest record,
//!   rendered as a fetch renders records; 404 `key_not_found` when absent or deleted.
//!   `min_offset` (read-your-writes): the answering replica has applied offset `N` of the
//!   key's partition (pass the offset a write answered), waiting up to `timeout_ms`.
//! - `GET /v1/topics/{t}/keys?prefix=&start=&limit=` → live keys in key order, merged over
//!   the partitions, at most `limit`; `next` is the `start` of the next page (or null).
//! - `PUT /v1/topics/{t}/keys/{key}` publishes the body as the key's value (as a raw
//!   publish: `application/json` is stored as JSON, `text/plain` as a string, anything else
//!   as bytes); `DELETE` publishes a tombstone. Both answer the partition and offset.
//!
//! Any replica serves reads: this node's own when it applied enough, else the partition's
//! leader first, then the other replicas. Reads are retried elsewhere freely (they change
//! nothing).

//!
//! Presentation only: the operations are [`crate::service::keys`].

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use psubd_actors::controller::access::Operation;
use psubd_actors::partition::key_index::KeyRecord;
use psubd_actors::record::{RecordIter, ValueKind};
use psubd_wire::DeliveryReport;
use serde::Deserialize;
use tracing::instrument;

use crate::error::ApiError;
use crate::fetch::number;
use crate::json::{media_type, Query};
use crate::limits::MAX_TIMEOUT_MS;
use crate::render::write_record;
use crate::service::keys::{KeyView, ReadYourWrites, ScanRequest};
use crate::service::Caller;
use crate::state::AppState;

/// Default and largest scan page.
const DEFAULT_SCAN_LIMIT: u32 = 100;
const MAX_SCAN_LIMIT: u32 = 1000;

/// How long a key read waits for a replica that is behind when no `timeout_ms` is given:
/// a follower usually applies a just-acknowledged write within milliseconds.
const DEFAULT_KEY_TIMEOUT_MS: u64 = 5_000;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/topics/{topic}/keys", get(scan))
        .route(
            "/v1/topics/{topic}/keys/{key}",
            get(lookup).put(put).delete(delete),
        )
        .with_state(state)
}

fn render(
    topic: &str,
    partition: u32,
    record: &KeyRecord,
    out: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let view = RecordIter::run(&record.encoded)
        .next()
        .ok_or_else(|| ApiError::Internal {
            detail: "key record is empty".into(),
        })?
        .map_err(|e| ApiError::Internal {
            detail: format!("stored record: {e}"),
        })?;
    write_record(out, topic, partition, record.offset, &view);
    Ok(())
}

fn json_response(body: Vec<u8>) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The read-your-writes parameters of key reads: the offset the answering replica must
/// have applied, and how long to wait for it (capped like every long-poll).
fn read_your_writes(
    min_offset: Option<&str>,
    timeout_ms: Option<&str>,
) -> Result<ReadYourWrites, ApiError> {
    let min_offset = min_offset
        .map(|raw| number::<u64>("min_offset", Some(raw), 0))
        .transpose()?;
    let timeout_ms = number("timeout_ms", timeout_ms, DEFAULT_KEY_TIMEOUT_MS)?.min(MAX_TIMEOUT_MS);
    Ok(ReadYourWrites {
        min_offset,
        timeout_ms,
    })
}

#[derive(Deserialize)]
struct LookupParams {
    min_offset: Option<String>,
    timeout_ms: Option<String>,
}

#[instrument(skip_all, fields(topic = %topic))]
async fn lookup(
    State(state): State<AppState>,
    caller: Caller,
    Path((topic, key)): Path<(String, String)>,
    Query(params): Query<LookupParams>,
) -> Result<Response, ApiError> {
    let view = state
        .service
        .key_view(&caller, &topic, Operation::Read)
        .await?;
    let fresh = read_your_writes(params.min_offset.as_deref(), params.timeout_ms.as_deref())?;
    let found = view.lookup(key, fresh).await?;
    let mut out = Vec::with_capacity(found.record.encoded.len() + 128);
    render(&topic, found.partition, &found.record, &mut out)?;
    Ok(json_response(out))
}

#[derive(Deserialize)]
struct ScanParams {
    prefix: Option<String>,
    start: Option<String>,
    limit: Option<String>,
    min_offset: Option<String>,
    timeout_ms: Option<String>,
}

#[instrument(skip_all, fields(topic = %topic))]
async fn scan(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
    Query(params): Query<ScanParams>,
) -> Result<Response, ApiError> {
    let view = state
        .service
        .key_view(&caller, &topic, Operation::Read)
        .await?;
    let limit =
        number("limit", params.limit.as_deref(), DEFAULT_SCAN_LIMIT)?.clamp(1, MAX_SCAN_LIMIT);
    let fresh = read_your_writes(params.min_offset.as_deref(), params.timeout_ms.as_deref())?;
    let page = view
        .scan(ScanRequest {
            prefix: Bytes::from(params.prefix.unwrap_or_default().into_bytes()),
            start: Bytes::from(params.start.unwrap_or_default().into_bytes()),
            limit,
            fresh,
        })
        .await?;
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"keys\":[");
    for (i, (partition, record)) in page.keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        render(&topic, *partition, record, &mut out)?;
    }
    out.extend_from_slice(b"],\"next\":");
    // Serialising an Option<String> into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &page.next);
    out.push(b'}');
    Ok(json_response(out))
}

/// Publishes one record of `key` (a value, or a tombstone) and answers its offset.
async fn write(
    view: &KeyView<'_>,
    key: String,
    kind: ValueKind,
    value: Option<Bytes>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let written = view.write(key, kind, value, if_match(headers)?).await?;
    let mut response = (
        StatusCode::OK,
        Json(DeliveryReport {
            partition: written.partition,
            offset: written.offset,
            timestamp_ms: written.timestamp_ms,
            duplicate: false,
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("x-partition", HeaderValue::from(written.partition));
    headers.insert("x-offset", HeaderValue::from(written.offset));
    Ok(response)
}

#[instrument(skip_all, fields(topic = %topic))]
async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path((topic, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let view = state
        .service
        .key_view(&caller, &topic, Operation::Write)
        .await?;
    let kind = match media_type(&headers).as_deref() {
        Some("application/json") => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| {
                ApiError::InvalidJson {
                    message: format!("invalid JSON value: {e}"),
                }
            })?;
            ValueKind::Json
        }
        Some("text/plain") => {
            std::str::from_utf8(&body).map_err(|_| ApiError::InvalidRequest {
                message: "text/plain body is not UTF-8".into(),
            })?;
            ValueKind::String
        }
        None if std::str::from_utf8(&body).is_ok() => ValueKind::String,
        None | Some("application/octet-stream") => ValueKind::Binary,
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType {
                content_type: other.to_string(),
                expected: "application/json, text/plain or application/octet-stream",
            })
        }
    };
    write(&view, key, kind, Some(body), &headers).await
}

#[instrument(skip_all, fields(topic = %topic))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((topic, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view = state
        .service
        .key_view(&caller, &topic, Operation::Write)
        .await?;
    write(&view, key, ValueKind::String, None, &headers).await
}

/// The `If-Match` header of a key write: the offset the key's latest live record must be
/// at (`Some(None)` for -1: the key must have none). The offset may be quoted, as an
/// entity tag.
fn if_match(headers: &HeaderMap) -> Result<Option<Option<u64>>, ApiError> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or_default().trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    match text.parse::<i64>() {
        Ok(-1) => Ok(Some(None)),
        Ok(offset) if offset >= 0 => Ok(Some(Some(offset as u64))),
        _ => Err(ApiError::InvalidRequest {
            message: "If-Match must be the key's latest offset, or -1 for a key with no live \
                      record"
                .into(),
        }),
    }
}
