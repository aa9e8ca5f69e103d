//! The OpenAPI document and the reference page a real node serves: `/openapi.json` is
//! OpenAPI 3.1 JSON describing every route of docs/api.md, each of its operations is
//! routed by the node (none answers `route_not_found` or 405), every schema it references
//! is defined, and both it and `/docs` stay open on a cluster started with `--auth`.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::collections::BTreeSet;
use std::time::Duration;

use psubd_tests::Cluster;
use serde_json::Value;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `/v1/topics/{t}/keys/{key}` → `/v1/topics/{}/keys/{}`: docs and document name path
/// parameters differently.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            c if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every `METHOD /path` docs/api.md names in code spans, without query strings.
fn documented_routes() -> BTreeSet<(String, String)> {
    let doc = include_str!("../../docs/api.md");
    let mut routes = BTreeSet::new();
    for span in doc.split('`').skip(1).step_by(2) {
        let Some((method, path)) = span.split_once(' ') else {
            continue;
        };
        let method = method.to_ascii_lowercase();
        if !METHODS.contains(&method.as_str()) || !path.starts_with('/') {
            continue;
        }
        let path = path.split(['?', '[', ' ']).next().unwrap_or(path);
        routes.insert((method, shape(path)));
    }
    routes
}

/// Every (method, path) of the document.
fn described_routes(spec: &Value) -> Vec<(String, String)> {
    let paths = spec["paths"].as_object().expect("paths is an object");
    let mut routes = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.push((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String, String) {
    let response = http
        .get(url)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (
        status,
        content_type,
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_serves_an_openapi_3_1_document_of_every_route() {
    let cluster = Cluster::start(1).await;
    let http = cluster.client();
    let base = cluster.http(1);

    let (status, content_type, body) = get(&http, &format!("{base}/openapi.json")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let spec: Value = serde_json::from_str(&body).expect("the document is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(spec["info"]["title"], "psubd");
    assert!(spec["info"]["version"].is_string());

    // Every route of docs/api.md is described.
    let described: BTreeSet<(String, String)> = described_routes(&spec)
        .into_iter()
        .map(|(method, path)| (method, shape(&path)))
        .collect();
    let documented = documented_routes();
    assert!(documented.len() >= 35, "docs/api.md names {documented:?}");
    let missing: Vec<_> = documented.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "in docs/api.md, not in /openapi.json: {missing:?}"
    );

    // Every operation has a unique id, answers and only defined schema references.
    let schemas = spec["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    let mut ids = BTreeSet::new();
    for (method, path) in described_routes(&spec) {
        let op = &spec["paths"][&path][&method];
        let id = op["operationId"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(id.clone()),
            "{method} {path}: operationId '{id}' repeats"
        );
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
    for reference in body.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(
            schemas.contains_key(name),
            "{name} is referenced, not defined"
        );
    }

    // The node routes every described operation: with placeholder names each answers
    // something, but never "no such route" or "method not allowed".
    for (method, path) in described_routes(&spec) {
        let url = format!(
            "{base}{}",
            path.replace("{partition}", "0").replace(['{', '}'], "")
        );
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .expect("an HTTP method");
        let response = http
            .request(method.clone(), &url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {url} is not routed: {body}");
        assert!(
            !body.contains("route_not_found"),
            "{method} {url} is not routed: {body}"
        );
    }

    // The reference page is self-contained and reads the document.
    let (status, content_type, page) = get(&http, &format!("{base}/docs")).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains("openapi.json"));
    for external in ["<script src=", "<link ", "https://", "http://"] {
        assert!(
            !page.contains(external),
            "/docs loads something from elsewhere: {external}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_page_need_no_key_under_auth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("admin.key");
    std::fs::write(
        &key_file,
        "admin.0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .expect("write the admin key file");
    let key_path = key_file.display().to_string();
    let cluster = Cluster::start_with_env(
        1,
        &[("PSUBD_AUTH", "true"), ("PSUBD_ADMIN_KEY_FILE", &key_path)],
    )
    .await;
    let http = cluster.client();
    let base = cluster.http(1);
    let (status, _, body) = get(&http, &format!("{base}/v1/topics")).await;
    assert_eq!(status, 401, "{body}");
    for path in ["/openapi.json", "/docs"] {
        let (status, _, body) = get(&http, &format!("{base}{path}")).await;
        assert_eq!(status, 200, "{path} without a key: {body}");
    }
}
