//! `/healthz`, `/readyz`, `/metrics` and `/v1/cluster`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use psubd_actors::controller::access::{Operation, ResourceType, CLUSTER};
use psubd_actors::proposal::leader_of;
use psubd_raft::CONTROLLER_GROUP;
use serde_json::json;

use crate::error::ApiError;
use crate::service::Caller;
use crate::state::AppState;

/// How long `/v1/cluster` waits for a peer's answer before calling it not alive.
const ALIVE_PROBE: Duration = Duration::from_millis(300);

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: a controller quorum is reachable, storage has not failed and no Raft group of
/// this node stopped. Low disk space does not make a node unready (it still serves reads);
/// the `storage` object says so.
async fn readyz(State(state): State<AppState>) -> Response {
    let broker = state.broker();
    let health = broker.raft_node().storage().health();
    let space = health.space();
    let stopped = health.stopped_groups();
    let storage = json!({
        "state": match (health.failure().is_some(), space.low) {
            (true, _) => "failed",
            (false, true) => "low_space",
            (false, false) => "ok",
        },
        "free_bytes": space.free_bytes,
        "min_free_bytes": space.min_free_bytes,
        "stopped_groups": stopped,
    });
    let not_ready = if let Some(failure) = health.failure() {
        Some(format!("storage failed: {}", failure.cause))
    } else if !stopped.is_empty() {
        Some(format!(
            "{} raft group(s) stopped on a fatal error; restart the node",
            stopped.len()
        ))
    } else if !broker.is_ready() {
        Some("no controller quorum reachable".to_string())
    } else {
        None
    };
    if let Some(reason) = not_ready {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "storage": storage})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
        response
    } else {
        Json(json!({
            "status": "ready",
            "controller_leader": broker.controller_leader(),
            "storage": storage,
        }))
        .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let broker = state.broker();
    let metadata = broker.metadata();
    let me = broker.node_id();
    for topic in metadata.topics.values() {
        for (index, placement) in topic.partitions.iter().enumerate() {
            if let Some(handle) = broker.partition(placement.group) {
                let labels = [topic.name.as_str(), &index.to_string()];
                state
                    .service
                    .metrics
                    .high_watermark
                    .with_label_values(&labels)
                    .set(handle.reader.bounds().next_offset as i64);
                let leads = i64::from(leader_of(&handle.raft) == Some(me));
                state
                    .service
                    .metrics
                    .partition_leader
                    .with_label_values(&labels)
                    .set(leads);
                state
                    .service
                    .metrics
                    .partition_stored_bytes
                    .with_label_values(&labels)
                    .set(handle.reader.stored_bytes() as i64);
                state
                    .service
                    .metrics
                    .log_start_offset
                    .with_label_values(&labels)
                    .set(handle.reader.bounds().log_start as i64);
                let last_log_index = handle.raft.metrics().borrow().last_log_index;
                state
                    .service
                    .metrics
                    .raft_last_log_index
                    .with_label_values(&labels)
                    .set(last_log_index.unwrap_or(0) as i64);
            }
        }
    }
    if let Ok(bytes) = broker.raft_node().storage().size_on_disk() {
        state
            .service
            .metrics
            .disk_bytes
            .with_label_values(&[&me.to_string()])
            .set(bytes as i64);
    }
    let node = [me.to_string()];
    let health = broker.raft_node().storage().health();
    let space = health.space();
    if let Some(free) = space.free_bytes {
        state
            .service
            .metrics
            .storage_free_bytes
            .with_label_values(&node)
            .set(i64::try_from(free).unwrap_or(i64::MAX));
    }
    state
        .service
        .metrics
        .storage_low_space
        .with_label_values(&node)
        .set(i64::from(space.low));
    state
        .service
        .metrics
        .raft_groups_stopped
        .with_label_values(&node)
        .set(health.stopped_groups().len() as i64);
    let data_dir = broker.raft_node().data_dir().to_path_buf();
    if let Ok(bytes) =
        tokio::task::spawn_blocking(move || crate::metrics::dir_bytes(&data_dir)).await
    {
        state
            .service
            .metrics
            .data_dir_bytes
            .with_label_values(&[&me.to_string()])
            .set(bytes as i64);
    }
    let mut response = state.service.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// The cluster's nodes: `describe` on the cluster.
async fn cluster(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .service
        .authorize(&caller, ResourceType::Cluster, CLUSTER, Operation::Describe)?;
    let broker = state.broker();
    let raft_node = broker.raft_node();
    let metadata = broker.metadata();
    let me = broker.node_id();
    let metadata = &metadata;
    let probes = raft_node.peers().iter().map(|(id, addr)| async move {
        let alive = *id == me
            || raft_node
                .peer_has_group_state(*id, CONTROLLER_GROUP, ALIVE_PROBE)
                .await
                .is_ok();
        json!({
            "id": id,
            "raft": addr.to_string(),
            "http": metadata.nodes.get(id).map(|n| n.http.clone()),
            "alive": alive,
        })
    });
    let nodes = futures::future::join_all(probes).await;
    let mut partitions = Vec::new();
    for topic in metadata.topics.values() {
        for (index, placement) in topic.partitions.iter().enumerate() {
            partitions.push(json!({
                "topic": topic.name,
                "partition": index,
                "replicas": placement.replicas,
                "leader": broker.partition_leader(placement.group),
            }));
        }
    }
    Ok(Json(json!({
        "node_id": me,
        "controller_leader": broker.controller_leader(),
        "nodes": nodes,
        "partitions": partitions,
    })))
}
