//! Key views of compacted topics: the latest record per key (lookup), pages of live keys
//! merged over the partitions (scan), and single-key writes (put, tombstone). Any replica
//! serves reads (see `Edge::read_any_replica`).

use bytes::Bytes;
use psubd_actors::clock::now_ms;
use psubd_actors::controller::access::{Operation, ResourceType};
use psubd_actors::partition::guard::{Expectation, RequestGuard};
use psubd_actors::partition::key_index::{KeyRecord, KeyScan};
use psubd_actors::record::{EncodedRecords, Record, ValueKind};
use psubd_actors::topic::{CleanupPolicy, TopicMeta};

use super::publish::{check_record_sizes, partition_of_key};
use super::{Caller, Result, Service};
use crate::auth::quota::QuotaKind;
use crate::error::ApiError;
use crate::protocol::{ForwardRequest, ForwardResponse, KeyRead};

/// Read-your-writes: the answering replica must have applied `min_offset` of the key's
/// partition, waiting up to `timeout_ms` for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadYourWrites {
    /// The offset a write answered, if any.
    pub min_offset: Option<u64>,
    /// How long to wait for a replica that is behind, ms.
    pub timeout_ms: u64,
}

/// A scan of live keys.
#[derive(Clone, Debug, Default)]
pub struct ScanRequest {
    /// Only keys with this prefix.
    pub prefix: Bytes,
    /// First key (inclusive).
    pub start: Bytes,
    /// Most keys (at least 1).
    pub limit: u32,
    /// Read-your-writes.
    pub fresh: ReadYourWrites,
}

/// A key's latest live record and its partition.
pub struct FoundKey {
    /// The key's partition.
    pub partition: u32,
    /// Its latest record.
    pub record: KeyRecord,
}

/// One page of a scan: keys in key order, and where the next page starts.
pub struct KeyPage {
    /// Live keys with their partitions, at most the limit.
    pub keys: Vec<(u32, KeyRecord)>,
    /// The `start` of the next page; `None` at the end.
    pub next: Option<String>,
}

/// Where a key write went.
pub struct KeyWritten {
    /// The key's partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: u64,
    /// The record's timestamp.
    pub timestamp_ms: i64,
}

/// The key view of one compacted topic.
pub struct KeyView<'s> {
    service: &'s Service,
    caller: Caller,
    topic: TopicMeta,
}

impl Service {
    /// The key view of `topic`, which must be compacted, for `operation`: `Read` for
    /// lookups and scans, `Write` for puts and deletes.
    ///
    /// # Errors
    /// 403 `forbidden`, 404 for an unknown topic, 409 `topic_not_compacted`.
    pub async fn key_view(
        &self,
        caller: &Caller,
        topic: &str,
        operation: Operation,
    ) -> Result<KeyView<'_>> {
        self.authorize(caller, ResourceType::Topic, topic, operation)?;
        let meta = self.edge.topic(topic).await?;
        if meta.config.cleanup_policy != CleanupPolicy::Compact {
            return Err(ApiError::TopicNotCompacted {
                topic: topic.to_string(),
            });
        }
        Ok(KeyView {
            service: self,
            caller: caller.clone(),
            topic: meta,
        })
    }
}

impl KeyView<'_> {
    /// The topic.
    pub fn topic(&self) -> &TopicMeta {
        &self.topic
    }

    /// The key's latest live record.
    ///
    /// # Errors
    /// 404 `key_not_found` when absent or deleted; 503 when no replica answers.
    pub async fn lookup(&self, key: String, fresh: ReadYourWrites) -> Result<FoundKey> {
        let partition = partition_of_key(&self.topic, key.as_bytes());
        let placement = &self.topic.partitions[partition as usize];
        let read = KeyRead {
            group: placement.group,
            key: Bytes::from(key.clone().into_bytes()),
            start: Bytes::new(),
            limit: 1,
            min_offset: fresh.min_offset,
            timeout_ms: fresh.timeout_ms,
        };
        let request = ForwardRequest::KeyLookup(read.clone());
        match self
            .service
            .edge
            .read_any_replica(placement, request, &read)
            .await?
        {
            ForwardResponse::Key(Some(record)) => Ok(FoundKey { partition, record }),
            ForwardResponse::Key(None) => Err(ApiError::KeyNotFound {
                topic: self.topic.name.clone(),
                key,
            }),
            other => Err(ApiError::Internal {
                detail: format!("key lookup answered {other:?}"),
            }),
        }
    }

    /// A page of live keys in key order, merged over the partitions.
    ///
    /// # Errors
    /// 503 when a partition has no replica that answers.
    pub async fn scan(&self, request: ScanRequest) -> Result<KeyPage> {
        let ScanRequest {
            prefix,
            start,
            limit,
            fresh,
        } = request;
        let pages = futures::future::join_all(self.topic.partitions.iter().enumerate().map(
            |(partition, placement)| {
                let read = KeyRead {
                    group: placement.group,
                    key: prefix.clone(),
                    start: start.clone(),
                    limit,
                    min_offset: fresh.min_offset,
                    timeout_ms: fresh.timeout_ms,
                };
                async move {
                    let request = ForwardRequest::KeyScan(read.clone());
                    let answer = self
                        .service
                        .edge
                        .read_any_replica(placement, request, &read)
                        .await;
                    (partition as u32, answer)
                }
            },
        ))
        .await;
        let mut merged: Vec<(u32, KeyRecord)> = Vec::new();
        // Keys at or below this bound are complete over every partition.
        let mut bound: Option<Bytes> = None;
        for (partition, answer) in pages {
            let page: KeyScan = match answer? {
                ForwardResponse::Keys(page) => page,
                other => {
                    return Err(ApiError::Internal {
                        detail: format!("key scan answered {other:?}"),
                    })
                }
            };
            if page.more {
                if let Some(last) = page.last_examined {
                    bound = Some(match bound {
                        Some(b) if b <= last => b,
                        _ => last,
                    });
                }
            }
            merged.extend(page.records.into_iter().map(|r| (partition, r)));
        }
        merged.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        if let Some(bound) = &bound {
            merged.retain(|(_, r)| r.key <= *bound);
        }
        let full = merged.len() > limit as usize;
        merged.truncate(limit as usize);
        let next = if full || bound.is_some() {
            merged
                .last()
                .map(|(_, r)| r.key.clone())
                .or(bound)
                .map(|last| {
                    let mut next = String::from_utf8_lossy(&last).into_owned();
                    next.push('\0');
                    next
                })
        } else {
            None
        };
        Ok(KeyPage { keys: merged, next })
    }

    /// Publishes one record of `key`: a value, or a tombstone (`value: None`). With
    /// `if_match`, only if the key's latest live record is at that offset (`None`: the key
    /// has none), decided where the write is applied.
    ///
    /// # Errors
    /// 413 over the record limits; 429 over the produce quota; 412 when `if_match` does
    /// not hold (nothing written); 503 / 504 as any publish.
    pub async fn write(
        &self,
        key: String,
        kind: ValueKind,
        value: Option<Bytes>,
        if_match: Option<Option<u64>>,
    ) -> Result<KeyWritten> {
        let record = Record {
            timestamp_ms: now_ms(),
            kind,
            key: Some(Bytes::from(key.into_bytes())),
            value,
            headers: Vec::new(),
        };
        let size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len());
        check_record_sizes(&self.service.limits, size, 0)?;
        let partition = partition_of_key(&self.topic, record.key.as_deref().unwrap_or_default());
        let placement = &self.topic.partitions[partition as usize];
        let encoded = EncodedRecords::encode(std::slice::from_ref(&record)).map_err(|e| {
            ApiError::Internal {
                detail: format!("record encoding: {e}"),
            }
        })?;
        self.service
            .take_quota(&self.caller, QuotaKind::Produce, encoded.len() as u64)?;
        let guard = RequestGuard {
            ids: Vec::new(),
            expect: if_match.map(|offset| Expectation::KeyOffset {
                key: record.key.clone().unwrap_or_default(),
                offset,
            }),
        };
        let appended = self.service.edge.append(placement, encoded, guard).await?;
        self.service
            .metrics
            .records_published
            .with_label_values(&[&self.topic.name])
            .inc();
        Ok(KeyWritten {
            partition,
            offset: appended.base_offset,
            timestamp_ms: record.timestamp_ms,
        })
    }
}
