//! Consumers by offset: long-poll fetch loops, one per (consumer, partition).
//!
//! With M consumers and P partitions, consumer `j` reads the partitions `p` with
//! `p mod M == j` when M <= P (a disjoint split, like a consumer group without
//! coordination); with M > P it reads partition `j mod P`, so partitions get several
//! independent readers (fan-out). Each reading task has its own connection and keeps its
//! own position and duplicate tracker, so nothing is locked per answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::duplicates::DuplicateTracker;
use super::error_class::ErrorClass;
use super::fetch::{ConsumeStats, FetchAnswer};
use super::phase::RunClock;
use super::sampler::LiveCounters;
use super::target::{PartitionInfo, Target};

/// Pause after a failed fetch before the next one (bounded: a failing cluster should
/// not be hammered by the bench).
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// When consumers stop.
#[derive(Debug, Clone)]
pub enum ConsumerStop {
    /// Keep reading.
    Running,
    /// Producers are done: read up to these offsets per partition (the high watermarks
    /// when they stopped), then stop. Group members stop at their first empty answer.
    Drain(Arc<Vec<u64>>),
    /// Stop now.
    Now,
}

/// How offset consumers read.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    /// Consumers (HTTP clients).
    pub consumers: u32,
    /// `max_records` per fetch.
    pub max_records: u32,
    /// `max_bytes` per fetch.
    pub max_bytes: u64,
    /// `timeout_ms` per fetch.
    pub timeout_ms: u64,
    /// Start from the log start (else the high watermark).
    pub from_earliest: bool,
    /// Go back to the log start at the end of the log (read-only runs).
    pub wrap: bool,
    /// Transport timeout on top of the long-poll time.
    pub request_timeout: Duration,
}

/// The partitions consumer `j` of `m` reads among `p`.
pub fn partitions_of(j: u32, m: u32, p: u32) -> Vec<u32> {
    if m <= p {
        (0..p).filter(|x| x % m == j).collect()
    } else {
        vec![j % p]
    }
}

/// Starts every reading task of a run.
///
/// # Errors
///
/// An HTTP client that cannot be built.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    tasks: &mut JoinSet<ConsumeStats>,
    plan: &ConsumerPlan,
    target: &Target,
    topic: &str,
    start: &[PartitionInfo],
    clock: &Arc<RunClock>,
    stop: &watch::Receiver<ConsumerStop>,
    live: &Arc<LiveCounters>,
) -> anyhow::Result<()> {
    let partitions = start.len() as u32;
    for j in 0..plan.consumers {
        let mine = partitions_of(j, plan.consumers, partitions);
        let client = Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(mine.len())
            .timeout(plan.request_timeout + Duration::from_millis(plan.timeout_ms))
            .build()
            .context("failed to build a consumer's HTTP client")?;
        for p in mine {
            let info = &start[p as usize];
            let offset = if plan.from_earliest {
                info.log_start_offset
            } else {
                info.high_watermark
            };
            let base = format!(
                "{}/v1/topics/{topic}/partitions/{p}/records",
                target.url((j + p) as usize)
            );
            tasks.spawn(fetch_loop(FetchLoop {
                client: client.clone(),
                base,
                partition: p,
                offset,
                plan: plan.clone(),
                clock: Arc::clone(clock),
                stop: stop.clone(),
                live: Arc::clone(live),
            }));
        }
    }
    Ok(())
}

/// One reading task's state.
struct FetchLoop {
    client: Client,
    /// `…/partitions/{p}/records`, without the query.
    base: String,
    partition: u32,
    /// Next offset to read.
    offset: u64,
    plan: ConsumerPlan,
    clock: Arc<RunClock>,
    stop: watch::Receiver<ConsumerStop>,
    live: Arc<LiveCounters>,
}

/// The 416 body: where the log starts now.
#[derive(Debug, Deserialize)]
struct OutOfRange {
    log_start_offset: Option<u64>,
}

async fn fetch_loop(mut s: FetchLoop) -> ConsumeStats {
    let mut stats = ConsumeStats::default();
    let mut dups = DuplicateTracker::default();
    let mut wrap_next = false;
    loop {
        match &*s.stop.borrow() {
            ConsumerStop::Now => break,
            ConsumerStop::Drain(targets) => {
                let target = targets.get(s.partition as usize).copied().unwrap_or(0);
                if s.offset >= target {
                    break;
                }
            }
            ConsumerStop::Running => {}
        }
        let offset_param = if wrap_next {
            "earliest".to_string()
        } else {
            s.offset.to_string()
        };
        let url = format!(
            "{}?offset={offset_param}&max_records={}&max_bytes={}&timeout_ms={}",
            s.base, s.plan.max_records, s.plan.max_bytes, s.plan.timeout_ms
        );
        let sent = Instant::now();
        let result = tokio::select! {
            r = fetch(&s.client, &url) => r,
            _ = stopped_now(&mut s.stop) => break,
        };
        let received = Instant::now();
        let failure = match result {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<FetchAnswer>(&body) {
                Ok(answer) => {
                    if wrap_next {
                        dups.reset(s.partition);
                        wrap_next = false;
                    }
                    stats.count_answer(&answer, &s.clock, sent, received, s.partition, &mut dups);
                    s.live.add_consumed(answer.records.len() as u64);
                    let next = answer
                        .next_offset
                        .or_else(|| answer.records.last().map(|r| r.offset + 1))
                        .unwrap_or(s.offset);
                    s.offset = next;
                    let at_end = answer.high_watermark.is_some_and(|hw| next >= hw);
                    if s.plan.wrap && at_end {
                        wrap_next = true;
                    }
                    None
                }
                Err(_) => Some(ErrorClass::Decode),
            },
            Ok((StatusCode::RANGE_NOT_SATISFIABLE, body)) => {
                // Below the log start (retention moved it): skip ahead. Above the end: keep
                // the position and retry, since the answering replica may just be behind
                // the one that gave us this offset; moving back would re-read records
                // and count them as duplicates.
                if let Ok(range) = serde_json::from_slice::<OutOfRange>(&body) {
                    if let Some(start) = range.log_start_offset {
                        s.offset = s.offset.max(start);
                    }
                }
                Some(ErrorClass::OffsetOutOfRange)
            }
            Ok((status, _)) => Some(ErrorClass::of_status(status)),
            Err(e) => Some(ErrorClass::of_transport(&e)),
        };
        if let Some(class) = failure {
            if s.clock.in_window(received) {
                stats.errors.add(class);
            }
            tokio::select! {
                _ = tokio::time::sleep(ERROR_BACKOFF) => {}
                _ = stopped_now(&mut s.stop) => break,
            }
        }
    }
    stats
}

/// One GET; the whole answer body.
async fn fetch(client: &Client, url: &str) -> Result<(StatusCode, bytes::Bytes), reqwest::Error> {
    let resp = client.get(url).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    Ok((status, body))
}

/// Resolves when the stop signal says `Now` (or its sender is gone).
pub async fn stopped_now(stop: &mut watch::Receiver<ConsumerStop>) {
    loop {
        if matches!(&*stop.borrow_and_update(), ConsumerStop::Now) {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_split_or_fan_out_partitions() {
        assert_eq!(partitions_of(0, 2, 5), vec![0, 2, 4]);
        assert_eq!(partitions_of(1, 2, 5), vec![1, 3]);
        assert_eq!(partitions_of(0, 1, 3), vec![0, 1, 2]);
        assert_eq!(partitions_of(4, 6, 3), vec![1]);
        let all: Vec<u32> = (0..4).flat_map(|j| partitions_of(j, 4, 12)).collect();
        assert_eq!(all.len(), 12);
    }
}
