//! # Layout
//!
//! `psubd-api` is the HTTP edge every node runs. Any node answers any request: the edge
//! finds the node that owns the work and forwards it over the peer transport.
//!
//! - [`error`]: the one mapping from errors to HTTP status and JSON error bodies.
//! - [`forward`]: the node-to-node request protocol and how a node serves it locally.
//! - [`edge`]: routing — which node serves a request, and retries at leader hints.
//! - [`topics`], [`publish`], [`fetch`], [`cluster`]: one file per resource, each with
//!   its `router`.
//! - [`stream`]: partition streams as SSE or NDJSON, and what every stream shares;
//!   [`group_stream`]: group member streams; [`ws`]: the WebSocket API.
//! - [`groups`]: consumer groups (join, member fetch, commit, offsets, admin), and in
//!   [`group_routing`] how the edge reaches a group's coordinator.
//! - [`keys`]: key views of compacted topics (latest value per key, scan, put, delete).
//! - [`json`]: JSON body extraction with the project's error bodies.
//! - [`metrics`]: Prometheus metrics.
//! - [`state`]: what handlers share, and the request limits.

pub mod cluster;
pub mod edge;
pub mod error;
pub mod fetch;
pub mod group_routing;
pub mod group_stream;
pub mod groups;
pub mod json;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod publish;
pub mod render;
pub mod replica;
pub mod service;
pub mod state;
pub mod stream;
pub mod topics;
pub mod ws;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use edge::Edge;
pub use error::ApiError;
pub use limits::Limits;
pub use replica::ForwardService;
pub use service::{Caller, Service};
pub use state::AppState;

/// The whole HTTP API of a node.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(cluster::router(state.clone()))
        .merge(topics::router(state.clone()))
        .merge(publish::router(state.clone()))
        .merge(fetch::router(state.clone()))
        .merge(groups::router(state.clone()))
        .merge(stream::router(state.clone()))
        .merge(group_stream::router(state.clone()))
        .merge(ws::router(state.clone()))
        .merge(keys::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state, observe))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default();
                    tracing::debug_span!("http", method = %request.method(), matched_path = %route)
                })
                // A 5xx answered to a client (503 while electing, 504 outcome unknown) is
                // not by itself something an operator must act on: it is counted in the
                // metrics, and internal errors are logged where they happen (`error.rs`).
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(_method: Method) -> ApiError {
    ApiError::MethodNotAllowed
}

/// Counts requests and their latency by route.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await.into_response();
    state
        .service
        .metrics
        .http_latency
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    state
        .service
        .metrics
        .http_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}
