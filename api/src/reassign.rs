//! Replica moves and decommissions: `PUT /v1/topics/{topic}/partitions/{partition}/replicas`,
//! `GET /v1/reassignments` and `POST /v1/cluster/nodes/{id}/decommission` (docs/api.md
//! § Moving replicas). Moves and decommissions are the admin's; the list needs `describe`
//! on the cluster.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use psubd_actors::controller::reassignment::Reassignment;
use psubd_wire::{Decommission, MoveReplicas, Reassignments};
use tracing::instrument;

use crate::error::ApiError;
use crate::fetch::integer;
use crate::json;
use crate::service::Caller;
use crate::state::AppState;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/topics/{topic}/partitions/{partition}/replicas",
            put(move_replicas),
        )
        .route("/v1/reassignments", get(reassignments))
        .route("/v1/cluster/nodes/{id}/decommission", post(decommission))
        .with_state(state)
}

/// A move as the API shows it.
fn view(reassignment: Reassignment) -> psubd_wire::Reassignment {
    psubd_wire::Reassignment {
        topic: reassignment.topic,
        partition: reassignment.partition,
        from: reassignment.from,
        to: reassignment.to,
        state: reassignment.state.as_str().to_string(),
        started_ms: reassignment.started_ms,
    }
}

#[instrument(skip_all, fields(topic = %topic, partition = %partition))]
async fn move_replicas(
    State(state): State<AppState>,
    caller: Caller,
    Path((topic, partition)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let partition: u32 = integer("partition", &partition)?;
    let request: MoveReplicas = json::parse(&headers, &body)?;
    let started = state
        .service
        .move_replicas(&caller, &topic, partition, request.replicas)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view(started))).into_response())
}

async fn reassignments(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Reassignments>, ApiError> {
    let moves = state.service.reassignments(&caller)?;
    Ok(Json(Reassignments {
        reassignments: moves.into_iter().map(view).collect(),
    }))
}

#[instrument(skip_all, fields(node = %id))]
async fn decommission(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let node: u64 = integer("node id", &id)?;
    let leaving = state.service.decommission(&caller, node).await?;
    let answer = Decommission {
        node,
        state: leaving.as_str().to_string(),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}
