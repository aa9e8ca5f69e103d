//! The group coordinator: one actor per consumer group, on the node that leads the group's
//! offsets partition (docs/architecture.md § Consumer groups).
//!
//! Membership, generation, assignment and each member's read positions are soft state
//! here; only committed offsets are replicated (through the offsets partition's Raft
//! group). When leadership of the offsets partition moves, this actor stops, a fresh one
//! starts on the new leader with no members, and members re-join after a 409
//! `member_fenced` (Kafka's design): nothing but offsets needs to survive.
//!
//! Position rule: a member's read position in a partition advances only when
//! the client has shown it received the records. Each fetch answer carries a
//! [`PositionToken`] (the generation and the next offset of every partition it read);
//! the next fetch presents it and the coordinator *confirms* those offsets — only for
//! partitions still assigned in the same generation, never past what was delivered, never
//! backwards. A fetch starts at the larger of the confirmed position and the committed
//! offset (else at `auto_offset_reset`), so a fetch whose answer was lost is served the
//! same records again. A partition read that delivered nothing is confirmed at once (no
//! record can be lost), which pins a `latest` start. Positions are forgotten at every
//! rebalance, so a new generation starts at the committed offsets. Nothing uncommitted is
//! ever skipped; re-delivery after a failure or rebalance is expected (at-least-once).
//!
//! Fencing: commits carry the generation they were checked under and this coordinator's
//! epoch (the offsets partition's Raft term it started in), and the offsets state machine
//! refuses stale ones at apply (see `offsets`). A coordinator restarted within the same
//! term resumes its generations above the group's fence, so its commits pass.
//!
//! A member stream that closes detaches its member ([`GroupRequest::Detach`]): the member
//! stays for the grace period given, so a reconnecting stream re-attaches, and leaves
//! when no stream re-attached by then. Each attach is numbered ([`Lease::attachment`]) and
//! a detach names the attachment it ends: a detach that arrives after a newer stream
//! attached is stale and ignored, and a fetch or heartbeat of the closed stream still on
//! its way when the detach arrives does not cancel it.
//!
//! Push subscriptions (see `push`): a group without members may be made one
//! ([`GroupRequest::SetPush`], replicated in the offsets partition). From the proposal on,
//! joins are refused, and so are offset resets and group deletes until the subscription
//! is deleted: the pusher on this node owns the group's offsets meanwhile.
//!
//! The actor never awaits a Raft commit inside `handle`: commits run in a spawned task
//! that answers the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use psubd_raft::{GroupId, NodeId, RaftNode};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::assignment::{assign, Assignment, AssignmentStrategy, Subscriptions, TopicPartition};
use crate::clock::now_ms;
use crate::controller::ControllerState;
use crate::error::GroupError;
use crate::offsets::{propose, Fence, OffsetEntry, OffsetsCommand, OffsetsHandle};
use crate::partition::BatchLimits;
use crate::proposal::check_leader;
use crate::push::{PushBoard, PushConfig, PushStatus};
use crate::timer::send_every;

/// Shortest session timeout a member may ask for (1 s to 5 min).
pub const MIN_SESSION_TIMEOUT_MS: u64 = 1_000;

/// Longest session timeout a member may ask for.
pub const MAX_SESSION_TIMEOUT_MS: u64 = 300_000;

/// Most members in one group: each costs a little memory and assignment time.
pub const MAX_MEMBERS: usize = 1_000;

/// How often the coordinator looks for silent members, topic changes and lost leadership.
/// A member is removed at most this long after its session timeout.
const TICK: Duration = Duration::from_millis(100);

/// A coordinator with no members stops after this long (it holds nothing worth keeping).
const IDLE_STOP_AFTER: Duration = Duration::from_secs(60);

/// Longest long-poll a member may be in: while it waits, it counts as alive.
const MAX_POLL: Duration = Duration::from_secs(30);

/// Where a member starts in a partition without a committed offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoOffsetReset {
    /// The log start.
    Earliest,
    /// The high watermark: only records published from then on (Kafka's default).
    #[default]
    Latest,
}

impl AutoOffsetReset {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoOffsetReset::Earliest => "earliest",
            AutoOffsetReset::Latest => "latest",
        }
    }
}

/// Where a member's next fetch of a partition starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartPosition {
    /// At the log start (no committed offset; `auto_offset_reset` earliest).
    Earliest,
    /// At the high watermark (no committed offset; `auto_offset_reset` latest).
    Latest,
    /// At this offset.
    At(u64),
}

/// What one fetch delivered of a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The partition.
    pub partition: TopicPartition,
    /// Where the read began: its first record's offset, or `next_offset` when it carried
    /// no record. Nothing below it can be lost by confirming it.
    pub floor: u64,
    /// The next offset after what the answer carries.
    pub next_offset: u64,
}

/// A member's read positions as the client last received them: the generation of the
/// fetch and the next offset per partition, in the order of the member's assignments in
/// that generation (`None`: that partition was not read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionToken {
    /// The generation of the fetch that produced it.
    pub generation: u64,
    /// Next offset per assigned partition.
    pub offsets: Vec<Option<u64>>,
}

/// Where a member's fetch starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PollFrom {
    /// The confirmed positions (a fetch without a token, a heartbeat).
    Confirmed,
    /// Confirm the token's positions first (a fetch presenting its last answer's token).
    Token(PositionToken),
    /// Forget the unconfirmed and confirmed positions and start at the committed offsets:
    /// a member stream (re-)attaching. A new attachment; ends a detach.
    Committed,
}

/// A request to a group's coordinator. Validated by the edge before it is sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum GroupRequest {
    /// A new member subscribes.
    Join {
        /// Subscribed topics (they exist).
        topics: Vec<String>,
        /// Silence after which the member is removed, within the accepted range.
        session_timeout_ms: u64,
        /// Where to start without a committed offset.
        auto_offset_reset: AutoOffsetReset,
        /// The strategy asked for; `None` takes the group's.
        strategy: Option<AssignmentStrategy>,
    },
    /// A member starts a fetch: a heartbeat, answered with where to read.
    Poll {
        /// The member.
        member_id: String,
        /// How long the fetch may wait for records; the member is alive meanwhile.
        timeout_ms: u64,
        /// Where to start.
        from: PollFrom,
    },
    /// A member's fetch delivered records up to these positions.
    Delivered {
        /// The member.
        member_id: String,
        /// The generation the fetch was made in.
        generation: u64,
        /// What each fetched partition delivered.
        positions: Vec<Delivery>,
    },
    /// A member's stream closed: the member leaves after `grace_ms` unless a stream
    /// re-attaches first ([`PollFrom::Committed`]). Ignored when `attachment` is not the
    /// member's latest (a newer stream attached before this detach arrived).
    Detach {
        /// The member.
        member_id: String,
        /// How long the member waits for a stream to re-attach.
        grace_ms: u64,
        /// The closed stream's attachment ([`Lease::attachment`]).
        attachment: u64,
    },
    /// A member commits offsets (the next offsets to read).
    Commit {
        /// The member.
        member_id: String,
        /// The member's generation.
        generation: u64,
        /// The offsets.
        offsets: Vec<OffsetEntry>,
    },
    /// A member leaves.
    Leave {
        /// The member.
        member_id: String,
    },
    /// Members, assignments and state.
    Describe,
    /// Set committed offsets; only while the group has no members.
    Reset {
        /// The offsets.
        offsets: Vec<OffsetEntry>,
    },
    /// Delete the group's offsets; only while it has no members.
    Delete,
    /// Make the group a push subscription (or change its settings); only while it has no
    /// members. Checked by the edge.
    SetPush {
        /// The settings.
        config: PushConfig,
        /// Most push subscriptions of the group's offsets partition (the edge's
        /// `--max-push-subscriptions`); a new one past it is refused.
        max_subscriptions: u32,
    },
    /// End the group's push subscription.
    DeletePush,
}

/// What a member reads now: its generation, partitions and where it is in each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The member.
    pub member_id: String,
    /// The group's generation.
    pub generation: u64,
    /// The member's partitions in this generation.
    pub assignments: Vec<TopicPartition>,
    /// Where the next fetch of each assigned partition starts.
    pub positions: Vec<(TopicPartition, StartPosition)>,
    /// The member's `auto_offset_reset` (used when a position has left the log).
    pub auto_offset_reset: AutoOffsetReset,
    /// True when generation or assignments differ from what this member was last told.
    pub changed: bool,
    /// For [`GroupRequest::Delivered`]: the partitions whose positions were taken (the
    /// member still owns them in the same generation). Records of the others are dropped.
    pub accepted: Vec<TopicPartition>,
    /// Fetches this member made so far: which assigned partition a fetch serves first
    /// rotates with it, so a backlog in one partition never starves the others.
    pub rotation: u64,
    /// Streams attached to this member so far ([`PollFrom::Committed`] polls): a stream
    /// names its attachment when it closes ([`GroupRequest::Detach`]).
    pub attachment: u64,
}

/// A member as `GET /v1/groups/{g}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member's id.
    pub member_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Where it starts without a committed offset.
    pub auto_offset_reset: AutoOffsetReset,
    /// Its partitions.
    pub assignments: Vec<TopicPartition>,
    /// Milliseconds since it was last heard from (0 while in a long-poll).
    pub last_seen_ms_ago: u64,
}

/// A group as its coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    /// The group.
    pub group: String,
    /// `stable` with members, `empty` without.
    pub state: String,
    /// The generation (0 before the first join on this coordinator).
    pub generation: u64,
    /// The assignment strategy.
    pub strategy: AssignmentStrategy,
    /// The coordinator's node.
    pub coordinator: NodeId,
    /// The members.
    pub members: Vec<MemberView>,
    /// The push subscription, when the group is one (boxed: it is large, and
    /// descriptions travel inside every forwarded group answer).
    pub push: Option<Box<PushView>>,
}

/// A push subscription as `GET /v1/groups/{g}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushView {
    /// The settings (the edge never shows the secret).
    pub config: PushConfig,
    /// What the pusher on the coordinator's node reports; `None` until it runs.
    pub status: Option<PushStatus>,
}

/// A group in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub group: String,
    /// Active members (0 for a group that only has committed offsets).
    pub members: u32,
}

/// The coordinator's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum GroupAnswer {
    /// A member joined, or polled, or reported a delivery.
    Lease(Lease),
    /// The group's description.
    Described(GroupDescription),
    /// Done.
    Done,
}

/// Messages of [`CoordinatorActor`].
pub enum CoordinatorMsg {
    /// A request from the edge.
    Request {
        /// The request.
        request: GroupRequest,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<GroupAnswer, GroupError>>,
    },
    /// Periodic housekeeping: expire silent members, notice topic and leadership changes.
    Tick,
}

/// Startup arguments of a coordinator.
pub struct CoordinatorArgs {
    /// The group.
    pub group: String,
    /// The local replica of the group's offsets partition, which this node leads.
    pub offsets: OffsetsHandle,
    /// Replicated metadata (topic partition counts and groups).
    pub metadata: watch::Receiver<Arc<ControllerState>>,
    /// Write timeout and quorum staleness.
    pub limits: BatchLimits,
    /// The offsets partition's Raft term when this coordinator started: a later term means
    /// leadership was lost (perhaps regained) and members must re-join.
    pub term: u64,
    /// Where the member count is published for listings.
    pub member_count: Arc<AtomicU32>,
    /// This node's Raft groups: whether the offsets partition's leadership is being given
    /// away.
    pub raft_node: RaftNode,
    /// The status of the pushers running on this node.
    pub push_board: PushBoard,
}

struct Member {
    topics: BTreeSet<String>,
    session_timeout: Duration,
    auto_offset_reset: AutoOffsetReset,
    /// Alive until `last_seen + session_timeout`. During a long-poll it is set to the
    /// poll's end.
    last_seen: Instant,
    /// The generation this member was last told about.
    told_generation: u64,
    assigned: BTreeSet<TopicPartition>,
    /// Confirmed next offset per assigned partition (see the module docs). Invariant:
    /// keys ⊆ `assigned`; emptied at every rebalance, so a new generation starts at the
    /// committed offsets.
    confirmed: HashMap<TopicPartition, u64>,
    /// Furthest next offset delivered per assigned partition in this generation: a token
    /// never confirms beyond it. Same invariant as `confirmed`.
    delivered: HashMap<TopicPartition, u64>,
    /// Fetches reported so far ([`Lease::rotation`]).
    fetches: u64,
    /// Streams attached so far ([`Lease::attachment`]).
    attachments: u64,
    /// Set when the member's stream closed: it leaves then, unless a stream re-attached.
    detached_until: Option<Instant>,
}

/// Raises `positions[tp]` to `offset` (sets it when absent); never lowers it.
fn raise(positions: &mut HashMap<TopicPartition, u64>, tp: &TopicPartition, offset: u64) {
    let position = positions.entry(tp.clone()).or_insert(offset);
    *position = (*position).max(offset);
}

impl Member {
    /// Applies a token of the current generation: each offset, capped at what was
    /// delivered, raises the confirmed position. A token of another generation is stale
    /// and ignored (the fetch starts from the confirmed positions).
    fn confirm(&mut self, generation: u64, token: &PositionToken) -> Result<(), GroupError> {
        if token.generation != generation {
            return Ok(());
        }
        if token.offsets.len() != self.assigned.len() {
            return Err(GroupError::InvalidPosition {
                reason: format!(
                    "the position names {} partitions; the member has {} in generation {generation}",
                    token.offsets.len(),
                    self.assigned.len()
                ),
            });
        }
        for (tp, offset) in self.assigned.iter().zip(&token.offsets) {
            let (Some(offset), Some(delivered)) = (offset, self.delivered.get(tp)) else {
                continue;
            };
            raise(&mut self.confirmed, tp, (*offset).min(*delivered));
        }
        Ok(())
    }
}

/// State of a coordinator.
pub struct CoordinatorState {
    args: CoordinatorArgs,
    generation: u64,
    strategy: AssignmentStrategy,
    members: BTreeMap<String, Member>,
    /// Partition counts of the subscribed topics at the last rebalance.
    counts: BTreeMap<String, u32>,
    /// The partition groups of the subscribed topics at the last rebalance: a topic
    /// deleted and re-created (same name, new groups) must rebalance too, or positions of
    /// the old log would carry over to the new one.
    incarnations: BTreeMap<String, Vec<GroupId>>,
    idle_since: Instant,
    /// When this coordinator proposed making the group a push subscription: joins are
    /// refused from then on, before the proposal applies, so no member slips in.
    push_claimed: Option<Instant>,
}

/// The coordinator actor. See the module docs.
pub struct CoordinatorActor;

fn new_member_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl CoordinatorState {
    fn group(&self) -> &str {
        &self.args.group
    }

    /// This coordinator's fence for a commit checked now.
    fn fence(&self) -> Fence {
        Fence {
            epoch: self.args.term,
            generation: self.generation,
        }
    }

    /// Whether the group is (or is about to be) a push subscription.
    fn is_push(&self) -> bool {
        let claim_holds = self.args.limits.write_timeout * 2;
        self.args.offsets.reader.push(self.group()).is_some()
            || self
                .push_claimed
                .is_some_and(|at| at.elapsed() < claim_holds)
    }

    /// Whether this node still coordinates the group.
    fn leadership(&self) -> Result<(), GroupError> {
        check_leader(
            &self.args.raft_node,
            self.args.offsets.group,
            &self.args.offsets.raft,
            self.args.limits.quorum_stale_after,
        )?;
        if self.args.offsets.raft.metrics().borrow().current_term != self.args.term {
            return Err(GroupError::Unavailable {
                reason: "the group coordinator is restarting after a leadership change".into(),
            });
        }
        Ok(())
    }

    fn incarnations(&self) -> BTreeMap<String, Vec<GroupId>> {
        let metadata = self.args.metadata.borrow().clone();
        let subscribed: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        subscribed
            .into_iter()
            .filter_map(|t| {
                metadata
                    .topics
                    .get(t)
                    .map(|meta| (t.clone(), meta.partitions.iter().map(|p| p.group).collect()))
            })
            .collect()
    }

    fn partition_counts(&self) -> BTreeMap<String, u32> {
        let metadata = self.args.metadata.borrow().clone();
        let subscribed: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        subscribed
            .into_iter()
            .filter_map(|t| {
                metadata
                    .topics
                    .get(t)
                    .map(|meta| (t.clone(), meta.config.partitions))
            })
            .collect()
    }

    fn rebalance(&mut self, reason: &'static str) {
        self.generation += 1;
        let subscriptions: Subscriptions = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let previous: Assignment = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.assigned.clone()))
            .collect();
        self.counts = self.partition_counts();
        self.incarnations = self.incarnations();
        let mut result = assign(self.strategy, &subscriptions, &self.counts, &previous);
        for (id, member) in &mut self.members {
            member.assigned = result.remove(id).unwrap_or_default();
            member.confirmed.clear();
            member.delivered.clear();
        }
        self.args
            .member_count
            .store(self.members.len() as u32, Ordering::Relaxed);
        if self.members.is_empty() {
            self.idle_since = Instant::now();
        }
        info!(
            group = %self.args.group,
            generation = self.generation,
            members = self.members.len(),
            reason,
            "group rebalanced"
        );
    }

    /// The committed offset of a partition for the topic as it exists now (an offset
    /// committed for a deleted incarnation of the topic is ignored).
    fn committed(&self, tp: &TopicPartition) -> Option<u64> {
        let current = self
            .args
            .metadata
            .borrow()
            .partition(&tp.topic, tp.partition)
            .map(|p| p.group)?;
        self.args
            .offsets
            .reader
            .get(&self.args.group, &tp.topic, tp.partition)
            .filter(|c| c.topic_group == current)
            .map(|c| c.offset)
    }

    fn lease(
        &self,
        member_id: &str,
        member: &Member,
        changed: bool,
        accepted: Vec<TopicPartition>,
    ) -> Lease {
        let positions = member
            .assigned
            .iter()
            .map(|tp| {
                let confirmed = member.confirmed.get(tp).copied();
                let start = match confirmed.max(self.committed(tp)) {
                    Some(offset) => StartPosition::At(offset),
                    None => match member.auto_offset_reset {
                        AutoOffsetReset::Earliest => StartPosition::Earliest,
                        AutoOffsetReset::Latest => StartPosition::Latest,
                    },
                };
                (tp.clone(), start)
            })
            .collect();
        Lease {
            member_id: member_id.to_string(),
            generation: self.generation,
            assignments: member.assigned.iter().cloned().collect(),
            positions,
            auto_offset_reset: member.auto_offset_reset,
            changed,
            accepted,
            rotation: member.fetches,
            attachment: member.attachments,
        }
    }

    fn join(
        &mut self,
        topics: Vec<String>,
        session_timeout_ms: u64,
        auto_offset_reset: AutoOffsetReset,
        strategy: Option<AssignmentStrategy>,
    ) -> Result<GroupAnswer, GroupError> {
        if self.is_push() {
            return Err(GroupError::PushSubscription);
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(GroupError::TooManyMembers { limit: MAX_MEMBERS });
        }
        match strategy {
            Some(asked) if !self.members.is_empty() && asked != self.strategy => {
                return Err(GroupError::StrategyMismatch {
                    current: self.strategy.as_str().into(),
                })
            }
            Some(asked) => self.strategy = asked,
            None if self.members.is_empty() => self.strategy = AssignmentStrategy::default(),
            None => {}
        }
        let member_id = new_member_id();
        let session = session_timeout_ms.clamp(MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS);
        self.members.insert(
            member_id.clone(),
            Member {
                topics: topics.into_iter().collect(),
                session_timeout: Duration::from_millis(session),
                auto_offset_reset,
                last_seen: Instant::now(),
                told_generation: 0,
                assigned: BTreeSet::new(),
                confirmed: HashMap::new(),
                delivered: HashMap::new(),
                fetches: 0,
                attachments: 0,
                detached_until: None,
            },
        );
        self.rebalance("member joined");
        let generation = self.generation;
        let member = self
            .members
            .get_mut(&member_id)
            .ok_or(GroupError::UnknownMember)?;
        member.told_generation = generation;
        let member = &self.members[&member_id];
        Ok(GroupAnswer::Lease(self.lease(
            &member_id,
            member,
            true,
            Vec::new(),
        )))
    }

    fn poll(
        &mut self,
        member_id: &str,
        timeout_ms: u64,
        from: PollFrom,
    ) -> Result<GroupAnswer, GroupError> {
        let generation = self.generation;
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMember)?;
        match &from {
            PollFrom::Confirmed => {}
            PollFrom::Token(token) => member.confirm(generation, token)?,
            PollFrom::Committed => {
                member.confirmed.clear();
                member.delivered.clear();
                member.attachments += 1;
                member.detached_until = None;
            }
        }
        member.last_seen = Instant::now() + Duration::from_millis(timeout_ms).min(MAX_POLL);
        let member = &self.members[member_id];
        let changed = member.told_generation != self.generation;
        Ok(GroupAnswer::Lease(self.lease(
            member_id,
            member,
            changed,
            Vec::new(),
        )))
    }

    fn delivered(
        &mut self,
        member_id: &str,
        generation: u64,
        positions: Vec<Delivery>,
    ) -> Result<GroupAnswer, GroupError> {
        let current = self.generation;
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMember)?;
        member.last_seen = Instant::now();
        member.fetches = member.fetches.wrapping_add(1);
        let mut accepted = Vec::new();
        if generation == current {
            for delivery in positions {
                if member.assigned.contains(&delivery.partition) {
                    raise(
                        &mut member.delivered,
                        &delivery.partition,
                        delivery.next_offset,
                    );
                    // Where the read began is safe to confirm: it pins a start resolved
                    // from `auto_offset_reset`, and an empty read loses nothing.
                    raise(&mut member.confirmed, &delivery.partition, delivery.floor);
                    accepted.push(delivery.partition);
                }
            }
        }
        let changed = member.told_generation != current;
        member.told_generation = current;
        let member = &self.members[member_id];
        Ok(GroupAnswer::Lease(
            self.lease(member_id, member, changed, accepted),
        ))
    }

    /// Checks a commit; the write itself is spawned by the caller.
    fn check_commit(
        &mut self,
        member_id: &str,
        generation: u64,
        offsets: &[OffsetEntry],
    ) -> Result<(), GroupError> {
        let current = self.generation;
        let member = self
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMember)?;
        if generation != current {
            return Err(GroupError::StaleGeneration {
                given: generation,
                current,
            });
        }
        for entry in offsets {
            let tp = TopicPartition {
                topic: entry.topic.clone(),
                partition: entry.partition,
            };
            if !member.assigned.contains(&tp) {
                return Err(GroupError::NotAssigned {
                    topic: tp.topic,
                    partition: tp.partition,
                });
            }
        }
        // A commit is a sign of life too.
        member.last_seen = member.last_seen.max(Instant::now());
        Ok(())
    }

    fn describe(&self) -> Result<GroupAnswer, GroupError> {
        let push = self.args.offsets.reader.push(self.group()).map(|config| {
            Box::new(PushView {
                config,
                status: self.args.push_board.status(self.group()),
            })
        });
        if self.members.is_empty()
            && push.is_none()
            && self.args.offsets.reader.committed(self.group()).is_empty()
        {
            return Err(GroupError::GroupNotFound);
        }
        let now = Instant::now();
        let members = self
            .members
            .iter()
            .map(|(id, m)| MemberView {
                member_id: id.clone(),
                topics: m.topics.iter().cloned().collect(),
                session_timeout_ms: m.session_timeout.as_millis() as u64,
                auto_offset_reset: m.auto_offset_reset,
                assignments: m.assigned.iter().cloned().collect(),
                last_seen_ms_ago: now.saturating_duration_since(m.last_seen).as_millis() as u64,
            })
            .collect();
        Ok(GroupAnswer::Described(GroupDescription {
            group: self.args.group.clone(),
            state: if self.members.is_empty() {
                "empty"
            } else {
                "stable"
            }
            .into(),
            generation: self.generation,
            strategy: self.strategy,
            coordinator: self.args.offsets.raft.metrics().borrow().id,
            members,
            push,
        }))
    }

    /// Proposes an offsets command in a task that answers `reply` once it is applied.
    fn spawn_write(
        &self,
        command: OffsetsCommand,
        reply: RpcReplyPort<Result<GroupAnswer, GroupError>>,
    ) {
        let (raft_node, offsets) = (self.args.raft_node.clone(), self.args.offsets.clone());
        let timeout = self.args.limits.write_timeout;
        tokio::spawn(async move {
            let answer = propose(&raft_node, &offsets, &command, timeout)
                .await
                .map(|()| GroupAnswer::Done);
            let _ = reply.send(answer);
        });
    }

    fn handle_request(
        &mut self,
        request: GroupRequest,
        reply: RpcReplyPort<Result<GroupAnswer, GroupError>>,
    ) {
        let answer = match request {
            GroupRequest::Join {
                topics,
                session_timeout_ms,
                auto_offset_reset,
                strategy,
            } => self.join(topics, session_timeout_ms, auto_offset_reset, strategy),
            GroupRequest::Poll {
                member_id,
                timeout_ms,
                from,
            } => self.poll(&member_id, timeout_ms, from),
            GroupRequest::Detach {
                member_id,
                grace_ms,
                attachment,
            } => match self.members.get_mut(&member_id) {
                Some(member) => {
                    if member.attachments == attachment {
                        member.detached_until =
                            Instant::now().checked_add(Duration::from_millis(grace_ms));
                    }
                    Ok(GroupAnswer::Done)
                }
                None => Err(GroupError::UnknownMember),
            },
            GroupRequest::Delivered {
                member_id,
                generation,
                positions,
            } => self.delivered(&member_id, generation, positions),
            GroupRequest::Commit {
                member_id,
                generation,
                offsets,
            } => match self.check_commit(&member_id, generation, &offsets) {
                Ok(()) => {
                    let command = OffsetsCommand::CommitFenced {
                        group: self.args.group.clone(),
                        offsets,
                        commit_ms: now_ms(),
                        fence: self.fence(),
                    };
                    return self.spawn_write(command, reply);
                }
                Err(error) => Err(error),
            },
            GroupRequest::Leave { member_id } => match self.members.remove(&member_id) {
                Some(_) => {
                    self.rebalance("member left");
                    Ok(GroupAnswer::Done)
                }
                None => Err(GroupError::UnknownMember),
            },
            GroupRequest::Describe => self.describe(),
            GroupRequest::Reset { .. } | GroupRequest::Delete if self.is_push() => {
                Err(GroupError::PushSubscription)
            }
            GroupRequest::SetPush {
                config,
                max_subscriptions,
            } => {
                let reader = &self.args.offsets.reader;
                if !self.members.is_empty() {
                    Err(GroupError::NotEmpty {
                        members: self.members.len(),
                    })
                } else if reader.push(self.group()).is_none()
                    && reader.push_count() >= max_subscriptions as usize
                {
                    // Refused before claiming, so joins stay open; the state machine
                    // checks again at apply (two new subscriptions may race).
                    Err(GroupError::TooManyPushSubscriptions {
                        limit: max_subscriptions,
                    })
                } else {
                    self.push_claimed = Some(Instant::now());
                    let command = OffsetsCommand::SetPushBounded {
                        group: self.args.group.clone(),
                        config,
                        max_subscriptions,
                    };
                    return self.spawn_write(command, reply);
                }
            }
            GroupRequest::DeletePush => {
                self.push_claimed = None;
                if self.args.offsets.reader.push(self.group()).is_none() {
                    Err(GroupError::NotPushSubscription)
                } else {
                    let command = OffsetsCommand::DeletePush {
                        group: self.args.group.clone(),
                    };
                    return self.spawn_write(command, reply);
                }
            }
            GroupRequest::Reset { offsets } => {
                if !self.members.is_empty() {
                    Err(GroupError::NotEmpty {
                        members: self.members.len(),
                    })
                } else {
                    let command = OffsetsCommand::ResetFenced {
                        group: self.args.group.clone(),
                        offsets,
                        commit_ms: now_ms(),
                        fence: self.fence(),
                    };
                    return self.spawn_write(command, reply);
                }
            }
            GroupRequest::Delete => {
                if !self.members.is_empty() {
                    Err(GroupError::NotEmpty {
                        members: self.members.len(),
                    })
                } else if self.args.offsets.reader.committed(self.group()).is_empty() {
                    Err(GroupError::GroupNotFound)
                } else {
                    let command = OffsetsCommand::DeleteGroup {
                        group: self.args.group.clone(),
                    };
                    return self.spawn_write(command, reply);
                }
            }
        };
        let _ = reply.send(answer);
    }

    /// Housekeeping; returns false when the coordinator should stop.
    fn tick(&mut self) -> bool {
        if let Err(error) = self.leadership() {
            if !matches!(error, GroupError::NoQuorum) {
                info!(group = %self.args.group, %error, "group coordinator stepping down");
                return false;
            }
        }
        let now = Instant::now();
        let before = self.members.len();
        self.members.retain(|_, m| {
            now.saturating_duration_since(m.last_seen) <= m.session_timeout
                && m.detached_until.is_none_or(|until| now < until)
        });
        if self.members.len() != before {
            debug!(group = %self.args.group, expired = before - self.members.len(), "members expired");
            self.rebalance("member session expired or its stream closed");
        } else if !self.members.is_empty() && self.incarnations() != self.incarnations {
            self.rebalance("subscribed topics changed");
        }
        !(self.members.is_empty()
            && now.saturating_duration_since(self.idle_since) > IDLE_STOP_AFTER)
    }
}

impl Actor for CoordinatorActor {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CoordinatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        send_every(&myself, TICK, || CoordinatorMsg::Tick);
        // Restarted within the same term (after idling): continue above the generation
        // that last committed, or the fence would refuse this coordinator's commits.
        let generation = args
            .offsets
            .reader
            .fence(&args.group)
            .filter(|fence| fence.epoch == args.term)
            .map_or(0, |fence| fence.generation);
        info!(group = %args.group, term = args.term, generation, "group coordinator started");
        Ok(CoordinatorState {
            args,
            generation,
            strategy: AssignmentStrategy::default(),
            members: BTreeMap::new(),
            counts: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            idle_since: Instant::now(),
            push_claimed: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordinatorMsg::Request { request, reply } => {
                if let Err(error) = state.leadership() {
                    let stop = !matches!(error, GroupError::NoQuorum);
                    let _ = reply.send(Err(error));
                    if stop {
                        myself.stop(Some("no longer the group coordinator".into()));
                    }
                    return Ok(());
                }
                state.handle_request(request, reply);
            }
            CoordinatorMsg::Tick => {
                if !state.tick() {
                    myself.stop(Some("group coordinator idle or moved".into()));
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.member_count.store(0, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: u32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition,
        }
    }

    fn member() -> Member {
        Member {
            topics: BTreeSet::from(["t".to_string()]),
            session_timeout: Duration::from_secs(10),
            auto_offset_reset: AutoOffsetReset::Earliest,
            last_seen: Instant::now(),
            told_generation: 4,
            assigned: BTreeSet::from([tp(0), tp(1)]),
            confirmed: HashMap::new(),
            delivered: HashMap::from([(tp(0), 10), (tp(1), 3)]),
            fetches: 0,
            attachments: 0,
            detached_until: None,
        }
    }

    fn token(generation: u64, offsets: Vec<Option<u64>>) -> PositionToken {
        PositionToken {
            generation,
            offsets,
        }
    }

    /// A token confirms only what was delivered, never moves back, and one of
    /// another generation is ignored; one that does not fit the assignment is refused.
    #[test]
    fn tokens_confirm_only_delivered_positions_forward() {
        let mut m = member();
        m.confirm(4, &token(4, vec![Some(7), Some(50)])).unwrap();
        assert_eq!(m.confirmed[&tp(0)], 7);
        assert_eq!(m.confirmed[&tp(1)], 3, "capped at what was delivered");
        m.confirm(4, &token(4, vec![Some(2), None])).unwrap();
        assert_eq!(m.confirmed[&tp(0)], 7, "never backwards");
        m.confirm(4, &token(3, vec![Some(10), Some(3)])).unwrap();
        assert_eq!(
            m.confirmed[&tp(0)],
            7,
            "a stale generation's token is ignored"
        );
        assert!(matches!(
            m.confirm(4, &token(4, vec![Some(1)])),
            Err(GroupError::InvalidPosition { .. })
        ));
        assert_eq!(m.confirmed[&tp(0)], 7, "a refused token changes nothing");
        let mut fresh = member();
        fresh.delivered.clear();
        fresh.confirm(4, &token(4, vec![Some(5), Some(5)])).unwrap();
        assert!(
            fresh.confirmed.is_empty(),
            "nothing delivered, nothing confirmed"
        );
    }
}
