//! `/v1/topics`: create, list, describe, change (`PATCH`: retention and the duplicate
//! window), delete,
//! and partition status with disk usage.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use psubd_actors::controller::access::Operation;
use psubd_actors::controller::TopicUpdate;
use psubd_actors::topic::{
    check_duplicate_window_ms, check_retention_bytes, check_retention_ms, CleanupPolicy,
    TopicConfig, TopicMeta, DEFAULT_DUPLICATE_WINDOW_MS, DEFAULT_RETENTION_MS, MAX_PARTITIONS,
};
use psubd_wire::{PartitionStatus, Topic};
use serde::Deserialize;
use tracing::instrument;

use crate::error::ApiError;
use crate::json;
use crate::service::{names, Caller};
use crate::state::AppState;

/// Default replication factor when a create request gives none (capped by the nodes).
const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/topics", get(list).post(create))
        .route(
            "/v1/topics/{topic}",
            get(describe).patch(update).delete(delete),
        )
        .route("/v1/topics/{topic}/partitions", get(partitions))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    #[serde(default = "one")]
    partitions: i64,
    replication_factor: Option<i64>,
    #[serde(default = "default_retention_ms")]
    retention_ms: i64,
    #[serde(default = "unbounded")]
    retention_bytes: i64,
    #[serde(default)]
    cleanup_policy: Option<String>,
    #[serde(default = "default_delete_retention_ms")]
    delete_retention_ms: i64,
    #[serde(default)]
    duplicate_window_ms: Option<i64>,
}

fn default_delete_retention_ms() -> i64 {
    psubd_actors::topic::DEFAULT_DELETE_RETENTION_MS
}

fn one() -> i64 {
    1
}
fn default_retention_ms() -> i64 {
    DEFAULT_RETENTION_MS
}
fn unbounded() -> i64 {
    -1
}

/// A topic as the API shows it, with its duplicate window.
fn topic_view(meta: &TopicMeta, duplicate_window_ms: u64) -> Topic {
    Topic {
        name: meta.name.clone(),
        partitions: meta.config.partitions,
        replication_factor: meta.config.replication_factor,
        retention_ms: meta.config.retention_ms,
        retention_bytes: meta.config.retention_bytes,
        cleanup_policy: match meta.config.cleanup_policy {
            CleanupPolicy::Delete => psubd_wire::CleanupPolicy::Delete,
            CleanupPolicy::Compact => psubd_wire::CleanupPolicy::Compact,
        },
        delete_retention_ms: meta.config.delete_retention_ms,
        duplicate_window_ms,
    }
}

/// A topic as the API shows it, with the duplicate window this node's metadata holds.
fn local_view(state: &AppState, meta: &TopicMeta) -> Topic {
    topic_view(meta, state.service.duplicate_window_ms(&meta.name))
}

/// Settings `PATCH` may change; the others are fixed at creation (`partitions` may only
/// grow).
const MUTABLE_SETTINGS: [&str; 4] = [
    "retention_ms",
    "retention_bytes",
    "duplicate_window_ms",
    "partitions",
];

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidConfig {
        message: message.into(),
    }
}

/// A create request's name, settings and duplicate window (when given).
type NewTopic = (String, TopicConfig, Option<u64>);

fn validate(request: CreateTopic, nodes: usize) -> Result<NewTopic, ApiError> {
    names::new_topic(&request.name)?;
    let cleanup_policy = match request.cleanup_policy.as_deref() {
        None | Some("delete") => CleanupPolicy::Delete,
        Some("compact") => CleanupPolicy::Compact,
        Some(other) => {
            return Err(invalid(format!(
                "cleanup_policy must be 'delete' or 'compact', not '{other}'"
            )))
        }
    };
    let replication_factor = request
        .replication_factor
        .unwrap_or(i64::from(DEFAULT_REPLICATION_FACTOR).min(nodes as i64));
    let config = TopicConfig {
        // Out of u32's range is out of the allowed range too: 0 fails the same check.
        partitions: u32::try_from(request.partitions).unwrap_or(0),
        replication_factor: u32::try_from(replication_factor).unwrap_or(0),
        retention_ms: request.retention_ms,
        retention_bytes: request.retention_bytes,
        cleanup_policy,
        delete_retention_ms: request.delete_retention_ms,
    };
    config.check(nodes).map_err(invalid)?;
    let window = request
        .duplicate_window_ms
        .map(check_duplicate_window_ms)
        .transpose()
        .map_err(invalid)?;
    Ok((request.name, config, window))
}

/// What a `PATCH` asks: settings to change, a new partition count and a duplicate window
/// (kept apart by the controller), each optional.
#[derive(Debug, Default, PartialEq)]
struct TopicChange {
    settings: TopicUpdate,
    partitions: Option<u32>,
    duplicate_window_ms: Option<u64>,
}

/// Reads a `PATCH` body: an object with only mutable settings, each validated as at create.
fn validate_update(body: serde_json::Value) -> Result<TopicChange, ApiError> {
    let serde_json::Value::Object(fields) = body else {
        return Err(invalid(
            "the body must be a JSON object of settings to change",
        ));
    };
    let mut change = TopicChange::default();
    for (name, value) in fields {
        if !MUTABLE_SETTINGS.contains(&name.as_str()) {
            return Err(invalid(format!(
                "'{name}' cannot be changed: only {} can (replication_factor and \
                 cleanup_policy are fixed at creation)",
                MUTABLE_SETTINGS.join(", ")
            )));
        }
        let number = value
            .as_i64()
            .ok_or_else(|| invalid(format!("{name} must be an integer")))?;
        match name.as_str() {
            "retention_ms" => {
                check_retention_ms(number).map_err(invalid)?;
                change.settings.retention_ms = Some(number);
            }
            "retention_bytes" => {
                check_retention_bytes(number).map_err(invalid)?;
                change.settings.retention_bytes = Some(number);
            }
            "duplicate_window_ms" => {
                change.duplicate_window_ms =
                    Some(check_duplicate_window_ms(number).map_err(invalid)?);
            }
            _ => {
                let partitions = u32::try_from(number)
                    .ok()
                    .filter(|p| (1..=MAX_PARTITIONS).contains(p))
                    .ok_or_else(|| invalid(format!("partitions must be 1 to {MAX_PARTITIONS}")))?;
                change.partitions = Some(partitions);
            }
        }
    }
    if change == TopicChange::default() {
        return Err(invalid(format!(
            "nothing to change: give {}",
            MUTABLE_SETTINGS.join(" and/or ")
        )));
    }
    Ok(change)
}

#[instrument(skip_all, fields(topic = %topic))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Topic>, ApiError> {
    // 404 for unknown and internal topics before anything is proposed.
    let current = state
        .service
        .topic(&caller, &topic, Operation::Alter)
        .await?;
    let change = validate_update(json::parse(&headers, &body)?)?;
    if let Some(partitions) = change.partitions {
        let has = current.partitions.len();
        if partitions as usize <= has {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "partitions can only grow: '{topic}' has {has}, the body asks for {partitions}"
                ),
            });
        }
    }
    let mut meta = None;
    if change.settings != TopicUpdate::default() || change.partitions.is_some() {
        meta = Some(
            state
                .service
                .update_topic(&caller, &topic, change.settings, change.partitions)
                .await?,
        );
    }
    if let Some(window) = change.duplicate_window_ms {
        let meta = state
            .service
            .set_duplicate_window(&caller, &topic, window)
            .await?;
        return Ok(Json(topic_view(&meta, window)));
    }
    match meta {
        Some(meta) => Ok(Json(local_view(&state, &meta))),
        None => Err(ApiError::Internal {
            detail: "a validated topic update changed nothing".into(),
        }),
    }
}

#[instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateTopic = json::parse(&headers, &body)?;
    let (name, config, window) = validate(request, state.service.cluster_size())?;
    let meta = state.service.create_topic(&caller, name, config).await?;
    // The window is a setting of its own at the controller: a second write, made only
    // when the request gives one other than the default. Should it fail, the topic
    // exists with the default window and the answer is that write's error.
    let window = match window {
        Some(window) if window != DEFAULT_DUPLICATE_WINDOW_MS => {
            state
                .service
                .set_duplicate_window(&caller, &meta.name, window)
                .await?;
            window
        }
        _ => DEFAULT_DUPLICATE_WINDOW_MS,
    };
    Ok((StatusCode::CREATED, Json(topic_view(&meta, window))).into_response())
}

async fn list(State(state): State<AppState>, caller: Caller) -> Json<Vec<Topic>> {
    let topics = state.service.list_topics(&caller);
    Json(topics.iter().map(|meta| local_view(&state, meta)).collect())
}

async fn describe(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
) -> Result<Json<Topic>, ApiError> {
    let meta = state
        .service
        .topic(&caller, &topic, Operation::Describe)
        .await?;
    Ok(Json(local_view(&state, &meta)))
}

#[instrument(skip_all, fields(topic = %topic))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_topic(&caller, &topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn partitions(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
) -> Result<Json<Vec<PartitionStatus>>, ApiError> {
    let partitions = state.service.partition_statuses(&caller, &topic).await?;
    let rows: Vec<PartitionStatus> = partitions
        .iter()
        .enumerate()
        .map(|(index, (placement, status))| PartitionStatus {
            partition: u32::try_from(index).unwrap_or(u32::MAX),
            leader: status.and_then(|s| s.leader),
            replicas: placement.replicas.clone(),
            log_start_offset: status.map(|s| s.log_start),
            high_watermark: status.map(|s| s.high_watermark),
            stored_bytes: status.map(|s| s.stored_bytes),
            delayed_records: status.map(|s| s.delayed_records),
        })
        .collect();
    Ok(Json(rows))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn patch_takes_only_valid_settings_and_partition_counts() {
        let change = validate_update(json!({"retention_ms": 2000})).unwrap();
        assert_eq!(change.settings.retention_ms, Some(2000));
        assert_eq!(change.settings.retention_bytes, None);
        assert_eq!(change.duplicate_window_ms, None);
        let change = validate_update(json!({"duplicate_window_ms": 0})).unwrap();
        assert_eq!(
            (change.settings, change.duplicate_window_ms),
            (TopicUpdate::default(), Some(0))
        );
        let update = validate_update(json!({"retention_bytes": -1, "retention_ms": -1}))
            .unwrap()
            .settings;
        assert_eq!(
            (update.retention_ms, update.retention_bytes),
            (Some(-1), Some(-1))
        );
        let change = validate_update(json!({"partitions": 3})).unwrap();
        assert_eq!(change.partitions, Some(3));
        assert_eq!(change.settings, TopicUpdate::default());
        for bad in [
            json!({"partitions": 0}),
            json!({"partitions": 1025}),
            json!({"replication_factor": 3}),
            json!({"retention_ms": 0}),
            json!({"retention_bytes": -2}),
            json!({"retention_ms": "1000"}),
            json!({"duplicate_window_ms": -1}),
            json!({"duplicate_window_ms": 86_400_001}),
            json!({}),
            json!([1]),
        ] {
            assert!(
                matches!(
                    validate_update(bad.clone()),
                    Err(ApiError::InvalidConfig { .. })
                ),
                "{bad} must be refused"
            );
        }
    }
}
