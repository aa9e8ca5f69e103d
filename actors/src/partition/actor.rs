//! The partition actor: owns one partition replica's Raft handle and turns concurrent
//! publishes into few Raft entries.
//!
//! Batching (docs/architecture.md § Publish path): at most [`BatchLimits::max_entries_in_flight`]
//! entries are being replicated at once; while that many are, every publish that arrives is
//! queued, and when one commits, the queued publishes go out as the next entry (bounded by
//! bytes and records). Offsets are assigned at apply, so each waiting request gets
//! `base + records before it in the entry`.
//!
//! One entry in flight by default. More would not overlap: openraft 0.9 appends a group's
//! entries one at a time, each waiting for its own log flush, so a second entry proposed
//! during a commit waits in the Raft core anyway, and splitting what queued meanwhile into
//! several entries only multiplies the per-entry work (a flush, AppendEntries, an apply on
//! every replica). Measured on a 3-node cluster (two runs each): single-record publishes
//! with 64 in flight went from 6,730 and 6,500 to 7,549 and 9,020 records/s, p99 from
//! about 20 to 14–17 ms, going from 4 entries in flight to 1 (docs/benchmarks.md).
//!
//! The actor never awaits a Raft commit inside `handle`: it hands the entry to Raft (which
//! only enqueues it, so entries are proposed in the order the actor built them, and offsets
//! follow arrival order) and spawns a task that waits for the commit with the reply ports;
//! the write's completion comes back as [`PartitionMsg::WriteDone`].
//!
//! Maintenance: the node's maintenance clock ([`super::maintenance_clock`]) sends
//! [`PartitionMsg::Maintenance`] every [`MaintenanceArgs::interval`] to leaders; on the leader it reads the topic's current settings from
//! the controller state and proposes what retention ([`super::retention`]) asks for. One trim is
//! in flight at a time; its outcome comes back as [`PartitionMsg::TrimDone`]. On a
//! compacted topic it proposes the next compaction window ([`super::compaction`]); while a pass is
//! under way, each committed window proposes the next one ([`PartitionMsg::CompactDone`]).
//!
//! Delayed publishes ([`PartitionMsg::Delay`]) are proposed as entries of their own at once
//! (they are not batched with appends: they go to the delay queue, not the log), and the
//! leader's release timer ([`super::release_timer`]) moves them into the log when due.

use std::sync::Arc;
use std::time::Duration;

use psubd_raft::types::typ::Raft;
use psubd_raft::{GroupId, RaftNode};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info};

use crate::clock::now_ms;
use crate::controller::ControllerState;
use crate::error::PartitionError;
use crate::proposal::{self, check_leader};
use crate::record::{join_batch, EncodedRecords};

use super::command::{
    append_command, compact_command, decode_append_response, decode_guarded_response,
    guarded_append_command, trim_command,
};
use super::compaction::CompactionProgress;
use super::delay_queue::DelayedRecords;
use super::guard::{EntryGuard, RequestGuard, RequestOutcome};
use super::reader::PartitionReader;
use super::release_timer::{ReleaseTimer, TimerEvent, TimerLimits};

/// How proposals name this kind of group in their reasons.
const GROUP: &str = "partition";

/// How a publish is acknowledged (docs/api.md § Publish).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Acks {
    /// After the entry is committed on a majority and applied.
    All,
    /// After the leader's own append. psubd currently answers `acks=1` at commit, like
    /// `all`: never weaker than asked (see docs/api.md § Publish).
    Leader,
    /// At once, before any write.
    None,
}

/// Limits on the entries the actor builds.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// An entry stops growing past this many bytes of records (one request larger than
    /// this still goes as one entry).
    pub max_entry_bytes: usize,
    /// An entry stops growing past this many records.
    pub max_entry_records: u32,
    /// Most entries of one partition being replicated at once; see the module docs for why
    /// the default is 1.
    pub max_entries_in_flight: usize,
    /// How long a proposed write may take before it is answered `outcome_unknown`.
    pub write_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses writes with
    /// `NoQuorum` instead of letting them hang: a minority answers 503.
    pub quorum_stale_after: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_entry_bytes: 1 << 20,
            max_entry_records: 10_000,
            max_entries_in_flight: 1,
            write_timeout: Duration::from_secs(10),
            quorum_stale_after: Duration::from_millis(2_500),
        }
    }
}

/// Offsets given to one publish request: `base_offset .. base_offset + count`, but for
/// the records left out as duplicates, which report their original offsets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    /// Offset of the request's first stored record.
    pub base_offset: u64,
    /// Records not stored because their id was: (position in the request, original
    /// offset), ascending by position. Empty for a plain append.
    pub duplicates: Vec<(u32, u64)>,
}

impl Appended {
    /// The offset of the request's record at `position`, and whether it is a duplicate
    /// (then the offset is the original's).
    pub fn offset_of(&self, position: u32) -> (u64, bool) {
        match self
            .duplicates
            .binary_search_by_key(&position, |(at, _)| *at)
        {
            Ok(i) => (self.duplicates[i].1, true),
            Err(before) => (
                self.base_offset + u64::from(position) - before as u64,
                false,
            ),
        }
    }
}

/// Messages of [`PartitionActor`].
pub enum PartitionMsg {
    /// Append one request's records; answered with its base offset once committed.
    Append {
        /// The request's records, encoded at the edge.
        records: EncodedRecords,
        /// Its ids and expectation, if any (see [`super::guard`]).
        guard: RequestGuard,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<Appended, PartitionError>>,
    },
    /// The entry in flight finished (its waiters are answered by the write task).
    WriteDone,
    /// The maintenance timer fired: on the leader, run retention.
    Maintenance,
    /// The trim in flight finished (committed or not).
    TrimDone,
    /// The compaction command in flight finished (committed or not).
    CompactDone,
    /// Queue one request's delayed records; answered once committed (or refused when the
    /// delay queue is full).
    Delay {
        /// The records and their due times, encoded and checked at the edge.
        records: DelayedRecords,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<(), PartitionError>>,
    },
    /// The release timer's news (see [`super::release_timer`]).
    ReleaseTimer(TimerEvent),
}

/// Maintenance ticks between the starts of two compaction passes of one partition.
pub const COMPACTION_PASS_TICKS: u32 = 5;

/// Default period of the maintenance tick: retention reacts within about a second, and an
/// idle tick costs one leadership check.
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// What the maintenance tick needs: which topic partition this is, where its current
/// settings are published, and the replica's reader (bounds and batch index).
#[derive(Clone)]
pub struct MaintenanceArgs {
    /// The topic's name.
    pub topic: String,
    /// The partition number.
    pub partition: u32,
    /// The replicated controller state: settings changed by PATCH arrive here.
    pub metadata: watch::Receiver<Arc<ControllerState>>,
    /// This replica's reader.
    pub reader: PartitionReader,
    /// Period of the tick.
    pub interval: Duration,
}

struct Waiter {
    records: EncodedRecords,
    guard: RequestGuard,
    reply: RpcReplyPort<Result<Appended, PartitionError>>,
}

/// Startup arguments of a [`PartitionActor`].
pub struct PartitionArgs {
    /// The partition's group id (for logs).
    pub group: GroupId,
    /// The group's Raft handle.
    pub raft: Raft,
    /// The node's Raft side: whether a replica is low on disk space.
    pub raft_node: RaftNode,
    /// Entry limits.
    pub limits: BatchLimits,
    /// Retention (and other background work) settings.
    pub maintenance: MaintenanceArgs,
}

/// State of a [`PartitionActor`].
pub struct PartitionState {
    group: GroupId,
    raft: Raft,
    raft_node: RaftNode,
    limits: BatchLimits,
    queued: Vec<Waiter>,
    queued_bytes: usize,
    /// Entries of this actor being replicated. Invariant: at most
    /// `limits.max_entries_in_flight` (and at least 1 is always allowed).
    in_flight: usize,
    maintenance: MaintenanceArgs,
    /// A trim proposed and not yet answered: the next waits for it, so trims never pile up.
    trim_in_flight: bool,
    /// A compaction command proposed and not yet answered (one at a time).
    compact_in_flight: bool,
    /// Compaction progress when the command in flight was proposed: the next window is
    /// proposed at once only if that one moved it (it did not commit otherwise; then the
    /// next tick retries).
    compact_proposed_at: CompactionProgress,
    /// When this leader last started a compaction pass: a new pass waits
    /// [`COMPACTION_PASS_TICKS`] ticks, so a busy topic is not re-walked on every tick.
    last_pass_started: Option<tokio::time::Instant>,
    /// Releases delayed records on the leader when they fall due.
    release: ReleaseTimer,
}

/// One partition replica's actor. See the module docs.
pub struct PartitionActor;

/// What the edge holds for a local partition replica.
#[derive(Clone)]
pub struct PartitionHandle {
    /// The partition's group.
    pub group: GroupId,
    /// The topic it belongs to (for metrics and restarts).
    pub topic: String,
    /// Its partition number.
    pub partition: u32,
    /// The actor (publishes).
    pub actor: ActorRef<PartitionMsg>,
    /// The reader (fetches: served without the actor).
    pub reader: PartitionReader,
    /// The Raft handle (leadership queries).
    pub raft: Raft,
    /// Bounds the actor's mailbox: a publish holds a permit until answered.
    pub admission: Arc<Semaphore>,
}

/// Most publish requests queued at one partition actor; more wait at the edge.
pub const MAX_QUEUED_REQUESTS: usize = 4_096;

/// Whether the partition may take new records as far as disk space goes: not while any of
/// its replicas is below its free-space threshold (replicas fill together; see
/// `psubd_raft::health`).
///
/// # Errors
/// [`PartitionError::InsufficientStorage`] naming the node low on space.
pub fn check_space(raft_node: &RaftNode, raft: &Raft) -> Result<(), PartitionError> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let replicas = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _node)| *id);
    match raft_node.low_space_among(replicas) {
        Some(node) => Err(PartitionError::InsufficientStorage { node }),
        None => Ok(()),
    }
}

/// A partition replica's group, for [`proposal::enqueue`] (a free function, so a caller
/// may borrow other fields of the state meanwhile).
fn target<'a>(raft_node: &'a RaftNode, group: GroupId, raft: &'a Raft) -> proposal::Target<'a> {
    proposal::Target {
        raft_node,
        group,
        raft,
        name: GROUP,
    }
}

impl PartitionState {
    /// This replica's group, for [`proposal::enqueue`].
    fn target(&self) -> proposal::Target<'_> {
        target(&self.raft_node, self.group, &self.raft)
    }

    /// Whether this replica may propose now (see [`check_leader`]).
    fn leadership(&self) -> Result<(), proposal::Refusal> {
        check_leader(
            &self.raft_node,
            self.group,
            &self.raft,
            self.limits.quorum_stale_after,
        )
    }

    /// The topic's current settings, if it still exists with this partition's group.
    fn topic_config(&self) -> Option<crate::topic::TopicConfig> {
        let metadata = self.maintenance.metadata.borrow();
        let topic = metadata.topics.get(&self.maintenance.topic)?;
        let placement = topic.partitions.get(self.maintenance.partition as usize)?;
        (placement.group == self.group).then(|| topic.config.clone())
    }

    /// The topic's duplicate window as this leader sees it now; stamped into guarded
    /// entries so every replica applies the same one.
    fn duplicate_window_ms(&self) -> u64 {
        let metadata = self.maintenance.metadata.borrow();
        metadata.duplicate_window_ms(&self.maintenance.topic)
    }

    /// The command appending `waiters`' records: a plain append unless one of them is
    /// guarded. With deduplication off (a zero window) ids are not sent at all.
    fn build_command(&self, waiters: &mut [Waiter]) -> (psubd_raft::Command, bool) {
        let batch = join_batch(waiters.iter().map(|w| &w.records));
        if waiters.iter().all(|w| w.guard.is_empty()) {
            return (append_command(&batch), false);
        }
        let window_ms = self.duplicate_window_ms();
        let requests = waiters
            .iter_mut()
            .map(|w| {
                let mut guard = std::mem::take(&mut w.guard);
                if window_ms == 0 {
                    guard.ids.clear();
                }
                (w.records.count, guard)
            })
            .collect();
        let guard = EntryGuard {
            stamped_ms: now_ms(),
            window_ms,
            requests,
        };
        (guarded_append_command(&guard, &batch), true)
    }

    /// The maintenance tick: retention (and compaction) on the leader. Never awaits a
    /// commit. (Snapshots by log bytes are the state machine's: `GroupLogic::retained_bytes`.)
    async fn maintain(&mut self, myself: &ActorRef<PartitionMsg>) {
        if self.leadership().is_err() {
            return;
        }
        let Some(config) = self.topic_config() else {
            return;
        };
        self.retain(&config, myself).await;
        self.compact(&config, myself).await;
        self.release
            .check(
                target(&self.raft_node, self.group, &self.raft),
                &self.maintenance.reader,
            )
            .await;
    }

    /// Fails fast, before anything is proposed, when this replica cannot lead or a
    /// replica is short of space.
    fn check_writable(&self) -> Result<(), PartitionError> {
        self.leadership()
            .map_err(PartitionError::from)
            .and_then(|()| check_space(&self.raft_node, &self.raft))
    }

    /// Proposes the trim retention asks for, if any and none is in flight.
    async fn retain(
        &mut self,
        config: &crate::topic::TopicConfig,
        myself: &ActorRef<PartitionMsg>,
    ) {
        if self.trim_in_flight {
            return;
        }
        let Some(new_log_start) = self.maintenance.reader.due_trim(config, now_ms()) else {
            return;
        };
        debug!(
            group = self.group,
            new_log_start, "proposing retention trim"
        );
        let proposed = proposal::enqueue(self.target(), trim_command(new_log_start)).await;
        let Ok(pending) = proposed else {
            return;
        };
        self.trim_in_flight = true;
        let timeout = self.limits.write_timeout;
        let (myself, group) = (myself.clone(), self.group);
        tokio::spawn(async move {
            // Not committed (leadership moved, timeout): the next leader's tick decides
            // again from its own applied state.
            if proposal::committed(pending, timeout, GROUP).await.is_err() {
                info!(group, new_log_start, "retention trim not confirmed");
            }
            let _ = myself.send_message(PartitionMsg::TrimDone);
        });
    }

    /// Proposes the next compaction window of a compacted topic, if one is due and none is
    /// in flight (see [`PartitionReader::due_compaction`]).
    async fn compact(
        &mut self,
        config: &crate::topic::TopicConfig,
        myself: &ActorRef<PartitionMsg>,
    ) {
        if self.compact_in_flight {
            return;
        }
        let reader = &self.maintenance.reader;
        let Some(command) = reader.due_compaction(config, now_ms()) else {
            return;
        };
        let reader_progress = reader.compaction_progress();
        if !reader_progress.active {
            let pause = self.maintenance.interval * COMPACTION_PASS_TICKS;
            if self
                .last_pass_started
                .is_some_and(|started| started.elapsed() < pause)
            {
                return;
            }
            self.last_pass_started = Some(tokio::time::Instant::now());
        }
        let Ok(pending) = proposal::enqueue(self.target(), compact_command(&command)).await else {
            return;
        };
        self.compact_in_flight = true;
        self.compact_proposed_at = reader_progress;
        let timeout = self.limits.write_timeout;
        let (myself, group) = (myself.clone(), self.group);
        tokio::spawn(async move {
            // Not committed (leadership moved): the next leader decides again. Routine.
            if proposal::committed(pending, timeout, GROUP).await.is_err() {
                info!(group, "compaction command not confirmed");
            }
            let _ = myself.send_message(PartitionMsg::CompactDone);
        });
    }

    /// True when another entry may be proposed now.
    fn may_propose(&self) -> bool {
        self.in_flight < self.limits.max_entries_in_flight.max(1)
    }

    async fn flush(&mut self, myself: &ActorRef<PartitionMsg>) {
        if !self.may_propose() || self.queued.is_empty() {
            return;
        }
        if let Err(error) = self.leadership() {
            // Nothing was proposed: every queued request may safely be retried elsewhere.
            for waiter in self.queued.drain(..) {
                let _ = waiter.reply.send(Err(error.into()));
            }
            self.queued_bytes = 0;
            return;
        }
        let mut taken_bytes = 0usize;
        let mut taken_records = 0u32;
        let mut take = 0usize;
        for waiter in &self.queued {
            let fits = take == 0
                || (taken_bytes + waiter.records.len() <= self.limits.max_entry_bytes
                    && taken_records + waiter.records.count <= self.limits.max_entry_records);
            if !fits {
                break;
            }
            taken_bytes += waiter.records.len();
            taken_records += waiter.records.count;
            take += 1;
        }
        let mut waiters: Vec<Waiter> = self.queued.drain(..take).collect();
        self.queued_bytes -= taken_bytes;
        self.in_flight += 1;
        let (command, guarded) = self.build_command(&mut waiters);
        let timeout = self.limits.write_timeout;
        let myself = myself.clone();
        debug!(
            group = self.group,
            requests = waiters.len(),
            records = taken_records,
            bytes = taken_bytes,
            in_flight = self.in_flight,
            "proposing batch"
        );
        // Only enqueues the entry at the Raft core (no wait for the commit), so entries are
        // proposed in the order they were built even with several in flight.
        let proposed = proposal::enqueue(self.target(), command).await;
        tokio::spawn(async move {
            let response = match proposed {
                Ok(pending) => proposal::committed(pending, timeout, GROUP)
                    .await
                    .map_err(PartitionError::from),
                Err(unknown) => Err(unknown.into()),
            };
            if guarded {
                answer_guarded(waiters, response);
            } else {
                answer_plain(waiters, response);
            }
            let _ = myself.send_message(PartitionMsg::WriteDone);
        });
    }
}

/// An append's undecodable response: the entry committed, but what it stored is unknown.
fn undecodable() -> PartitionError {
    PartitionError::OutcomeUnknown {
        reason: "append response did not decode".into(),
    }
}

/// Answers the waiters of a plain append: consecutive offsets from the entry's base.
fn answer_plain(
    waiters: Vec<Waiter>,
    response: Result<psubd_raft::CommandResponse, PartitionError>,
) {
    let outcome =
        response.and_then(|response| decode_append_response(&response).ok_or_else(undecodable));
    let mut next = 0u64;
    for waiter in waiters {
        let answer = outcome.clone().map(|base| Appended {
            base_offset: base + next,
            duplicates: Vec::new(),
        });
        next += u64::from(waiter.records.count);
        let _ = waiter.reply.send(answer);
    }
}

/// Answers the waiters of a guarded append, each with its own request's outcome.
fn answer_guarded(
    waiters: Vec<Waiter>,
    response: Result<psubd_raft::CommandResponse, PartitionError>,
) {
    let outcomes = response.and_then(|response| {
        decode_guarded_response(&response)
            .filter(|outcomes| outcomes.len() == waiters.len())
            .ok_or_else(undecodable)
    });
    match outcomes {
        Ok(outcomes) => {
            for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                let answer = match outcome {
                    RequestOutcome::Written {
                        base_offset,
                        duplicates,
                    } => Ok(Appended {
                        base_offset,
                        duplicates,
                    }),
                    RequestOutcome::NextOffsetMismatch { next_offset } => {
                        Err(PartitionError::OffsetMismatch { next_offset })
                    }
                    RequestOutcome::KeyOffsetMismatch { key_offset } => {
                        Err(PartitionError::KeyOffsetMismatch { key_offset })
                    }
                };
                let _ = waiter.reply.send(answer);
            }
        }
        Err(error) => {
            for waiter in waiters {
                let _ = waiter.reply.send(Err(error.clone()));
            }
        }
    }
}

impl Actor for PartitionActor {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PartitionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let timer_actor = myself.clone();
        let release = ReleaseTimer::new(
            args.group,
            TimerLimits {
                write_timeout: args.limits.write_timeout,
            },
            Arc::new(move |event| {
                let _ = timer_actor.send_message(PartitionMsg::ReleaseTimer(event));
            }),
        );
        Ok(PartitionState {
            group: args.group,
            raft: args.raft,
            raft_node: args.raft_node,
            limits: args.limits,
            queued: Vec::new(),
            queued_bytes: 0,
            in_flight: 0,
            maintenance: args.maintenance,
            trim_in_flight: false,
            compact_in_flight: false,
            compact_proposed_at: Default::default(),
            last_pass_started: None,
            release,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionMsg::Append {
                records,
                guard,
                reply,
            } => {
                if !state.may_propose() {
                    state.queued_bytes += records.len();
                    state.queued.push(Waiter {
                        records,
                        guard,
                        reply,
                    });
                } else {
                    // Fail fast before queueing when this replica cannot lead.
                    if let Err(error) = state.check_writable() {
                        let _ = reply.send(Err(error));
                        return Ok(());
                    }
                    state.queued_bytes += records.len();
                    state.queued.push(Waiter {
                        records,
                        guard,
                        reply,
                    });
                    state.flush(&myself).await;
                }
            }
            PartitionMsg::WriteDone => {
                state.in_flight = state.in_flight.saturating_sub(1);
                state.flush(&myself).await;
            }
            PartitionMsg::Delay { records, reply } => match state.check_writable() {
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
                Ok(()) => {
                    state
                        .release
                        .propose_delay(state.target(), records, reply)
                        .await
                }
            },
            PartitionMsg::ReleaseTimer(event) => {
                match event {
                    TimerEvent::DelayDone => {}
                    TimerEvent::WakeUp(due_ms) => state.release.fired(due_ms),
                    TimerEvent::ReleaseDone => state.release.done(),
                }
                if state.leadership().is_ok() {
                    state
                        .release
                        .check(
                            target(&state.raft_node, state.group, &state.raft),
                            &state.maintenance.reader,
                        )
                        .await;
                }
            }
            PartitionMsg::Maintenance => state.maintain(&myself).await,
            PartitionMsg::TrimDone => state.trim_in_flight = false,
            PartitionMsg::CompactDone => {
                state.compact_in_flight = false;
                // A pass under way goes on at once, one bounded window per command.
                let progress = state.maintenance.reader.compaction_progress();
                if progress.active
                    && progress != state.compact_proposed_at
                    && state.leadership().is_ok()
                {
                    if let Some(config) = state.topic_config() {
                        state.compact(&config, &myself).await;
                    }
                }
            }
        }
        Ok(())
    }
}
