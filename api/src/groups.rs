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

use std::io::Write;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use psubd_actors::coordinator::{GroupDescription, PollFrom, PositionToken};
use psubd_actors::topic::MAX_PARTITIONS;
use serde::Deserialize;
use serde_json::Value;
use tracing::instrument;

use crate::error::ApiError;
use crate::fetch::read_bounds;
use crate::json::{self, Query};
use crate::service::groups::{
    check_offset_count, CommitOffset, CommitRequest, GroupName, JoinRequest, ResetRequest, ResetTo,
    MAX_TOPICS_PER_MEMBER,
};
use crate::service::push::PushSettings;
use crate::service::{names, Caller};
use crate::state::AppState;
use crate::wire;

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
        .route(
            "/v1/groups/{group}/push",
            get(push).put(set_push).delete(delete_push),
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
    caller: Caller,
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
    let lease = state.service.join(&caller, &group, request).await?;
    Ok((
        StatusCode::CREATED,
        Json(psubd_wire::JoinResponse {
            assignments: wire::topic_partitions(&lease.assignments),
            member_id: lease.member_id,
            generation: lease.generation,
        }),
    )
        .into_response())
}

#[instrument(skip_all, fields(group = %group))]
async fn leave(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let group = GroupName::parse(group)?;
    state.service.leave(&caller, &group, member).await?;
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

#[instrument(skip_all, fields(group = %group))]
async fn member_fetch(
    State(state): State<AppState>,
    caller: Caller,
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
    let lease = state
        .service
        .poll_member(&caller, &group, &member, bounds.timeout_ms, from)
        .await?;
    let batch = state
        .service
        .read_and_report(&caller, &group, &lease, bounds)
        .await?;
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

/// One partition's offset as a commit names it (the wire form), as the service takes it.
pub(crate) fn commit_offset(body: psubd_wire::CommitOffset) -> CommitOffset {
    CommitOffset {
        topic: body.topic,
        partition: body.partition,
        offset: body.offset,
    }
}

#[instrument(skip_all, fields(group = %group))]
async fn commit(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let group = GroupName::parse(group)?;
    let body: psubd_wire::CommitRequest = json::parse(&headers, &body)?;
    let request = CommitRequest {
        member_id: body.member_id,
        generation: body.generation,
        offsets: body.offsets.into_iter().map(commit_offset).collect(),
    };
    state.service.commit(&caller, &group, request).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[instrument(skip_all, fields(group = %group))]
async fn offsets(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<Json<psubd_wire::GroupOffsets>, ApiError> {
    let group = GroupName::parse(group)?;
    let rows = state.service.group_offsets(&caller, &group).await?;
    let offsets: Vec<psubd_wire::CommittedOffset> = rows
        .iter()
        .map(|row| {
            let status = row.status;
            let high_watermark = status.map(|s| s.high_watermark);
            psubd_wire::CommittedOffset {
                topic: row.partition.topic.clone(),
                partition: row.partition.partition,
                offset: row.committed.offset,
                log_start_offset: status.map(|s| s.log_start),
                high_watermark,
                lag: high_watermark.map(|h| h.saturating_sub(row.committed.offset)),
                commit_timestamp_ms: row.committed.commit_ms,
                committed_below_log_start: row.below_log_start,
                reset: row.reset.map(wire::auto_offset_reset),
                resumes_at: row.resumes_at(),
            }
        })
        .collect();
    Ok(Json(psubd_wire::GroupOffsets {
        group: group.as_str().to_owned(),
        offsets,
    }))
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

#[instrument(skip_all, fields(group = %group))]
async fn reset(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<psubd_wire::ResetResponse>, ApiError> {
    let group = GroupName::parse(group)?;
    let body: ResetBody = json::parse(&headers, &body)?;
    check_offset_count(body.offsets.len())?;
    let requests = body
        .offsets
        .into_iter()
        .map(|entry| {
            Ok(ResetRequest {
                to: reset_target(&entry)?,
                topic: entry.topic,
                partition: entry.partition,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let entries = state
        .service
        .reset_offsets(&caller, &group, requests)
        .await?;
    let offsets = entries
        .into_iter()
        .map(|e| psubd_wire::CommitOffset {
            topic: e.topic,
            partition: e.partition,
            offset: e.offset,
        })
        .collect();
    Ok(Json(psubd_wire::ResetResponse {
        group: group.as_str().to_owned(),
        offsets,
    }))
}

// ---------------------------------------------------------------------------------------
// Groups: list, describe, delete
// ---------------------------------------------------------------------------------------

async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<psubd_wire::GroupSummary>>, ApiError> {
    let groups = state.service.list_groups(&caller).await?;
    Ok(Json(
        groups
            .into_iter()
            .map(|g| psubd_wire::GroupSummary {
                group: g.group,
                state: wire::group_state(g.members as usize),
                members: g.members,
            })
            .collect(),
    ))
}

fn description_view(d: GroupDescription) -> psubd_wire::GroupDescription {
    let push = d.push.as_ref().map(|view| {
        wire::push_subscription(&d.group, d.coordinator, &view.config, view.status.as_ref())
    });
    psubd_wire::GroupDescription {
        push,
        group: d.group,
        state: wire::group_state(d.members.len()),
        generation: d.generation,
        assignment_strategy: wire::strategy(d.strategy),
        coordinator: d.coordinator,
        members: d
            .members
            .into_iter()
            .map(|m| psubd_wire::MemberDescription {
                assignments: wire::topic_partitions(&m.assignments),
                member_id: m.member_id,
                topics: m.topics,
                session_timeout_ms: m.session_timeout_ms,
                auto_offset_reset: wire::auto_offset_reset(m.auto_offset_reset),
                last_seen_ms_ago: m.last_seen_ms_ago,
            })
            .collect(),
    }
}

#[instrument(skip_all, fields(group = %group))]
async fn describe(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<Json<psubd_wire::GroupDescription>, ApiError> {
    let group = GroupName::parse(group)?;
    let description = state.service.describe_group(&caller, &group).await?;
    Ok(Json(description_view(description)))
}

#[instrument(skip_all, fields(group = %group))]
async fn delete_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    let group = GroupName::parse(group)?;
    state.service.delete_group(&caller, &group).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Push subscriptions
// ---------------------------------------------------------------------------------------

#[instrument(skip_all, fields(group = %group))]
async fn set_push(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<psubd_wire::PushSubscription>, ApiError> {
    let group = GroupName::parse(group)?;
    let body: psubd_wire::PushRequest = json::parse(&headers, &body)?;
    let settings = PushSettings {
        topics: body.topics,
        endpoint: body.endpoint,
        max_in_flight: body.max_in_flight,
        timeout_ms: body.timeout_ms,
        min_backoff_ms: body.min_backoff_ms,
        max_backoff_ms: body.max_backoff_ms,
        max_deliveries: body.max_deliveries,
        dead_letter_topic: body.dead_letter_topic,
        secret: body.secret,
    };
    state.service.set_push(&caller, &group, settings).await?;
    // Answered as a GET would: the settings as stored, with the pushing node.
    push(State(state), caller, Path(group.as_str().to_owned())).await
}

#[instrument(skip_all, fields(group = %group))]
async fn push(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<Json<psubd_wire::PushSubscription>, ApiError> {
    let group = GroupName::parse(group)?;
    let (description, view) = state.service.push_subscription(&caller, &group).await?;
    Ok(Json(wire::push_subscription(
        group.as_str(),
        description.coordinator,
        &view.config,
        view.status.as_ref(),
    )))
}

#[instrument(skip_all, fields(group = %group))]
async fn delete_push(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<StatusCode, ApiError> {
    let group = GroupName::parse(group)?;
    state.service.delete_push(&caller, &group).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;

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
