//! Fetch answers, parsed in place, and what a consumer counts from them.
//!
//! Values are borrowed from the answer's bytes (no copy per record); only the 32-byte
//! header of each value is read. Values a consumer did not expect (another run's, or
//! another writer's, or not strings) are counted as foreign and otherwise ignored.

use std::borrow::Cow;
use std::fmt;
use std::time::Instant;

use base64::Engine as _;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::duplicates::DuplicateTracker;
use super::error_class::ErrorCounts;
use super::latency::Latency;
use super::payload::{self, Header, HEADER_LEN};
use super::phase::RunClock;

/// A fetch answer (by offset or as a group member; the group fields are absent in the
/// former).
#[derive(Debug, Deserialize)]
pub struct FetchAnswer<'a> {
    /// Records in offset order per partition.
    #[serde(borrow)]
    pub records: Vec<FetchedRecord<'a>>,
    /// Offset to ask for next (by-offset fetch only).
    #[serde(default)]
    pub next_offset: Option<u64>,
    /// The partition's high watermark when the answer was made (by-offset fetch only).
    #[serde(default)]
    pub high_watermark: Option<u64>,
    /// The member's generation, when it changed (group fetch only).
    #[serde(default)]
    pub generation: Option<u64>,
    /// The member's partitions, when they changed (group fetch only).
    #[serde(default)]
    pub assignments: Option<Vec<Assignment>>,
    /// The member's position token, presented by its next fetch (group fetch only).
    #[serde(default)]
    pub position: Option<String>,
}

/// A partition assigned to a group member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Assignment {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
}

/// One fetched record; only what the bench reads.
#[derive(Debug, Deserialize)]
pub struct FetchedRecord<'a> {
    /// Partition (absent in some by-offset answers: the caller knows it).
    #[serde(default)]
    pub partition: Option<u32>,
    /// The record's offset.
    pub offset: u64,
    /// The value when it is a string (ours always are), else `None`.
    #[serde(borrow, default)]
    pub value: ValueText<'a>,
    /// `base64` for binary values (raw publishes may come back that way).
    #[serde(borrow, default)]
    pub encoding: Option<Cow<'a, str>>,
}

/// A record value seen as text: borrowed when the JSON string has no escapes.
#[derive(Debug, Default)]
pub struct ValueText<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for ValueText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueTextVisitor)
    }
}

struct ValueTextVisitor;

impl<'de> Visitor<'de> for ValueTextVisitor {
    type Value = ValueText<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(ValueText(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(ValueText(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(ValueText(Some(Cow::Owned(v))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ValueText(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ValueText(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(ValueText(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(ValueText(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(ValueText(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(ValueText(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ValueText(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(ValueText(None))
    }
}

impl FetchedRecord<'_> {
    /// The bench header of this record's value, if it has one.
    pub fn header(&self) -> Option<Header> {
        let text = self.value.0.as_deref()?;
        if self.encoding.as_deref() == Some("base64") {
            // 44 base64 characters hold the first 33 bytes: decode only those.
            let prefix = &text.as_bytes()[..text.len().min(44)];
            let mut buf = [0u8; 48];
            let n = base64::engine::general_purpose::STANDARD
                .decode_slice(prefix, &mut buf)
                .ok()?;
            payload::read_header(&buf[..n.min(HEADER_LEN)])
        } else {
            payload::read_header(text.as_bytes())
        }
    }

    /// Size of the value in bytes (decoded size for base64).
    pub fn value_len(&self) -> u64 {
        let text = self.value.0.as_deref().unwrap_or("");
        if self.encoding.as_deref() == Some("base64") {
            let padding = text.bytes().rev().take_while(|&b| b == b'=').count();
            ((text.len() / 4 * 3).saturating_sub(padding)) as u64
        } else {
            text.len() as u64
        }
    }
}

/// What one consumer task counted; merged into the run's totals.
#[derive(Debug, Clone, Default)]
pub struct ConsumeStats {
    /// Records received inside the window.
    pub records: u64,
    /// Value bytes received inside the window.
    pub bytes: u64,
    /// Fetch requests answered inside the window.
    pub fetches: u64,
    /// Fetch request latency (includes long-poll waits when caught up).
    pub fetch_latency: Latency,
    /// Publish → consume latency of records sent inside the window.
    pub e2e: Latency,
    /// Failed fetches and commits by class.
    pub errors: ErrorCounts,
    /// Records seen twice.
    pub duplicates: u64,
    /// Records not written by this run (earlier runs, other writers, not strings).
    pub foreign: u64,
}

impl ConsumeStats {
    /// Counts one fetch answer received at `received_at`. `default_partition` names the
    /// partition of by-offset answers whose records omit it.
    pub fn count_answer(
        &mut self,
        answer: &FetchAnswer<'_>,
        clock: &RunClock,
        sent_at: Instant,
        received_at: Instant,
        default_partition: u32,
        duplicates: &mut DuplicateTracker,
    ) {
        let in_window = clock.in_window(received_at);
        if in_window {
            self.fetches += 1;
            self.fetch_latency.record(received_at - sent_at);
        }
        let received_us = super::phase::now_us();
        for record in &answer.records {
            if in_window {
                self.records += 1;
                self.bytes += record.value_len();
            }
            let Some(h) = record.header() else {
                self.foreign += 1;
                continue;
            };
            if h.run != clock.run || !clock.sent_during_run(h.sent_at_us) {
                self.foreign += 1;
                continue;
            }
            let partition = record.partition.unwrap_or(default_partition);
            if duplicates.observe(partition, h.producer, h.seq) {
                self.duplicates += 1;
                continue;
            }
            if clock.sent_in_window(h.sent_at_us) {
                self.e2e.record_us(received_us.saturating_sub(h.sent_at_us));
            }
        }
    }

    /// Adds another task's counts.
    pub fn merge(&mut self, other: &ConsumeStats) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.fetches += other.fetches;
        self.fetch_latency.merge(&other.fetch_latency);
        self.e2e.merge(&other.e2e);
        self.errors.merge(&other.errors);
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(run: u8, seq: u64) -> String {
        let t = payload::RequestTemplate::raw(64);
        String::from_utf8(t.build(run, 1, 3, seq).to_vec()).unwrap()
    }

    #[test]
    fn parses_by_offset_answers_and_reads_headers() {
        let body = format!(
            r#"{{"records":[{{"topic":"t","partition":2,"offset":7,"timestamp_ms":1,"key":null,
               "value":"{}","headers":{{}}}},
               {{"topic":"t","partition":2,"offset":8,"key":"k","value":{{"a":[1,2]}},"headers":{{}}}}],
               "next_offset":9,"high_watermark":9}}"#,
            value(1, 5)
        );
        let a: FetchAnswer = serde_json::from_str(&body).unwrap();
        assert_eq!(a.next_offset, Some(9));
        assert_eq!(a.records.len(), 2);
        assert!(matches!(a.records[0].value.0, Some(Cow::Borrowed(_))));
        assert_eq!(a.records[0].header().map(|h| h.seq), Some(5));
        assert_eq!(a.records[1].header(), None);
    }

    #[test]
    fn reads_headers_of_base64_values() {
        let raw = value(2, 9);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw.as_bytes());
        let body = format!(
            r#"{{"records":[{{"partition":0,"offset":0,"value":"{b64}","encoding":"base64"}}],"next_offset":1,"high_watermark":1}}"#
        );
        let a: FetchAnswer = serde_json::from_str(&body).unwrap();
        let h = a.records[0].header().unwrap();
        assert_eq!((h.run, h.seq), (2, 9));
        assert_eq!(a.records[0].value_len(), 64);
    }

    #[test]
    fn counts_foreign_duplicates_and_e2e() {
        let clock = RunClock::start(
            1,
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(60),
            None,
        );
        let now = super::super::phase::now_us();
        let mk = |run: u8, seq: u64| {
            let t = payload::RequestTemplate::raw(40);
            String::from_utf8(t.build(run, now, 0, seq).to_vec()).unwrap()
        };
        let body = format!(
            r#"{{"records":[{{"offset":0,"value":"{}"}},{{"offset":1,"value":"{}"}},{{"offset":2,"value":"{}"}}],"next_offset":3,"high_watermark":3}}"#,
            mk(1, 0),
            mk(1, 0),
            mk(0, 1)
        );
        let a: FetchAnswer = serde_json::from_str(&body).unwrap();
        let mut stats = ConsumeStats::default();
        let mut dups = DuplicateTracker::default();
        let t = Instant::now();
        stats.count_answer(&a, &clock, t, t, 4, &mut dups);
        assert_eq!(stats.records, 3);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.foreign, 1);
        assert_eq!(stats.e2e.count(), 1);
    }
}
