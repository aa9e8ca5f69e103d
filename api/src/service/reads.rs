//! Reads by offset: topic metadata and fetches of committed records.

use psubd_actors::controller::access::{Operation, ResourceType};
use psubd_actors::partition::FetchedRecords;
use psubd_actors::topic::TopicMeta;

use super::{Caller, Result, Service};
use crate::auth::quota::QuotaKind;
use crate::error::ApiError;
use crate::protocol::OffsetSpec;

/// How much one fetch may return and how long it may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBounds {
    /// Most records.
    pub max_records: u32,
    /// Most bytes of record encodings (one record always fits).
    pub max_bytes: u32,
    /// Longest long-poll.
    pub timeout_ms: u64,
}

impl Service {
    /// A user topic's metadata (internal topics are not found), for `operation` on it:
    /// `Describe` to show it, `Read` to fetch or stream from it, `Alter` to change it.
    /// The ACL check comes first, so a caller without access learns nothing of the
    /// topic's existence.
    ///
    /// # Errors
    /// 403 `forbidden`, 404 `topic_not_found`.
    pub async fn topic(
        &self,
        caller: &Caller,
        name: &str,
        operation: Operation,
    ) -> Result<TopicMeta> {
        self.authorize(caller, ResourceType::Topic, name, operation)?;
        self.edge.topic(name).await
    }

    /// Reads committed records of one partition from `offset`, long-polling up to the
    /// bounds' timeout at the end of the log. `topic` comes from [`Service::topic`] with
    /// `Read` (checked there, once per request or stream). The bytes read are charged to
    /// the caller's fetch quota afterwards: a caller in debt is refused until it is paid.
    ///
    /// # Errors
    /// 404 for a partition the topic lacks, 416 outside the log, 429 over the fetch
    /// quota, 503 when no replica answers.
    pub async fn fetch(
        &self,
        caller: &Caller,
        topic: &TopicMeta,
        partition: u32,
        offset: OffsetSpec,
        bounds: ReadBounds,
    ) -> Result<FetchedRecords> {
        let placement = topic.partitions.get(partition as usize).ok_or_else(|| {
            ApiError::PartitionNotFound {
                topic: topic.name.clone(),
                partition: u64::from(partition),
            }
        })?;
        self.take_quota(caller, QuotaKind::Fetch, 0)?;
        let fetched = self
            .edge
            .fetch(
                placement,
                offset,
                bounds.max_records,
                bounds.max_bytes,
                bounds.timeout_ms,
            )
            .await?;
        self.metrics
            .records_fetched
            .with_label_values(&[&topic.name])
            .inc_by(u64::from(fetched.count));
        self.charge_quota(caller, QuotaKind::Fetch, fetched.bytes.len() as u64);
        Ok(fetched)
    }
}
