//! Routing: which node serves a request, and the retry at a leader hint that keeps "not
//! leader" from ever reaching a client (docs/architecture.md § Publish path, step 2).
//!
//! A request is only retried elsewhere when it certainly did not take effect (the serving
//! node refused it before proposing, or the transport never delivered it). Anything that
//! may have been proposed is answered 504 `outcome_unknown`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use psubd_actors::partition::guard::RequestGuard;
use psubd_actors::partition::{Appended, DelayedRecords, FetchedRecords};
use psubd_actors::proposal::leader_of;
use psubd_actors::record::EncodedRecords;
use psubd_actors::topic::{PartitionPlacement, TopicMeta};
use psubd_actors::{Broker, ControllerError, PartitionError};
use psubd_raft::{GroupId, NodeId, TransportError};

use crate::error::ApiError;
use crate::protocol::{
    encode, ForwardRequest, ForwardResponse, KeyRead, OffsetSpec, ReplicaStatus,
};
use crate::replica::serve_local;

/// How many nodes one request may visit: the first guess, a leader hint, one more hint.
const MAX_ATTEMPTS: usize = 3;

/// Slack added to a forwarded request's own deadline before the transport gives up.
const FORWARD_SLACK: Duration = Duration::from_secs(2);

/// The shortest and longest pause between two rounds of looking for a leader: the
/// pause doubles each round.
const LEADER_RETRY_PAUSE_MIN: Duration = Duration::from_millis(20);
const LEADER_RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// The pace of a request that waits for a leader: how long it may, and the pause between
/// two rounds of trying (a leader just named may refuse again at once — it stepped down,
/// or lost its quorum — which must not turn into a busy loop).
struct LeaderWait {
    give_up: Instant,
    pause: Duration,
}

impl LeaderWait {
    fn new(budget: Duration) -> Self {
        Self {
            give_up: Instant::now() + budget,
            pause: LEADER_RETRY_PAUSE_MIN,
        }
    }

    /// True when a round that started at `round` was the last one allowed.
    fn over(&self, round: Instant) -> bool {
        round >= self.give_up
    }

    /// What is left of the budget.
    fn remaining(&self) -> Duration {
        self.give_up.saturating_duration_since(Instant::now())
    }

    /// Pauses before the next round (counted from `round`'s start), then doubles the pause.
    async fn pause(&mut self, round: Instant) {
        tokio::time::sleep_until((round + self.pause).min(self.give_up)).await;
        self.pause = (self.pause * 2).min(LEADER_RETRY_PAUSE_MAX);
    }
}

/// The least a read waits for a leader, whatever its `timeout_ms` (an election takes
/// about one election timeout, 1 to 1.5 s by default).
const READ_LEADER_WAIT_MIN: Duration = Duration::from_secs(2);

/// What one pass over a partition's leader candidates came to.
enum Round {
    /// A node answered (or the outcome is unknown): the request is done.
    Served(Result<ForwardResponse, ApiError>),
    /// No candidate leads with a quorum right now; nothing was written.
    NoLeader(PartitionError),
}

/// The outcome of sending a request to a node.
pub(crate) enum Delivery {
    /// The node answered.
    Answered(ForwardResponse),
    /// The request certainly did not reach the node's logic: try another node.
    NotDelivered,
    /// The request may have been executed; no answer came.
    Lost(String),
}

/// The edge's router. One per node, shared by every handler.
pub struct Edge {
    broker: Broker,
    /// Last known leader per partition group, learnt from hints. Only a hint: every use
    /// is checked by the node it names.
    hints: RwLock<HashMap<GroupId, NodeId>>,
    /// How long a write may take at the partition before it is answered 504.
    write_timeout: Duration,
}

impl Edge {
    /// A router over this node's broker.
    pub fn new(broker: Broker, write_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            broker,
            hints: RwLock::new(HashMap::new()),
            write_timeout,
        })
    }

    /// This node's broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// How long a write may take, and how long any request waits for a leader.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    pub(crate) async fn deliver(
        &self,
        target: NodeId,
        request: ForwardRequest,
        deadline: Duration,
    ) -> Delivery {
        if target == self.broker.node_id() {
            return Delivery::Answered(serve_local(&self.broker, request).await);
        }
        let body = encode(&request);
        match self
            .broker
            .raft_node()
            .call_peer(target, body, deadline + FORWARD_SLACK)
            .await
        {
            Ok(bytes) => match postcard::from_bytes::<ForwardResponse>(&bytes) {
                Ok(response) => Delivery::Answered(response),
                Err(_) => Delivery::Lost("a peer's answer did not decode".into()),
            },
            Err(
                TransportError::Unreachable { .. }
                | TransportError::UnknownPeer { .. }
                | TransportError::Refused { .. }
                | TransportError::FrameTooLarge { .. },
            ) => Delivery::NotDelivered,
            Err(error) => Delivery::Lost(error.to_string()),
        }
    }

    fn hint(&self, group: GroupId) -> Option<NodeId> {
        self.hints.read().ok().and_then(|h| h.get(&group).copied())
    }

    fn learn(&self, group: GroupId, leader: NodeId) {
        if let Ok(mut hints) = self.hints.write() {
            hints.insert(group, leader);
        }
    }

    /// Nodes to try for a partition's leader, best guess first: the local replica's view,
    /// the hint cache, then every replica in placement order.
    pub(crate) fn leader_candidates(&self, placement: &PartitionPlacement) -> Vec<NodeId> {
        self.candidates_after(None, placement)
    }

    /// [`Edge::leader_candidates`] after `first`, a leader just learnt of.
    fn candidates_after(
        &self,
        first: Option<NodeId>,
        placement: &PartitionPlacement,
    ) -> Vec<NodeId> {
        let mut order = Vec::with_capacity(placement.replicas.len() + 3);
        order.extend(first);
        if let Some(leader) = self
            .broker
            .partition(placement.group)
            .and_then(|h| leader_of(&h.raft))
        {
            order.push(leader);
        }
        if let Some(hint) = self.hint(placement.group) {
            order.push(hint);
        }
        order.extend(placement.replicas.iter().copied());
        let mut seen = Vec::with_capacity(order.len());
        order.retain(|n| {
            let fresh = !seen.contains(n);
            seen.push(*n);
            fresh
        });
        order
    }

    /// Sends `request` to the partition's leader, following hints, retrying only where
    /// nothing can have been written. While no replica knows a leader (an election, a
    /// topic created an instant ago), it waits for one up to `leader_wait` and then
    /// tries again; only then does "no leader" reach the caller (503).
    ///
    /// `deadline` bounds how long the serving node may take with the request itself.
    pub(crate) async fn to_leader(
        &self,
        placement: &PartitionPlacement,
        request: ForwardRequest,
        deadline: Duration,
        leader_wait: Duration,
    ) -> Result<ForwardResponse, ApiError> {
        let mut wait = LeaderWait::new(leader_wait);
        let mut found = None;
        loop {
            let round = Instant::now();
            let refusal = match self
                .leader_round(placement, &request, deadline, found)
                .await
            {
                Round::Served(answer) => return answer,
                Round::NoLeader(refusal) => refusal,
            };
            if wait.over(round) {
                return Err(refusal.into());
            }
            found = self.await_leader(placement, wait.give_up).await;
            wait.pause(round).await;
        }
    }

    /// One pass over the leader candidates (`first`, then the usual order), following
    /// hints, at most [`MAX_ATTEMPTS`] nodes.
    async fn leader_round(
        &self,
        placement: &PartitionPlacement,
        request: &ForwardRequest,
        deadline: Duration,
        first: Option<NodeId>,
    ) -> Round {
        let mut candidates = self.candidates_after(first, placement).into_iter();
        let mut next = candidates.next();
        let mut last_refusal = PartitionError::NotLeader { leader: None };
        for _ in 0..MAX_ATTEMPTS {
            let Some(target) = next else { break };
            match self.deliver(target, request.clone(), deadline).await {
                Delivery::Answered(ForwardResponse::Partition(
                    refusal @ (PartitionError::NotLeader { .. }
                    | PartitionError::NoReplica
                    | PartitionError::NoQuorum),
                )) => {
                    next = match &refusal {
                        PartitionError::NotLeader {
                            leader: Some(leader),
                        } if *leader != target => {
                            self.learn(placement.group, *leader);
                            Some(*leader)
                        }
                        _ => candidates.next(),
                    };
                    last_refusal = refusal;
                }
                Delivery::Answered(response) => {
                    if !matches!(response, ForwardResponse::Partition(_)) {
                        self.learn(placement.group, target);
                    }
                    return Round::Served(Ok(response));
                }
                Delivery::NotDelivered => next = candidates.next(),
                Delivery::Lost(reason) => {
                    return Round::Served(Err(ApiError::OutcomeUnknown { reason }))
                }
            }
        }
        Round::NoLeader(last_refusal)
    }

    /// Waits until a replica of the partition names a leader that can take writes, and
    /// that leader confirms it, or `until` passes. Asks this node's replica first, else
    /// the replicas in placement order (the first that answers).
    pub(crate) async fn await_leader(
        &self,
        placement: &PartitionPlacement,
        until: Instant,
    ) -> Option<NodeId> {
        let me = self.broker.node_id();
        let local = placement.replicas.contains(&me).then_some(me);
        let replicas = local
            .into_iter()
            .chain(placement.replicas.iter().copied().filter(|r| *r != me));
        for replica in replicas {
            let Delivery::Answered(ForwardResponse::Leader(named)) =
                self.ask_leader(placement.group, replica, until).await
            else {
                continue;
            };
            let leader = match named {
                // The replica named another node: that node confirms it leads and can
                // take writes (the replica's view may be a term old).
                Some(other) if other != replica => {
                    match self.ask_leader(placement.group, other, until).await {
                        Delivery::Answered(ForwardResponse::Leader(Some(confirmed)))
                            if confirmed == other =>
                        {
                            Some(other)
                        }
                        _ => None,
                    }
                }
                named => named,
            };
            if let Some(leader) = leader {
                self.learn(placement.group, leader);
            }
            return leader;
        }
        None
    }

    async fn ask_leader(&self, group: GroupId, target: NodeId, until: Instant) -> Delivery {
        let wait = until.saturating_duration_since(Instant::now());
        let request = ForwardRequest::AwaitLeader {
            group,
            wait_ms: wait.as_millis() as u64,
        };
        self.deliver(target, request, wait).await
    }

    /// Sends a key read to a replica that can answer it: this node's when it applied
    /// enough, else the leader first, then every replica (each waits for `min_offset`).
    pub(crate) async fn read_any_replica(
        &self,
        placement: &PartitionPlacement,
        request: ForwardRequest,
        read: &KeyRead,
    ) -> Result<ForwardResponse, ApiError> {
        let broker = &self.broker;
        let local_enough = broker.partition(placement.group).is_some_and(|h| {
            read.min_offset
                .is_none_or(|min| h.reader.bounds().next_offset > min)
        });
        let mut last = ApiError::Unavailable {
            reason: "no replica of the partition answered".into(),
        };
        if local_enough {
            match serve_local(broker, request.clone()).await {
                ForwardResponse::Partition(error) => last = error.into(),
                answer => return Ok(answer),
            }
        }
        let deadline = Duration::from_millis(read.timeout_ms);
        for target in self.leader_candidates(placement) {
            match self.deliver(target, request.clone(), deadline).await {
                Delivery::Answered(ForwardResponse::Partition(error)) => last = error.into(),
                Delivery::Answered(ForwardResponse::Broken(detail)) => {
                    last = ApiError::Internal { detail }
                }
                // The leader found `min_offset` was never written: no replica will have it.
                Delivery::Answered(never @ ForwardResponse::OutOfRange { .. }) => {
                    return Err(unexpected(never))
                }
                Delivery::Answered(answer) => return Ok(answer),
                Delivery::NotDelivered => {}
                Delivery::Lost(reason) => last = ApiError::Unavailable { reason },
            }
        }
        Err(last)
    }

    /// Waits until every partition of a just-created topic has a leader that can take a
    /// write, up to the write timeout. Returns whether all did.
    pub async fn await_leaders(&self, meta: &TopicMeta) -> bool {
        let until = Instant::now() + self.write_timeout;
        let waits = meta
            .partitions
            .iter()
            .map(|placement| self.await_leader(placement, until));
        futures::future::join_all(waits)
            .await
            .iter()
            .all(Option::is_some)
    }

    /// Appends one request's records to a partition through its leader.
    ///
    /// # Errors
    /// 503 when no leader could take it (nothing written), 504 when the outcome is unknown.
    pub async fn append(
        &self,
        placement: &PartitionPlacement,
        records: EncodedRecords,
        guard: RequestGuard,
    ) -> Result<Appended, ApiError> {
        let group = placement.group;
        let request = if guard.is_empty() {
            ForwardRequest::Append { group, records }
        } else {
            ForwardRequest::GuardedAppend {
                group,
                records,
                guard,
            }
        };
        match self
            .to_leader(placement, request, self.write_timeout, self.write_timeout)
            .await?
        {
            ForwardResponse::Appended(appended) => Ok(appended),
            other => Err(unexpected(other)),
        }
    }

    /// Queues one request's delayed records in a partition's delay queue through its
    /// leader.
    ///
    /// # Errors
    /// As [`Edge::append`]; 507 when the partition's delay queue is full.
    pub async fn delay(
        &self,
        placement: &PartitionPlacement,
        records: DelayedRecords,
    ) -> Result<(), ApiError> {
        let request = ForwardRequest::Delay {
            group: placement.group,
            records,
        };
        match self
            .to_leader(placement, request, self.write_timeout, self.write_timeout)
            .await?
        {
            ForwardResponse::Delayed => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Reads records: from the local replica when it has applied the offset (any replica
    /// may serve committed records), else from the leader, which long-polls.
    ///
    /// # Errors
    /// 416 outside the log, 503 when no replica answers.
    pub async fn fetch(
        &self,
        placement: &PartitionPlacement,
        offset: OffsetSpec,
        max_records: u32,
        max_bytes: u32,
        timeout_ms: u64,
    ) -> Result<FetchedRecords, ApiError> {
        let request = ForwardRequest::Fetch {
            group: placement.group,
            offset,
            max_records,
            max_bytes,
            timeout_ms,
        };
        let local = self.broker.partition(placement.group);
        let served_here = local.as_ref().is_some_and(|handle| {
            let bounds = handle.reader.bounds();
            let is_leader = self.broker.leads_with_quorum(placement.group);
            match offset {
                OffsetSpec::At(n) => is_leader || (n >= bounds.log_start && n < bounds.next_offset),
                OffsetSpec::Earliest => is_leader || bounds.log_start < bounds.next_offset,
                // A lagging replica would answer its own end where the leader knows a
                // record past it that is due.
                OffsetSpec::Latest | OffsetSpec::AtTime(_) => is_leader,
            }
        });
        let deadline = Duration::from_millis(timeout_ms);
        let response = if served_here {
            serve_local(&self.broker, request).await
        } else {
            let leader_wait = deadline.max(READ_LEADER_WAIT_MIN);
            self.to_leader(placement, request, deadline, leader_wait)
                .await?
        };
        match response {
            ForwardResponse::Fetched(records) => Ok(records),
            other => Err(unexpected(other)),
        }
    }

    /// A partition's leader, log start and high watermark, from the first replica that
    /// answers (the local one first).
    pub async fn partition_status(&self, placement: &PartitionPlacement) -> Option<ReplicaStatus> {
        let request = ForwardRequest::PartitionStatus {
            group: placement.group,
        };
        for target in self.leader_candidates(placement) {
            if let Delivery::Answered(ForwardResponse::Status(status)) = self
                .deliver(target, request.clone(), Duration::from_millis(500))
                .await
            {
                // The leader's own view has the freshest high watermark: ask it too.
                if let Some(leader) = status.leader.filter(|l| *l != target) {
                    if let Delivery::Answered(ForwardResponse::Status(fresh)) = self
                        .deliver(leader, request.clone(), Duration::from_millis(500))
                        .await
                    {
                        return Some(fresh);
                    }
                }
                return Some(status);
            }
        }
        None
    }

    /// Sends a metadata change to the controller leader.
    ///
    /// # Errors
    /// 503 when no controller leader takes it, 504 when the outcome is unknown, and the
    /// controller's own refusals.
    pub async fn controller(
        &self,
        request: ForwardRequest,
        topic: &str,
    ) -> Result<ForwardResponse, ApiError> {
        let me = self.broker.node_id();
        let mut wait = LeaderWait::new(self.write_timeout);
        let mut target = self.broker.controller_leader().unwrap_or(me);
        let mut hops = 0;
        loop {
            let round = Instant::now();
            match self
                .deliver(target, request.clone(), self.write_timeout)
                .await
            {
                Delivery::Answered(ForwardResponse::Controller(ControllerError::NotLeader {
                    leader: Some(leader),
                })) if leader != target && hops < MAX_ATTEMPTS => {
                    hops += 1;
                    target = leader;
                    continue;
                }
                // No leader known there, or no quorum: wait below for an election.
                Delivery::Answered(ForwardResponse::Controller(
                    ControllerError::NotLeader { .. } | ControllerError::NoQuorum,
                ))
                | Delivery::NotDelivered => {}
                Delivery::Answered(ForwardResponse::Controller(error)) => {
                    return Err(ApiError::from_controller(error, topic))
                }
                Delivery::Answered(response) => return Ok(response),
                Delivery::Lost(reason) => return Err(ApiError::OutcomeUnknown { reason }),
            }
            if wait.over(round) {
                return Err(ApiError::Unavailable {
                    reason: "the controller has no reachable leader".into(),
                });
            }
            target = self
                .broker
                .await_controller_leader(wait.remaining())
                .await
                .unwrap_or(me);
            hops = 0;
            wait.pause(round).await;
        }
    }

    /// A user topic's metadata: this node's copy, or — when missing here, e.g. created an
    /// instant ago through another node — the controller leader's. Internal topics are
    /// not found.
    ///
    /// # Errors
    /// 404 when the controller leader does not know it either.
    pub async fn topic(&self, name: &str) -> Result<TopicMeta, ApiError> {
        // Internal topics (`__consumer_offsets`) hold no records: invisible to users.
        if psubd_actors::topic::is_internal(name) {
            return Err(ApiError::TopicNotFound {
                topic: name.to_string(),
            });
        }
        if let Some(meta) = self.broker.metadata().topics.get(name) {
            return Ok(meta.clone());
        }
        let not_found = || ApiError::TopicNotFound {
            topic: name.to_string(),
        };
        let Some(leader) = self
            .broker
            .controller_leader()
            .filter(|l| *l != self.broker.node_id())
        else {
            return Err(not_found());
        };
        match self
            .deliver(
                leader,
                ForwardRequest::DescribeTopic {
                    name: name.to_string(),
                },
                Duration::from_secs(1),
            )
            .await
        {
            Delivery::Answered(ForwardResponse::Topic(Some(meta))) => Ok(meta),
            _ => Err(not_found()),
        }
    }
}

fn unexpected(response: ForwardResponse) -> ApiError {
    match response {
        ForwardResponse::Partition(error) => error.into(),
        ForwardResponse::Controller(error) => ApiError::from_controller(error, ""),
        ForwardResponse::OutOfRange {
            offset,
            log_start,
            high_watermark,
        } => ApiError::out_of_range(offset, log_start, high_watermark),
        ForwardResponse::Broken(detail) => ApiError::Internal { detail },
        other => ApiError::Internal {
            detail: format!("unexpected peer answer: {other:?}"),
        },
    }
}
