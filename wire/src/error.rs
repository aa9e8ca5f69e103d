//! The error body (docs/api.md § Errors).

use serde::{Deserialize, Serialize};

/// The body of every 4xx and 5xx answer, and of a failed record's report in a 207 or an
/// NDJSON publish.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// HTTP status × 100 + a number, e.g. 40401.
    pub error_code: u32,
    /// Stable snake_case name to match on, e.g. `topic_not_found`.
    pub error: String,
    /// For people.
    pub message: String,
    /// Whether the same request may succeed later unchanged.
    pub retriable: bool,
    /// On 416 `offset_out_of_range`: the partition's log start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_start_offset: Option<u64>,
    /// On 416 and 422 `offset_beyond_high_watermark`: the partition's high watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<u64>,
    /// On 412 `offset_mismatch`: the offset the condition was checked against — the
    /// partition's next offset (`expected_offset`), or the key's latest offset (`If-Match`;
    /// -1 when the key has no live record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_offset: Option<i64>,
}

impl ErrorBody {
    /// The HTTP status the code was derived from (`error_code / 100`).
    pub fn status(&self) -> u16 {
        u16::try_from(self.error_code / 100).unwrap_or(0)
    }
}
