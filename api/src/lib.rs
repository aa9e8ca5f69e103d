//! # Layout
//!
//! `psubd-api` is the edge every node runs. Any node answers any request: the edge finds
//! the node that owns the work and forwards it over the peer transport. Its layers, each
//! using only those below it (docs/architecture.md § The edge's layers):
//!
//! **Presentation** — parse a request, call one service operation, render the answer:
//! - [`topics`], [`publish`], [`fetch`], [`keys`], [`groups`], [`cluster`]: the HTTP
//!   resources, each with its `router`; [`reassign`]: replica moves and decommissions; [`stream`]: partition streams (SSE, NDJSON) and
//!   what every stream shares; [`group_stream`]: member streams; [`ws`]: the WebSocket API.
//! - [`json`]: JSON body extraction with the project's error bodies; [`render`]: the JSON
//!   form of records, shared by every answer that carries them; [`wire`]: domain values
//!   to their psubd-wire forms. Every JSON body is a `psubd_wire` type (hand-written
//!   record JSON in [`render`] is checked against them end to end).
//!
//! **Service** — [`service`]: every operation, typed, taking the [`Caller`] (the seam for
//! authentication, ACLs and quotas) and answering [`ApiError`]. [`auth`] identifies
//! callers (API keys, the admin key, quota buckets); [`access`] is the admin's HTTP
//! resource for principals, keys, ACLs and quotas.
//!
//! **Push** — [`push`]: the pushers of the push subscriptions this node coordinates
//! (reads and dead letters through the service, commits on the local offsets replica).
//!
//! **Routing** — [`edge`]: which node serves a request, retries at leader hints, waits
//! for a leader; [`group_routing`]: how the edge reaches a group's coordinator.
//!
//! **Replica** — [`replica`]: serving a request on this node's replicas, for the edge
//! and for peers. [`leadership`]: handing this node's leaderships over before it stops,
//! and moving partitions back to their preferred leaders. [`mover`]: carrying out replica
//! moves (on each partition's leader) and decommissions (on the controller's leader).
//!
//! **Protocol** — [`protocol`]: the node-to-node requests and answers.
//!
//! Beside them: [`error`] (the one error and its one mapping to HTTP), [`limits`] (the
//! request limits and their defaults), [`metrics`] (Prometheus), [`openapi`] (the OpenAPI
//! document and the `/docs` page), [`console`] (the web console at `/ui`), [`state`] (what
//! handlers share).

pub mod access;
pub mod auth;
pub mod cluster;
pub mod console;
pub mod edge;
pub mod error;
pub mod fetch;
pub mod group_routing;
pub mod group_stream;
pub mod groups;
pub mod json;
pub mod keys;
pub mod leadership;
pub mod limits;
pub mod metrics;
pub mod mover;
pub mod openapi;
pub mod protocol;
pub mod publish;
pub mod push;
pub mod reassign;
pub mod render;
pub mod replica;
pub mod service;
pub mod state;
pub mod stream;
pub mod topics;
pub mod wire;
pub mod ws;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::compression::predicate::{NotForContentType, Predicate};
use tower_http::compression::{CompressionLayer, DefaultPredicate};
use tower_http::decompression::RequestDecompressionLayer;
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
        .merge(access::router(state.clone()))
        .merge(reassign::router(state.clone()))
        .merge(openapi::router(state.clone()))
        .merge(console::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies in gzip or zstd both ways. A compressed request is inflated as the handler
        // reads it, so the request size limits bound what it inflates to. Streams (SSE,
        // NDJSON) are never compressed: the compressor would hold events back.
        .layer(RequestDecompressionLayer::new().gzip(true).zstd(true))
        // One layer screens every request (a layer costs per request: single-record
        // publishes showed it).
        .layer(middleware::from_fn_with_state(state.clone(), screen))
        .layer(middleware::from_fn_with_state(state, observe))
        .layer(CompressionLayer::new().gzip(true).zstd(true).compress_when(
            DefaultPredicate::new().and(NotForContentType::const_new("application/x-ndjson")),
        ))
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

/// Screens a request before any handler sees it: a body in an encoding the node does not
/// inflate ([`unknown_encoding`]), a browser request of a foreign web page
/// ([`foreign_origin`]), then who is calling ([`caller_of`]); the caller goes into the
/// request for the handler. Every refusal is the JSON error body.
async fn screen(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let checked = unknown_encoding(&request)
        .or_else(|| foreign_origin(&state, &request))
        .map_or_else(|| caller_of(&state, &request), Err);
    match checked {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// A body in an encoding the node does not inflate (the decompression layer would answer
/// an empty 415).
fn unknown_encoding(request: &Request) -> Option<ApiError> {
    let encoding = request
        .headers()
        .get(axum::http::header::CONTENT_ENCODING)?;
    let known = encoding.to_str().is_ok_and(|encoding| {
        encoding.split(',').all(|coding| {
            matches!(
                coding.trim().to_ascii_lowercase().as_str(),
                "gzip" | "x-gzip" | "zstd" | "identity"
            )
        })
    });
    (!known).then(|| ApiError::UnsupportedEncoding {
        encoding: String::from_utf8_lossy(encoding.as_bytes()).into_owned(),
    })
}

/// What a web page of another origin asks a browser to send here: any request but GET,
/// HEAD and OPTIONS, and the WebSocket upgrade (a GET, but a two-way channel), when it
/// carries an `Origin` not in `--allowed-origins`. Browsers send `Origin` with such
/// requests; command-line clients and libraries do not, and are not affected. Reads stay
/// open: without CORS headers a page cannot see their answers.
fn foreign_origin(state: &AppState, request: &Request) -> Option<ApiError> {
    let origin = request.headers().get(axum::http::header::ORIGIN)?;
    let writes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let upgrades = request.uri().path() == ws::PATH;
    let allowed = origin.to_str().is_ok_and(|origin| {
        state.allowed_origins.iter().any(|o| o == origin) || own_page(state, request, origin)
    });
    ((writes || upgrades) && !allowed).then(|| ApiError::OriginNotAllowed {
        origin: String::from_utf8_lossy(origin.as_bytes()).into_owned(),
    })
}

/// Whether `origin` is a page this node served itself (the console at [`console::PAGE_PATH`]),
/// reached at the host the request names: the origin's host and port are the request's
/// `Host`, and that host is an IP address, `localhost`, or the host of the node's
/// advertised URL. A page of a foreign domain that resolves to this node (DNS rebinding)
/// shows its own domain in both headers and stays refused.
fn own_page(state: &AppState, request: &Request, origin: &str) -> bool {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host_header = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if host_header != Some(authority) {
        return false;
    }
    let host = host_of(authority);
    if host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let broker = state.broker();
    let metadata = broker.metadata();
    metadata.nodes.get(&broker.node_id()).is_some_and(|node| {
        let url = node
            .http
            .split_once("://")
            .map_or(node.http.as_str(), |(_, r)| r);
        let authority = url.split('/').next().unwrap_or(url);
        host_of(authority).eq_ignore_ascii_case(host)
    })
}

/// The host of an authority (`name:8081` → `name`, `[::1]:8081` → `::1`).
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Paths any client may call without a key: liveness, readiness and metrics are what
/// load balancers, orchestrators and scrapers call, the API's description and its
/// reference page are what a developer reads before having a key, and the console's page
/// is what asks for the key; none reveals records.
pub const OPEN_PATHS: [&str; 8] = [
    "/healthz",
    "/readyz",
    "/metrics",
    openapi::SPEC_PATH,
    openapi::DOCS_PATH,
    console::PAGE_PATH,
    console::SCRIPT_PATH,
    console::STYLE_PATH,
];

/// Establishes the [`Caller`] of every request once, where it enters the cluster:
/// refuses a missing, malformed, unknown or revoked key (401) and a caller over its
/// request quota (429) before anything is parsed; handlers take the caller as an
/// extractor. A WebSocket upgrade is authenticated here too, by its `Authorization`
/// header; its operations then run as that caller.
fn caller_of(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) {
        return Ok(Caller::default());
    }
    let via = if path == ws::PATH {
        service::Via::WebSocket
    } else {
        service::Via::Http
    };
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let caller = state.service.authenticate(header, via, path)?;
    state.service.admit_request(&caller)?;
    Ok(caller)
}

/// Handlers take the request's [`Caller`] as an argument; the [`screen`] layer put it
/// there.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal {
                detail: "no caller: the authentication layer did not run".into(),
            })
    }
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

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_authority_drops_the_port_and_ipv6_brackets() {
        assert_eq!(host_of("127.0.0.1:8081"), "127.0.0.1");
        assert_eq!(host_of("node-1.example:8081"), "node-1.example");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("[::1]:8081"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
    }
}
