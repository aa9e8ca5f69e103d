//! `/healthz`, `/readyz`, `/metrics` and `/v1/cluster`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use psubd_actors::controller::access::{Operation, ResourceType, CLUSTER};
use psubd_raft::CONTROLLER_GROUP;
use psubd_wire::{ClusterInfo, ClusterNode, Health, PartitionPlacement, Readiness, StorageStatus};

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

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready: a controller quorum is reachable, storage has not failed and no Raft group of
/// this node stopped. Low disk space does not make a node unready (it still serves reads);
/// the `storage` object says so.
async fn readyz(State(state): State<AppState>) -> Response {
    let broker = state.broker();
    let health = broker.raft_node().storage().health();
    let space = health.space();
    let stopped = health.stopped_groups();
    let storage = StorageStatus {
        state: match (health.failure().is_some(), space.low) {
            (true, _) => "failed",
            (false, true) => "low_space",
            (false, false) => "ok",
        }
        .into(),
        free_bytes: space.free_bytes,
        min_free_bytes: space.min_free_bytes,
        stopped_groups: stopped.clone(),
    };
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
            Json(Readiness {
                status: "not_ready".into(),
                controller_leader: None,
                reason: Some(reason),
                storage,
            }),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
        response
    } else {
        Json(Readiness {
            status: "ready".into(),
            controller_leader: broker.controller_leader(),
            reason: None,
            storage,
        })
        .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let broker = state.broker();
    let data_dir = broker.raft_node().data_dir().to_path_buf();
    let data_dir_bytes = tokio::task::spawn_blocking(move || crate::metrics::dir_bytes(&data_dir))
        .await
        .ok();
    let groups = crate::metrics::group_positions(&state.service.edge).await;
    let text = state
        .service
        .metrics
        .refresh_and_render(broker, data_dir_bytes, &groups);
    let mut response = text.into_response();
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
) -> Result<Json<ClusterInfo>, ApiError> {
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
        ClusterNode {
            id: *id,
            raft: addr.to_string(),
            http: metadata.nodes.get(id).map(|n| n.http.clone()),
            alive,
            state: metadata.moves.node_state(*id).as_str().to_string(),
        }
    });
    let nodes = futures::future::join_all(probes).await;
    let mut partitions = Vec::new();
    for topic in metadata.topics.values() {
        for (index, placement) in topic.partitions.iter().enumerate() {
            partitions.push(PartitionPlacement {
                topic: topic.name.clone(),
                partition: u32::try_from(index).unwrap_or(u32::MAX),
                replicas: placement.replicas.clone(),
                leader: broker.partition_leader(placement.group),
            });
        }
    }
    Ok(Json(ClusterInfo {
        node_id: me,
        controller_leader: broker.controller_leader(),
        nodes,
        partitions,
    }))
}
