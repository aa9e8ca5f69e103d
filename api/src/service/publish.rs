//! Publishing: records are validated and encoded into one run per partition as they
//! arrive ([`PublishBatch::push`]), then appended, one append per partition, concurrently
//! ([`Service::publish`]). Nothing is sent before every record of a request has been
//! accepted, so a refused record means nothing written.
//!
//! A record with a due time in the future (`deliver_at_ms`, or `delay_ms` from this node's
//! clock) goes into its partition's delayed run instead, sent as one `Delay` to the
//! partition's delay queue (docs/architecture.md § Delayed records); its report carries
//! the due time instead of an offset, which it only gets when released.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use psubd_actors::clock::now_ms;
use psubd_actors::controller::access::{Operation, ResourceType};
use psubd_actors::partition::guard::{Expectation, RequestGuard};
use psubd_actors::partition::id_table::RecordId;
use psubd_actors::partition::{Appended, DelayedRecords};
use psubd_actors::record::{EncodedRecords, RawBytes, RecordRef, ValueKind};
use psubd_actors::topic::TopicMeta;

use super::{Caller, Result, Service};
use crate::auth::quota::QuotaKind;
use crate::error::ApiError;
use crate::limits::Limits;

/// Acknowledgement level.
///
/// There is no leader-only level (Kafka's `acks=1`): offsets are assigned when an entry is
/// committed and applied, so a leader could not report them before the commit, and an
/// answer without offsets is what `acks=0` already gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Answer once every record is committed, with its offset.
    All,
    /// Answer at once; write in the background.
    None,
}

impl Acks {
    /// Parses `acks` as clients give it (`all`, `-1` or `0`; absent means `all`).
    ///
    /// # Errors
    /// 400 for `1` (unsupported) and anything else.
    pub fn parse(raw: Option<&str>) -> Result<Acks> {
        match raw {
            None | Some("all") | Some("-1") => Ok(Acks::All),
            Some("0") => Ok(Acks::None),
            Some("1") => Err(ApiError::InvalidRequest {
                message: "acks=1 is not supported: offsets are assigned at commit, so use \
                          acks=all (the default) or acks=0"
                    .into(),
            }),
            Some(other) => Err(ApiError::InvalidRequest {
                message: format!("acks must be all or 0, not '{other}'"),
            }),
        }
    }
}

/// A record to publish, borrowing what it can from the request it came in.
pub struct NewRecord<'a> {
    /// The partition asked for; else chosen by key, else round-robin.
    pub partition: Option<i64>,
    /// The record's timestamp; now when absent.
    pub timestamp_ms: Option<i64>,
    /// How the value is typed.
    pub kind: ValueKind,
    /// The key.
    pub key: Option<Cow<'a, [u8]>>,
    /// The value (`None`: a tombstone).
    pub value: Option<Cow<'a, [u8]>>,
    /// Headers, sorted by name.
    pub headers: Vec<(String, String)>,
    /// Idempotency id (1 to [`MAX_ID_BYTES`] bytes): stored once per duplicate window.
    /// Not with `deliver_at_ms` or `delay_ms`.
    pub id: Option<Cow<'a, [u8]>>,
    /// Deliver at this time (ms since the epoch) rather than now; not with `delay_ms`.
    pub deliver_at_ms: Option<i64>,
    /// Deliver this many ms after now (this node's clock); not with `deliver_at_ms`.
    pub delay_ms: Option<i64>,
}

/// Longest record id, bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Where one record of a request went: its partition and its place in that partition's
/// run (its offset is the run's base offset plus `position`), or in its delayed run.
struct Slot {
    partition: u32,
    position: u32,
    timestamp_ms: i64,
    /// The due time of a delayed record (it is in the partition's delayed run).
    deliver_at_ms: Option<i64>,
}

/// One partition's share of a request: its records, encoded back to back, and their ids
/// and expectation.
#[derive(Default)]
struct Run {
    count: u32,
    bytes: Vec<u8>,
    /// Its ids and the request's expectation (never on a delayed run).
    guard: RequestGuard,
    /// A delayed run's due times, one per record.
    due_ms: Vec<i64>,
}

/// The due time of a record with `deliver_at_ms` or `delay_ms`, as of `now_ms`: `None`
/// when it is due now or in the past (an ordinary publish).
///
/// # Errors
/// 400 for both fields, a negative delay, or a due time more than `max_delay_ms` ahead.
pub fn due_time(
    deliver_at_ms: Option<i64>,
    delay_ms: Option<i64>,
    now_ms: i64,
    max_delay_ms: u64,
) -> Result<Option<i64>> {
    let due = match (deliver_at_ms, delay_ms) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest {
                message: "a record takes deliver_at_ms or delay_ms, not both".into(),
            })
        }
        (Some(at), None) => at,
        (None, Some(delay)) if delay < 0 => {
            return Err(ApiError::InvalidRequest {
                message: format!("delay_ms must not be negative, not {delay}"),
            })
        }
        (None, Some(delay)) => now_ms.saturating_add(delay),
    };
    let ahead = due.saturating_sub(now_ms);
    if ahead > 0 && ahead as u64 > max_delay_ms {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "a record may be delayed at most {max_delay_ms} ms (--max-delay-ms); this one \
                 is due {ahead} ms from now"
            ),
        });
    }
    Ok((ahead > 0).then_some(due))
}

/// One request's records for one topic, encoded into one run per partition as they are
/// validated: no owned copy of a record is kept, and nothing is grouped afterwards.
pub struct PublishBatch {
    topic: TopicMeta,
    limits: Limits,
    round_robin: Arc<AtomicU64>,
    runs: BTreeMap<u32, Run>,
    /// Per partition, the records to queue until their due time.
    delayed_runs: BTreeMap<u32, Run>,
    /// One per record, in request order.
    slots: Vec<Slot>,
}

impl PublishBatch {
    /// The topic the records go to.
    pub fn topic(&self) -> &TopicMeta {
        &self.topic
    }

    /// An empty batch for the same topic (a stream publishes one batch per chunk).
    pub fn empty_like(&self) -> PublishBatch {
        PublishBatch {
            topic: self.topic.clone(),
            limits: self.limits,
            round_robin: self.round_robin.clone(),
            runs: BTreeMap::new(),
            delayed_runs: BTreeMap::new(),
            slots: Vec::new(),
        }
    }

    /// Records so far.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of the encoded records so far (what the produce quota counts).
    pub fn encoded_bytes(&self) -> u64 {
        self.runs
            .values()
            .chain(self.delayed_runs.values())
            .map(|run| run.bytes.len() as u64)
            .sum()
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Checks how many records one request brings, before they are parsed one by one.
    ///
    /// # Errors
    /// 413 over the limit, 400 for none.
    pub fn check_count(&self, count: usize) -> Result<()> {
        if count > self.limits.max_records_per_request {
            return Err(ApiError::TooManyRecords {
                count,
                limit: self.limits.max_records_per_request,
            });
        }
        if count == 0 {
            return Err(ApiError::InvalidRequest {
                message: "records must not be empty".into(),
            });
        }
        Ok(())
    }

    /// Chooses the record's partition, checks its sizes and encodes it into that
    /// partition's run; returns its index in request order.
    ///
    /// A delayed record's timestamp defaults to its due time rather than now, so it reads
    /// as written when it became readable (and retention by age counts from then).
    ///
    /// # Errors
    /// 404 for a partition the topic lacks, 413 for a record or headers over the limits,
    /// 400 for a bad due time (see [`due_time`]), a bad id (see [`check_id`]), or an id
    /// with a due time (a delayed record is queued, not checked against the id table).
    pub fn push(&mut self, record: NewRecord<'_>) -> Result<usize> {
        if let Some(id) = &record.id {
            check_id(id)?;
            if record.deliver_at_ms.is_some() || record.delay_ms.is_some() {
                return Err(ApiError::InvalidRequest {
                    message: "a record with an id cannot be delayed: give id or \
                              deliver_at_ms/delay_ms, not both"
                        .into(),
                });
            }
        }
        let partition = self.choose_partition(
            record.partition,
            record.key.as_deref(),
            record.id.as_deref(),
        )?;
        let now = now_ms();
        let due = due_time(
            record.deliver_at_ms,
            record.delay_ms,
            now,
            self.limits.max_delay_ms,
        )?;
        let timestamp_ms = record.timestamp_ms.unwrap_or(due.unwrap_or(now));
        let size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len());
        let header_size: usize = record.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        check_record_sizes(&self.limits, size, header_size)?;
        let runs = match due {
            Some(_) => &mut self.delayed_runs,
            None => &mut self.runs,
        };
        let run = runs.entry(partition).or_default();
        RecordRef {
            timestamp_ms,
            kind: record.kind,
            key: record.key.as_deref().map(RawBytes),
            value: record.value.as_deref().map(RawBytes),
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), RawBytes(v.as_bytes())))
                .collect(),
        }
        .encode_into(&mut run.bytes)
        .map_err(|e| ApiError::Internal {
            detail: format!("record encoding: {e}"),
        })?;
        if let Some(id) = &record.id {
            run.guard.ids.push((run.count, RecordId::of(id)));
        }
        self.slots.push(Slot {
            partition,
            position: run.count,
            timestamp_ms,
            deliver_at_ms: due,
        });
        run.due_ms.extend(due);
        run.count += 1;
        Ok(self.slots.len() - 1)
    }

    /// Makes the request conditional on `expectation` (`?expected_offset`, `If-Match`):
    /// decided where the records' entry is applied, so every record must have gone to one
    /// partition.
    ///
    /// # Errors
    /// 400 when the records went to more than one partition, or any is delayed (a delayed
    /// record is queued, not appended, so no offset can be expected of it).
    pub fn expect(&mut self, expectation: Expectation) -> Result<()> {
        if !self.delayed_runs.is_empty() {
            return Err(ApiError::InvalidRequest {
                message: "an expected offset cannot apply to delayed records (deliver_at_ms, \
                          delay_ms): they get their offsets when released"
                    .into(),
            });
        }
        let mut runs = self.runs.values_mut();
        match (runs.next(), runs.next()) {
            (Some(run), None) => {
                run.guard.expect = Some(expectation);
                Ok(())
            }
            _ => Err(ApiError::InvalidRequest {
                message: "an expected offset needs every record in one partition: give \
                          `partition` (or one key)"
                    .into(),
            }),
        }
    }

    /// Chooses a record's partition: the explicit one, else by key, else by id (so a
    /// retried record lands where its first attempt did), else round-robin.
    fn choose_partition(
        &self,
        explicit: Option<i64>,
        key: Option<&[u8]>,
        id: Option<&[u8]>,
    ) -> Result<u32> {
        let count = self.topic.config.partitions;
        match (explicit, key.or(id)) {
            (Some(p), _) => {
                if p < 0 || p >= i64::from(count) {
                    return Err(ApiError::PartitionNotFound {
                        topic: self.topic.name.clone(),
                        partition: p.max(0) as u64,
                    });
                }
                Ok(p as u32)
            }
            (None, Some(key_or_id)) => Ok(partition_of_key(&self.topic, key_or_id)),
            (None, None) => {
                Ok((self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(count)) as u32)
            }
        }
    }
}

/// The partition of `key`: the one stable hash, so a key maps to the same partition on
/// every node and release, and a key view reads where a keyed publish wrote.
pub fn partition_of_key(topic: &TopicMeta, key: &[u8]) -> u32 {
    psubd_wire::partitioning::partition_of_key(key, topic.config.partitions)
}

/// Checks a record id's length.
///
/// # Errors
/// 400 `invalid_request` for an empty id or one over [`MAX_ID_BYTES`].
pub fn check_id(id: &[u8]) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::InvalidRequest {
            message: format!("a record id must be 1 to {MAX_ID_BYTES} bytes"),
        });
    }
    Ok(())
}

/// Checks one record's size (key + value) and its headers' size against the limits.
///
/// # Errors
/// 413 `record_too_large` or `headers_too_large`.
pub fn check_record_sizes(limits: &Limits, size: usize, header_size: usize) -> Result<()> {
    if size > limits.max_record_bytes {
        return Err(ApiError::RecordTooLarge {
            size,
            limit: limits.max_record_bytes,
        });
    }
    if header_size > limits.max_header_bytes {
        return Err(ApiError::HeadersTooLarge {
            size: header_size,
            limit: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// Where a record was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the log at this offset.
    Offset(u64),
    /// In the partition's delay queue, due at this time; its offset comes at release.
    Delayed {
        /// The due time, ms since the epoch.
        deliver_at_ms: i64,
    },
}

/// One record's delivery report.
pub struct Delivered {
    /// Its partition.
    pub partition: u32,
    /// Where it was stored, or why it was not (or may not have been).
    pub result: Result<Placement>,
    /// Its timestamp.
    pub timestamp_ms: i64,
    /// Not stored: its id was, within the duplicate window, at `result`'s offset.
    pub duplicate: bool,
}

/// What a publish came to.
pub enum Published {
    /// `acks=0`: this many records are being written in the background.
    Accepted(usize),
    /// One report per record, in request order.
    Delivered(Vec<Delivered>),
}

/// The error a request answers with when every one of its records failed: an unknown
/// outcome first (something may have been written), else the first record's. `None`
/// when at least one record was written.
pub fn total_failure(reports: &[Delivered]) -> Option<ApiError> {
    let failed = reports.iter().filter(|d| d.result.is_err()).count();
    if failed == 0 || failed != reports.len() {
        return None;
    }
    let unknown = reports
        .iter()
        .find(|d| matches!(d.result, Err(ApiError::OutcomeUnknown { .. })));
    unknown
        .or(reports.first())
        .and_then(|d| d.result.as_ref().err())
        .map(clone_error)
}

/// Errors are reported once per record; this rebuilds one for each.
pub fn clone_error(error: &ApiError) -> ApiError {
    match error {
        ApiError::OutcomeUnknown { reason } => ApiError::OutcomeUnknown {
            reason: reason.clone(),
        },
        ApiError::Unavailable { reason } => ApiError::Unavailable {
            reason: reason.clone(),
        },
        ApiError::InsufficientStorage { reason } => ApiError::InsufficientStorage {
            reason: reason.clone(),
        },
        ApiError::QuotaExceeded {
            quota,
            retry_after_secs,
        } => ApiError::QuotaExceeded {
            quota,
            retry_after_secs: *retry_after_secs,
        },
        ApiError::OffsetMismatch { next_offset } => ApiError::OffsetMismatch {
            next_offset: *next_offset,
        },
        ApiError::KeyOffsetMismatch { key_offset } => ApiError::KeyOffsetMismatch {
            key_offset: *key_offset,
        },
        other => ApiError::Internal {
            detail: other.to_string(),
        },
    }
}

impl Service {
    /// Starts a publish to `topic`: records are then pushed into the batch.
    ///
    /// # Errors
    /// 403 without `write` on the topic, 404 for an unknown topic.
    pub async fn begin_publish(&self, caller: &Caller, topic: &str) -> Result<PublishBatch> {
        self.authorize(caller, ResourceType::Topic, topic, Operation::Write)?;
        Ok(PublishBatch {
            topic: self.edge.topic(topic).await?,
            limits: self.limits,
            round_robin: self.round_robin.clone(),
            runs: BTreeMap::new(),
            delayed_runs: BTreeMap::new(),
            slots: Vec::new(),
        })
    }

    /// Publishes a batch: with `acks=all` waits for every partition's append and reports
    /// per record; with `acks=0` starts the appends in the background (at most
    /// `max_unacked_publishes` at once; more wait here) and answers the count.
    ///
    /// # Errors
    /// 503 when the node is shutting down, 429 over the produce quota (`acks=0` only;
    /// with `acks=all` both are in the reports); per-record errors are in the reports.
    pub async fn publish(
        &self,
        caller: &Caller,
        batch: PublishBatch,
        acks: Acks,
    ) -> Result<Published> {
        if acks == Acks::All {
            return Ok(Published::Delivered(self.deliver(caller, batch).await));
        }
        let permit =
            self.unacked
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ApiError::Unavailable {
                    reason: "node shutting down".into(),
                })?;
        self.take_quota(caller, QuotaKind::Produce, batch.encoded_bytes())?;
        let count = batch.len();
        let service = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            service.append_batch(batch).await;
        });
        Ok(Published::Accepted(count))
    }

    /// Appends a batch within the caller's produce quota; reports per record in request
    /// order (every record reports 429 when over the quota: nothing was written).
    pub async fn deliver(&self, caller: &Caller, batch: PublishBatch) -> Vec<Delivered> {
        if let Err(error) = self.take_quota(caller, QuotaKind::Produce, batch.encoded_bytes()) {
            return batch
                .slots
                .iter()
                .map(|slot| Delivered {
                    partition: slot.partition,
                    result: Err(clone_error(&error)),
                    timestamp_ms: slot.timestamp_ms,
                    duplicate: false,
                })
                .collect();
        }
        self.append_batch(batch).await
    }

    /// Appends a batch, one append per partition, concurrently, and queues its delayed
    /// records, one delay per partition, alongside; reports per record in request order.
    async fn append_batch(&self, batch: PublishBatch) -> Vec<Delivered> {
        let PublishBatch {
            topic,
            runs,
            delayed_runs,
            slots,
            ..
        } = batch;
        let partitions: Vec<u32> = runs.keys().copied().collect();
        let delayed_partitions: Vec<u32> = delayed_runs.keys().copied().collect();
        let placement_of = |partition: u32| {
            topic
                .partitions
                .get(partition as usize)
                .ok_or_else(|| ApiError::PartitionNotFound {
                    topic: topic.name.clone(),
                    partition: u64::from(partition),
                })
        };
        let appends = runs.into_iter().map(|(partition, run)| {
            let placement = placement_of(partition);
            let guard = run.guard;
            let encoded = EncodedRecords::from_run(run.count, run.bytes);
            async move { self.edge.append(placement?, encoded, guard).await }
        });
        let delays = delayed_runs.into_iter().map(|(partition, run)| {
            let placement = placement_of(partition);
            let delayed = DelayedRecords {
                due_ms: run.due_ms,
                records: EncodedRecords::from_run(run.count, run.bytes),
            };
            async move { self.edge.delay(placement?, delayed).await }
        });
        let (results, delay_results): (Vec<Result<Appended>>, Vec<Result<()>>) = futures::join!(
            futures::future::join_all(appends),
            futures::future::join_all(delays)
        );
        let find = |keys: &[u32], partition: u32| keys.binary_search(&partition).ok();
        let mut published = 0u64;
        let reports: Vec<Delivered> = slots
            .iter()
            .map(|slot| {
                let outcome = match slot.deliver_at_ms {
                    None => find(&partitions, slot.partition)
                        .and_then(|i| results.get(i))
                        .map(|result| {
                            result.as_ref().map(|appended| {
                                let (offset, duplicate) = appended.offset_of(slot.position);
                                (Placement::Offset(offset), duplicate)
                            })
                        }),
                    Some(deliver_at_ms) => find(&delayed_partitions, slot.partition)
                        .and_then(|i| delay_results.get(i))
                        .map(|result| {
                            result
                                .as_ref()
                                .map(|()| (Placement::Delayed { deliver_at_ms }, false))
                        }),
                };
                let mut duplicate = false;
                let result = match outcome {
                    Some(Ok((placement, is_duplicate))) => {
                        duplicate = is_duplicate;
                        published += u64::from(!is_duplicate);
                        Ok(placement)
                    }
                    Some(Err(error)) => Err(clone_error(error)),
                    None => Err(ApiError::Internal {
                        detail: "no append for a partition of the request".into(),
                    }),
                };
                Delivered {
                    partition: slot.partition,
                    result,
                    timestamp_ms: slot.timestamp_ms,
                    duplicate,
                }
            })
            .collect();
        self.metrics
            .records_published
            .with_label_values(&[&topic.name])
            .inc_by(published);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psubd_actors::topic::{CleanupPolicy, TopicConfig};

    fn batch(partitions: u32) -> PublishBatch {
        PublishBatch {
            topic: TopicMeta {
                name: "t".into(),
                config: TopicConfig {
                    partitions,
                    replication_factor: 1,
                    retention_ms: -1,
                    retention_bytes: -1,
                    cleanup_policy: CleanupPolicy::Delete,
                    delete_retention_ms: -1,
                },
                partitions: Vec::new(),
                created_ms: 0,
            },
            limits: Limits::default(),
            round_robin: Arc::default(),
            runs: BTreeMap::new(),
            delayed_runs: BTreeMap::new(),
            slots: Vec::new(),
        }
    }

    fn record(partition: i64, key: &'static str, value: &'static str) -> NewRecord<'static> {
        NewRecord {
            partition: Some(partition),
            timestamp_ms: Some(1_700_000_000_000 + partition),
            kind: ValueKind::String,
            key: Some(Cow::Borrowed(key.as_bytes())),
            value: Some(Cow::Owned(value.as_bytes().to_vec())),
            headers: vec![("h".into(), "v".into())],
            id: None,
            deliver_at_ms: None,
            delay_ms: None,
        }
    }

    #[test]
    fn batches_keep_request_order_per_partition_and_encode_every_record() {
        let mut batches = batch(2);
        for (p, k, v) in [(1, "a", "x"), (0, "b", "y"), (1, "c", "z")] {
            batches.push(record(p, k, v)).unwrap();
        }
        let places: Vec<(u32, u32)> = batches
            .slots
            .iter()
            .map(|s| (s.partition, s.position))
            .collect();
        assert_eq!(places, vec![(1, 0), (0, 0), (1, 1)]);
        let run = &batches.runs[&1];
        assert_eq!(run.count, 2);
        type Decoded = (Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);
        let decoded: Vec<Decoded> = psubd_actors::record::RecordIter::run(&run.bytes)
            .map(|r| {
                let r = r.unwrap();
                assert_eq!(r.kind, ValueKind::String);
                (
                    r.key.unwrap().to_vec(),
                    r.value.unwrap().to_vec(),
                    r.headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_vec()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                (
                    b"a".to_vec(),
                    b"x".to_vec(),
                    vec![("h".into(), b"v".to_vec())]
                ),
                (
                    b"c".to_vec(),
                    b"z".to_vec(),
                    vec![("h".into(), b"v".to_vec())]
                ),
            ]
        );
        assert!(matches!(
            batches.push(record(2, "d", "w")),
            Err(ApiError::PartitionNotFound { partition: 2, .. })
        ));
    }

    #[test]
    fn ids_pick_the_partition_of_unkeyed_records_and_expectations_need_one_partition() {
        let mut batches = batch(8);
        let with_id = |id: &'static str| NewRecord {
            partition: None,
            key: None,
            id: Some(Cow::Borrowed(id.as_bytes())),
            ..record(0, "k", "v")
        };
        batches.push(with_id("order-1")).unwrap();
        batches.push(with_id("order-1")).unwrap();
        let want = partition_of_key(&batches.topic, b"order-1");
        assert!(batches.slots.iter().all(|s| s.partition == want));
        let run = &batches.runs[&want];
        assert_eq!(run.guard.ids.len(), 2);
        assert_eq!(run.guard.ids[0].1, RecordId::of(b"order-1"));
        assert_eq!((run.guard.ids[0].0, run.guard.ids[1].0), (0, 1));
        assert!(batches.expect(Expectation::NextOffset(3)).is_ok());
        batches
            .push(record((i64::from(want) + 1) % 8, "k", "v"))
            .unwrap();
        assert!(matches!(
            batches.expect(Expectation::NextOffset(3)),
            Err(ApiError::InvalidRequest { .. })
        ));
        for bad in [&b""[..], &[b'x'; MAX_ID_BYTES + 1][..]] {
            let mut record = record(0, "k", "v");
            record.id = Some(Cow::Owned(bad.to_vec()));
            assert!(matches!(
                batches.push(record),
                Err(ApiError::InvalidRequest { .. })
            ));
        }
    }

    #[test]
    fn due_times_are_checked_and_a_past_one_is_an_ordinary_publish() {
        let (now, max) = (1_000_000, 60_000);
        assert_eq!(due_time(None, None, now, max).unwrap(), None);
        assert_eq!(due_time(None, Some(0), now, max).unwrap(), None);
        assert_eq!(due_time(Some(now), None, now, max).unwrap(), None);
        assert_eq!(due_time(Some(5), None, now, max).unwrap(), None);
        assert_eq!(
            due_time(None, Some(1_500), now, max).unwrap(),
            Some(now + 1_500)
        );
        assert_eq!(
            due_time(Some(now + max as i64), None, now, max).unwrap(),
            Some(now + max as i64)
        );
        for (at, delay) in [
            (Some(now + 10), Some(10)),
            (None, Some(-1)),
            (None, Some(max as i64 + 1)),
            (Some(now + max as i64 + 1), None),
            (None, Some(i64::MAX)),
        ] {
            assert!(
                matches!(
                    due_time(at, delay, now, max),
                    Err(ApiError::InvalidRequest { .. })
                ),
                "{at:?} {delay:?}"
            );
        }
    }

    #[test]
    fn delayed_records_go_to_the_delayed_run_stamped_with_their_due_time() {
        let mut batches = batch(1);
        batches.push(record(0, "a", "now")).unwrap();
        let mut later = record(0, "b", "later");
        later.timestamp_ms = None;
        later.delay_ms = Some(60_000);
        batches.push(later).unwrap();
        assert_eq!(batches.runs[&0].count, 1);
        let delayed = &batches.delayed_runs[&0];
        assert_eq!(delayed.count, 1);
        let due = delayed.due_ms[0];
        assert_eq!(batches.slots[1].deliver_at_ms, Some(due));
        assert_eq!(batches.slots[1].timestamp_ms, due);
        let stamped = psubd_actors::record::RecordIter::run(&delayed.bytes)
            .next()
            .unwrap()
            .unwrap()
            .timestamp_ms;
        assert_eq!(stamped, due);
    }

    #[test]
    fn ids_and_expectations_refuse_delayed_records() {
        let mut batches = batch(1);
        let mut both = record(0, "k", "v");
        both.id = Some(Cow::Borrowed(b"order-1"));
        both.delay_ms = Some(60_000);
        assert!(matches!(
            batches.push(both),
            Err(ApiError::InvalidRequest { .. })
        ));
        let mut past = record(0, "k", "v");
        past.id = Some(Cow::Borrowed(b"order-1"));
        past.deliver_at_ms = Some(5);
        assert!(matches!(
            batches.push(past),
            Err(ApiError::InvalidRequest { .. })
        ));
        assert!(batches.is_empty());
        let mut later = record(0, "k", "v");
        later.delay_ms = Some(60_000);
        batches.push(later).unwrap();
        assert!(matches!(
            batches.expect(Expectation::NextOffset(0)),
            Err(ApiError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn acks_values() {
        assert_eq!(Acks::parse(None).unwrap(), Acks::All);
        assert!(Acks::parse(Some("1")).is_err());
        assert_eq!(Acks::parse(Some("0")).unwrap(), Acks::None);
        assert!(Acks::parse(Some("2")).is_err());
    }
}
