//! Producers: loops that publish pre-built bodies over keep-alive connections.
//!
//! Producer `p` has `--in-flight` loops; each owns one keep-alive connection
//! (`connection.rs`), sends one request, waits for the answer, and sends the next. Request `k` of loop `l` goes to partition `(l + k) mod partitions`, which keeps
//! every partition equally loaded and makes each request one partition's batch.
//!
//! Hot loop cost per request: one body copy with the headers stamped in place, one
//! request head, one answer read; nothing per record. Statistics are task-local and merged when
//! the loop ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Uri;
use tokio::task::JoinSet;

use super::connection::Connection;
use super::error_class::{ErrorClass, ErrorCounts};
use super::latency::Latency;
use super::payload::RequestTemplate;
use super::phase::{now_us, Pacer, RunClock};
use super::sampler::LiveCounters;
use super::target::Target;
use super::{Acks, BodyFormat};

/// Longest `Retry-After` honoured; longer hints would stall a loop for most of a run.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Back-off before retrying without a `Retry-After` hint, times the attempt number.
pub(crate) const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// What every producer loop of a run shares.
#[derive(Debug)]
pub struct ProducerPlan {
    /// Producers (HTTP clients).
    pub producers: u32,
    /// Loops (connections) per producer.
    pub in_flight: u32,
    /// Partitions to spread requests over.
    pub partitions: u32,
    /// Bodies: one per partition for JSON, a single one for raw.
    templates: Vec<RequestTemplate>,
    /// Node base URLs; loop `l` talks to node `l mod n`.
    nodes: Vec<String>,
    /// Publish paths: `[0]` for JSON, `[partition]` for raw.
    paths: Vec<Uri>,
    /// Raw bodies: one record per request, partition in the URL.
    raw: bool,
    content_type: HeaderValue,
    retries: u32,
    request_timeout: Duration,
    /// `Bearer <key>`, when the cluster requires API keys.
    authorization: Option<HeaderValue>,
    /// Bytes of one record's value (for MB/s).
    pub record_size: u64,
    /// The topic (for `--client-producer`, which builds its own requests).
    pub topic: String,
}

impl ProducerPlan {
    /// Builds the bodies and URLs once for the whole run.
    ///
    /// # Errors
    ///
    /// A node URL that does not make a valid publish URL.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &Target,
        topic: &str,
        partitions: u32,
        producers: u32,
        in_flight: u32,
        records_per_request: u32,
        record_size: u32,
        acks: Acks,
        format: BodyFormat,
        retries: u32,
        request_timeout: Duration,
        ids: bool,
    ) -> anyhow::Result<Self> {
        let size = record_size as usize;
        let (templates, content_type) = match format {
            BodyFormat::Json => (
                (0..partitions)
                    .map(|p| RequestTemplate::json(p, records_per_request, size, ids))
                    .collect(),
                HeaderValue::from_static("application/json"),
            ),
            BodyFormat::Raw => (
                vec![RequestTemplate::raw(size)],
                HeaderValue::from_static("application/octet-stream"),
            ),
        };
        let acks = acks.as_query();
        let paths = match format {
            BodyFormat::Json => vec![format!("/v1/topics/{topic}/records?acks={acks}")],
            BodyFormat::Raw => (0..partitions)
                .map(|p| format!("/v1/topics/{topic}/records?acks={acks}&partition={p}"))
                .collect(),
        };
        let paths = paths
            .iter()
            .map(|u| {
                u.parse::<Uri>()
                    .with_context(|| format!("bad publish path {u}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ProducerPlan {
            producers,
            in_flight,
            partitions,
            templates,
            nodes: target.urls().to_vec(),
            paths,
            raw: format == BodyFormat::Raw,
            content_type,
            retries,
            request_timeout,
            authorization: target.authorization().cloned(),
            record_size: u64::from(record_size),
            topic: topic.to_string(),
        })
    }

    /// The node base URLs.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Timeout of one request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The API key of the `Authorization: Bearer` header, when one is sent.
    pub fn bearer_token(&self) -> Option<String> {
        let value = self.authorization.as_ref()?.to_str().ok()?;
        Some(value.strip_prefix("Bearer ")?.to_string())
    }

    /// Records per request.
    pub fn records_per_request(&self) -> u64 {
        self.templates.first().map_or(0, RequestTemplate::records)
    }
}

/// What one producer loop counted inside the window; merged into the run's totals.
#[derive(Debug, Clone, Default)]
pub struct ProduceStats {
    /// Requests acknowledged.
    pub requests: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Value bytes acknowledged.
    pub bytes: u64,
    /// Time from the first send to the final answer of acknowledged requests (retries
    /// included: what a client waits).
    pub latency: Latency,
    /// Failed attempts by class.
    pub errors: ErrorCounts,
    /// Attempts after the first.
    pub retries: u64,
    /// Requests given up after all retries.
    pub failed_requests: u64,
}

impl ProduceStats {
    /// Adds another loop's counts.
    pub fn merge(&mut self, other: &ProduceStats) {
        self.requests += other.requests;
        self.records += other.records;
        self.bytes += other.bytes;
        self.latency.merge(&other.latency);
        self.errors.merge(&other.errors);
        self.retries += other.retries;
        self.failed_requests += other.failed_requests;
    }
}

/// Starts every producer loop of a run in `tasks`; each returns its statistics when the
/// clock says the window is over.
///
/// # Errors
///
/// A node URL that is not `http://host:port`.
pub fn spawn(
    tasks: &mut JoinSet<ProduceStats>,
    plan: &Arc<ProducerPlan>,
    clock: &Arc<RunClock>,
    pacer: Option<Arc<Pacer>>,
    live: &Arc<LiveCounters>,
) -> anyhow::Result<()> {
    for p in 0..plan.producers {
        for l in 0..plan.in_flight {
            let loop_id = p * plan.in_flight + l;
            let node = &plan.nodes[loop_id as usize % plan.nodes.len()];
            let conn = Connection::new(node, plan.request_timeout, plan.authorization.clone())?;
            tasks.spawn(produce_loop(
                loop_id,
                conn,
                Arc::clone(plan),
                Arc::clone(clock),
                pacer.clone(),
                Arc::clone(live),
            ));
        }
    }
    Ok(())
}

/// One connection's worth of load: send, await, count, repeat until the window ends.
async fn produce_loop(
    loop_id: u32,
    mut conn: Connection,
    plan: Arc<ProducerPlan>,
    clock: Arc<RunClock>,
    pacer: Option<Arc<Pacer>>,
    live: Arc<LiveCounters>,
) -> ProduceStats {
    let mut stats = ProduceStats::default();
    // The header's producer field is 16 bits; validation keeps loop ids below that.
    let producer = u16::try_from(loop_id).unwrap_or(u16::MAX);
    let records = plan.records_per_request();
    let mut seq: u64 = 0;
    let mut k: u64 = 0;
    let mut attempt_errors = ErrorCounts::default();
    while !clock.is_over(Instant::now()) {
        if let Some(pacer) = &pacer {
            pacer.wait(records).await;
            if clock.is_over(Instant::now()) {
                break;
            }
        }
        let partition = ((u64::from(loop_id) + k) % u64::from(plan.partitions)) as usize;
        k += 1;
        let (template, path) = if plan.raw {
            (&plan.templates[0], &plan.paths[partition])
        } else {
            (&plan.templates[partition], &plan.paths[0])
        };
        let body = template.build(clock.run, now_us(), producer, seq);
        seq += records;
        let sent = Instant::now();
        let outcome = publish(
            &mut conn,
            path,
            &plan.content_type,
            body,
            plan.retries,
            &mut attempt_errors,
        )
        .await;
        let done = Instant::now();
        if clock.in_window(done) {
            stats.errors.merge(&attempt_errors);
            stats.retries += u64::from(outcome.attempts.saturating_sub(1));
            if outcome.ok {
                stats.requests += 1;
                stats.records += records;
                stats.bytes += records * plan.record_size;
                stats.latency.record(done - sent);
                clock.count_acked(records);
            } else {
                stats.failed_requests += 1;
            }
        }
        if outcome.ok {
            live.add_published(records);
        } else {
            // A request given up (e.g. 404, or retries spent): pause instead of spinning
            // against a cluster that refuses everything.
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
        attempt_errors = ErrorCounts::default();
    }
    stats
}

/// How a publish ended.
struct PublishOutcome {
    ok: bool,
    attempts: u32,
}

/// Sends one body, retrying 503/429 (after Retry-After, capped), 504 and transport
/// failures up to `retries` times. Errors of every attempt go into `errors`.
async fn publish(
    conn: &mut Connection,
    path: &Uri,
    content_type: &HeaderValue,
    body: Bytes,
    retries: u32,
    errors: &mut ErrorCounts,
) -> PublishOutcome {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (class, hint) = match conn.post(path, content_type, body.clone()).await {
            Ok(answer) if answer.status.is_success() => {
                return PublishOutcome { ok: true, attempts };
            }
            Ok(answer) => (
                ErrorClass::of_status(answer.status),
                retry_after(answer.retry_after.as_ref()),
            ),
            Err(class) => (class, None),
        };
        errors.add(class);
        if attempts > retries || !is_retriable(class) {
            return PublishOutcome {
                ok: false,
                attempts,
            };
        }
        let wait = hint
            .unwrap_or(RETRY_BACKOFF * attempts)
            .min(MAX_RETRY_AFTER);
        tokio::time::sleep(wait).await;
    }
}

/// Failures a producer retries. Retrying 504 or a lost connection may duplicate the
/// records; that is what real clients do, and the consumers count it.
fn is_retriable(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Unavailable
            | ErrorClass::Throttled
            | ErrorClass::OutcomeUnknown
            | ErrorClass::Connect
            | ErrorClass::Timeout
            | ErrorClass::Transport
    )
}

/// `Retry-After` in seconds (the API sends delta-seconds).
fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let secs: f64 = value?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}
