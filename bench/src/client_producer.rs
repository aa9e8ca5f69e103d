//! `--client-producer`: producer loops that publish through psubd-client's `Producer`
//! (batching, a delivery future per record, each request sent straight to the
//! partitions' leader) instead of the plain-HTTP loops of `producer.rs`.
//!
//! Each of `--producers` is one `Producer` over every `--url` as seeds; each of its
//! `--in-flight` loops sends `--records-per-request` records, all to one partition (loop
//! `l`'s `k`-th group goes to partition `(l + k) mod partitions`, as the HTTP loops do),
//! and waits until every one is delivered before the next group. A "request" of the
//! table is one such group: its latency runs from the first send to the last delivery.
//! The `Producer` batches what its loops send meanwhile (no linger: a batch is what was
//! queued while the previous one was sent). It never resends a record whose outcome is
//! unknown, so the bench's `--retries` do not apply.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use psubd_client::{Client, Error, NewRecord, Producer, ProducerConfig};
use reqwest::StatusCode;
use tokio::task::JoinSet;

use super::error_class::{ErrorClass, ErrorCounts};
use super::payload::RequestTemplate;
use super::phase::{now_us, Pacer, RunClock};
use super::producer::{ProduceStats, ProducerPlan, RETRY_BACKOFF};
use super::sampler::LiveCounters;

/// Starts every loop of a run in `tasks`, as [`super::producer::spawn`] does.
///
/// # Errors
///
/// Node URLs the client refuses.
pub fn spawn(
    tasks: &mut JoinSet<ProduceStats>,
    plan: &Arc<ProducerPlan>,
    clock: &Arc<RunClock>,
    pacer: Option<Arc<Pacer>>,
    live: &Arc<LiveCounters>,
) -> anyhow::Result<()> {
    let value = Arc::new(RequestTemplate::raw(plan.record_size as usize));
    for p in 0..plan.producers {
        let mut client =
            Client::builder(plan.nodes().iter().cloned()).request_timeout(plan.request_timeout());
        if let Some(token) = plan.bearer_token() {
            client = client.token(token);
        }
        let client = client
            .build()
            .context("psubd-client refuses the node URLs")?;
        let producer = Producer::with_config(
            client,
            ProducerConfig {
                linger: std::time::Duration::ZERO,
                max_batch_records: psubd_client::producer::MAX_RECORDS_PER_REQUEST,
                ..ProducerConfig::default()
            },
        );
        for l in 0..plan.in_flight {
            tasks.spawn(send_loop(
                p * plan.in_flight + l,
                producer.clone(),
                Arc::clone(plan),
                Arc::clone(&value),
                Arc::clone(clock),
                pacer.clone(),
                Arc::clone(live),
            ));
        }
    }
    Ok(())
}

/// One loop: a group of records to one partition, awaited, counted, repeated until the
/// window ends.
async fn send_loop(
    loop_id: u32,
    producer: Producer,
    plan: Arc<ProducerPlan>,
    value: Arc<RequestTemplate>,
    clock: Arc<RunClock>,
    pacer: Option<Arc<Pacer>>,
    live: Arc<LiveCounters>,
) -> ProduceStats {
    let mut stats = ProduceStats::default();
    // The header's producer field is 16 bits; validation keeps loop ids below that.
    let producer_id = u16::try_from(loop_id).unwrap_or(u16::MAX);
    let records = plan.records_per_request();
    let mut seq: u64 = 0;
    let mut k: u64 = 0;
    while !clock.is_over(Instant::now()) {
        if let Some(pacer) = &pacer {
            pacer.wait(records).await;
            if clock.is_over(Instant::now()) {
                break;
            }
        }
        let partition = ((u64::from(loop_id) + k) % u64::from(plan.partitions)) as u32;
        k += 1;
        let sent = Instant::now();
        let sent_at_us = now_us();
        let mut deliveries = Vec::with_capacity(records as usize);
        let mut errors = ErrorCounts::default();
        for _ in 0..records {
            let bytes = value.build(clock.run, sent_at_us, producer_id, seq);
            seq += 1;
            // The template is ASCII; the conversion cannot fail.
            let text = String::from_utf8_lossy(&bytes).into_owned();
            match producer
                .send(&plan.topic, NewRecord::new(text).partition(partition))
                .await
            {
                Ok(delivery) => deliveries.push(delivery),
                Err(e) => errors.add(class_of(&e)),
            }
        }
        let mut delivered = 0;
        for delivery in deliveries {
            match delivery.await {
                Ok(_) => delivered += 1,
                Err(e) => errors.add(class_of(&e)),
            }
        }
        let done = Instant::now();
        let ok = delivered == records;
        if clock.in_window(done) {
            stats.errors.merge(&errors);
            if ok {
                stats.requests += 1;
                stats.records += records;
                stats.bytes += records * plan.record_size;
                stats.latency.record(done - sent);
                clock.count_acked(records);
            } else {
                stats.failed_requests += 1;
            }
        }
        if ok {
            live.add_published(records);
        } else {
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }
    stats
}

/// The table's class of a failed delivery.
fn class_of(error: &Error) -> ErrorClass {
    match error {
        Error::Api { status, .. } => StatusCode::from_u16(*status)
            .map(ErrorClass::of_status)
            .unwrap_or(ErrorClass::OtherServer),
        Error::Record { body, .. } => match body.error.as_str() {
            "not_available" => ErrorClass::Unavailable,
            "outcome_unknown" => ErrorClass::OutcomeUnknown,
            "quota_exceeded" | "too_many_streams" => ErrorClass::Throttled,
            _ => ErrorClass::OtherServer,
        },
        Error::Transport {
            maybe_sent: false, ..
        } => ErrorClass::Connect,
        Error::Transport { .. } => ErrorClass::Transport,
        Error::Unexpected { .. } => ErrorClass::Decode,
        _ => ErrorClass::OtherClient,
    }
}
