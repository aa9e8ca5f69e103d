//! `/v1/principals` and `/v1/acls`: the admin's resource for principals, their API keys,
//! ACLs and quotas (docs/api.md § Security). Every route needs the admin principal.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use psubd_actors::controller::access::{
    AclRule, Operation, PatternType, Permission, Quota, ResourceType,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::instrument;

use crate::error::ApiError;
use crate::json;
use crate::service::Caller;
use crate::state::AppState;

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/principals",
            get(list_principals).post(create_principal),
        )
        .route("/v1/principals/{principal}", delete(delete_principal))
        .route("/v1/principals/{principal}/keys", post(create_key))
        .route(
            "/v1/principals/{principal}/keys/{key_id}",
            delete(delete_key),
        )
        .route("/v1/principals/{principal}/quota", put(set_quota))
        .route(
            "/v1/acls",
            get(list_acls).post(create_acl).delete(delete_acl),
        )
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePrincipal {
    name: String,
}

/// An ACL as the API takes and shows it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AclBody {
    principal: String,
    resource_type: ResourceType,
    pattern_type: PatternType,
    resource_name: String,
    operation: Operation,
    permission: Permission,
}

impl AclBody {
    fn split(self) -> (String, AclRule) {
        (
            self.principal,
            AclRule {
                resource_type: self.resource_type,
                pattern_type: self.pattern_type,
                resource_name: self.resource_name,
                operation: self.operation,
                permission: self.permission,
            },
        )
    }

    fn join(principal: String, rule: AclRule) -> Self {
        Self {
            principal,
            resource_type: rule.resource_type,
            pattern_type: rule.pattern_type,
            resource_name: rule.resource_name,
            operation: rule.operation,
            permission: rule.permission,
        }
    }
}

#[instrument(skip_all)]
async fn create_principal(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreatePrincipal = json::parse(&headers, &body)?;
    state
        .service
        .create_principal(&caller, &request.name)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "name": request.name }))).into_response())
}

async fn list_principals(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principals = state.service.list_principals(&caller)?;
    Ok(Json(json!(principals
        .into_iter()
        .map(|p| json!({
            "name": p.name,
            "created_ms": p.created_ms,
            "key_ids": p.key_ids,
            "quota": p.quota,
        }))
        .collect::<Vec<_>>())))
}

#[instrument(skip_all)]
async fn delete_principal(
    State(state): State<AppState>,
    caller: Caller,
    Path(principal): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_principal(&caller, &principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a key; its secret is in this answer and nowhere else (not stored, not logged).
#[instrument(skip_all)]
async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(principal): Path<String>,
) -> Result<Response, ApiError> {
    let key = state.service.create_key(&caller, &principal).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "principal": principal, "key_id": key.key_id, "key": key.key })),
    )
        .into_response())
}

#[instrument(skip_all)]
async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((principal, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .service
        .delete_key(&caller, &principal, &key_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[instrument(skip_all)]
async fn set_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path(principal): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let quota: Quota = json::parse(&headers, &body)?;
    state.service.set_quota(&caller, &principal, quota).await?;
    Ok(Json(json!({
        "principal": principal,
        "quota": quota,
    })))
}

#[instrument(skip_all)]
async fn create_acl(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (principal, rule) = json::parse::<AclBody>(&headers, &body)?.split();
    state
        .service
        .add_acl(&caller, &principal, rule.clone())
        .await?;
    Ok((StatusCode::CREATED, Json(AclBody::join(principal, rule))).into_response())
}

#[instrument(skip_all)]
async fn delete_acl(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (principal, rule) = json::parse::<AclBody>(&headers, &body)?.split();
    state.service.remove_acl(&caller, &principal, rule).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AclQuery {
    principal: Option<String>,
}

async fn list_acls(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AclQuery>,
) -> Result<Json<Vec<AclBody>>, ApiError> {
    let acls = state
        .service
        .list_acls(&caller, query.principal.as_deref())?;
    Ok(Json(
        acls.into_iter()
            .map(|(principal, rule)| AclBody::join(principal, rule))
            .collect(),
    ))
}
