//! The OpenAPI 3.1 document every node serves at `GET /openapi.json`, and the browsable
//! reference at `GET /docs` (a page embedded in the binary that renders the document, so
//! it works offline and needs no CDN).
//!
//! Schemas come from the psubd-wire types (their `openapi` feature derives `ToSchema`), so
//! the document cannot drift from the bodies the handlers build. Operations are listed in
//! `operations.rs`, one table for the whole router; a test checks that it names exactly the
//! routes the routers register.

mod build;
mod operations;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use psubd_wire as w;
#[cfg(test)]
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder};

use crate::state::AppState;
use build::Spec;
pub use build::NAME_PATTERN;

/// The document's path.
pub const SPEC_PATH: &str = "/openapi.json";
/// The reference page's path.
pub const DOCS_PATH: &str = "/docs";

/// The reference page: plain HTML and JavaScript, no external assets.
const DOCS_PAGE: &str = include_str!("docs.html");

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(SPEC_PATH, get(spec))
        .route(DOCS_PATH, get(docs))
        .with_state(state)
}

/// The document's JSON, built once per process: it depends only on the code.
fn spec_json() -> &'static [u8] {
    static SPEC: OnceLock<Vec<u8>> = OnceLock::new();
    SPEC.get_or_init(|| {
        serde_json::to_value(document())
            .map(build::with_content_schemas)
            .and_then(|document| serde_json::to_vec(&document))
            .unwrap_or_default()
    })
}

async fn spec() -> Response {
    let mut response = spec_json().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn docs() -> Response {
    let mut response = DOCS_PAGE.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut spec = Spec {
        schemas: BTreeMap::new(),
        paths: PathsBuilder::new(),
        routes: Vec::new(),
    };
    for op in operations::all(&mut spec) {
        spec.add(op);
    }
    // Frames of the WebSocket API, which OpenAPI cannot attach to an operation.
    spec.schema::<w::ServerFrame>();
    spec.schema::<w::StreamItem>();
    let components = ComponentsBuilder::new()
        .schemas_from_iter(spec.schemas)
        .security_scheme(
            "api_key",
            SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    let tags = [
        (
            "cluster",
            "Health, readiness, metrics and the cluster's layout.",
        ),
        (
            "topics",
            "Creating, describing, altering and deleting topics.",
        ),
        ("records", "Publishing and reading records."),
        (
            "streams",
            "Server-Sent Events or NDJSON streams of records.",
        ),
        ("keys", "Key views of compacted topics."),
        (
            "groups",
            "Consumer groups: members, fetches, commits, offsets.",
        ),
        (
            "access",
            "Principals, API keys, ACLs and quotas (the admin's routes).",
        ),
        ("websocket", "The WebSocket API."),
        (
            "reference",
            "This document, its browsable form and the web console.",
        ),
    ];
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("psubd")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "psubd's HTTP API: any node answers any request. With `--auth`, every \
                     route but /healthz, /readyz, /metrics, /openapi.json, /docs and /ui needs \
                     `Authorization: Bearer <key>`.",
                )),
        )
        .paths(spec.paths.build())
        .components(Some(components))
        // A key is needed only on a cluster started with --auth: both are valid.
        .security(Some([
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]))
        .tags(Some(tags.into_iter().map(|(name, description)| {
            TagBuilder::new()
                .name(name)
                .description(Some(description))
                .build()
        })))
        .build()
}

/// Every (method, path) the document describes.
#[cfg(test)]
fn described_routes() -> Vec<(HttpMethod, &'static str)> {
    let mut spec = Spec {
        schemas: BTreeMap::new(),
        paths: PathsBuilder::new(),
        routes: Vec::new(),
    };
    for op in operations::all(&mut spec) {
        spec.add(op);
    }
    spec.routes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    /// The routes registered in the routers' sources: each `.route("path", get(..).post(..))`
    /// (and the WebSocket's `PATH`). Read from the sources because axum's router does not
    /// list its routes.
    fn registered_routes() -> BTreeSet<(String, String)> {
        let sources = [
            include_str!("../access.rs"),
            include_str!("../reassign.rs"),
            include_str!("../cluster.rs"),
            include_str!("../console/mod.rs"),
            include_str!("../fetch.rs"),
            include_str!("../group_stream.rs"),
            include_str!("../groups.rs"),
            include_str!("../keys.rs"),
            include_str!("mod.rs"),
            include_str!("../publish.rs"),
            include_str!("../stream.rs"),
            include_str!("../topics.rs"),
            include_str!("../ws/mod.rs"),
        ];
        let mut routes = BTreeSet::new();
        for source in sources {
            // Only the code: this module's tests talk about `.route(` too.
            let code = source
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or(source);
            for call in code.split(".route(").skip(1) {
                // The call's arguments end at the parenthesis that closes `.route(`.
                let mut depth = 1;
                let end = call
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(call.len(), |(i, _)| i);
                let call = &call[..end];
                let Some((path, handlers)) = call.split_once(',') else {
                    continue;
                };
                let path = match path.trim() {
                    "PATH" => crate::ws::PATH.to_string(),
                    "SPEC_PATH" => SPEC_PATH.to_string(),
                    "DOCS_PATH" => DOCS_PATH.to_string(),
                    "PAGE_PATH" => crate::console::PAGE_PATH.to_string(),
                    "SCRIPT_PATH" => crate::console::SCRIPT_PATH.to_string(),
                    "STYLE_PATH" => crate::console::STYLE_PATH.to_string(),
                    literal => literal.trim_matches('"').to_string(),
                };
                for method in ["get", "post", "put", "patch", "delete"] {
                    let called = handlers.trim_start().starts_with(&format!("{method}("))
                        || handlers.contains(&format!(".{method}("));
                    if called {
                        routes.insert((method.to_string(), path.clone()));
                    }
                }
            }
        }
        routes
    }

    #[test]
    fn the_document_describes_exactly_the_routers_routes() {
        let registered = registered_routes();
        assert!(
            registered.len() > 30,
            "only {} routes found",
            registered.len()
        );
        let described: BTreeSet<(String, String)> = described_routes()
            .into_iter()
            .map(|(method, path)| {
                let method = serde_json::to_value(&method)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (method, path.to_string())
            })
            .collect();
        let missing: Vec<_> = registered.difference(&described).collect();
        let extra: Vec<_> = described.difference(&registered).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "documented routes no router has: {extra:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_referenced_schema() {
        let json: Value = serde_json::from_slice(spec_json()).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        let schemas = json["components"]["schemas"].as_object().unwrap();
        let text = json.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
        for name in [
            "ErrorBody",
            "Topic",
            "Record",
            "ServerFrame",
            "Acl",
            "StreamItem",
        ] {
            assert!(schemas.contains_key(name), "{name} is missing");
        }
    }
}
