//! The node-to-node protocol: the requests one node's edge sends another over the peer
//! transport, and their answers. Plain data, postcard-encoded; it depends on no other
//! module of this crate, so every layer may speak it.
//!
//! A forwarded request is served where it lands and never forwarded again: the sender
//! retries at a leader hint instead, which bounds every request to a few hops.

use bytes::Bytes;
use psubd_actors::assignment::TopicPartition;
use psubd_actors::controller::access::{AccessChange, AccessRefusal};
use psubd_actors::controller::reassignment::MoveState;
use psubd_actors::controller::{NodeInfo, TopicUpdate};
use psubd_actors::coordinator::{GroupAnswer, GroupRequest, GroupSummary};
use psubd_actors::offsets::CommittedOffset;
use psubd_actors::partition::guard::RequestGuard;
use psubd_actors::partition::key_index::{KeyRecord, KeyScan};
use psubd_actors::partition::{Appended, DelayedRecords, FetchedRecords};
use psubd_actors::record::{EncodedRecords, RecordIter};
use psubd_actors::topic::{TopicConfig, TopicMeta};
use psubd_actors::{ControllerError, GroupError, PartitionError};
use psubd_raft::{GroupId, NodeId};
use serde::{Deserialize, Serialize};

use crate::limits::{Limits, MAX_MAX_BYTES, MAX_MAX_RECORDS, MAX_TIMEOUT_MS};

/// Where a fetch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    /// The log start.
    Earliest,
    /// The high watermark: only records published from now on.
    Latest,
    /// A given offset.
    At(u64),
    /// The first record stamped at or after this time (ms since the epoch); the high
    /// watermark when none is.
    AtTime(i64),
}

/// A request served on one node's local replicas.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Append one request's records to a partition (the serving node must lead it).
    Append {
        /// The partition's group.
        group: GroupId,
        /// The records.
        records: EncodedRecords,
    },
    /// Read committed records, long-polling up to `timeout_ms` at the end of the log.
    Fetch {
        /// The partition's group.
        group: GroupId,
        /// Where to start.
        offset: OffsetSpec,
        /// Most records to return.
        max_records: u32,
        /// Most bytes of record encodings to return (one record always fits).
        max_bytes: u32,
        /// How long to wait for a record at the end of the log.
        timeout_ms: u64,
    },
    /// Leader, log start and high watermark of a partition replica.
    PartitionStatus {
        /// The partition's group.
        group: GroupId,
    },
    /// Create a topic (the serving node must lead the controller).
    CreateTopic {
        /// Name (validated by the sender).
        name: String,
        /// Configuration (validated by the sender).
        config: TopicConfig,
    },
    /// Delete a topic (the serving node must lead the controller).
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Record a node's HTTP address (the serving node must lead the controller).
    RegisterNode(NodeInfo),
    /// Describe a topic from the serving node's metadata (the controller leader's is
    /// the freshest: used when a topic is missing locally, e.g. just created elsewhere).
    DescribeTopic {
        /// Name.
        name: String,
    },
    /// A consumer-group request for the group's coordinator (the serving node must lead
    /// the group's offsets partition).
    Group {
        /// The consumer group.
        group: String,
        /// The request.
        request: GroupRequest,
    },
    /// A group's committed offsets from the serving node's replica of its offsets
    /// partition (any replica may serve committed reads).
    CommittedOffsets {
        /// The consumer group.
        group: String,
    },
    /// The groups of one offsets partition (the serving node must lead it).
    ListGroups {
        /// The offsets partition.
        partition: u32,
    },
    /// Change a topic's mutable settings (the serving node must lead the controller).
    UpdateTopic {
        /// Name.
        name: String,
        /// What changes (validated by the sender).
        update: TopicUpdate,
    },
    /// A key's latest record from the serving node's replica of a compacted partition
    /// (any replica that applied `min_offset`).
    KeyLookup(KeyRead),
    /// A page of live keys from the serving node's replica .
    KeyScan(KeyRead),
    /// The partition's leader as the serving node's replica sees it, once it sees one
    /// that can take writes (itself only with a fresh quorum), waiting up to `wait_ms`.
    AwaitLeader {
        /// The partition's group.
        group: GroupId,
        /// How long the serving node may wait (capped there).
        wait_ms: u64,
    },
    /// Change the access model (the serving node must lead the controller). Checked
    /// (admin, valid names) by the edge that took the request.
    Access(AccessChange),
    /// Queue one request's delayed records in a partition's delay queue (the serving node
    /// must lead it).
    Delay {
        /// The partition's group.
        group: GroupId,
        /// The records and their due times.
        records: DelayedRecords,
    },
    /// The sender leads `group` and is handing it over: start an election at once if the
    /// serving node follows the sender and its log reaches `leader_last_index`
    /// (`psubd_raft::handover`). Only served for the peer that sent it, never locally.
    TakeLeadership {
        /// The group.
        group: GroupId,
        /// The sender's last log index, which it saw this node's log match.
        leader_last_index: u64,
    },
    /// The sender is stopping: send it nothing more until it connects again. Only served
    /// for the peer that sent it.
    Departing,
    /// Raise a topic's partition count (the serving node must lead the controller).
    AddPartitions {
        /// Name.
        name: String,
        /// The new count (checked by the controller: it must grow).
        partitions: u32,
    },
    /// Append one request's records under a guard: record ids, an expected offset (the
    /// serving node must lead the partition). A variant of its own, after the others, so
    /// plain appends keep their encoding between nodes of different builds.
    GuardedAppend {
        /// The partition's group.
        group: GroupId,
        /// The records.
        records: EncodedRecords,
        /// Their ids and the request's expectation.
        guard: RequestGuard,
    },
    /// Set a topic's `duplicate_window_ms` (the serving node must lead the controller).
    SetDuplicateWindow {
        /// Name.
        name: String,
        /// The window, ms (checked by the sender; 0 turns deduplication off).
        duplicate_window_ms: u64,
    },
    /// A step of a replica move or a decommission (the serving node must lead the
    /// controller); answered `Done` or `Controller(refusal)`.
    Moves(MoveOp),
}

/// The controller writes of replica moves and decommissions (`controller::reassignment`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MoveOp {
    /// Start moving a partition to `replicas` (checked by the controller).
    Start {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The target replica set.
        replicas: Vec<NodeId>,
    },
    /// Record how far a move got.
    Progress {
        /// The partition's group.
        group: GroupId,
        /// The step reached.
        state: MoveState,
    },
    /// The partition group's voters are `replicas`, committed: the move is done.
    Finish {
        /// The partition's group.
        group: GroupId,
        /// The move's target.
        replicas: Vec<NodeId>,
    },
    /// Start decommissioning a node.
    Decommission {
        /// The node.
        node: NodeId,
    },
    /// The node holds nothing and left group 0.
    Decommissioned {
        /// The node.
        node: NodeId,
    },
}

/// A replica's status.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The leader as this replica knows it.
    pub leader: Option<NodeId>,
    /// First stored offset.
    pub log_start: u64,
    /// The high watermark.
    pub high_watermark: u64,
    /// Stored size of the retained record batches on this replica, bytes.
    pub stored_bytes: u64,
    /// Delayed records waiting in the delay queue on this replica.
    pub delayed_records: u64,
}

/// The answer to a [`ForwardRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// Appended.
    Appended(Appended),
    /// Fetched records.
    Fetched(FetchedRecords),
    /// A replica's status.
    Status(ReplicaStatus),
    /// A topic's metadata (created or described); `None` when it does not exist.
    Topic(Option<TopicMeta>),
    /// Done.
    Done,
    /// A partition refused or failed.
    Partition(PartitionError),
    /// The controller refused or failed.
    Controller(ControllerError),
    /// The offset is outside the replica's log.
    OutOfRange {
        /// The offset asked for.
        offset: u64,
        /// First stored offset.
        log_start: u64,
        /// The high watermark.
        high_watermark: u64,
    },
    /// A group coordinator's answer.
    Group(GroupAnswer),
    /// A group coordinator refused (never "not coordinator": that is sent as
    /// `Partition(NotLeader)` so the edge follows the hint as for any leader).
    GroupRefused(GroupError),
    /// A group's committed offsets.
    Committed(Vec<(TopicPartition, CommittedOffset)>),
    /// Groups of an offsets partition.
    Groups(Vec<GroupSummary>),
    /// Stored data could not be read; logged on the serving node.
    Broken(String),
    /// The request did not decode (nodes of different versions).
    Malformed,
    /// A key's latest live record; `None` when absent or deleted.
    Key(Option<KeyRecord>),
    /// A page of live keys.
    Keys(KeyScan),
    /// The answer to [`ForwardRequest::AwaitLeader`]: `None` when no leader appeared in
    /// time, or the serving node holds no replica.
    Leader(Option<NodeId>),
    /// The answer to [`ForwardRequest::Access`]: applied, or refused by the model.
    Access(Result<(), AccessRefusal>),
    /// The answer to [`ForwardRequest::Delay`]: queued.
    Delayed,
    /// The answer to [`ForwardRequest::TakeLeadership`]: whether the election started.
    Standing(bool),
}

/// A key read as sent to a replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRead {
    /// The partition's group.
    pub group: GroupId,
    /// The key (lookups), or the prefix (scans).
    pub key: Bytes,
    /// Scans: first key (inclusive).
    pub start: Bytes,
    /// Scans: most live keys.
    pub limit: u32,
    /// The replica must have applied this offset (the record at it is visible).
    pub min_offset: Option<u64>,
    /// How long to wait for that.
    pub timeout_ms: u64,
}

impl ForwardRequest {
    /// Checks what a peer sent as a client's request would be checked at the edge, so an
    /// authenticated but faulty (or compromised) peer cannot hand this node work beyond
    /// its limits: an append's records must decode and be as many as it says; a fetch's
    /// and a key read's bounds within the read limits. The rest
    /// is checked where it is served (the controller checks topic settings and names, the
    /// coordinators their requests, the access model its changes).
    ///
    /// # Errors
    /// What is wrong, for the refusal.
    pub fn check(&self, limits: &Limits) -> Result<(), String> {
        match self {
            ForwardRequest::Append { records, .. } => check_records(records),
            ForwardRequest::GuardedAppend { records, guard, .. } => {
                check_records(records)?;
                // Ids name records of the request, in order, each once.
                let mut after = None;
                for (position, _) in &guard.ids {
                    if *position >= records.count || after.is_some_and(|a| a >= *position) {
                        return Err("an append's ids do not name its records in order".into());
                    }
                    after = Some(*position);
                }
                Ok(())
            }
            // Checked as an append's records are, and one due time per record.
            ForwardRequest::Delay { records, .. } => records.check(),
            ForwardRequest::Fetch {
                max_records,
                max_bytes,
                timeout_ms,
                ..
            } => {
                if *max_records > MAX_MAX_RECORDS
                    || *max_bytes > MAX_MAX_BYTES
                    || *timeout_ms > MAX_TIMEOUT_MS
                {
                    return Err("a fetch beyond the read limits".into());
                }
                Ok(())
            }
            ForwardRequest::KeyLookup(read) | ForwardRequest::KeyScan(read) => {
                if read.key.len() > limits.max_record_bytes
                    || read.start.len() > limits.max_record_bytes
                    || read.limit > MAX_MAX_RECORDS
                    || read.timeout_ms > MAX_TIMEOUT_MS
                {
                    return Err("a key read beyond the read limits".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Checks that an append's records decode and are as many as it says. Their size is
/// bounded by the transport's frame limit; a stream's chunk may hold more records than one
/// request, so the count is checked, not capped.
fn check_records(records: &EncodedRecords) -> Result<(), String> {
    let mut decoded = 0u32;
    for record in RecordIter::run(&records.bytes) {
        record.map_err(|e| format!("an appended record does not decode: {e}"))?;
        decoded += 1;
    }
    if decoded != records.count {
        return Err(format!(
            "an append says {} records and holds {decoded}",
            records.count
        ));
    }
    Ok(())
}

/// Encodes a request or response for the transport. Encoding these types only fails
/// when out of memory; an empty body then decodes as an error on the other side.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    postcard::to_stdvec(message)
        .map(Bytes::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use psubd_actors::record::{Record, ValueKind};

    use super::*;

    fn append(count: u32, bytes: Bytes) -> ForwardRequest {
        ForwardRequest::Append {
            group: 7,
            records: EncodedRecords { count, bytes },
        }
    }

    #[test]
    fn a_peers_request_is_held_to_the_client_limits() {
        let limits = Limits::default();
        let record = Record {
            timestamp_ms: 1,
            kind: ValueKind::String,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: Vec::new(),
        };
        let good = EncodedRecords::encode([&record, &record]).unwrap();
        assert_eq!(append(2, good.bytes.clone()).check(&limits), Ok(()));
        assert!(
            append(3, good.bytes.clone()).check(&limits).is_err(),
            "a count that lies"
        );
        assert!(append(1, Bytes::from_static(&[0xff; 9]))
            .check(&limits)
            .is_err());
        let too_many = u32::try_from(limits.max_records_per_request + 1).unwrap();
        assert!(append(too_many, good.bytes).check(&limits).is_err());
        let fetch = |max_bytes| ForwardRequest::Fetch {
            group: 7,
            offset: OffsetSpec::Earliest,
            max_records: 10,
            max_bytes,
            timeout_ms: 0,
        };
        assert_eq!(fetch(MAX_MAX_BYTES).check(&limits), Ok(()));
        assert!(fetch(u32::MAX).check(&limits).is_err());
    }
}
