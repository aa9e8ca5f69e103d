//! Reading: a record as every read renders it, `GET …/partitions/{p}/records`, key views.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::publish::Encoding;

/// A stored record, the same in a fetch, a member fetch, a key read, a stream and the
/// WebSocket.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// Record timestamp.
    pub timestamp_ms: i64,
    /// Key (`None` when the record has none).
    pub key: Option<String>,
    /// Value as published: JSON as JSON, strings as strings, binary as base64 (then
    /// `encoding` is `base64`); `null` for a tombstone.
    pub value: Value,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `Some(Base64)` for a binary value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
}

impl Record {
    /// The value as text: a string value as it is, anything else as its JSON text.
    pub fn value_text(&self) -> String {
        match &self.value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// The 200 answer of a fetch by offset.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Records from the requested offset (empty when none arrived within `timeout_ms`).
    pub records: Vec<Record>,
    /// Offset to fetch next (past any compacted gap the read crossed).
    pub next_offset: u64,
    /// The partition's high watermark as the answering node knows it.
    pub high_watermark: u64,
}

/// The 200 answer of a key scan, `GET /v1/topics/{t}/keys`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyScan {
    /// Live keys in key order, each as its latest record.
    pub keys: Vec<Record>,
    /// Pass as `start` for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Where a read starts: the `offset` parameter of a fetch or a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetSpec {
    /// The log start.
    #[default]
    Earliest,
    /// The high watermark: only records written from now on.
    Latest,
    /// This offset.
    At(u64),
    /// The first record stamped at or after this time (ms since the epoch): `@<ms>`.
    AtTime(i64),
}

impl fmt::Display for OffsetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffsetSpec::Earliest => f.write_str("earliest"),
            OffsetSpec::Latest => f.write_str("latest"),
            OffsetSpec::At(n) => write!(f, "{n}"),
            OffsetSpec::AtTime(ms) => write!(f, "@{ms}"),
        }
    }
}

impl FromStr for OffsetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "earliest" => Ok(OffsetSpec::Earliest),
            "latest" => Ok(OffsetSpec::Latest),
            n => match n.strip_prefix('@') {
                Some(ms) => ms.parse().map(OffsetSpec::AtTime),
                None => n.parse().map(OffsetSpec::At),
            }
            .map_err(|_| {
                format!(
                    "'{s}' is not an offset: use earliest, latest, a number or @ and a time in ms since the epoch"
                )
            }),
        }
    }
}
