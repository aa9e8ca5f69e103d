//! A member's fetch, in three steps: a poll at the coordinator (the heartbeat; it
//! confirms the `position` token the client presents and answers where to read), the
//! reads of the assigned partitions through the ordinary fetch path (long-polling), and a
//! delivery report of what this answer carries. Positions advance only as far as the
//! report says, so an answer lost on the way is delivered again. Records of partitions
//! the member lost in the meantime are dropped, so a member never receives a partition
//! another member now owns from a position that would skip anything.
//!
//! Member fetches over HTTP and member streams (SSE, NDJSON, WebSocket) all run these.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use psubd_actors::assignment::TopicPartition;
use psubd_actors::controller::access::{Operation, ResourceType};
use psubd_actors::coordinator::{
    AutoOffsetReset, Delivery, GroupRequest, Lease, PollFrom, PositionToken, StartPosition,
};
use psubd_actors::partition::FetchedRecords;
use psubd_actors::topic::PartitionPlacement;
use tracing::debug;

use super::groups::lease_of;
use super::reads::ReadBounds;
use super::{Caller, Result, Service};
use crate::auth::quota::QuotaKind;
use crate::error::ApiError;
use crate::protocol::OffsetSpec;
use crate::render::write_record;

/// A member without partitions waits at most this long per fetch, so it hears of a
/// rebalance that gives it partitions soon after it happens.
const IDLE_MEMBER_WAIT: Duration = Duration::from_secs(1);

fn spec(start: StartPosition) -> OffsetSpec {
    match start {
        StartPosition::Earliest => OffsetSpec::Earliest,
        StartPosition::Latest => OffsetSpec::Latest,
        StartPosition::At(n) => OffsetSpec::At(n),
    }
}

/// Fetches one partition; a position that has left the log (retention) restarts at the
/// member's `auto_offset_reset`, as Kafka does.
async fn fetch_one(
    service: &Service,
    placement: &PartitionPlacement,
    start: OffsetSpec,
    reset: AutoOffsetReset,
    max_records: u32,
    max_bytes: u32,
    timeout_ms: u64,
) -> Result<FetchedRecords> {
    match service
        .edge
        .fetch(placement, start, max_records, max_bytes, timeout_ms)
        .await
    {
        Err(error) => match restart_after(&error, reset) {
            Some(start) => {
                service
                    .edge
                    .fetch(placement, start, max_records, max_bytes, timeout_ms)
                    .await
            }
            None => Err(error),
        },
        Ok(fetched) => Ok(fetched),
    }
}

/// Where a member's read restarts after an error: `auto_offset_reset` applies only when
/// the position fell below the log start (retention removed those records). Above the
/// end the position is kept — jumping would skip (latest) or re-deliver everything
/// (earliest) on the strength of a lagging replica's view (issue found by the chaos
/// harness, seed 7).
fn restart_after(error: &ApiError, reset: AutoOffsetReset) -> Option<OffsetSpec> {
    match error {
        ApiError::OffsetOutOfRange {
            offset,
            log_start_offset,
            ..
        } if offset < log_start_offset => Some(match reset {
            AutoOffsetReset::Earliest => OffsetSpec::Earliest,
            AutoOffsetReset::Latest => OffsetSpec::Latest,
        }),
        _ => None,
    }
}

/// Reads the member's partitions: first what is there now, then, if nothing is, a
/// long-poll on every partition that answers as soon as one has records. Partitions that
/// fail are left out of this answer (their position does not move).
async fn fetch_assigned(
    service: &Service,
    lease: &Lease,
    max_records: u32,
    max_bytes: u32,
    timeout_ms: u64,
) -> Result<Vec<(TopicPartition, FetchedRecords)>> {
    let mut targets: Vec<(TopicPartition, PartitionPlacement, OffsetSpec)> = Vec::new();
    for (tp, start) in &lease.positions {
        // A topic deleted since the assignment is skipped; the coordinator drops it.
        let Ok(meta) = service.edge.topic(&tp.topic).await else {
            continue;
        };
        if let Some(placement) = meta.partitions.get(tp.partition as usize) {
            targets.push((tp.clone(), placement.clone(), spec(*start)));
        }
    }
    if targets.is_empty() {
        tokio::time::sleep(Duration::from_millis(timeout_ms).min(IDLE_MEMBER_WAIT)).await;
        return Ok(Vec::new());
    }
    let reset = lease.auto_offset_reset;
    let now = futures::future::join_all(targets.iter().map(|(_, placement, start)| {
        fetch_one(service, placement, *start, reset, max_records, max_bytes, 0)
    }))
    .await;
    let mut results: Vec<(TopicPartition, PartitionPlacement, FetchedRecords)> = Vec::new();
    let mut first_error = None;
    for ((tp, placement, _), outcome) in targets.into_iter().zip(now) {
        match outcome {
            Ok(fetched) => results.push((tp, placement, fetched)),
            Err(error) => {
                debug!(topic = %tp.topic, partition = tp.partition, %error, "member fetch skipped a partition");
                first_error.get_or_insert(error);
            }
        }
    }
    if results.is_empty() {
        if let Some(error) = first_error {
            return Err(error);
        }
    }
    let any = results.iter().any(|(_, _, f)| f.count > 0);
    if !any && timeout_ms > 0 && !results.is_empty() {
        let mut polls: FuturesUnordered<_> = results
            .iter()
            .enumerate()
            .map(|(i, (_, placement, fetched))| {
                let placement = placement.clone();
                let from = OffsetSpec::At(fetched.next_offset);
                async move {
                    let outcome = fetch_one(
                        service,
                        &placement,
                        from,
                        reset,
                        max_records,
                        max_bytes,
                        timeout_ms,
                    )
                    .await;
                    (i, outcome)
                }
            })
            .collect();
        let mut woke = None;
        while let Some((i, outcome)) = polls.next().await {
            if let Ok(fetched) = outcome {
                if fetched.count > 0 {
                    woke = Some((i, fetched));
                    break;
                }
            }
        }
        drop(polls);
        if let Some((i, fetched)) = woke {
            results[i].2 = fetched;
        }
    }
    Ok(results
        .into_iter()
        .map(|(tp, _, fetched)| (tp, fetched))
        .collect())
}

/// One partition's share of a member fetch answer.
pub struct Rendered {
    /// The partition.
    pub partition: TopicPartition,
    /// Its records as JSON objects, comma-separated.
    pub json: Vec<u8>,
    /// Each record's offset and where its object lies in `json` (streams send records one
    /// by one, with their offsets: a compacted topic's are not consecutive).
    pub spans: Vec<RecordSpan>,
    /// The next offset to read: what this answer delivers up to. Past every record
    /// rendered and any compacted gap after them that the read crossed, never below an
    /// offset not rendered.
    pub next_offset: u64,
}

/// One rendered record of a [`Rendered`] part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSpan {
    /// The record's offset.
    pub offset: u64,
    /// Start of its JSON object in the part's `json`.
    pub start: usize,
    /// End (exclusive) of its JSON object.
    pub end: usize,
}

/// Renders up to the request's budget, shared fairly: one record per partition in turn,
/// starting at partition `first` (rotated per fetch), so a backlog in one partition never
/// starves the others. Each partition's next offset is what this answer delivers: the
/// read's `next_offset` when all of it fits, else the offset of the first record left out.
fn render_within_budget(
    fetched: &[(TopicPartition, FetchedRecords)],
    max_records: u32,
    max_bytes: u32,
    first: usize,
) -> Result<Vec<Rendered>> {
    let mut records_left = max_records;
    let mut bytes_left = max_bytes as usize;
    let mut wrote_any = false;
    let mut iters: Vec<_> = fetched.iter().map(|(_, run)| run.iter()).collect();
    let mut out: Vec<Rendered> = fetched
        .iter()
        .map(|(tp, run)| Rendered {
            partition: tp.clone(),
            json: Vec::new(),
            spans: Vec::new(),
            next_offset: run.next_offset,
        })
        .collect();
    let mut open = vec![true; fetched.len()];
    let count = fetched.len();
    while open.iter().any(|o| *o) {
        for k in 0..count {
            let i = (first + k) % count;
            if !open[i] {
                continue;
            }
            let iter = &mut iters[i];
            let before = iter.remaining().len();
            let Some(record) = iter.next() else {
                open[i] = false;
                continue;
            };
            let (offset, record) = record.map_err(|e| ApiError::Internal {
                detail: format!("stored record: {e}"),
            })?;
            let size = before - iter.remaining().len();
            let part = &mut out[i];
            if records_left == 0 || (wrote_any && size > bytes_left) {
                // Left out: this partition resumes here.
                part.next_offset = offset;
                open[i] = false;
                continue;
            }
            if !part.json.is_empty() {
                part.json.push(b',');
            }
            let start = part.json.len();
            let (topic, partition) = (&fetched[i].0.topic, fetched[i].0.partition);
            write_record(&mut part.json, topic, partition, offset, &record);
            part.spans.push(RecordSpan {
                offset,
                start,
                end: part.json.len(),
            });
            records_left -= 1;
            bytes_left = bytes_left.saturating_sub(size);
            wrote_any = true;
        }
    }
    Ok(out)
}

/// What one member fetch delivers: the records of the partitions the member still owns
/// (positions already reported to the coordinator), and its generation and assignments.
pub struct MemberBatch {
    /// The group's generation after the delivery report.
    pub generation: u64,
    /// The member's partitions in that generation.
    pub assignments: Vec<TopicPartition>,
    /// True when generation or assignments differ from what the member was last told.
    pub changed: bool,
    /// Records per partition; partitions without records or no longer owned are absent.
    pub parts: Vec<Rendered>,
    /// What the next fetch presents to confirm this answer's positions.
    pub position: PositionToken,
}

impl Service {
    /// The first step of a member fetch: the poll at the coordinator, which is the member's
    /// heartbeat (alive for `timeout_ms` more), confirms positions as `from` says, and
    /// answers where to read.
    ///
    /// The group's `read` is checked here, at every poll (a member stream's heartbeat
    /// included); its topics' at join.
    ///
    /// # Errors
    /// 403 without `read` on the group; 409 `member_fenced` for an unknown member; 400
    /// for a token that does not fit the member; 503 when no coordinator is reachable.
    pub async fn poll_member(
        &self,
        caller: &Caller,
        group: &str,
        member: &str,
        timeout_ms: u64,
        from: PollFrom,
    ) -> Result<Lease> {
        self.authorize(caller, ResourceType::Group, group, Operation::Read)?;
        lease_of(
            self.edge
                .group(
                    group,
                    GroupRequest::Poll {
                        member_id: member.to_string(),
                        timeout_ms,
                        from,
                    },
                )
                .await?,
        )
    }

    /// The rest of a member fetch: reads the lease's partitions (long-polling up to
    /// `bounds.timeout_ms`), renders within the budget, and reports the delivery to the
    /// coordinator, which advances the member's positions by exactly what is returned.
    ///
    /// The bytes read are charged to the caller's fetch quota.
    ///
    /// # Errors
    /// 409 `member_fenced` when the member expired meanwhile; 429 over the fetch quota;
    /// 503 when nothing is readable.
    pub async fn read_and_report(
        &self,
        caller: &Caller,
        group: &str,
        lease: &Lease,
        bounds: ReadBounds,
    ) -> Result<MemberBatch> {
        let ReadBounds {
            max_records,
            max_bytes,
            timeout_ms,
        } = bounds;
        self.take_quota(caller, QuotaKind::Fetch, 0)?;
        let fetched = fetch_assigned(self, lease, max_records, max_bytes, timeout_ms).await?;
        let read: usize = fetched.iter().map(|(_, f)| f.bytes.len()).sum();
        self.charge_quota(caller, QuotaKind::Fetch, read as u64);
        let first = match fetched.len() {
            0 => 0,
            n => (lease.rotation % n as u64) as usize,
        };
        let rendered = render_within_budget(&fetched, max_records, max_bytes, first)?;
        let report = lease_of(
            self.edge
                .group(
                    group,
                    GroupRequest::Delivered {
                        member_id: lease.member_id.clone(),
                        generation: lease.generation,
                        positions: rendered
                            .iter()
                            .map(|r| Delivery {
                                partition: r.partition.clone(),
                                floor: r.spans.first().map_or(r.next_offset, |s| s.offset),
                                next_offset: r.next_offset,
                            })
                            .collect(),
                    },
                )
                .await?,
        )?;
        let accepted: BTreeSet<&TopicPartition> = report.accepted.iter().collect();
        let delivered: BTreeMap<&TopicPartition, u64> = rendered
            .iter()
            .filter(|r| accepted.contains(&r.partition))
            .map(|r| (&r.partition, r.next_offset))
            .collect();
        let position = PositionToken {
            generation: lease.generation,
            offsets: lease
                .assignments
                .iter()
                .map(|tp| delivered.get(tp).copied())
                .collect(),
        };
        let parts: Vec<Rendered> = rendered
            .into_iter()
            .filter(|part| !part.json.is_empty() && accepted.contains(&part.partition))
            .collect();
        for part in &parts {
            self.metrics
                .records_fetched
                .with_label_values(&[&part.partition.topic])
                .inc_by(part.spans.len() as u64);
        }
        Ok(MemberBatch {
            generation: report.generation,
            assignments: report.assignments,
            changed: report.changed || lease.changed,
            parts,
            position,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use psubd_actors::record::{EncodedRecords, Record, ValueKind};
    use serde_json::Value;

    use super::*;

    /// Regression (chaos harness, seed 7): a lagging replica answered 416 above its end
    /// for a member's committed position, and the member jumped to `earliest` (offset 0).
    #[test]
    fn auto_offset_reset_applies_only_below_the_log_start() {
        let above_end = ApiError::out_of_range(1530, 0, 1481);
        assert_eq!(restart_after(&above_end, AutoOffsetReset::Earliest), None);
        assert_eq!(restart_after(&above_end, AutoOffsetReset::Latest), None);
        let below_start = ApiError::out_of_range(3, 10, 50);
        assert_eq!(
            restart_after(&below_start, AutoOffsetReset::Earliest),
            Some(OffsetSpec::Earliest)
        );
        assert_eq!(
            restart_after(&below_start, AutoOffsetReset::Latest),
            Some(OffsetSpec::Latest)
        );
        let unavailable = ApiError::Unavailable {
            reason: "no leader".into(),
        };
        assert_eq!(restart_after(&unavailable, AutoOffsetReset::Earliest), None);
    }

    fn run(first_offset: u64, n: u8) -> FetchedRecords {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                timestamp_ms: i64::from(i),
                kind: ValueKind::Json,
                key: None,
                value: Some(Bytes::from(format!("{i}"))),
                headers: vec![],
            })
            .collect();
        let encoded = EncodedRecords::encode(&records).unwrap();
        FetchedRecords {
            first_offset,
            count: u32::from(n),
            bytes: encoded.bytes,
            offsets: Vec::new(),
            next_offset: first_offset + u64::from(n),
            log_start: 0,
            high_watermark: first_offset + u64::from(n),
        }
    }

    /// A compacted topic's read: records at 3, 8 and 9, read up to 20.
    fn sparse_run() -> FetchedRecords {
        FetchedRecords {
            offsets: vec![3, 8, 9],
            next_offset: 20,
            high_watermark: 20,
            ..run(3, 3)
        }
    }

    #[test]
    fn compacted_offsets_are_rendered_and_positions_skip_the_gaps() {
        let rendered = render_within_budget(&[(tp(0), sparse_run())], 10, 1 << 20, 0).unwrap();
        let offsets: Vec<u64> = rendered[0].spans.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, vec![3, 8, 9]);
        assert_eq!(rendered[0].next_offset, 20, "past the trailing gap");
        let parsed: Vec<Value> =
            serde_json::from_str(&format!("[{}]", String::from_utf8_lossy(&rendered[0].json)))
                .unwrap();
        let in_json: Vec<u64> = parsed
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(in_json, vec![3, 8, 9]);
        let span = rendered[0].spans[1];
        let second: Value =
            serde_json::from_slice(&rendered[0].json[span.start..span.end]).unwrap();
        assert_eq!(second["offset"], 8);

        // Cut by the budget: the position is the first record left out, past the gap.
        let cut = render_within_budget(&[(tp(0), sparse_run())], 1, 1 << 20, 0).unwrap();
        assert_eq!(cut[0].spans.len(), 1);
        assert_eq!(cut[0].next_offset, 8);
        // A partition the budget never reached starts at its first record.
        let later =
            render_within_budget(&[(tp(0), run(0, 1)), (tp(1), sparse_run())], 1, 1 << 20, 0)
                .unwrap();
        assert_eq!(later[1].next_offset, 3);
        assert!(later[1].spans.is_empty());
    }

    fn tp(partition: u32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition,
        }
    }

    /// The budget is shared in turn, so a backlog in partition 0 does not starve
    /// partition 1; positions follow what each part carries.
    #[test]
    fn budget_caps_records_across_partitions_and_positions_follow() {
        let fetched = vec![(tp(0), run(10, 3)), (tp(1), run(5, 3))];
        let rendered = render_within_budget(&fetched, 4, 1 << 20, 0).unwrap();
        assert_eq!(rendered[0].next_offset, 12, "two of partition 0");
        assert_eq!(rendered[1].next_offset, 7, "two of partition 1");
        let body = format!(
            "[{},{}]",
            String::from_utf8(rendered[0].json.clone()).unwrap(),
            String::from_utf8(rendered[1].json.clone()).unwrap()
        );
        let parsed: Vec<Value> = serde_json::from_str(&body).unwrap();
        let offsets: Vec<u64> = parsed
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![10, 11, 5, 6]);
        // One record per answer: the rotation decides which partition it comes from.
        let from_1 = render_within_budget(&fetched, 1, 1 << 20, 1).unwrap();
        assert_eq!((from_1[0].next_offset, from_1[1].next_offset), (10, 6));
        let from_0 = render_within_budget(&fetched, 1, 1 << 20, 0).unwrap();
        assert_eq!((from_0[0].next_offset, from_0[1].next_offset), (11, 5));
    }

    #[test]
    fn an_empty_partition_keeps_its_position() {
        let fetched = vec![(tp(0), run(7, 0))];
        let rendered = render_within_budget(&fetched, 10, 1 << 20, 0).unwrap();
        assert_eq!(rendered[0].next_offset, 7);
        assert!(rendered[0].json.is_empty());
    }

    #[test]
    fn byte_budget_always_lets_one_record_through() {
        let fetched = vec![(tp(0), run(0, 3))];
        let rendered = render_within_budget(&fetched, 10, 1, 0).unwrap();
        assert_eq!(rendered[0].next_offset, 1);
    }
}
