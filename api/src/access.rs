//! `/v1/principals` and `/v1/acls`: the admin's resource for principals, their API keys,
//! ACLs and quotas (docs/api.md § Security). Every route needs the admin principal.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use psubd_actors::controller::access::{
    AclRule, Operation, PatternType, Permission, Quota, ResourceType,
};
use psubd_wire::access as wire;
use psubd_wire::access::{Acl, NewKey, NewPrincipal, PrincipalQuota};
use serde::Deserialize;
use tracing::instrument;

use crate::error::ApiError;
use crate::json::{self, Query};
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

/// An ACL's wire form as the service takes it.
fn split(acl: Acl) -> (String, AclRule) {
    (
        acl.principal,
        AclRule {
            resource_type: match acl.resource_type {
                wire::ResourceType::Topic => ResourceType::Topic,
                wire::ResourceType::Group => ResourceType::Group,
                wire::ResourceType::Cluster => ResourceType::Cluster,
            },
            pattern_type: match acl.pattern_type {
                wire::PatternType::Literal => PatternType::Literal,
                wire::PatternType::Prefixed => PatternType::Prefixed,
            },
            resource_name: acl.resource_name,
            operation: match acl.operation {
                wire::Operation::Read => Operation::Read,
                wire::Operation::Write => Operation::Write,
                wire::Operation::Create => Operation::Create,
                wire::Operation::Delete => Operation::Delete,
                wire::Operation::Alter => Operation::Alter,
                wire::Operation::Describe => Operation::Describe,
                wire::Operation::All => Operation::All,
            },
            permission: match acl.permission {
                wire::Permission::Allow => Permission::Allow,
                wire::Permission::Deny => Permission::Deny,
            },
        },
    )
}

/// A stored ACL's wire form.
fn join(principal: String, rule: AclRule) -> Acl {
    Acl {
        principal,
        resource_type: match rule.resource_type {
            ResourceType::Topic => wire::ResourceType::Topic,
            ResourceType::Group => wire::ResourceType::Group,
            ResourceType::Cluster => wire::ResourceType::Cluster,
        },
        pattern_type: match rule.pattern_type {
            PatternType::Literal => wire::PatternType::Literal,
            PatternType::Prefixed => wire::PatternType::Prefixed,
        },
        resource_name: rule.resource_name,
        operation: match rule.operation {
            Operation::Read => wire::Operation::Read,
            Operation::Write => wire::Operation::Write,
            Operation::Create => wire::Operation::Create,
            Operation::Delete => wire::Operation::Delete,
            Operation::Alter => wire::Operation::Alter,
            Operation::Describe => wire::Operation::Describe,
            Operation::All => wire::Operation::All,
        },
        permission: match rule.permission {
            Permission::Allow => wire::Permission::Allow,
            Permission::Deny => wire::Permission::Deny,
        },
    }
}

/// A quota's wire form as the service takes it.
fn quota(q: wire::Quota) -> Quota {
    Quota {
        produce_bytes_per_sec: q.produce_bytes_per_sec,
        fetch_bytes_per_sec: q.fetch_bytes_per_sec,
        requests_per_sec: q.requests_per_sec,
    }
}

/// A stored quota's wire form.
fn quota_view(q: Quota) -> wire::Quota {
    wire::Quota {
        produce_bytes_per_sec: q.produce_bytes_per_sec,
        fetch_bytes_per_sec: q.fetch_bytes_per_sec,
        requests_per_sec: q.requests_per_sec,
    }
}

#[instrument(skip_all)]
async fn create_principal(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: NewPrincipal = json::parse(&headers, &body)?;
    state
        .service
        .create_principal(&caller, &request.name)
        .await?;
    Ok((StatusCode::CREATED, Json(request)).into_response())
}

async fn list_principals(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<wire::Principal>>, ApiError> {
    let principals = state.service.list_principals(&caller)?;
    Ok(Json(
        principals
            .into_iter()
            .map(|p| wire::Principal {
                name: p.name,
                created_ms: p.created_ms,
                key_ids: p.key_ids,
                quota: quota_view(p.quota),
            })
            .collect(),
    ))
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
        Json(NewKey {
            principal,
            key_id: key.key_id,
            key: key.key,
        }),
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
) -> Result<Json<PrincipalQuota>, ApiError> {
    let body: wire::Quota = json::parse(&headers, &body)?;
    state
        .service
        .set_quota(&caller, &principal, quota(body))
        .await?;
    Ok(Json(PrincipalQuota {
        principal,
        quota: body,
    }))
}

#[instrument(skip_all)]
async fn create_acl(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (principal, rule) = split(json::parse::<Acl>(&headers, &body)?);
    state
        .service
        .add_acl(&caller, &principal, rule.clone())
        .await?;
    Ok((StatusCode::CREATED, Json(join(principal, rule))).into_response())
}

#[instrument(skip_all)]
async fn delete_acl(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (principal, rule) = split(json::parse::<Acl>(&headers, &body)?);
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
) -> Result<Json<Vec<Acl>>, ApiError> {
    let acls = state
        .service
        .list_acls(&caller, query.principal.as_deref())?;
    Ok(Json(
        acls.into_iter()
            .map(|(principal, rule)| join(principal, rule))
            .collect(),
    ))
}
