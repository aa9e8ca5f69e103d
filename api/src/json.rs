//! Extracting JSON request bodies with the project's error bodies (axum's own
//! rejections would answer in plain text).

use axum::body::Bytes;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The request's media type, lower-cased, without parameters (`application/json`).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        raw.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Requires `application/json`. A body without a Content-Type is refused too: a web page
/// can send one cross-site without the browser asking the server first, so taking it would
/// let any page the user opens write to a cluster it can reach.
///
/// # Errors
/// 415 for any other media type, or none.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers).as_deref() {
        Some("application/json") => Ok(()),
        other => Err(ApiError::UnsupportedMediaType {
            content_type: other.unwrap_or("none").to_string(),
            expected: "application/json",
        }),
    }
}

/// Parses a JSON body, which is an object on every route that calls this (serde would
/// also take a struct written as an array of its fields, which no client means).
///
/// # Errors
/// 415 for a non-JSON media type, 400 `invalid_json` for a malformed body or one that is
/// not an object.
pub fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    require_json(headers)?;
    expect_object(body, "body")?;
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson {
        message: format!("invalid JSON body: {e}"),
    })
}

/// Refuses JSON text (`what`: "body", "line") that is not an object before serde reads
/// it as a struct: serde would also take an array of the struct's fields in order.
///
/// # Errors
/// 400 `invalid_json`.
pub fn expect_object(text: &[u8], what: &str) -> Result<(), ApiError> {
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::InvalidJson {
            message: format!("invalid JSON {what}: expected an object"),
        }),
    }
}

/// The query string as `T`, refusing a malformed one with the project's error body (400
/// `invalid_request`): axum's own `Query` answers its rejections in plain text, which no
/// client of this API (nor the OpenAPI document's `default` answer) expects.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| ApiError::InvalidRequest {
                message: rejection.body_text(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::expect_object;

    #[test]
    fn only_an_object_is_taken_as_a_body() {
        assert!(expect_object(b" \n{\"a\":1}", "body").is_ok());
        for refused in [&b"[null, null]"[..], b"null", b"42", b"", b"  "] {
            assert!(expect_object(refused, "body").is_err(), "{refused:?}");
        }
    }
}
