//! `/v1/groups`: consumer groups (docs/api.md § Consumer groups).
//!
//! Every route validates its input here, then asks the group's coordinator (through
//! [`Edge::group`](crate::edge::Edge)), wherever it runs. A member's fetch is three steps:
//! a poll at the coordinator (the heartbeat; it confirms the `position` token the client
//! presents and answers where to read), the reads of the assigned partitions through the
//! ordinary fetch path (long-polling), and a delivery report of what this answer carries.
//! The answer's `position` token is what the next fetch presents: positions advance only
//! as far as the client shows it received (see `coordinator`'s module docs), so
//! an answer lost on the way is delivered again. Records of partitions the member lost in
//! the meantime are dropped from the answer, so a member never receives a partition
//! another member now owns from a position that would skip anything.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use psubd_actors::assignment::TopicPartition;
use psubd_actors::coordinator::{
    AutoOffsetReset, Delivery, GroupAnswer, GroupDescription, GroupRequest, Lease, PollFrom,
    PositionToken, StartPosition,
};
use psubd_actors::offsets::OffsetEntry;
use psubd_actors::partition::FetchedRecords;
use psubd_actors::record::RecordIter;
use psubd_actors::topic::{PartitionPlacement, MAX_PARTITIONS};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, instrument};

use crate::error::ApiError;
use crate::fetch::{read_bounds, write_record};
use crate::json;
use crate::protocol::{OffsetSpec, ReplicaStatus};
use crate::service::groups::{
    check_offset_count, lease_of, partition_of, CommitOffset, CommitRequest, GroupName,
    JoinRequest, MAX_TOPICS_PER_MEMBER,
};
use crate::service::reads::ReadBounds;
use crate::service::{names, Caller};
use crate::state::AppState;

/// A member without partitions waits at most this long per fetch, so it hears of a
/// rebalance that gives it partitions soon after it happens.
const IDLE_MEMBER_WAIT: Duration = Duration::from_secs(1);

/// Most partitions a `position` token may name: as many as one member may be assigned,
/// so every token the server makes parses.
const MAX_POSITION_PARTITIONS: usize = MAX_TOPICS_PER_MEMBER * MAX_PARTITIONS as usize;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/groups", get(list))
        .route("/v1/groups/{group}", get(describe).delete(delete_group))
        .route("/v1/groups/{group}/members", post(join))
        .route("/v1/groups/{group}/members/{member}", delete(leave))
        .route(
            "/v1/groups/{group}/members/{member}/records",
            get(member_fetch),
        )
        .route(
            "/v1/groups/{group}/offsets",
            get(offsets).post(commit).put(reset),
        )
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// Join and leave
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    topics: Vec<String>,
    session_timeout_ms: Option<u64>,
    auto_offset_reset: Option<String>,
    assignment_strategy: Option<String>,
}

#[instrument(skip_all, fields(group = %group))]
async fn join(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let group = GroupName::parse(group)?;
    let body: JoinBody = json::parse(&headers, &body)?;
    let request = JoinRequest::new(
        body.topics,
        body.session_timeout_ms,
        body.auto_offset_reset.as_deref(),
        body.assignment_strategy.as_deref(),
    )?;
    let lease = state.service.join(&Caller::http(), &group, request).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "member_id": lease.member_id,
            "generation": lease.generation,
            "assignments": lease.assignments,
        })),
    )
        .into_response())
}

#[instrument(skip_all, fields(group = %group))]
async fn leave(
    State(state): State<AppState>,
    Path((group, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let group = GroupName::parse(group)?;
    state.service.leave(&Caller::http(), &group, member).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Member fetch
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct MemberFetchParams {
    max_records: Option<String>,
    max_bytes: Option<String>,
    timeout_ms: Option<String>,
    position: Option<String>,
}

/// Renders a position token: `<generation>` then `.<next offset>` per assigned partition
/// in assignment order, `_` for a partition the fetch did not read. Opaque to clients;
/// URL-safe as it is.
pub(crate) fn encode_position(token: &PositionToken) -> String {
    let mut out = token.generation.to_string();
    for offset in &token.offsets {
        out.push('.');
        match offset {
            Some(offset) => out.push_str(&offset.to_string()),
            None => out.push('_'),
        }
    }
    out
}

/// Parses a token made by [`encode_position`].
///
/// # Errors
/// 400 `invalid_request` for anything else.
pub(crate) fn parse_position(raw: &str) -> Result<PositionToken, ApiError> {
    let invalid = || ApiError::InvalidRequest {
        message: "position must be the token of an earlier fetch answer of this member".into(),
    };
    let mut parts = raw.split('.');
    let generation = parts
        .next()
        .and_then(|g| g.parse::<u64>().ok())
        .ok_or_else(invalid)?;
    let mut offsets = Vec::new();
    for part in parts {
        if offsets.len() >= MAX_POSITION_PARTITIONS {
            return Err(invalid());
        }
        offsets.push(match part {
            "_" => None,
            n => Some(n.parse::<u64>().map_err(|_| invalid())?),
        });
    }
    Ok(PositionToken {
        generation,
        offsets,
    })
}

fn spec(start: StartPosition) -> OffsetSpec {
    match start {
        StartPosition::Earliest => OffsetSpec::Earliest,
        StartPosition::Latest => OffsetSpec::Latest,
        StartPosition::At(n) => OffsetSpec::At(n),
    }
}

/// Fetches one partition; a position that has left the log (retention) restarts at the
/// member's `auto_offset_reset`, as Kafka does.
async fn fetch_one(
    state: &AppState,
    placement: &PartitionPlacement,
    start: OffsetSpec,
    reset: AutoOffsetReset,
    max_records: u32,
    max_bytes: u32,
    timeout_ms: u64,
) -> Result<FetchedRecords, ApiError> {
    match state
        .service
        .edge
        .fetch(placement, start, max_records, max_bytes, timeout_ms)
        .await
    {
        Err(error) => match restart_after(&error, reset) {
            Some(start) => {
                state
                    .service
                    .edge
                    .fetch(placement, start, max_records, max_bytes, timeout_ms)
                    .await
            }
            None => Err(error),
        },
        Ok(fetched) => Ok(fetched),
    }
}

/// Where a member's read restarts after an error: `auto_offset_reset` applies only when
/// the position fell below the log start (retention removed those records). Above the
/// end the position is kept — jumping would skip (latest) or re-deliver everything
/// (earliest) on the strength of a lagging replica's view (issue found by the chaos
/// harness, seed 7).
fn restart_after(error: &ApiError, reset: AutoOffsetReset) -> Option<OffsetSpec> {
    match error {
        ApiError::OffsetOutOfRange {
            offset,
            log_start_offset,
            ..
        } if offset < log_start_offset => Some(match reset {
            AutoOffsetReset::Earliest => OffsetSpec::Earliest,
            AutoOffsetReset::Latest => OffsetSpec::Latest,
        }),
        _ => None,
    }
}

/// Reads the member's partitions: first what is there now, then, if nothing is, a
/// long-poll on every partition that answers as soon as one has records. Partitions that
/// fail are left out of this answer (their position does not move).
async fn fetch_assigned(
    state: &AppState,
    lease: &Lease,
    max_records: u32,
    max_bytes: u32,
    timeout_ms: u64,
) -> Result<Vec<(TopicPartition, FetchedRecords)>, ApiError> {
    let mut targets: Vec<(TopicPartition, PartitionPlacement, OffsetSpec)> = Vec::new();
    for (tp, start) in &lease.positions {
        // A topic deleted since the assignment is skipped; the coordinator drops it.
        let Ok(meta) = state.service.edge.topic(&tp.topic).await else {
            continue;
        };
        if let Some(placement) = meta.partitions.get(tp.partition as usize) {
            targets.push((tp.clone(), placement.clone(), spec(*start)));
        }
    }
    if targets.is_empty() {
        tokio::time::sleep(Duration::from_millis(timeout_ms).min(IDLE_MEMBER_WAIT)).await;
        return Ok(Vec::new());
    }
    let reset = lease.auto_offset_reset;
    let now = futures::future::join_all(targets.iter().map(|(_, placement, start)| {
        fetch_one(state, placement, *start, reset, max_records, max_bytes, 0)
    }))
    .await;
    let mut results: Vec<(TopicPartition, PartitionPlacement, FetchedRecords)> = Vec::new();
    let mut first_error = None;
    for ((tp, placement, _), outcome) in targets.into_iter().zip(now) {
        match outcome {
            Ok(fetched) => results.push((tp, placement, fetched)),
            Err(error) => {
                debug!(topic = %tp.topic, partition = tp.partition, %error, "member fetch skipped a partition");
                first_error.get_or_insert(error);
            }
        }
    }
    if results.is_empty() {
        if let Some(error) = first_error {
            return Err(error);
        }
    }
    let any = results.iter().any(|(_, _, f)| f.count > 0);
    if !any && timeout_ms > 0 && !results.is_empty() {
        let mut polls: FuturesUnordered<_> = results
            .iter()
            .enumerate()
            .map(|(i, (_, placement, fetched))| {
                let placement = placement.clone();
                let from = OffsetSpec::At(fetched.next_offset);
                async move {
                    let outcome = fetch_one(
                        state,
                        &placement,
                        from,
                        reset,
                        max_records,
                        max_bytes,
                        timeout_ms,
                    )
                    .await;
                    (i, outcome)
                }
            })
            .collect();
        let mut woke = None;
        while let Some((i, outcome)) = polls.next().await {
            if let Ok(fetched) = outcome {
                if fetched.count > 0 {
                    woke = Some((i, fetched));
                    break;
                }
            }
        }
        drop(polls);
        if let Some((i, fetched)) = woke {
            results[i].2 = fetched;
        }
    }
    Ok(results
        .into_iter()
        .map(|(tp, _, fetched)| (tp, fetched))
        .collect())
}

/// One partition's share of a member fetch answer.
pub(crate) struct Rendered {
    /// The partition.
    pub(crate) partition: TopicPartition,
    /// Its records as JSON objects, comma-separated.
    pub(crate) json: Vec<u8>,
    /// Each record's offset and where its object lies in `json` (streams send records one
    /// by one, with their offsets: a compacted topic's are not consecutive).
    pub(crate) spans: Vec<RecordSpan>,
    /// The next offset to read: what this answer delivers up to. Past every record
    /// rendered and any compacted gap after them that the read crossed, never below an
    /// offset not rendered.
    pub(crate) next_offset: u64,
}

/// One rendered record of a [`Rendered`] part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordSpan {
    /// The record's offset.
    pub(crate) offset: u64,
    /// Start of its JSON object in the part's `json`.
    pub(crate) start: usize,
    /// End (exclusive) of its JSON object.
    pub(crate) end: usize,
}

/// Renders up to the request's budget, shared fairly: one record per partition in turn,
/// starting at partition `first` (rotated per fetch), so a backlog in one partition never
/// starves the others. Each partition's next offset is what this answer delivers: the
/// read's `next_offset` when all of it fits, else the offset of the first record left out.
fn render_within_budget(
    fetched: &[(TopicPartition, FetchedRecords)],
    max_records: u32,
    max_bytes: u32,
    first: usize,
) -> Result<Vec<Rendered>, ApiError> {
    let mut records_left = max_records;
    let mut bytes_left = max_bytes as usize;
    let mut wrote_any = false;
    let mut iters: Vec<_> = fetched.iter().map(|(_, run)| run.iter()).collect();
    let mut out: Vec<Rendered> = fetched
        .iter()
        .map(|(tp, run)| Rendered {
            partition: tp.clone(),
            json: Vec::new(),
            spans: Vec::new(),
            next_offset: run.next_offset,
        })
        .collect();
    let mut open = vec![true; fetched.len()];
    let count = fetched.len();
    while open.iter().any(|o| *o) {
        for k in 0..count {
            let i = (first + k) % count;
            if !open[i] {
                continue;
            }
            let iter = &mut iters[i];
            let before = iter.remaining().len();
            let Some(record) = iter.next() else {
                open[i] = false;
                continue;
            };
            let (offset, record) = record.map_err(|e| ApiError::Internal {
                detail: format!("stored record: {e}"),
            })?;
            let size = before - iter.remaining().len();
            let part = &mut out[i];
            if records_left == 0 || (wrote_any && size > bytes_left) {
                // Left out: this partition resumes here.
                part.next_offset = offset;
                open[i] = false;
                continue;
            }
            if !part.json.is_empty() {
                part.json.push(b',');
            }
            let start = part.json.len();
            let (topic, partition) = (&fetched[i].0.topic, fetched[i].0.partition);
            write_record(&mut part.json, topic, partition, offset, &record);
            part.spans.push(RecordSpan {
                offset,
                start,
                end: part.json.len(),
            });
            records_left -= 1;
            bytes_left = bytes_left.saturating_sub(size);
            wrote_any = true;
        }
    }
    Ok(out)
}

/// What one member fetch delivers: the records of the partitions the member still owns
/// (positions already reported to the coordinator), and its generation and assignments.
pub(crate) struct MemberBatch {
    /// The group's generation after the delivery report.
    pub(crate) generation: u64,
    /// The member's partitions in that generation.
    pub(crate) assignments: Vec<TopicPartition>,
    /// True when generation or assignments differ from what the member was last told.
    pub(crate) changed: bool,
    /// Records per partition; partitions without records or no longer owned are absent.
    pub(crate) parts: Vec<Rendered>,
    /// What the next fetch presents to confirm this answer's positions.
    pub(crate) position: PositionToken,
}

/// The first step of a member fetch: the poll at the coordinator, which is the member's
/// heartbeat (alive for `timeout_ms` more), confirms positions as `from` says, and
/// answers where to read.
///
/// # Errors
/// 409 `member_fenced` for an unknown member; 400 for a token that does not fit the
/// member; 503 when no coordinator is reachable.
pub(crate) async fn poll_member(
    state: &AppState,
    group: &str,
    member: &str,
    timeout_ms: u64,
    from: PollFrom,
) -> Result<Lease, ApiError> {
    lease_of(
        state
            .service
            .edge
            .group(
                group,
                GroupRequest::Poll {
                    member_id: member.to_string(),
                    timeout_ms,
                    from,
                },
            )
            .await?,
    )
}

/// The rest of a member fetch: reads the lease's partitions (long-polling up to
/// `bounds.timeout_ms`), renders within the budget, and reports the delivery to the
/// coordinator, which advances the member's positions by exactly what is returned.
///
/// # Errors
/// 409 `member_fenced` when the member expired meanwhile; 503 when nothing is readable.
pub(crate) async fn read_and_report(
    state: &AppState,
    group: &str,
    lease: &Lease,
    bounds: ReadBounds,
) -> Result<MemberBatch, ApiError> {
    let ReadBounds {
        max_records,
        max_bytes,
        timeout_ms,
    } = bounds;
    let fetched = fetch_assigned(state, lease, max_records, max_bytes, timeout_ms).await?;
    let first = match fetched.len() {
        0 => 0,
        n => (lease.rotation % n as u64) as usize,
    };
    let rendered = render_within_budget(&fetched, max_records, max_bytes, first)?;
    let report = lease_of(
        state
            .service
            .edge
            .group(
                group,
                GroupRequest::Delivered {
                    member_id: lease.member_id.clone(),
                    generation: lease.generation,
                    positions: rendered
                        .iter()
                        .map(|r| Delivery {
                            partition: r.partition.clone(),
                            floor: r.spans.first().map_or(r.next_offset, |s| s.offset),
                            next_offset: r.next_offset,
                        })
                        .collect(),
                },
            )
            .await?,
    )?;
    let accepted: BTreeSet<&TopicPartition> = report.accepted.iter().collect();
    let delivered: BTreeMap<&TopicPartition, u64> = rendered
        .iter()
        .filter(|r| accepted.contains(&r.partition))
        .map(|r| (&r.partition, r.next_offset))
        .collect();
    let position = PositionToken {
        generation: lease.generation,
        offsets: lease
            .assignments
            .iter()
            .map(|tp| delivered.get(tp).copied())
            .collect(),
    };
    let parts: Vec<Rendered> = rendered
        .into_iter()
        .filter(|part| !part.json.is_empty() && accepted.contains(&part.partition))
        .collect();
    for part in &parts {
        state
            .service
            .metrics
            .records_fetched
            .with_label_values(&[&part.partition.topic])
            .inc_by(part.spans.len() as u64);
    }
    Ok(MemberBatch {
        generation: report.generation,
        assignments: report.assignments,
        changed: report.changed || lease.changed,
        parts,
        position,
    })
}

#[instrument(skip_all, fields(group = %group))]
async fn member_fetch(
    State(state): State<AppState>,
    Path((group, member)): Path<(String, String)>,
    Query(params): Query<MemberFetchParams>,
) -> Result<Response, ApiError> {
    names::group(&group)?;
    names::member(&member)?;
    let bounds = read_bounds(
        params.max_records.as_deref(),
        params.max_bytes.as_deref(),
        params.timeout_ms.as_deref(),
    )?;
    let from = match params.position.as_deref() {
        Some(raw) => PollFrom::Token(parse_position(raw)?),
        None => PollFrom::Confirmed,
    };
    let lease = poll_member(&state, &group, &member, bounds.timeout_ms, from).await?;
    let batch = read_and_report(&state, &group, &lease, bounds).await?;
    let mut body =
        Vec::with_capacity(batch.parts.iter().map(|r| r.json.len() + 1).sum::<usize>() + 128);
    body.extend_from_slice(b"{\"records\":[");
    for (i, part) in batch.parts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&part.json);
    }
    let _ = write!(
        body,
        "],\"generation\":{},\"position\":\"{}\"",
        batch.generation,
        encode_position(&batch.position)
    );
    if batch.changed {
        body.extend_from_slice(b",\"assignments\":");
        serde_json::to_writer(&mut body, &batch.assignments).map_err(|e| ApiError::Internal {
            detail: format!("assignments did not render: {e}"),
        })?;
    }
    body.push(b'}');
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Offsets: commit, read, reset
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    member_id: String,
    generation: u64,
    offsets: Vec<CommitOffsetBody>,
}

/// One partition's offset as a commit names it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommitOffsetBody {
    topic: String,
    partition: u32,
    offset: u64,
}

impl From<CommitOffsetBody> for CommitOffset {
    fn from(body: CommitOffsetBody) -> Self {
        CommitOffset {
            topic: body.topic,
            partition: body.partition,
            offset: body.offset,
        }
    }
}

#[instrument(skip_all, fields(group = %group))]
async fn commit(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let group = GroupName::parse(group)?;
    let body: CommitBody = json::parse(&headers, &body)?;
    let request = CommitRequest {
        member_id: body.member_id,
        generation: body.generation,
        offsets: body.offsets.into_iter().map(CommitOffset::from).collect(),
    };
    state
        .service
        .commit(&Caller::http(), &group, request)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[instrument(skip_all, fields(group = %group))]
async fn offsets(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    names::group(&group)?;
    let committed = state.service.edge.committed_offsets(&group).await?;
    // Only offsets of the topics as they exist now (a deleted topic's are being purged).
    let mut rows = Vec::new();
    for (tp, value) in committed {
        let Ok(meta) = state.service.edge.topic(&tp.topic).await else {
            continue;
        };
        let Some(placement) = meta.partitions.get(tp.partition as usize) else {
            continue;
        };
        if placement.group == value.topic_group {
            rows.push((tp, value, placement.clone()));
        }
    }
    let statuses = futures::future::join_all(
        rows.iter()
            .map(|(_, _, placement)| state.service.edge.partition_status(placement)),
    )
    .await;
    let below = |value: &psubd_actors::offsets::CommittedOffset, status: Option<ReplicaStatus>| {
        status.is_some_and(|s| value.offset < s.log_start)
    };
    // Only when a committed offset fell below the log start: which reset policy the
    // member holding that partition resumes with (best effort; none without members).
    let resets = if rows
        .iter()
        .zip(&statuses)
        .any(|((_, value, _), status)| below(value, *status))
    {
        member_resets(&state, &group).await
    } else {
        Vec::new()
    };
    let offsets: Vec<Value> = rows
        .iter()
        .zip(statuses)
        .map(|((tp, value, _), status)| {
            let high_watermark = status.map(|s| s.high_watermark);
            let committed_below_log_start = below(value, status);
            let reset = resets
                .iter()
                .find(|(held, _)| held == tp)
                .map(|(_, reset)| *reset)
                .filter(|_| committed_below_log_start);
            json!({
                "topic": tp.topic,
                "partition": tp.partition,
                "offset": value.offset,
                "log_start_offset": status.map(|s| s.log_start),
                "high_watermark": high_watermark,
                "lag": high_watermark.map(|h| h.saturating_sub(value.offset)),
                "commit_timestamp_ms": value.commit_ms,
                "committed_below_log_start": committed_below_log_start,
                "reset": reset.map(|r| r.as_str()),
                "resumes_at": match (reset, status) {
                    (Some(AutoOffsetReset::Earliest), Some(s)) => Some(s.log_start),
                    (Some(AutoOffsetReset::Latest), Some(s)) => Some(s.high_watermark),
                    _ => None,
                },
            })
        })
        .collect();
    Ok(Json(json!({"group": group, "offsets": offsets})))
}

/// The `auto_offset_reset` of the member holding each assigned partition now; empty when
/// the coordinator cannot be asked (the offsets view is then still served).
async fn member_resets(state: &AppState, group: &str) -> Vec<(TopicPartition, AutoOffsetReset)> {
    match state
        .service
        .edge
        .group(group, GroupRequest::Describe)
        .await
    {
        Ok(GroupAnswer::Described(d)) => d
            .members
            .into_iter()
            .flat_map(|m| {
                let reset = m.auto_offset_reset;
                m.assignments.into_iter().map(move |tp| (tp, reset))
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    offsets: Vec<ResetEntry>,
}

/// One reset: a topic (every partition, or one), to an offset, `earliest`, `latest`, or
/// the first record at or after a timestamp.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetEntry {
    topic: String,
    partition: Option<u32>,
    offset: Option<Value>,
    timestamp_ms: Option<i64>,
}

enum ResetTo {
    Offset(u64),
    Earliest,
    Latest,
    Timestamp(i64),
}

fn reset_target(entry: &ResetEntry) -> Result<ResetTo, ApiError> {
    let invalid = || {
        ApiError::InvalidRequest {
        message: "each reset needs exactly one of offset (a number, 'earliest' or 'latest') or timestamp_ms".into(),
    }
    };
    match (&entry.offset, entry.timestamp_ms) {
        (Some(Value::Number(n)), None) => n.as_u64().map(ResetTo::Offset).ok_or_else(invalid),
        (Some(Value::String(s)), None) if s == "earliest" => Ok(ResetTo::Earliest),
        (Some(Value::String(s)), None) if s == "latest" => Ok(ResetTo::Latest),
        (None, Some(ts)) => Ok(ResetTo::Timestamp(ts)),
        _ => Err(invalid()),
    }
}

/// The first offset whose record's timestamp is at or after `timestamp_ms`, by binary
/// search over `[log_start, high_watermark)`. Exact when timestamps rise with offsets
/// (always so for edge-stamped records); with producer timestamps out of order it finds
/// one such boundary, as a time index would.
async fn offset_for_timestamp(
    state: &AppState,
    placement: &PartitionPlacement,
    log_start: u64,
    high_watermark: u64,
    timestamp_ms: i64,
) -> Result<u64, ApiError> {
    let (mut lo, mut hi) = (log_start, high_watermark);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let fetched = state
            .service
            .edge
            .fetch(placement, OffsetSpec::At(mid), 1, 1, 0)
            .await?;
        let stamp = RecordIter::run(&fetched.bytes)
            .next()
            .transpose()
            .map_err(|e| ApiError::Internal {
                detail: format!("stored record: {e}"),
            })?
            .map(|r| r.timestamp_ms);
        match stamp {
            Some(ts) if ts < timestamp_ms => lo = mid + 1,
            Some(_) => hi = mid,
            // Retention moved past `mid` meanwhile: search what is left.
            None => lo = mid + 1,
        }
    }
    Ok(lo)
}

#[instrument(skip_all, fields(group = %group))]
async fn reset(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    names::group(&group)?;
    let body: ResetBody = json::parse(&headers, &body)?;
    check_offset_count(body.offsets.len())?;
    let mut entries: Vec<OffsetEntry> = Vec::new();
    let mut seen = BTreeSet::new();
    for item in &body.offsets {
        let target = reset_target(item)?;
        let meta = state
            .service
            .group_topic(&Caller::http(), &item.topic)
            .await?;
        let partitions: Vec<u32> = match item.partition {
            Some(p) => {
                partition_of(&meta, p)?;
                vec![p]
            }
            None => (0..meta.config.partitions).collect(),
        };
        for partition in partitions {
            if !seen.insert((item.topic.clone(), partition)) {
                return Err(ApiError::InvalidRequest {
                    message: format!(
                        "offsets name partition {partition} of topic '{}' twice",
                        item.topic
                    ),
                });
            }
            let placement = partition_of(&meta, partition)?;
            let status = state
                .service
                .edge
                .partition_status(placement)
                .await
                .ok_or_else(|| ApiError::Unavailable {
                    reason: "the partition has no reachable replica".into(),
                })?;
            let offset = match target {
                ResetTo::Earliest => status.log_start,
                ResetTo::Latest => status.high_watermark,
                ResetTo::Offset(n) => {
                    if n < status.log_start || n > status.high_watermark {
                        return Err(ApiError::OffsetOutOfRange {
                            offset: n,
                            log_start_offset: status.log_start,
                            high_watermark: status.high_watermark,
                        });
                    }
                    n
                }
                ResetTo::Timestamp(ts) => {
                    offset_for_timestamp(
                        &state,
                        placement,
                        status.log_start,
                        status.high_watermark,
                        ts,
                    )
                    .await?
                }
            };
            entries.push(OffsetEntry {
                topic: item.topic.clone(),
                partition,
                topic_group: placement.group,
                offset,
            });
        }
    }
    check_offset_count(entries.len())?;
    state
        .service
        .edge
        .group(
            &group,
            GroupRequest::Reset {
                offsets: entries.clone(),
            },
        )
        .await?;
    let offsets: Vec<Value> = entries
        .iter()
        .map(|e| json!({"topic": e.topic, "partition": e.partition, "offset": e.offset}))
        .collect();
    Ok(Json(json!({"group": group, "offsets": offsets})))
}

// ---------------------------------------------------------------------------------------
// Groups: list, describe, delete
// ---------------------------------------------------------------------------------------

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let groups = state.service.edge.list_groups().await?;
    Ok(Json(Value::Array(
        groups
            .into_iter()
            .map(|g| {
                json!({
                    "group": g.group,
                    "state": if g.members > 0 { "stable" } else { "empty" },
                    "members": g.members,
                })
            })
            .collect(),
    )))
}

fn description_json(d: GroupDescription) -> Value {
    json!({
        "group": d.group,
        "state": d.state,
        "generation": d.generation,
        "assignment_strategy": d.strategy.as_str(),
        "coordinator": d.coordinator,
        "members": d.members.into_iter().map(|m| json!({
            "member_id": m.member_id,
            "topics": m.topics,
            "session_timeout_ms": m.session_timeout_ms,
            "auto_offset_reset": m.auto_offset_reset.as_str(),
            "assignments": m.assignments,
            "last_seen_ms_ago": m.last_seen_ms_ago,
        })).collect::<Vec<_>>(),
    })
}

#[instrument(skip_all, fields(group = %group))]
async fn describe(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    names::group(&group)?;
    match state
        .service
        .edge
        .group(&group, GroupRequest::Describe)
        .await?
    {
        GroupAnswer::Described(d) => Ok(Json(description_json(d))),
        other => Err(ApiError::Internal {
            detail: format!("describe answered {other:?}"),
        }),
    }
}

#[instrument(skip_all, fields(group = %group))]
async fn delete_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    names::group(&group)?;
    state
        .service
        .edge
        .group(&group, GroupRequest::Delete)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use psubd_actors::record::{EncodedRecords, Record, ValueKind};

    use super::*;

    fn out_of_range(offset: u64, log_start_offset: u64, high_watermark: u64) -> ApiError {
        ApiError::OffsetOutOfRange {
            offset,
            log_start_offset,
            high_watermark,
        }
    }

    /// Regression (chaos harness, seed 7): a lagging replica answered 416 above its end
    /// for a member's committed position, and the member jumped to `earliest` (offset 0).
    #[test]
    fn auto_offset_reset_applies_only_below_the_log_start() {
        let above_end = out_of_range(1530, 0, 1481);
        assert_eq!(restart_after(&above_end, AutoOffsetReset::Earliest), None);
        assert_eq!(restart_after(&above_end, AutoOffsetReset::Latest), None);
        let below_start = out_of_range(3, 10, 50);
        assert_eq!(
            restart_after(&below_start, AutoOffsetReset::Earliest),
            Some(OffsetSpec::Earliest)
        );
        assert_eq!(
            restart_after(&below_start, AutoOffsetReset::Latest),
            Some(OffsetSpec::Latest)
        );
        let unavailable = ApiError::Unavailable {
            reason: "no leader".into(),
        };
        assert_eq!(restart_after(&unavailable, AutoOffsetReset::Earliest), None);
    }

    fn run(first_offset: u64, n: u8) -> FetchedRecords {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                timestamp_ms: i64::from(i),
                kind: ValueKind::Json,
                key: None,
                value: Some(Bytes::from(format!("{i}"))),
                headers: vec![],
            })
            .collect();
        let encoded = EncodedRecords::encode(&records).unwrap();
        FetchedRecords {
            first_offset,
            count: u32::from(n),
            bytes: encoded.bytes,
            offsets: Vec::new(),
            next_offset: first_offset + u64::from(n),
            log_start: 0,
            high_watermark: first_offset + u64::from(n),
        }
    }

    /// A compacted topic's read: records at 3, 8 and 9, read up to 20.
    fn sparse_run() -> FetchedRecords {
        FetchedRecords {
            offsets: vec![3, 8, 9],
            next_offset: 20,
            high_watermark: 20,
            ..run(3, 3)
        }
    }

    #[test]
    fn compacted_offsets_are_rendered_and_positions_skip_the_gaps() {
        let rendered = render_within_budget(&[(tp(0), sparse_run())], 10, 1 << 20, 0).unwrap();
        let offsets: Vec<u64> = rendered[0].spans.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, vec![3, 8, 9]);
        assert_eq!(rendered[0].next_offset, 20, "past the trailing gap");
        let parsed: Vec<Value> =
            serde_json::from_str(&format!("[{}]", String::from_utf8_lossy(&rendered[0].json)))
                .unwrap();
        let in_json: Vec<u64> = parsed
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(in_json, vec![3, 8, 9]);
        let span = rendered[0].spans[1];
        let second: Value =
            serde_json::from_slice(&rendered[0].json[span.start..span.end]).unwrap();
        assert_eq!(second["offset"], 8);

        // Cut by the budget: the position is the first record left out, past the gap.
        let cut = render_within_budget(&[(tp(0), sparse_run())], 1, 1 << 20, 0).unwrap();
        assert_eq!(cut[0].spans.len(), 1);
        assert_eq!(cut[0].next_offset, 8);
        // A partition the budget never reached starts at its first record.
        let later =
            render_within_budget(&[(tp(0), run(0, 1)), (tp(1), sparse_run())], 1, 1 << 20, 0)
                .unwrap();
        assert_eq!(later[1].next_offset, 3);
        assert!(later[1].spans.is_empty());
    }

    fn tp(partition: u32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition,
        }
    }

    /// The budget is shared in turn, so a backlog in partition 0 does not starve
    /// partition 1; positions follow what each part carries.
    #[test]
    fn budget_caps_records_across_partitions_and_positions_follow() {
        let fetched = vec![(tp(0), run(10, 3)), (tp(1), run(5, 3))];
        let rendered = render_within_budget(&fetched, 4, 1 << 20, 0).unwrap();
        assert_eq!(rendered[0].next_offset, 12, "two of partition 0");
        assert_eq!(rendered[1].next_offset, 7, "two of partition 1");
        let body = format!(
            "[{},{}]",
            String::from_utf8(rendered[0].json.clone()).unwrap(),
            String::from_utf8(rendered[1].json.clone()).unwrap()
        );
        let parsed: Vec<Value> = serde_json::from_str(&body).unwrap();
        let offsets: Vec<u64> = parsed
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![10, 11, 5, 6]);
        // One record per answer: the rotation decides which partition it comes from.
        let from_1 = render_within_budget(&fetched, 1, 1 << 20, 1).unwrap();
        assert_eq!((from_1[0].next_offset, from_1[1].next_offset), (10, 6));
        let from_0 = render_within_budget(&fetched, 1, 1 << 20, 0).unwrap();
        assert_eq!((from_0[0].next_offset, from_0[1].next_offset), (11, 5));
    }

    #[test]
    fn position_tokens_round_trip_and_bad_ones_are_refused() {
        let token = PositionToken {
            generation: 7,
            offsets: vec![Some(105), None, Some(0)],
        };
        assert_eq!(encode_position(&token), "7.105._.0");
        assert_eq!(parse_position("7.105._.0").unwrap(), token);
        let empty = PositionToken {
            generation: 3,
            offsets: vec![],
        };
        assert_eq!(parse_position(&encode_position(&empty)).unwrap(), empty);
        for bad in ["", "x", "7.", "7.-1", "7.1.2x", "7..1", "-3.1"] {
            assert!(
                matches!(parse_position(bad), Err(ApiError::InvalidRequest { .. })),
                "{bad:?}"
            );
        }
        let too_long = format!("1{}", ".1".repeat(MAX_POSITION_PARTITIONS + 1));
        assert!(parse_position(&too_long).is_err());
    }

    #[test]
    fn an_empty_partition_keeps_its_position() {
        let fetched = vec![(tp(0), run(7, 0))];
        let rendered = render_within_budget(&fetched, 10, 1 << 20, 0).unwrap();
        assert_eq!(rendered[0].next_offset, 7);
        assert!(rendered[0].json.is_empty());
    }

    #[test]
    fn byte_budget_always_lets_one_record_through() {
        let fetched = vec![(tp(0), run(0, 3))];
        let rendered = render_within_budget(&fetched, 10, 1, 0).unwrap();
        assert_eq!(rendered[0].next_offset, 1);
    }

    #[test]
    fn reset_targets_are_validated() {
        let entry = |offset: Option<Value>, timestamp_ms| ResetEntry {
            topic: "t".into(),
            partition: None,
            offset,
            timestamp_ms,
        };
        assert!(matches!(
            reset_target(&entry(Some(json!(5)), None)),
            Ok(ResetTo::Offset(5))
        ));
        assert!(matches!(
            reset_target(&entry(Some(json!("earliest")), None)),
            Ok(ResetTo::Earliest)
        ));
        assert!(matches!(
            reset_target(&entry(None, Some(9))),
            Ok(ResetTo::Timestamp(9))
        ));
        assert!(reset_target(&entry(Some(json!(-1)), None)).is_err());
        assert!(reset_target(&entry(Some(json!("soon")), None)).is_err());
        assert!(reset_target(&entry(Some(json!(1)), Some(2))).is_err());
        assert!(reset_target(&entry(None, None)).is_err());
    }
}
