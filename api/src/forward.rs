//! Requests one node's edge sends to another over the peer transport, and how a node
//! serves them — and its own edge's requests — against its local replicas.
//!
//! Both paths go through [`serve_local`], so a request means the same wherever it runs.
//! A forwarded request is served where it lands and never forwarded again: the sender
//! retries at a leader hint instead, which bounds every request to a few hops.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use psubd_actors::assignment::TopicPartition;
use psubd_actors::controller::{NodeInfo, TopicUpdate};
use psubd_actors::coordinator::{GroupAnswer, GroupRequest, GroupSummary};
use psubd_actors::offsets::CommittedOffset;
use psubd_actors::partition::{leader_of, Appended, FetchedRecords, ReadError};
use psubd_actors::record::EncodedRecords;
use psubd_actors::topic::{TopicConfig, TopicMeta};
use psubd_actors::{Broker, ControllerError, GroupError, PartitionError};
use psubd_raft::{GroupId, NodeId, PeerService};
use serde::{Deserialize, Serialize};

/// Where a fetch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    /// The log start.
    Earliest,
    /// The high watermark: only records published from now on.
    Latest,
    /// A given offset.
    At(u64),
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
    /// (any replica that applied `min_offset`; see `keys`).
    KeyLookup(crate::keys::KeyRead),
    /// A page of live keys from the serving node's replica (see `keys`).
    KeyScan(crate::keys::KeyRead),
    /// The partition's leader as the serving node's replica sees it, once it sees one
    /// that can take writes (itself only with a fresh quorum), waiting up to `wait_ms`.
    AwaitLeader {
        /// The partition's group.
        group: GroupId,
        /// How long the serving node may wait (capped there).
        wait_ms: u64,
    },
}

/// The longest a node holds an [`ForwardRequest::AwaitLeader`]: the asker's wait is
/// untrusted input, and a held request keeps a task alive.
const MAX_LEADER_WAIT: Duration = Duration::from_secs(30);

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
    Key(Option<psubd_actors::partition::key_index::KeyRecord>),
    /// A page of live keys.
    Keys(psubd_actors::partition::key_index::KeyScan),
    /// The answer to [`ForwardRequest::AwaitLeader`]: `None` when no leader appeared in
    /// time, or the serving node holds no replica.
    Leader(Option<NodeId>),
}

/// Serves a request on this node's replicas.
pub async fn serve_local(broker: &Broker, request: ForwardRequest) -> ForwardResponse {
    match request {
        ForwardRequest::Append { group, records } => {
            match broker.append_local(group, records).await {
                Ok(appended) => ForwardResponse::Appended(appended),
                Err(error) => ForwardResponse::Partition(error),
            }
        }
        ForwardRequest::Fetch {
            group,
            offset,
            max_records,
            max_bytes,
            timeout_ms,
        } => fetch_local(broker, group, offset, max_records, max_bytes, timeout_ms).await,
        ForwardRequest::PartitionStatus { group } => match broker.partition(group) {
            Some(handle) => {
                let bounds = handle.reader.bounds();
                ForwardResponse::Status(ReplicaStatus {
                    leader: leader_of(&handle.raft),
                    log_start: bounds.log_start,
                    high_watermark: bounds.next_offset,
                    stored_bytes: handle.reader.stored_bytes(),
                })
            }
            None => ForwardResponse::Partition(PartitionError::NoReplica),
        },
        ForwardRequest::CreateTopic { name, config } => {
            match broker.create_topic(name, config).await {
                Ok(meta) => ForwardResponse::Topic(Some(meta)),
                Err(error) => ForwardResponse::Controller(error),
            }
        }
        ForwardRequest::UpdateTopic { name, update } => {
            match broker.update_topic(name, update).await {
                Ok(meta) => ForwardResponse::Topic(Some(meta)),
                Err(error) => ForwardResponse::Controller(error),
            }
        }
        ForwardRequest::DeleteTopic { name } => match broker.delete_topic(name).await {
            Ok(()) => ForwardResponse::Done,
            Err(error) => ForwardResponse::Controller(error),
        },
        ForwardRequest::RegisterNode(info) => match broker.register_node(info).await {
            Ok(()) => ForwardResponse::Done,
            Err(error) => ForwardResponse::Controller(error),
        },
        ForwardRequest::DescribeTopic { name } => {
            ForwardResponse::Topic(broker.metadata().topics.get(&name).cloned())
        }
        ForwardRequest::Group { group, request } => group_response(
            broker
                .groups()
                .call(&group, request)
                .await
                .map(ForwardResponse::Group),
        ),
        ForwardRequest::CommittedOffsets { group } => group_response(
            broker
                .groups()
                .committed(&group)
                .await
                .map(ForwardResponse::Committed),
        ),
        ForwardRequest::ListGroups { partition } => group_response(
            broker
                .groups()
                .list(partition)
                .await
                .map(ForwardResponse::Groups),
        ),
        ForwardRequest::KeyLookup(read) => crate::keys::serve_lookup(broker, read).await,
        ForwardRequest::KeyScan(read) => crate::keys::serve_scan(broker, read).await,
        ForwardRequest::AwaitLeader { group, wait_ms } => {
            let wait = Duration::from_millis(wait_ms).min(MAX_LEADER_WAIT);
            ForwardResponse::Leader(broker.await_leader(group, wait).await)
        }
    }
}

/// A coordinator's "not here" becomes a partition's "not leader" (nothing changed in
/// either case), so the edge's leader-following retry finds the coordinator, or waits for
/// one.
fn group_response(result: Result<ForwardResponse, GroupError>) -> ForwardResponse {
    match result {
        Ok(response) => response,
        Err(GroupError::NotCoordinator { leader }) => {
            ForwardResponse::Partition(PartitionError::NotLeader { leader })
        }
        // Likewise a coordinator without a quorum: the edge waits for one, as for a
        // partition leader on a minority side.
        Err(GroupError::NoQuorum) => ForwardResponse::Partition(PartitionError::NoQuorum),
        Err(error) => ForwardResponse::GroupRefused(error),
    }
}

/// How long a leader may take to confirm its leadership with a quorum (and apply what was
/// committed) before it calls a fetch offset beyond the end out of range.
const LINEARIZABLE_WITHIN: Duration = Duration::from_secs(3);

async fn fetch_local(
    broker: &Broker,
    group: GroupId,
    offset: OffsetSpec,
    max_records: u32,
    max_bytes: u32,
    timeout_ms: u64,
) -> ForwardResponse {
    let Some(handle) = broker.partition(group) else {
        return ForwardResponse::Partition(PartitionError::NoReplica);
    };
    let mut bounds_watch = handle.reader.subscribe();
    let bounds = *bounds_watch.borrow_and_update();
    let offset = match offset {
        OffsetSpec::Earliest => bounds.log_start,
        OffsetSpec::Latest => bounds.next_offset,
        OffsetSpec::At(n) => n,
    };
    let leader = leader_of(&handle.raft);
    if offset > bounds.next_offset {
        if !broker.leads_with_quorum(group) {
            // A follower — or a leader cut off from its quorum — may lag: only a leader in
            // contact with a quorum may call an offset beyond the end.
            let leader = leader.filter(|l| *l != broker.node_id());
            return ForwardResponse::Partition(PartitionError::NotLeader { leader });
        }
        // A leader may have been deposed without knowing yet, or still be applying what
        // earlier leaders committed (CI saw a stream refused "out of range [0, 0]" right after
        // an election): before calling an offset beyond the end, confirm leadership with a
        // quorum and wait until everything committed so far is applied, then look again.
        match tokio::time::timeout(LINEARIZABLE_WITHIN, handle.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                let leader = leader_of(&handle.raft).filter(|l| *l != broker.node_id());
                return ForwardResponse::Partition(PartitionError::NotLeader { leader });
            }
            Err(_) => {
                return ForwardResponse::Partition(PartitionError::Unavailable {
                    reason: "leadership could not be confirmed in time".into(),
                })
            }
        }
    }
    if offset == bounds.next_offset && timeout_ms > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if bounds_watch.borrow_and_update().next_offset > offset {
                break;
            }
            match tokio::time::timeout_at(deadline, bounds_watch.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the replica closed: answer with what there is (nothing).
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    match handle.reader.read(offset, max_records, max_bytes as usize) {
        Ok(records) => ForwardResponse::Fetched(records),
        Err(ReadError::OutOfRange {
            offset,
            log_start,
            high_watermark,
        }) => ForwardResponse::OutOfRange {
            offset,
            log_start,
            high_watermark,
        },
        Err(ReadError::NotReady) => ForwardResponse::Partition(PartitionError::Unavailable {
            reason: "replica opening".into(),
        }),
        Err(ReadError::Storage(detail)) => {
            tracing::error!(group, cause = %detail, "stored batch unreadable");
            ForwardResponse::Broken(detail)
        }
    }
}

/// Serves requests forwarded by peers: the [`PeerService`] the node installs on its
/// transport.
pub struct ForwardService {
    broker: Broker,
}

impl ForwardService {
    /// A service over this node's broker.
    pub fn new(broker: Broker) -> Arc<Self> {
        Arc::new(Self { broker })
    }
}

impl PeerService for ForwardService {
    fn handle(&self, _from: NodeId, body: Bytes) -> BoxFuture<'static, Bytes> {
        let broker = self.broker.clone();
        Box::pin(async move {
            let response = match postcard::from_bytes::<ForwardRequest>(&body) {
                Ok(request) => serve_local(&broker, request).await,
                Err(_) => ForwardResponse::Malformed,
            };
            encode(&response)
        })
    }
}

/// Encodes a request or response for the transport. Encoding these types only fails
/// when out of memory; an empty body then decodes as an error on the other side.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    postcard::to_stdvec(message)
        .map(Bytes::from)
        .unwrap_or_default()
}
