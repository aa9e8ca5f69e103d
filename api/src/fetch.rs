//! Fetch by offset (docs/api.md § Fetch by offset), with long-poll, and the query
//! parameters every read route shares (offset, partition, read bounds). Records are
//! rendered by [`crate::render`].

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use psubd_actors::controller::access::Operation;
use serde::Deserialize;
use tracing::instrument;

use crate::error::ApiError;
use crate::json::Query;
use crate::limits::{
    DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS, MAX_MAX_BYTES, MAX_MAX_RECORDS, MAX_TIMEOUT_MS,
};
use crate::protocol::OffsetSpec;
use crate::render::render;
use crate::service::reads::ReadBounds;
use crate::service::Caller;
use crate::state::AppState;

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

/// Parses a non-negative integer from a path segment or query parameter.
///
/// # Errors
/// 400 naming it.
pub(crate) fn integer<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| ApiError::InvalidRequest {
        message: format!("{name} must be a non-negative integer, not '{text}'"),
    })
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
    raw.map_or(Ok(default), |text| integer(name, text))
}

/// Parses the `max_records`, `max_bytes` and `timeout_ms` parameters of every fetch
/// route, with their defaults, clamped to their limits.
///
/// # Errors
/// 400 when one is not a non-negative integer.
pub fn read_bounds(
    max_records: Option<&str>,
    max_bytes: Option<&str>,
    timeout_ms: Option<&str>,
) -> Result<ReadBounds, ApiError> {
    Ok(ReadBounds {
        max_records: number("max_records", max_records, DEFAULT_MAX_RECORDS)?
            .clamp(1, MAX_MAX_RECORDS),
        max_bytes: number("max_bytes", max_bytes, DEFAULT_MAX_BYTES)?.clamp(1, MAX_MAX_BYTES),
        timeout_ms: number("timeout_ms", timeout_ms, 0u64)?.min(MAX_TIMEOUT_MS),
    })
}

/// Parses `offset=N|earliest|latest|@TIMESTAMP_MS`.
///
/// # Errors
/// 400 for anything else.
pub fn parse_offset(raw: Option<&str>) -> Result<OffsetSpec, ApiError> {
    // The grammar is the wire type's, which clients format with.
    let spec: psubd_wire::OffsetSpec = match raw {
        None => psubd_wire::OffsetSpec::Earliest,
        Some(text) => text
            .parse()
            .map_err(|message| ApiError::InvalidRequest { message })?,
    };
    Ok(match spec {
        psubd_wire::OffsetSpec::Earliest => OffsetSpec::Earliest,
        psubd_wire::OffsetSpec::Latest => OffsetSpec::Latest,
        psubd_wire::OffsetSpec::At(n) => OffsetSpec::At(n),
        psubd_wire::OffsetSpec::AtTime(ms) => OffsetSpec::AtTime(ms),
    })
}

/// Parses a partition number and checks it against the topic.
///
/// # Errors
/// 400 when not a number, 404 when out of range.
pub fn parse_partition(topic: &str, raw: &str, partitions: u32) -> Result<u32, ApiError> {
    let partition: u64 = integer("partition", raw)?;
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
    caller: Caller,
    Path((topic, partition)): Path<(String, String)>,
    Query(params): Query<FetchParams>,
) -> Result<Response, ApiError> {
    let meta = state
        .service
        .topic(&caller, &topic, Operation::Read)
        .await?;
    let partition = parse_partition(&topic, &partition, meta.config.partitions)?;
    let offset = parse_offset(params.offset.as_deref())?;
    let bounds = read_bounds(
        params.max_records.as_deref(),
        params.max_bytes.as_deref(),
        params.timeout_ms.as_deref(),
    )?;
    let fetched = match params.replica.as_deref() {
        None => {
            state
                .service
                .fetch(&caller, &meta, partition, offset, bounds)
                .await?
        }
        Some("local") => read_local_replica(&state, &meta, partition, offset, bounds)?,
        Some(other) => {
            return Err(ApiError::InvalidRequest {
                message: format!("replica must be 'local' or absent, not '{other}'"),
            })
        }
    };
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
    meta: &psubd_actors::topic::TopicMeta,
    partition: u32,
    offset: OffsetSpec,
    bounds: ReadBounds,
) -> Result<psubd_actors::partition::FetchedRecords, ApiError> {
    use psubd_actors::partition::ReadError;
    let broker = state.broker();
    let placement = &meta.partitions[partition as usize];
    let Some(handle) = broker.partition(placement.group) else {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "node {} holds no replica of partition {partition} of topic '{}' (replica=local reads only this node's replica)",
                broker.node_id(),
                meta.name
            ),
        });
    };
    let log = handle.reader.bounds();
    crate::replica::resolve_offset(&handle.reader, log, offset)
        .and_then(|offset| {
            handle
                .reader
                .read(offset, bounds.max_records, bounds.max_bytes as usize)
        })
        .map_err(|e| match e {
            ReadError::OutOfRange {
                offset,
                log_start,
                high_watermark,
            } => ApiError::out_of_range(offset, log_start, high_watermark),
            other => ApiError::Unavailable {
                reason: format!("local replica: {other}"),
            },
        })
}
