//! Streams (docs/api.md § Streams): what partition streams, member streams and WebSocket
//! subscriptions share, and the partition stream route
//! `GET /v1/topics/{t}/partitions/{p}/stream`.
//!
//! A stream is a sequence of [`Item`]s produced by a loop of long-poll fetches through the
//! same [`Edge::fetch`] path as plain fetches, so it reads from whichever replica may
//! serve. It holds no buffer of its own beyond the one fetch being sent: the next fetch
//! starts only when the body stream is polled again, which happens as the client's socket
//! drains — a slow client slows its stream (TCP backpressure) and never grows server
//! memory. [`respond`] frames items as Server-Sent Events (`Accept: text/event-stream`)
//! or chunked NDJSON (`Accept: application/x-ndjson`). Streams end cleanly on shutdown,
//! and each node bounds how many are open ([`acquire`]: 429 past the limit).
//!
//! [`Edge::fetch`]: crate::edge::Edge::fetch

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream, StreamExt};
use psubd_actors::assignment::TopicPartition;
use psubd_actors::controller::access::Operation;
use psubd_actors::topic::TopicMeta;
use psubd_wire::AssignmentEvent;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tracing::instrument;

use crate::error::ApiError;
use crate::fetch::{parse_offset, parse_partition};
use crate::json::Query;
use crate::protocol::OffsetSpec;
use crate::render::write_record;
use crate::service::reads::ReadBounds;
use crate::service::Caller;
use crate::state::AppState;
use crate::wire;

/// How long one fetch of a stream waits at the end of the log before polling again.
pub(crate) const STREAM_POLL_MS: u64 = 10_000;
/// Records per fetch of a stream: bounds what one step holds in memory.
pub(crate) const STREAM_MAX_RECORDS: u32 = 500;
/// Bytes per fetch of a stream.
pub(crate) const STREAM_MAX_BYTES: u32 = 1 << 20;
/// Interval of SSE keep-alive comments (proxies close idle connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Pause before retrying a fetch that found no leader (the partition is failing over).
pub(crate) const UNAVAILABLE_BACKOFF: Duration = Duration::from_millis(500);

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

/// One record as streams send it.
pub(crate) struct StreamRecord {
    /// Its partition (the SSE id is `<partition>-<offset>`).
    pub(crate) partition: u32,
    /// Its offset.
    pub(crate) offset: u64,
    /// The record object, as plain fetches render it.
    pub(crate) json: Vec<u8>,
}

/// What a stream emits.
pub(crate) enum Item {
    /// Records, in order.
    Records(Vec<StreamRecord>),
    /// A group member's generation or partitions changed (member streams only).
    Assignment {
        /// The group's generation.
        generation: u64,
        /// The member's partitions.
        assignments: Vec<TopicPartition>,
    },
    /// A terminal error (e.g. the offset fell below the log start, the member is fenced).
    Error(ApiError),
}

impl Item {
    /// The JSON of an assignment event: `{"event":"assignment","generation":..,
    /// "assignments":[..]}` — the `event` field tells it apart from record lines, which
    /// never carry one.
    pub(crate) fn assignment_json(generation: u64, assignments: &[TopicPartition]) -> String {
        json_text(&AssignmentEvent {
            event: "assignment".into(),
            generation,
            assignments: wire::topic_partitions(assignments),
        })
    }
}

/// A wire value's JSON text. The wire types are plain data (string keys, no maps with
/// other keys), so serialising them cannot fail; `null` would be the answer if it did.
pub(crate) fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// How a stream's items are written on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Server-Sent Events.
    Sse,
    /// One JSON object per line.
    Ndjson,
}

/// Picks the framing from `Accept`: SSE only when asked for; NDJSON when asked for or
/// when anything goes (curl's default `*/*`, or no Accept at all).
///
/// # Errors
/// 406 `not_acceptable` otherwise.
pub(crate) fn negotiate(headers: &HeaderMap) -> Result<Framing, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/event-stream") {
        Ok(Framing::Sse)
    } else if accept.is_empty() || accept.contains("application/x-ndjson") || accept.contains("*/*")
    {
        Ok(Framing::Ndjson)
    } else {
        Err(ApiError::NotAcceptable {
            accept: accept.to_string(),
        })
    }
}

/// Takes one of the node's stream slots; the slot is held as long as the permit lives.
///
/// # Errors
/// 429 `too_many_streams` when every slot is taken.
pub(crate) fn acquire(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams {
            limit: state.service.limits.max_streams,
        })
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

/// Where a partition stream reads next.
struct Cursor {
    state: AppState,
    caller: Caller,
    topic: TopicMeta,
    partition: u32,
    offset: OffsetSpec,
    done: bool,
}

/// The records of one partition from `offset` on, until an error or shutdown. Used by
/// partition streams and WebSocket partition subscriptions.
pub(crate) fn partition_records(
    state: AppState,
    caller: Caller,
    topic: TopicMeta,
    partition: u32,
    offset: OffsetSpec,
) -> impl Stream<Item = Item> + Send + 'static {
    let shutdown = state.shutdown.clone();
    let cursor = Cursor {
        state,
        caller,
        topic,
        partition,
        offset,
        done: false,
    };
    stream::unfold(cursor, |mut cursor| async move {
        if cursor.done {
            return None;
        }
        loop {
            let bounds = ReadBounds {
                max_records: STREAM_MAX_RECORDS,
                max_bytes: STREAM_MAX_BYTES,
                timeout_ms: STREAM_POLL_MS,
            };
            let fetched = cursor
                .state
                .service
                .fetch(
                    &cursor.caller,
                    &cursor.topic,
                    cursor.partition,
                    cursor.offset,
                    bounds,
                )
                .await;
            match fetched {
                Ok(fetched) if fetched.count == 0 => {
                    cursor.offset = OffsetSpec::At(fetched.next_offset);
                }
                Ok(fetched) => {
                    let mut rendered = Vec::with_capacity(fetched.count as usize);
                    for record in fetched.iter() {
                        let Ok((offset, record)) = record else {
                            cursor.done = true;
                            let error = ApiError::Internal {
                                detail: "stored record did not decode".into(),
                            };
                            return Some((Item::Error(error), cursor));
                        };
                        let mut json = Vec::with_capacity(128);
                        let topic = &cursor.topic.name;
                        write_record(&mut json, topic, cursor.partition, offset, &record);
                        rendered.push(StreamRecord {
                            partition: cursor.partition,
                            offset,
                            json,
                        });
                    }
                    // Past the records and any compacted gap the read crossed.
                    cursor.offset = OffsetSpec::At(fetched.next_offset);
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

/// The HTTP response of a stream: `items` framed as SSE or NDJSON. `permit` (the node's
/// stream slot) is held until the body is dropped.
pub(crate) fn respond(
    items: impl Stream<Item = Item> + Send + 'static,
    framing: Framing,
    permit: OwnedSemaphorePermit,
) -> Response {
    match framing {
        Framing::Sse => {
            let events = items.flat_map(move |item| {
                let _slot = &permit;
                stream::iter(sse_events(item).into_iter().map(Ok::<_, Infallible>))
            });
            Sse::new(events)
                .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
                .into_response()
        }
        Framing::Ndjson => {
            let lines = items.map(move |item| {
                let _slot = &permit;
                Ok::<_, Infallible>(ndjson_lines(item))
            });
            let mut response = Response::new(Body::from_stream(lines));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
    }
}

/// SSE: one `record` event per record with `id: <partition>-<offset>`, an `assignment`
/// event, or an `error` event with the error body.
fn sse_events(item: Item) -> Vec<Event> {
    match item {
        Item::Records(records) => records
            .into_iter()
            .map(|r| {
                Event::default()
                    .event("record")
                    .id(format!("{}-{}", r.partition, r.offset))
                    .data(String::from_utf8_lossy(&r.json))
            })
            .collect(),
        Item::Assignment {
            generation,
            assignments,
        } => vec![Event::default()
            .event("assignment")
            .data(Item::assignment_json(generation, &assignments))],
        Item::Error(error) => vec![Event::default()
            .event("error")
            .data(json_text(&error.body()))],
    }
}

/// NDJSON: one line per record, assignment or error.
fn ndjson_lines(item: Item) -> Bytes {
    let mut out = Vec::new();
    match item {
        Item::Records(records) => {
            for record in records {
                out.extend_from_slice(&record.json);
                out.push(b'\n');
            }
        }
        Item::Assignment {
            generation,
            assignments,
        } => {
            out.extend_from_slice(Item::assignment_json(generation, &assignments).as_bytes());
            out.push(b'\n');
        }
        Item::Error(error) => {
            out.extend_from_slice(json_text(&error.body()).as_bytes());
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

#[instrument(skip_all, fields(topic = %topic, partition = %partition))]
async fn stream_partition(
    State(state): State<AppState>,
    caller: Caller,
    Path((topic, partition)): Path<(String, String)>,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = state
        .service
        .topic(&caller, &topic, Operation::Read)
        .await?;
    let partition = parse_partition(&topic, &partition, meta.config.partitions)?;
    let offset = match resume_offset(&headers, partition)? {
        Some(offset) => OffsetSpec::At(offset),
        None => parse_offset(params.offset.as_deref())?,
    };
    let framing = negotiate(&headers)?;
    let permit = acquire(&state)?;
    let items = partition_records(state, caller, meta, partition, offset);
    Ok(respond(items, framing, permit))
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

    #[test]
    fn accept_picks_the_framing() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers).unwrap(), Framing::Ndjson);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert_eq!(negotiate(&headers).unwrap(), Framing::Sse);
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(negotiate(&headers).unwrap(), Framing::Ndjson);
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert!(negotiate(&headers).is_err());
    }

    #[test]
    fn assignment_lines_are_told_apart_from_records() {
        let tp = TopicPartition {
            topic: "t".into(),
            partition: 1,
        };
        let line = ndjson_lines(Item::Assignment {
            generation: 3,
            assignments: vec![tp],
        });
        let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["event"], "assignment");
        assert_eq!(parsed["generation"], 3);
        assert_eq!(parsed["assignments"][0]["partition"], 1);
    }
}
