//! How a node serves a [`ForwardRequest`] on its own replicas: requests forwarded by
//! peers, and its own edge's requests when this node can answer them. Both go through
//! [`serve_local`], so a request means the same wherever it runs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use psubd_actors::partition::guard::RequestGuard;
use psubd_actors::partition::{Appended, LogBounds, PartitionHandle, PartitionReader, ReadError};
use psubd_actors::proposal::leader_of;
use psubd_actors::{Broker, GroupError, PartitionError};
use psubd_raft::types::typ::Raft;
use psubd_raft::{GroupId, NodeId, PeerService};

use crate::limits::Limits;
use crate::protocol::{
    encode, ForwardRequest, ForwardResponse, KeyRead, MoveOp, OffsetSpec, ReplicaStatus,
};

/// The longest a node holds an [`ForwardRequest::AwaitLeader`]: the asker's wait is
/// untrusted input, and a held request keeps a task alive.
const MAX_LEADER_WAIT: Duration = Duration::from_secs(30);

/// The answer to an append.
fn appended(outcome: Result<Appended, PartitionError>) -> ForwardResponse {
    match outcome {
        Ok(appended) => ForwardResponse::Appended(appended),
        Err(error) => ForwardResponse::Partition(error),
    }
}

/// Serves a request on this node's replicas.
pub async fn serve_local(broker: &Broker, request: ForwardRequest) -> ForwardResponse {
    match request {
        ForwardRequest::Append { group, records } => appended(
            broker
                .append_local(group, records, RequestGuard::default())
                .await,
        ),
        ForwardRequest::GuardedAppend {
            group,
            records,
            guard,
        } => appended(broker.append_local(group, records, guard).await),
        ForwardRequest::Delay { group, records } => {
            match broker.delay_local(group, records).await {
                Ok(()) => ForwardResponse::Delayed,
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
                    delayed_records: handle.reader.delays().records,
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
        ForwardRequest::AddPartitions { name, partitions } => {
            match broker.add_partitions(name, partitions).await {
                Ok(meta) => ForwardResponse::Topic(Some(meta)),
                Err(error) => ForwardResponse::Controller(error),
            }
        }
        ForwardRequest::SetDuplicateWindow {
            name,
            duplicate_window_ms,
        } => match broker.set_duplicate_window(name, duplicate_window_ms).await {
            Ok(meta) => ForwardResponse::Topic(Some(meta)),
            Err(error) => ForwardResponse::Controller(error),
        },
        ForwardRequest::DeleteTopic { name } => match broker.delete_topic(name).await {
            Ok(()) => ForwardResponse::Done,
            Err(error) => ForwardResponse::Controller(error),
        },
        ForwardRequest::Access(change) => match broker.change_access(change).await {
            Ok(outcome) => ForwardResponse::Access(outcome),
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
        ForwardRequest::KeyLookup(read) => serve_lookup(broker, read).await,
        ForwardRequest::KeyScan(read) => serve_scan(broker, read).await,
        ForwardRequest::AwaitLeader { group, wait_ms } => {
            let wait = Duration::from_millis(wait_ms).min(MAX_LEADER_WAIT);
            ForwardResponse::Leader(broker.await_leader(group, wait).await)
        }
        // Only a peer leading the group may ask (see `ForwardService`): never this node.
        ForwardRequest::TakeLeadership { .. } => ForwardResponse::Standing(false),
        // Only a peer says it is stopping (see `ForwardService`).
        ForwardRequest::Departing => ForwardResponse::Done,
        ForwardRequest::Moves(op) => serve_move(broker, op).await,
    }
}

/// A replica move's or decommission's controller write, on this node's controller.
async fn serve_move(broker: &Broker, op: MoveOp) -> ForwardResponse {
    let controller = broker.controller();
    let outcome = match op {
        MoveOp::Start {
            topic,
            partition,
            replicas,
        } => controller.start_move(topic, partition, replicas).await,
        MoveOp::Progress { group, state } => controller.move_progress(group, state).await,
        MoveOp::Finish { group, replicas } => controller.finish_move(group, replicas).await,
        MoveOp::Decommission { node } => controller.decommission(node).await,
        MoveOp::Decommissioned { node } => controller.decommissioned(node).await,
    };
    match outcome {
        Ok(()) => ForwardResponse::Done,
        Err(error) => ForwardResponse::Controller(error),
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
    let offset = match resolve_offset(&handle.reader, bounds, offset) {
        Ok(offset) => offset,
        Err(error) => return fetch_failure(group, error),
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
        Err(error) => fetch_failure(group, error),
    }
}

/// The offset `spec` names on a replica whose bounds are `bounds`.
///
/// # Errors
/// As [`PartitionReader::offset_for_time`] for a time.
pub(crate) fn resolve_offset(
    reader: &PartitionReader,
    bounds: LogBounds,
    spec: OffsetSpec,
) -> Result<u64, ReadError> {
    match spec {
        OffsetSpec::Earliest => Ok(bounds.log_start),
        OffsetSpec::Latest => Ok(bounds.next_offset),
        OffsetSpec::At(n) => Ok(n),
        OffsetSpec::AtTime(timestamp_ms) => reader.offset_for_time(timestamp_ms),
    }
}

/// The answer to a fetch whose read failed.
fn fetch_failure(group: GroupId, error: ReadError) -> ForwardResponse {
    match error {
        ReadError::OutOfRange {
            offset,
            log_start,
            high_watermark,
        } => ForwardResponse::OutOfRange {
            offset,
            log_start,
            high_watermark,
        },
        ReadError::NotReady => ForwardResponse::Partition(PartitionError::Unavailable {
            reason: "replica opening".into(),
        }),
        ReadError::Storage(detail) => {
            tracing::error!(group, cause = %detail, "stored batch unreadable");
            ForwardResponse::Broken(detail)
        }
    }
}

/// Waits until the replica applied `min_offset` (its high watermark passed it).
/// How far a replica is from a key read's `min_offset`.
enum Progress {
    /// The record at `min_offset` is applied: the read may be served.
    Applied,
    /// This replica leads and has applied its whole log, which holds every committed entry:
    /// the record at `min_offset` was never written (nor acknowledged). The caller's
    /// mistake (416), not a replica catching up.
    NeverWritten(u64),
    /// Not applied within `timeout_ms`: a replica catching up (503).
    Behind,
}

async fn progress(handle: &PartitionHandle, read: &KeyRead) -> Progress {
    let Some(min_offset) = read.min_offset else {
        return Progress::Applied;
    };
    let mut watch = handle.reader.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(read.timeout_ms);
    loop {
        if watch.borrow_and_update().next_offset > min_offset {
            return Progress::Applied;
        }
        if leads_with_log_applied(&handle.raft) {
            return Progress::NeverWritten(min_offset);
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return Progress::Behind,
        }
    }
}

/// Whether this replica leads its group and has applied every entry of its log.
fn leads_with_log_applied(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    metrics.current_leader == Some(metrics.id)
        && metrics.last_applied.map(|log_id| log_id.index) == metrics.last_log_index
}

fn read_failure(group: GroupId, error: ReadError) -> ForwardResponse {
    match error {
        ReadError::Storage(detail) => {
            tracing::error!(group, cause = %detail, "key index unreadable");
            ForwardResponse::Broken(detail)
        }
        ReadError::NotReady | ReadError::OutOfRange { .. } => {
            ForwardResponse::Partition(PartitionError::Unavailable {
                reason: "replica catching up".into(),
            })
        }
    }
}

/// This node's replica of the key read's partition, once it applied `min_offset`.
async fn caught_up(broker: &Broker, read: &KeyRead) -> Result<PartitionHandle, ForwardResponse> {
    let Some(handle) = broker.partition(read.group) else {
        return Err(ForwardResponse::Partition(PartitionError::NoReplica));
    };
    match progress(&handle, read).await {
        Progress::Applied => Ok(handle),
        Progress::NeverWritten(offset) => {
            let bounds = handle.reader.bounds();
            Err(ForwardResponse::OutOfRange {
                offset,
                log_start: bounds.log_start,
                high_watermark: bounds.next_offset,
            })
        }
        Progress::Behind => Err(ForwardResponse::Partition(PartitionError::Unavailable {
            reason: "replica has not applied min_offset".into(),
        })),
    }
}

/// Serves a key lookup on this node's replica.
async fn serve_lookup(broker: &Broker, read: KeyRead) -> ForwardResponse {
    let handle = match caught_up(broker, &read).await {
        Ok(handle) => handle,
        Err(refusal) => return refusal,
    };
    match handle.reader.latest(&read.key) {
        Ok(record) => ForwardResponse::Key(record),
        Err(error) => read_failure(read.group, error),
    }
}

/// Serves a key scan on this node's replica.
async fn serve_scan(broker: &Broker, read: KeyRead) -> ForwardResponse {
    let handle = match caught_up(broker, &read).await {
        Ok(handle) => handle,
        Err(refusal) => return refusal,
    };
    match handle
        .reader
        .scan_keys(&read.key, &read.start, read.limit as usize)
    {
        Ok(page) => ForwardResponse::Keys(page),
        Err(error) => read_failure(read.group, error),
    }
}

/// Serves requests forwarded by peers: the [`PeerService`] the node installs on its
/// transport.
pub struct ForwardService {
    broker: Broker,
    /// The node's request limits, which peers' requests are held to as clients' are.
    limits: Limits,
}

impl ForwardService {
    /// A service over this node's broker, holding peers' requests to `limits`.
    pub fn new(broker: Broker, limits: Limits) -> Arc<Self> {
        Arc::new(Self { broker, limits })
    }
}

impl PeerService for ForwardService {
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Bytes> {
        let broker = self.broker.clone();
        let limits = self.limits;
        Box::pin(async move {
            let response = match postcard::from_bytes::<ForwardRequest>(&body) {
                Ok(ForwardRequest::TakeLeadership {
                    group,
                    leader_last_index,
                }) => ForwardResponse::Standing(
                    broker
                        .raft_node()
                        .take_leadership(group, from, leader_last_index)
                        .await,
                ),
                Ok(ForwardRequest::Departing) => {
                    broker.raft_node().peer_departing(from);
                    ForwardResponse::Done
                }
                Ok(request) => match request.check(&limits) {
                    Ok(()) => serve_local(&broker, request).await,
                    Err(why) => {
                        // Peers send only what their edge checked: a refusal here is a
                        // faulty or foreign peer, for the operator to look at.
                        tracing::warn!(peer = from, why, "refused a peer's request");
                        ForwardResponse::Malformed
                    }
                },
                Err(_) => ForwardResponse::Malformed,
            };
            encode(&response)
        })
    }
}
