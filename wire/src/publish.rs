//! Publishing: `POST /v1/topics/{t}/records` (and the NDJSON `records:stream`, whose lines
//! are [`NewRecord`]s and whose answers are [`RecordReport`]s).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorBody;

/// How values (and keys) are written in a publish body, and how a read marks a binary
/// value.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `value` is any JSON, stored as its text (the default).
    #[default]
    Json,
    /// `value` is a JSON string, stored as its UTF-8.
    String,
    /// `value` and `key` are base64 strings of binary data.
    Base64,
}

/// One record to publish.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// Partitioning key: equal keys go to one partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The value; `None` (or JSON `null`) is a tombstone, meaningful on compacted topics.
    #[serde(default)]
    pub value: Option<Value>,
    /// Headers: names to string values, at most 8 KiB together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Explicit partition; else the key's hash, else round-robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Record timestamp; defaults to the receiving node's clock, or for a delayed record
    /// to its due time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// Idempotency id, 1 to 256 bytes: a record whose id its partition stored within the
    /// topic's `duplicate_window_ms` is not stored again (its report says `duplicate`).
    /// Without key or partition, the id picks the partition, so a retry lands on the same.
    /// Not with `deliver_at_ms` or `delay_ms` (400 `invalid_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Deliver at this time (ms since the epoch): the record is not readable before it.
    /// A time now or past is an ordinary publish. Not with `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<i64>,
    /// Deliver this many ms after the receiving node's clock. Not with `deliver_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl NewRecord {
    /// A record with this value (JSON).
    pub fn new(value: impl Into<Value>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// A deletion of `key` (a `null` value).
    pub fn tombstone(key: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            ..Self::default()
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .get_or_insert_with(BTreeMap::new)
            .insert(name.into(), value.into());
        self
    }

    /// Sets the partition.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the idempotency id: a retry with the same id is stored once.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Delivers the record at `deliver_at_ms` (ms since the epoch) instead of now (and
    /// drops a `delay_ms` set before).
    #[must_use]
    pub fn deliver_at_ms(mut self, deliver_at_ms: i64) -> Self {
        self.deliver_at_ms = Some(deliver_at_ms);
        self.delay_ms = None;
        self
    }

    /// Delivers the record `delay_ms` after the receiving node's clock (and drops a
    /// `deliver_at_ms` set before).
    #[must_use]
    pub fn delay_ms(mut self, delay_ms: u64) -> Self {
        self.delay_ms = Some(delay_ms);
        self.deliver_at_ms = None;
        self
    }

    /// True when the record carries a due time (`deliver_at_ms` or `delay_ms`).
    pub fn is_delayed(&self) -> bool {
        self.deliver_at_ms.is_some() || self.delay_ms.is_some()
    }
}

/// The JSON body of a batch publish: 1 to 1000 records.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// How the values are written (default `json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// The records, answered in this order.
    pub records: Vec<NewRecord>,
}

/// Where one record was stored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryReport {
    /// Partition the record went to.
    pub partition: u32,
    /// Its offset there (a duplicate's: the original record's).
    pub offset: u64,
    /// Its timestamp (a duplicate's: the one this request gave it).
    pub timestamp_ms: i64,
    /// The record's id was stored within the duplicate window: this record was not stored
    /// again, and `offset` is the original's. Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Where a delayed record was stored: its partition's delay queue. It has no offset yet:
/// it gets one when it is released into the log at its due time (within about a second).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayedReport {
    /// Partition the record went to.
    pub partition: u32,
    /// Always `true`: the record waits in the delay queue.
    pub delayed: bool,
    /// When it becomes readable, ms since the epoch.
    pub deliver_at_ms: i64,
    /// Its timestamp (its due time unless the record gave one).
    pub timestamp_ms: i64,
}

/// A record that was not stored (a row of a 207, or an NDJSON report line).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    /// The partition the record was meant for, when it was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Why: `not_available` means it was not written; `outcome_unknown` that it may be.
    #[serde(flatten)]
    pub error: ErrorBody,
}

/// One record's report: stored, queued until its due time, or failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordReport {
    /// Stored at this offset.
    Delivered(DeliveryReport),
    /// A delayed record, stored in its partition's delay queue (no offset yet).
    Delayed(DelayedReport),
    /// Not stored (or its fate unknown, per its error).
    Failed(FailedRecord),
}

impl RecordReport {
    /// The report of a record stored at an offset; any other report (delayed: no offset
    /// yet; failed) as it is.
    pub fn into_result(self) -> Result<DeliveryReport, RecordReport> {
        match self {
            RecordReport::Delivered(d) => Ok(d),
            other => Err(other),
        }
    }
}

/// The 200 and 207 answer of a batch publish: one report per record, in request order.
/// A 200 holds only [`RecordReport::Delivered`] and [`RecordReport::Delayed`]; a 207 a
/// mix.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// Reports in the order of the request's records.
    pub offsets: Vec<RecordReport>,
}

/// The 202 answer of an `acks=0` publish.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Records accepted for a background append.
    pub accepted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_reports_read_back_as_themselves() {
        for json in [
            r#"{"partition":1,"offset":4,"timestamp_ms":9}"#,
            r#"{"partition":1,"delayed":true,"deliver_at_ms":20,"timestamp_ms":20}"#,
            r#"{"partition":1,"error_code":50301,"error":"not_available","message":"m","retriable":true}"#,
        ] {
            let report: RecordReport = serde_json::from_str(json).unwrap();
            let expected = match json {
                j if j.contains("offset") => matches!(report, RecordReport::Delivered(_)),
                j if j.contains("delayed") => matches!(report, RecordReport::Delayed(_)),
                _ => matches!(report, RecordReport::Failed(_)),
            };
            assert!(expected, "{json} read as {report:?}");
            let again: serde_json::Value = serde_json::to_value(&report).unwrap();
            assert_eq!(
                again,
                serde_json::from_str::<serde_json::Value>(json).unwrap()
            );
        }
        let record = NewRecord::new(1).delay_ms(5).deliver_at_ms(7);
        assert_eq!((record.deliver_at_ms, record.delay_ms), (Some(7), None));
        assert!(record.is_delayed() && !NewRecord::new(1).is_delayed());
    }
}
