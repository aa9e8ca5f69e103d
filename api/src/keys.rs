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

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use psubd_actors::partition::key_index::{KeyRecord, KeyScan};
use psubd_actors::partition::ReadError;
use psubd_actors::record::{EncodedRecords, Record, RecordIter, ValueKind};
use psubd_actors::topic::{CleanupPolicy, PartitionPlacement, TopicMeta};
use psubd_actors::{Broker, PartitionError};
use psubd_raft::GroupId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::instrument;

use crate::edge::Delivery;
use crate::error::ApiError;
use crate::fetch::{number, write_record, MAX_TIMEOUT_MS};
use crate::forward::{ForwardRequest, ForwardResponse};
use crate::json::media_type;
use crate::publish::check_sizes;
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

/// A key read as sent to a replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRead {
    /// The partition's group.
    pub group: GroupId,
    /// The key (lookups), or the prefix (scans).
    pub key: Bytes,
    /// Scans: first key (inclusive).
    pub start: Bytes,
    /// Scans: most live keys.
    pub limit: u32,
    /// The replica must have applied this offset (the record at it is visible).
    pub min_offset: Option<u64>,
    /// How long to wait for that.
    pub timeout_ms: u64,
}

/// Waits until the replica applied `min_offset` (its high watermark passed it).
async fn applied(reader: &psubd_actors::partition::PartitionReader, read: &KeyRead) -> bool {
    let Some(min_offset) = read.min_offset else {
        return true;
    };
    let mut watch = reader.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(read.timeout_ms);
    loop {
        if watch.borrow_and_update().next_offset > min_offset {
            return true;
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

fn read_failure(group: GroupId, error: ReadError) -> ForwardResponse {
    match error {
        ReadError::Storage(detail) => {
            tracing::error!(group, cause = %detail, "key index unreadable");
            ForwardResponse::Broken(detail)
        }
        ReadError::NotReady | ReadError::OutOfRange { .. } => {
            ForwardResponse::Partition(PartitionError::Unavailable {
                reason: "replica catching up".into(),
            })
        }
    }
}

/// Serves a key lookup on this node's replica.
pub(crate) async fn serve_lookup(broker: &Broker, read: KeyRead) -> ForwardResponse {
    let Some(handle) = broker.partition(read.group) else {
        return ForwardResponse::Partition(PartitionError::NoReplica);
    };
    if !applied(&handle.reader, &read).await {
        return ForwardResponse::Partition(PartitionError::Unavailable {
            reason: "replica has not applied min_offset".into(),
        });
    }
    match handle.reader.latest(&read.key) {
        Ok(record) => ForwardResponse::Key(record),
        Err(error) => read_failure(read.group, error),
    }
}

/// Serves a key scan on this node's replica.
pub(crate) async fn serve_scan(broker: &Broker, read: KeyRead) -> ForwardResponse {
    let Some(handle) = broker.partition(read.group) else {
        return ForwardResponse::Partition(PartitionError::NoReplica);
    };
    if !applied(&handle.reader, &read).await {
        return ForwardResponse::Partition(PartitionError::Unavailable {
            reason: "replica has not applied min_offset".into(),
        });
    }
    match handle
        .reader
        .scan_keys(&read.key, &read.start, read.limit as usize)
    {
        Ok(page) => ForwardResponse::Keys(page),
        Err(error) => read_failure(read.group, error),
    }
}

/// Sends a key read to a replica that can answer it: this node's when it applied
/// enough, else the leader first, then every replica (each waits for `min_offset`).
async fn route(
    state: &AppState,
    placement: &PartitionPlacement,
    request: ForwardRequest,
    read: &KeyRead,
) -> Result<ForwardResponse, ApiError> {
    let broker = state.broker();
    let local_enough = broker.partition(placement.group).is_some_and(|h| {
        read.min_offset
            .is_none_or(|min| h.reader.bounds().next_offset > min)
    });
    let mut last = ApiError::Unavailable {
        reason: "no replica of the partition answered".into(),
    };
    if local_enough {
        match crate::forward::serve_local(broker, request.clone()).await {
            ForwardResponse::Partition(error) => last = error.into(),
            answer => return Ok(answer),
        }
    }
    let deadline = Duration::from_millis(read.timeout_ms);
    for target in state.edge.leader_candidates(placement) {
        match state.edge.deliver(target, request.clone(), deadline).await {
            Delivery::Answered(ForwardResponse::Partition(error)) => last = error.into(),
            Delivery::Answered(ForwardResponse::Broken(detail)) => {
                last = ApiError::Internal { detail }
            }
            Delivery::Answered(answer) => return Ok(answer),
            Delivery::NotDelivered => {}
            Delivery::Lost(reason) => last = ApiError::Unavailable { reason },
        }
    }
    Err(last)
}

/// The topic, which must be compacted.
async fn compacted_topic(state: &AppState, topic: &str) -> Result<TopicMeta, ApiError> {
    let meta = state.edge.topic(topic).await?;
    if meta.config.cleanup_policy != CleanupPolicy::Compact {
        return Err(ApiError::TopicNotCompacted {
            topic: topic.to_string(),
        });
    }
    Ok(meta)
}

/// The partition of `key`: the publish path's stable hash, so a key view reads where a
/// keyed publish wrote.
fn partition_of(meta: &TopicMeta, key: &[u8]) -> u32 {
    (psubd_actors::stable_hash::fnv1a(key) % u64::from(meta.config.partitions.max(1))) as u32
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
) -> Result<(Option<u64>, u64), ApiError> {
    let min_offset = min_offset
        .map(|raw| number::<u64>("min_offset", Some(raw), 0))
        .transpose()?;
    let timeout_ms = number("timeout_ms", timeout_ms, DEFAULT_KEY_TIMEOUT_MS)?.min(MAX_TIMEOUT_MS);
    Ok((min_offset, timeout_ms))
}

#[derive(Deserialize)]
struct LookupParams {
    min_offset: Option<String>,
    timeout_ms: Option<String>,
}

#[instrument(skip_all, fields(topic = %topic))]
async fn lookup(
    State(state): State<AppState>,
    Path((topic, key)): Path<(String, String)>,
    Query(params): Query<LookupParams>,
) -> Result<Response, ApiError> {
    let meta = compacted_topic(&state, &topic).await?;
    let (min_offset, timeout_ms) =
        read_your_writes(params.min_offset.as_deref(), params.timeout_ms.as_deref())?;
    let partition = partition_of(&meta, key.as_bytes());
    let placement = &meta.partitions[partition as usize];
    let read = KeyRead {
        group: placement.group,
        key: Bytes::from(key.clone().into_bytes()),
        start: Bytes::new(),
        limit: 1,
        min_offset,
        timeout_ms,
    };
    match route(
        &state,
        placement,
        ForwardRequest::KeyLookup(read.clone()),
        &read,
    )
    .await?
    {
        ForwardResponse::Key(Some(record)) => {
            let mut out = Vec::with_capacity(record.encoded.len() + 128);
            render(&topic, partition, &record, &mut out)?;
            Ok(json_response(out))
        }
        ForwardResponse::Key(None) => Err(ApiError::KeyNotFound { topic, key }),
        other => Err(ApiError::Internal {
            detail: format!("key lookup answered {other:?}"),
        }),
    }
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
    Path(topic): Path<String>,
    Query(params): Query<ScanParams>,
) -> Result<Response, ApiError> {
    let meta = compacted_topic(&state, &topic).await?;
    let limit =
        number("limit", params.limit.as_deref(), DEFAULT_SCAN_LIMIT)?.clamp(1, MAX_SCAN_LIMIT);
    let (min_offset, timeout_ms) =
        read_your_writes(params.min_offset.as_deref(), params.timeout_ms.as_deref())?;
    let prefix = Bytes::from(params.prefix.unwrap_or_default().into_bytes());
    let start = Bytes::from(params.start.unwrap_or_default().into_bytes());
    let pages = futures::future::join_all(meta.partitions.iter().enumerate().map(
        |(partition, placement)| {
            let read = KeyRead {
                group: placement.group,
                key: prefix.clone(),
                start: start.clone(),
                limit,
                min_offset,
                timeout_ms,
            };
            let state = &state;
            async move {
                let answer = route(
                    state,
                    placement,
                    ForwardRequest::KeyScan(read.clone()),
                    &read,
                )
                .await;
                (partition as u32, answer)
            }
        },
    ))
    .await;
    let mut merged: Vec<(u32, KeyRecord)> = Vec::new();
    // Keys at or below this bound are complete over every partition.
    let mut bound: Option<Bytes> = None;
    for (partition, answer) in pages {
        let page: KeyScan = match answer? {
            ForwardResponse::Keys(page) => page,
            other => {
                return Err(ApiError::Internal {
                    detail: format!("key scan answered {other:?}"),
                })
            }
        };
        if page.more {
            if let Some(last) = page.last_examined {
                bound = Some(match bound {
                    Some(b) if b <= last => b,
                    _ => last,
                });
            }
        }
        merged.extend(page.records.into_iter().map(|r| (partition, r)));
    }
    merged.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    if let Some(bound) = &bound {
        merged.retain(|(_, r)| r.key <= *bound);
    }
    let full = merged.len() > limit as usize;
    merged.truncate(limit as usize);
    let next = if full || bound.is_some() {
        merged
            .last()
            .map(|(_, r)| r.key.clone())
            .or(bound)
            .map(|last| {
                let mut next = String::from_utf8_lossy(&last).into_owned();
                next.push('\0');
                next
            })
    } else {
        None
    };
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"keys\":[");
    for (i, (partition, record)) in merged.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        render(&topic, *partition, record, &mut out)?;
    }
    out.extend_from_slice(b"],\"next\":");
    // Serialising an Option<String> into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &next);
    out.push(b'}');
    Ok(json_response(out))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Publishes one record of `key` (a value, or a tombstone) and answers its offset.
async fn write(
    state: &AppState,
    meta: &TopicMeta,
    key: String,
    kind: ValueKind,
    value: Option<Bytes>,
) -> Result<Response, ApiError> {
    let record = Record {
        timestamp_ms: now_ms(),
        kind,
        key: Some(Bytes::from(key.into_bytes())),
        value,
        headers: Vec::new(),
    };
    check_sizes(&state.limits, &record)?;
    let partition = partition_of(meta, record.key.as_deref().unwrap_or_default());
    let placement = &meta.partitions[partition as usize];
    let encoded =
        EncodedRecords::encode(std::slice::from_ref(&record)).map_err(|e| ApiError::Internal {
            detail: format!("record encoding: {e}"),
        })?;
    let appended = state.edge.append(placement, encoded).await?;
    state
        .metrics
        .records_published
        .with_label_values(&[&meta.name])
        .inc();
    let mut response = (
        StatusCode::OK,
        Json(json!({
            "partition": partition,
            "offset": appended.base_offset,
            "timestamp_ms": record.timestamp_ms,
        })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("x-partition", HeaderValue::from(partition));
    headers.insert("x-offset", HeaderValue::from(appended.base_offset));
    Ok(response)
}

#[instrument(skip_all, fields(topic = %topic))]
async fn put(
    State(state): State<AppState>,
    Path((topic, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let meta = compacted_topic(&state, &topic).await?;
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
    write(&state, &meta, key, kind, Some(body)).await
}

#[instrument(skip_all, fields(topic = %topic))]
async fn delete(
    State(state): State<AppState>,
    Path((topic, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let meta = compacted_topic(&state, &topic).await?;
    write(&state, &meta, key, ValueKind::String, None).await
}
