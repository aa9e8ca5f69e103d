//! Typed calls to one node's HTTP API (docs/api.md), for tests.
//!
//! Helpers whose name has no `try_` assert success and panic with the status and body
//! otherwise. They do not retry `503`: a node waits for a partition's leader itself (up
//! to its write timeout) before answering it, so a user of a healthy cluster never sees
//! one, and neither may a test. They retry only a refused connection (a node restarting in
//! a fault test), and the publish helpers the records a `207` reports as `not_available`.
//! Tests about availability use the `try_` forms, which never retry and never panic.

use std::fmt::Display;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::wire::{
    ClusterInfo, DeliveryReport, ErrorBody, FetchResponse, NewRecord, PartitionInfo,
    PublishResponse, Record, Topic,
};

/// How long the asserting helpers keep retrying a refused connection (or a record a node
/// could not place) before giving up: longer than a node's restart.
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Pause between retries (bounded by [`RETRY_WINDOW`]).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Client-side bound on one request, above the longest server-side long-poll (30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// Most records asked for per fetch by [`NodeClient::fetch_all`] (docs/api.md's default).
const FETCH_PAGE: u32 = 500;

/// Which failed publish answers [`NodeClient::publish_retrying`] sends again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retries {
    /// Only what certainly was not written: exactly one copy of each record.
    OnlyUnwritten,
    /// Also an unknown outcome: at least one copy of each record.
    AlsoUnknownOutcome,
}

/// Result of one publish attempt, for tests about availability.
#[derive(Debug)]
pub enum PublishOutcome {
    /// 200: the records are committed at these offsets.
    Acked(Vec<DeliveryReport>),
    /// 503: nothing was written; the node should say when to retry.
    Unavailable {
        /// The `Retry-After` header, if any.
        retry_after: Option<String>,
        /// The error body.
        body: String,
    },
    /// 207 Multi-Status: some records are committed (their reports carry offsets), others
    /// failed (their reports carry the error body).
    Partial {
        /// The per-record reports.
        body: String,
    },
    /// 504 `outcome_unknown`: the records may or may not be committed.
    OutcomeUnknown {
        /// The error body.
        body: String,
    },
    /// Any other HTTP answer.
    Rejected {
        /// HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// No HTTP answer.
    Transport {
        /// True when the request certainly never reached the node (connection refused),
        /// so nothing can have been written.
        not_sent: bool,
        /// The error.
        error: String,
    },
}

/// One node's HTTP API. Cheap to clone (the underlying pool is shared).
#[derive(Debug, Clone)]
pub struct NodeClient {
    client: reqwest::Client,
    base: String,
}

impl NodeClient {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:8081`).
    pub fn new(client: reqwest::Client, base: impl Into<String>) -> Self {
        Self {
            client,
            base: base.into(),
        }
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base` + `path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The shared HTTP client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// `GET /readyz` answers 200.
    pub async fn is_ready(&self) -> bool {
        matches!(
            self.client
                .get(self.url("/readyz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await,
            Ok(r) if r.status().as_u16() == 200
        )
    }

    /// `GET /v1/cluster`.
    ///
    /// # Errors
    ///
    /// The transport error, or a non-200 status with its body.
    pub async fn try_cluster_info(&self) -> Result<ClusterInfo, String> {
        let resp = self.send(self.client.get(self.url("/v1/cluster"))).await?;
        expect_json(resp, 200).await
    }

    /// `POST /v1/topics`; asserts 201 .
    ///
    /// # Panics
    ///
    /// On any other answer.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Topic {
        let body = json!({
            "name": name,
            "partitions": partitions,
            "replication_factor": replication_factor,
        });
        let resp = self
            .retry_refused(&format!("create topic {name}"), || {
                self.client.post(self.url("/v1/topics")).json(&body)
            })
            .await;
        let topic: Topic = expect_json(resp, 201)
            .await
            .unwrap_or_else(|e| panic!("create topic {name} on {}: {e}", self.base));
        assert_eq!(topic.name, name, "created topic's name");
        assert_eq!(topic.partitions, partitions, "created topic's partitions");
        topic
    }

    /// `GET /v1/topics/{t}/partitions`, without retries.
    ///
    /// # Errors
    ///
    /// The transport error, or a non-200 status with its body.
    pub async fn try_partitions(&self, topic: &str) -> Result<Vec<PartitionInfo>, String> {
        let resp = self
            .send(
                self.client
                    .get(self.url(&format!("/v1/topics/{topic}/partitions"))),
            )
            .await?;
        expect_json(resp, 200).await
    }

    /// `POST /v1/groups/{group}/offsets` for `member` (an answer of [`Self::join_earliest`]):
    /// commits `offset` of one partition; asserts 204.
    pub async fn commit_member(
        &self,
        group: &str,
        member: &Value,
        topic: &str,
        partition: u32,
        offset: u64,
    ) {
        let resp = self
            .client
            .post(self.url(&format!("/v1/groups/{group}/offsets")))
            .json(&json!({
                "member_id": member["member_id"],
                "generation": member["generation"],
                "offsets": [{"topic": topic, "partition": partition, "offset": offset}],
            }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("commit {offset} of {group} on {}: {e}", self.base));
        assert_eq!(resp.status(), 204, "commit {offset} of {group}");
    }

    /// `POST /v1/groups/{group}/members` with `topics`, `auto_offset_reset: earliest` and
    /// the given session timeout; asserts 201 at the first answer (a node waits for the
    /// group's coordinator itself) and returns the answer (`member_id`, `generation`,
    /// `assignments`).
    pub async fn join_earliest(
        &self,
        group: &str,
        topics: &[&str],
        session_timeout_ms: u64,
    ) -> Value {
        let body = json!({
            "topics": topics,
            "session_timeout_ms": session_timeout_ms,
            "auto_offset_reset": "earliest",
        });
        let resp = self
            .retry_refused(&format!("join {group}"), || {
                self.client
                    .post(self.url(&format!("/v1/groups/{group}/members")))
                    .json(&body)
            })
            .await;
        expect_json(resp, 201)
            .await
            .unwrap_or_else(|e| panic!("join {group} on {}: {e}", self.base))
    }

    /// `GET /v1/topics/{t}/partitions`; asserts 200 .
    ///
    /// # Panics
    ///
    /// On any other answer.
    pub async fn partitions(&self, topic: &str) -> Vec<PartitionInfo> {
        let resp = self
            .retry_refused(&format!("partitions of {topic}"), || {
                self.client
                    .get(self.url(&format!("/v1/topics/{topic}/partitions")))
            })
            .await;
        expect_json(resp, 200)
            .await
            .unwrap_or_else(|e| panic!("partitions of {topic} on {}: {e}", self.base))
    }

    /// One publish attempt (`acks=all`), classified; never retries, never panics.
    pub async fn try_publish(
        &self,
        topic: &str,
        records: &[NewRecord],
        timeout: Duration,
    ) -> PublishOutcome {
        let req = self
            .client
            .post(self.url(&format!("/v1/topics/{topic}/records?acks=all")))
            .json(&json!({ "records": records }))
            .timeout(timeout);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return PublishOutcome::Transport {
                    not_sent: e.is_connect(),
                    error: e.to_string(),
                }
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) => {
                return PublishOutcome::Transport {
                    not_sent: false,
                    error: format!("status {status}, body unreadable: {e}"),
                }
            }
        };
        match status {
            207 => PublishOutcome::Partial { body },
            200 => match serde_json::from_str::<PublishResponse>(&body) {
                Ok(p) => PublishOutcome::Acked(p.offsets),
                Err(e) => PublishOutcome::Rejected {
                    status,
                    body: if has_per_record_errors(&body) {
                        format!(
                            "200 whose `offsets` hold per-record errors (docs/api.md: a 200 has \
                             an offset for every record; a leaderless partition is a 503): {}",
                            clip(&body)
                        )
                    } else {
                        format!("unparsable 200 body ({e}): {}", clip(&body))
                    },
                },
            },
            503 => PublishOutcome::Unavailable { retry_after, body },
            504 => PublishOutcome::OutcomeUnknown { body },
            _ => PublishOutcome::Rejected { status, body },
        }
    }

    /// Publishes `records` (`acks=all`) and returns their delivery reports, retrying
    /// what certainly was not written: a refused connection, and the records a
    /// `207` reports as `not_available` (the committed ones keep their offsets; a
    /// partition's records fail or succeed together, so their order is kept).
    ///
    /// # Panics
    ///
    /// On any other answer (including 504: a retry could write twice), or when the
    /// answer does not carry one report per record.
    pub async fn publish(&self, topic: &str, records: &[NewRecord]) -> Vec<DeliveryReport> {
        self.publish_retrying(topic, records, Retries::OnlyUnwritten)
            .await
    }

    /// Publishes `records` at least once, as a client of a compacted topic may: like
    /// [`NodeClient::publish`], and an `outcome_unknown` answer (504, or a 207 row) is
    /// retried too, so a record may be stored twice; the reports are those of the attempt
    /// that was acknowledged (the latest copy). For tests where a duplicate is harmless
    /// (key views), so a leadership change mid-write does not fail them.
    ///
    /// # Panics
    ///
    /// On any other answer, or when the answer does not carry one report per record.
    pub async fn publish_at_least_once(
        &self,
        topic: &str,
        records: &[NewRecord],
    ) -> Vec<DeliveryReport> {
        self.publish_retrying(topic, records, Retries::AlsoUnknownOutcome)
            .await
    }

    async fn publish_retrying(
        &self,
        topic: &str,
        records: &[NewRecord],
        retries: Retries,
    ) -> Vec<DeliveryReport> {
        let at_least_once = retries == Retries::AlsoUnknownOutcome;
        let start = Instant::now();
        let mut reports: Vec<Option<DeliveryReport>> = vec![None; records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        loop {
            let batch: Vec<NewRecord> = pending.iter().map(|i| records[*i].clone()).collect();
            let outcome = self.try_publish(topic, &batch, REQUEST_TIMEOUT).await;
            let retry_allowed = start.elapsed() < RETRY_WINDOW;
            match outcome {
                PublishOutcome::Acked(offsets) => {
                    assert_eq!(
                        offsets.len(),
                        batch.len(),
                        "publish to {topic} on {}: one delivery report per record",
                        self.base
                    );
                    for (index, report) in pending.iter().zip(offsets) {
                        reports[*index] = Some(report);
                    }
                    return reports.into_iter().flatten().collect();
                }
                PublishOutcome::Partial { body } if retry_allowed => {
                    let parsed: Value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("207 body is not JSON ({e}): {body}"));
                    let rows = parsed["offsets"].as_array().cloned().unwrap_or_default();
                    assert_eq!(
                        rows.len(),
                        batch.len(),
                        "207: one report per record: {body}"
                    );
                    let mut still = Vec::new();
                    for (index, row) in pending.iter().zip(rows) {
                        match (row["partition"].as_u64(), row["offset"].as_u64()) {
                            (Some(partition), Some(offset)) => {
                                reports[*index] = Some(DeliveryReport { partition: partition as u32, offset });
                            }
                            _ if row["error"] == "not_available" => still.push(*index),
                            _ if at_least_once && row["error"] == "outcome_unknown" => {
                                still.push(*index)
                            }
                            _ => panic!("publish to {topic} on {}: a record failed in a way a retry could duplicate: {row}", self.base),
                        }
                    }
                    pending = still;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                PublishOutcome::Transport { not_sent: true, .. } if retry_allowed => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                PublishOutcome::OutcomeUnknown { .. } | PublishOutcome::Transport { .. }
                    if retry_allowed && at_least_once =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => panic!(
                    "publish of {} records to {topic} on {} failed after {:?}: {other:?}",
                    batch.len(),
                    self.base,
                    start.elapsed()
                ),
            }
        }
    }

    /// One fetch by offset, without retries.
    ///
    /// `offset` is a number, `earliest` or `latest`.
    ///
    /// # Errors
    ///
    /// The transport error, or a non-200 status with its body.
    pub async fn try_fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: impl Display,
        max_records: u32,
        timeout_ms: u64,
    ) -> Result<FetchResponse, String> {
        let resp = self
            .send(self.client.get(self.fetch_url(
                topic,
                partition,
                offset,
                max_records,
                timeout_ms,
            )))
            .await?;
        expect_json(resp, 200).await
    }

    /// One fetch by offset; asserts 200 .
    ///
    /// # Panics
    ///
    /// On any other answer.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: impl Display,
        max_records: u32,
        timeout_ms: u64,
    ) -> FetchResponse {
        let url = self.fetch_url(topic, partition, offset, max_records, timeout_ms);
        let resp = self
            .retry_refused(&format!("fetch {topic}/{partition}"), || {
                self.client.get(&url)
            })
            .await;
        expect_json(resp, 200)
            .await
            .unwrap_or_else(|e| panic!("fetch {url}: {e}"))
    }

    /// Every record of a partition from offset 0 up to the high watermark this node
    /// reports on the first page, checking that offsets are dense and in order.
    ///
    /// # Errors
    ///
    /// Any failed request, or records out of order or with gaps.
    pub async fn try_fetch_all(&self, topic: &str, partition: u32) -> Result<Vec<Record>, String> {
        let mut out: Vec<Record> = Vec::new();
        let mut offset = 0u64;
        let mut high_watermark: Option<u64> = None;
        loop {
            if high_watermark.is_some_and(|hw| offset >= hw) {
                return Ok(out);
            }
            let page = self
                .try_fetch(topic, partition, offset, FETCH_PAGE, 0)
                .await?;
            let hw = *high_watermark.get_or_insert(page.high_watermark);
            if page.records.is_empty() {
                if offset >= hw {
                    return Ok(out);
                }
                return Err(format!(
                    "{topic}/{partition} on {}: empty page at offset {offset} below the high watermark {hw}",
                    self.base
                ));
            }
            for r in page.records {
                if r.offset != offset || r.partition != partition || r.topic != topic {
                    return Err(format!(
                        "{topic}/{partition} on {}: expected offset {offset}, got {}/{} offset {}",
                        self.base, r.topic, r.partition, r.offset
                    ));
                }
                offset += 1;
                out.push(r);
            }
            if page.next_offset != offset {
                return Err(format!(
                    "{topic}/{partition} on {}: next_offset {} after records up to {}",
                    self.base,
                    page.next_offset,
                    offset.saturating_sub(1)
                ));
            }
        }
    }

    /// [`Self::try_fetch_all`], panicking on error.
    ///
    /// # Panics
    ///
    /// When a request fails or the records are not dense and in order.
    pub async fn fetch_all(&self, topic: &str, partition: u32) -> Vec<Record> {
        self.try_fetch_all(topic, partition)
            .await
            .unwrap_or_else(|e| panic!("fetch_all: {e}"))
    }

    /// Sum of the high watermarks of a topic's partitions, as this node reports them.
    ///
    /// # Errors
    ///
    /// The request failed.
    pub async fn try_total_high_watermark(&self, topic: &str) -> Result<u64, String> {
        Ok(self
            .try_partitions(topic)
            .await?
            .iter()
            .map(|p| p.high_watermark)
            .sum())
    }

    fn fetch_url(
        &self,
        topic: &str,
        partition: u32,
        offset: impl Display,
        max_records: u32,
        timeout_ms: u64,
    ) -> String {
        self.url(&format!(
            "/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_records={max_records}&timeout_ms={timeout_ms}"
        ))
    }

    /// `GET path` as JSON, whatever the status (`/readyz` answers JSON with 503 too).
    ///
    /// # Errors
    ///
    /// The transport error, or a body that is not JSON.
    pub async fn try_get_json(&self, path: &str) -> Result<Value, String> {
        self.send(self.client.get(self.url(path)))
            .await?
            .json()
            .await
            .map_err(|e| format!("GET {path} on {}: body is not JSON: {e}", self.base))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        req.timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("request to {} failed: {e}", self.base))
    }

    /// Sends the request built by `build` until the connection is accepted, for at most
    /// [`RETRY_WINDOW`]; any answer, 503 included, is returned as it is.
    async fn retry_refused(
        &self,
        what: &str,
        mut build: impl FnMut() -> reqwest::RequestBuilder,
    ) -> reqwest::Response {
        let start = Instant::now();
        loop {
            let result = build().timeout(REQUEST_TIMEOUT).send().await;
            let retry = matches!(&result, Err(e) if e.is_connect());
            if !retry || start.elapsed() >= RETRY_WINDOW {
                return result.unwrap_or_else(|e| {
                    panic!(
                        "{what} on {}: no answer after {:?}: {e}",
                        self.base,
                        start.elapsed()
                    )
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Reads a JSON body of type `T`, requiring `status`.
///
/// # Errors
///
/// Another status (with the body), or a body that does not parse as `T`.
pub async fn expect_json<T: DeserializeOwned>(
    resp: reqwest::Response,
    status: u16,
) -> Result<T, String> {
    let got = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("status {got}: body unreadable: {e}"))?;
    if got != status {
        return Err(format!(
            "expected status {status}, got {got}: {}",
            clip(&body)
        ));
    }
    serde_json::from_str(&body)
        .map_err(|e| format!("status {got}: body does not parse ({e}): {}", clip(&body)))
}

/// Asserts an error answer per docs/api.md § Errors: the status,
/// a JSON body `{error_code, error, message, retriable}` whose `error_code` is
/// status × 100 + n, the stable snake_case `error` string expected, and a non-empty
/// `message`.
///
/// # Panics
///
/// When the answer is not such an error.
pub async fn expect_error(
    resp: reqwest::Response,
    status: u16,
    error: &str,
    context: &str,
) -> ErrorBody {
    let got = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "{context}: status (body: {})", clip(&body));
    let err: ErrorBody = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!(
            "{context}: error body is not the documented JSON ({e}): {}",
            clip(&body)
        )
    });
    assert_eq!(
        err.error_code / 100,
        u32::from(status),
        "{context}: error_code {} is not status × 100 + n",
        err.error_code
    );
    assert!(
        !err.error.is_empty()
            && err
                .error
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "{context}: `error` must be a stable snake_case string, got {:?}",
        err.error
    );
    assert!(!err.message.is_empty(), "{context}: empty `message`");
    assert_eq!(
        err.error,
        error,
        "{context}: `error` (body: {})",
        clip(&body)
    );
    err
}

/// True when a publish answer's `offsets` contains `{"error": ...}` entries.
fn has_per_record_errors(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("offsets").and_then(Value::as_array).cloned())
        .is_some_and(|offsets| offsets.iter().any(|o| o.get("error").is_some()))
}

/// Shortens a body for a failure message.
fn clip(body: &str) -> String {
    const MAX: usize = 600;
    if body.len() <= MAX {
        return body.to_owned();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &body[..end], body.len())
}

/// Parses one value out of a JSON body field, for tests reading ad-hoc fields.
///
/// # Panics
///
/// When the field is missing or has another type.
pub fn field_u64(v: &Value, name: &str) -> u64 {
    v.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field {name:?} missing or not an unsigned integer in {v}"))
}
