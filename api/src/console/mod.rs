//! The web console every node serves at `GET /ui`: a page, its stylesheet and its script,
//! embedded in the binary (no build step, no CDN: it works offline). The page calls only
//! the node's public HTTP API from the browser, so any node shows the whole cluster, and
//! under `--auth` it asks for an API key and sends it like any client. The page itself is
//! open (it holds no data), as `/docs` is.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// The console page's path.
pub const PAGE_PATH: &str = "/ui";
/// The console's script.
pub const SCRIPT_PATH: &str = "/ui/console.js";
/// The console's stylesheet.
pub const STYLE_PATH: &str = "/ui/console.css";

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(PAGE_PATH, get(page))
        .route(SCRIPT_PATH, get(script))
        .route(STYLE_PATH, get(style))
        .with_state(state)
}

/// An embedded asset with its type. `no-cache`: a browser revalidates, so a node upgraded
/// to another version serves its own console at the next load.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console's promise of a small, self-contained download.
    #[test]
    fn the_assets_are_small_and_load_nothing_from_elsewhere() {
        let total = PAGE.len() + SCRIPT.len() + STYLE.len();
        assert!(total < 500 * 1024, "the console is {total} bytes");
        for asset in [PAGE, SCRIPT, STYLE] {
            for external in ["http://", "https://", "//cdn", "@import"] {
                let found = asset
                    .lines()
                    .filter(|line| line.contains(external))
                    // The SVG namespace is a name, not a download.
                    .find(|line| !line.contains("http://www.w3.org/2000/svg"));
                assert!(found.is_none(), "{external} in an asset: {found:?}");
            }
        }
        for path in [SCRIPT_PATH, STYLE_PATH] {
            assert!(PAGE.contains(path), "the page does not load {path}");
        }
    }
}
