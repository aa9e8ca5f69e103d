//! Partition streams (API.md § Streams): `GET /v1/topics/{t}/partitions/{p}/stream`,
//! as Server-Sent Events (`Accept: text/event-stream`) or chunked NDJSON
//! (`Accept: application/x-ndjson`).
//!
//! A stream is a loop of long-poll fetches through the same [`Edge::fetch`] path as
//! plain fetches, so it reads from whichever replica may serve. It holds no buffer of
//! its own: the next fetch starts only when the body stream is polled again, which
//! happens as the client's socket drains — a slow client slows its stream (TCP
//! backpressure) and never grows server memory. Streams end cleanly on shutdown, and
//! each node bounds how many are open (429 past the limit).
//!
//! [`Edge::fetch`]: crate::edge::Edge::fetch

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream, StreamExt};
use psubd_actors::record::RecordIter;
use psubd_actors::topic::PartitionPlacement;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tracing::instrument;

use crate::error::ApiError;
use crate::fetch::{parse_offset, parse_partition, write_record};
use crate::forward::OffsetSpec;
use crate::state::AppState;

/// How long one fetch of a stream waits at the end of the log before polling again.
const STREAM_POLL_MS: u64 = 10_000;
/// Records per fetch of a stream: bounds what one step holds in memory.
const STREAM_MAX_RECORDS: u32 = 500;
/// Bytes per fetch of a stream.
const STREAM_MAX_BYTES: u32 = 1 << 20;
/// Interval of SSE keep-alive comments (proxies close idle connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Pause before retrying a fetch that found no leader (the partition is failing over).
const UNAVAILABLE_BACKOFF: Duration = Duration::from_millis(500);

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/topics/{topic}/partitions/{partition}/stream",
            get(stream_partition),
        )
        .with_state(state)
}

#[derive(Deserialize)]
struct StreamParams {
    offset: Option<String>,
}

/// What a stream emits.
enum Item {
    /// Records rendered as JSON objects, with their offsets.
    Records(Vec<(u64, Vec<u8>)>),
    /// A terminal error (e.g. the offset fell below the log start).
    Error(ApiError),
}

struct Cursor {
    state: AppState,
    topic: String,
    partition: u32,
    placement: PartitionPlacement,
    offset: OffsetSpec,
    done: bool,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Parses `Last-Event-ID: <partition>-<offset>` into the offset to resume at.
fn resume_offset(headers: &HeaderMap, partition: u32) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || ApiError::InvalidRequest {
        message: "Last-Event-ID must be '<partition>-<offset>'".into(),
    };
    let text = raw.to_str().map_err(|_| bad())?;
    let (p, o) = text.split_once('-').ok_or_else(bad)?;
    if p.parse::<u32>().map_err(|_| bad())? != partition {
        return Err(ApiError::InvalidRequest {
            message: "Last-Event-ID names another partition".into(),
        });
    }
    Ok(Some(o.parse::<u64>().map_err(|_| bad())? + 1))
}

fn records_stream(cursor: Cursor) -> impl Stream<Item = Item> + Send {
    let shutdown = cursor.state.shutdown.clone();
    stream::unfold(cursor, |mut cursor| async move {
        if cursor.done {
            return None;
        }
        loop {
            let fetched = cursor
                .state
                .edge
                .fetch(
                    &cursor.placement,
                    cursor.offset,
                    STREAM_MAX_RECORDS,
                    STREAM_MAX_BYTES,
                    STREAM_POLL_MS,
                )
                .await;
            match fetched {
                Ok(fetched) if fetched.count == 0 => {
                    cursor.offset = OffsetSpec::At(fetched.first_offset);
                }
                Ok(fetched) => {
                    let mut rendered = Vec::with_capacity(fetched.count as usize);
                    let mut offset = fetched.first_offset;
                    for record in RecordIter::run(&fetched.bytes) {
                        let Ok(record) = record else {
                            cursor.done = true;
                            let error = ApiError::Internal {
                                detail: "stored record did not decode".into(),
                            };
                            return Some((Item::Error(error), cursor));
                        };
                        let mut out = Vec::with_capacity(128);
                        write_record(&mut out, &cursor.topic, cursor.partition, offset, &record);
                        rendered.push((offset, out));
                        offset += 1;
                    }
                    cursor.offset = OffsetSpec::At(offset);
                    return Some((Item::Records(rendered), cursor));
                }
                Err(error) if error.retriable() => tokio::time::sleep(UNAVAILABLE_BACKOFF).await,
                Err(error) => {
                    cursor.done = true;
                    return Some((Item::Error(error), cursor));
                }
            }
        }
    })
    .take_until(async move { shutdown.cancelled().await })
}

#[instrument(skip_all, fields(topic = %topic, partition = %partition))]
async fn stream_partition(
    State(state): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = state.edge.topic(&topic).await?;
    let partition = parse_partition(&topic, &partition, meta.config.partitions)?;
    let offset = match resume_offset(&headers, partition)? {
        Some(offset) => OffsetSpec::At(offset),
        None => parse_offset(params.offset.as_deref())?,
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // SSE only when asked for; NDJSON when asked for or when anything goes (curl's
    // default `*/*`, or no Accept at all).
    let sse = if accept.contains("text/event-stream") {
        true
    } else if accept.is_empty() || accept.contains("application/x-ndjson") || accept.contains("*/*")
    {
        false
    } else {
        return Err(ApiError::NotAcceptable {
            accept: accept.to_string(),
        });
    };
    let permit =
        state
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams {
                limit: state.limits.max_streams,
            })?;
    let cursor = Cursor {
        placement: meta.partitions[partition as usize].clone(),
        state,
        topic,
        partition,
        offset,
        done: false,
        _permit: Arc::new(permit),
    };
    let items = records_stream(cursor);
    if sse {
        let events = items.flat_map(move |item| {
            let events: Vec<Result<Event, Infallible>> = match item {
                Item::Records(records) => records
                    .into_iter()
                    .map(|(offset, json)| {
                        Ok(Event::default()
                            .event("record")
                            .id(format!("{partition}-{offset}"))
                            .data(String::from_utf8_lossy(&json)))
                    })
                    .collect(),
                Item::Error(error) => vec![Ok(Event::default()
                    .event("error")
                    .data(error.body().to_string()))],
            };
            stream::iter(events)
        });
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response())
    } else {
        let lines = items.map(|item| {
            let mut out = Vec::new();
            match item {
                Item::Records(records) => {
                    for (_, json) in records {
                        out.extend_from_slice(&json);
                        out.push(b'\n');
                    }
                }
                Item::Error(error) => {
                    out.extend_from_slice(error.body().to_string().as_bytes());
                    out.push(b'\n');
                }
            }
            Ok::<_, Infallible>(Bytes::from(out))
        });
        let mut response = Response::new(Body::from_stream(lines));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_resumes_after_the_named_offset() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_offset(&headers, 2).unwrap(), None);
        headers.insert("last-event-id", HeaderValue::from_static("2-41"));
        assert_eq!(resume_offset(&headers, 2).unwrap(), Some(42));
        assert!(resume_offset(&headers, 3).is_err());
        headers.insert("last-event-id", HeaderValue::from_static("garbage"));
        assert!(resume_offset(&headers, 2).is_err());
    }
}
