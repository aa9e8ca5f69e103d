//! Consumer offsets: the internal topic [`OFFSETS_TOPIC`] whose partitions run
//! [`OffsetsLogic`] instead of a record log (docs/architecture.md § Raft groups, "Consumer
//! offsets").
//!
//! Group `g`'s commits are Raft writes on offsets partition [`offsets_partition_of`]`(g)`,
//! and its coordinator lives on that partition's leader. The state machine keeps the
//! latest committed offset (the next offset to read) per (group, topic, partition).
//!
//! State tree layout (one tree per offsets partition):
//! `b"o" ++ group ++ 0x00 ++ topic ++ 0x00 ++ partition (u32 BE)` → [`CommittedOffset`]
//! (postcard). Names never contain 0x00 (docs/api.md § Names), so the key splits unambiguously
//! and one group's keys are one contiguous range. `b"f" ++ group` → [`Fence`] (postcard):
//! the newest (coordinator epoch, generation) that committed for the group.
//! `b"s" ++ group` → [`PushConfig`] (postcard): the group's push subscription, if it is
//! one (see `push`). `b"c" ++ group ++ 0x00 ++ topic ++ 0x00 ++ partition (u32 BE)` →
//! [`PushTotals`] (postcard): a push subscription's dead-letter and drop counts of one
//! partition, written with its commits ([`OffsetsCommand::CommitPush`]), so they survive
//! a failover.
//!
//! Fencing at apply: a member commit ([`OffsetsCommand::CommitFenced`]) carries
//! the coordinator's epoch (its Raft term) and the group generation it was checked under.
//! The state machine refuses one older than the group's [`Fence`] and never moves a
//! committed offset backwards for it, on every replica alike (the decision depends only on
//! the replicated state and the entry). So a commit checked under generation N that is
//! applied after generation N+1's commit changes nothing, whatever the order the
//! coordinator's spawned proposals reached Raft in. Only a reset
//! ([`OffsetsCommand::ResetFenced`]) moves an offset back; it raises the group's fence to
//! the coordinator's, so a commit still in flight from before the reset cannot undo it. Compatibility: state and snapshots without fences load (no fence:
//! every commit passes); the unfenced [`OffsetsCommand::Commit`] of older logs still
//! decodes and applies as it did, so replaying an old log gives the same state. A node of
//! an older version cannot decode `CommitFenced` (it answers `Invalid` and skips it), so
//! every node of a cluster must run this version before members commit.
//!
//! Topic deletion: every committed offset remembers the Raft group of the partition it was
//! committed for ([`CommittedOffset::topic_group`]; group ids are never reused). Readers
//! ignore an offset whose topic no longer has that partition group (deleted, or deleted
//! and re-created), so a re-created topic never inherits old positions; the offsets
//! partition leader later drops such entries with [`OffsetsCommand::PurgeTopic`] (see
//! `group_directory`). Lazy first, then a command: a deleted topic costs nothing at
//! deletion time and its offsets are gone within a purge period.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use psubd_raft::types::typ::Raft;
use psubd_raft::{
    Command, CommandResponse, GroupId, GroupLogic, RaftNode, SnapshotPlan, StorageIoError, Tree,
    WriteBatch,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::assignment::TopicPartition;
use crate::error::GroupError;
use crate::locks::{read_lock, write_lock};
use crate::proposal;
use crate::push::{PushConfig, PushTotals};
use crate::stable_hash::fnv1a;

/// The internal topic holding consumer offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Partitions of [`OFFSETS_TOPIC`]: each is a Raft group and hosts the coordinators of the
/// groups hashed to it. Fixed forever: changing it would move every group's offsets.
pub const OFFSETS_PARTITIONS: u32 = 4;

/// Replication factor of [`OFFSETS_TOPIC`], capped by the number of nodes.
pub const OFFSETS_REPLICATION: u32 = 3;

const KEY_PREFIX: u8 = b'o';
const KEY_END: u8 = b'p';

/// The offsets partition of a consumer group (stable: [`fnv1a`] of the name).
pub fn offsets_partition_of(group: &str) -> u32 {
    (fnv1a(group.as_bytes()) % u64::from(OFFSETS_PARTITIONS)) as u32
}

/// A committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The next offset to read (docs/api.md § Consumer groups).
    pub offset: u64,
    /// When it was committed, ms since the epoch (the coordinator's clock).
    pub commit_ms: i64,
    /// The Raft group of the topic partition it was committed for: tells a re-created
    /// topic's partition from the deleted one of the same name.
    pub topic_group: GroupId,
}

/// One offset to commit or reset to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetEntry {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The partition's Raft group when the request was validated.
    pub topic_group: GroupId,
    /// The next offset to read.
    pub offset: u64,
}

/// Who committed last for a group: ordered by epoch (the coordinator's Raft term), then
/// generation, so a new coordinator (higher term, generations from 0) outranks every
/// older one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fence {
    /// The coordinator's epoch: the offsets partition's Raft term it was started in.
    pub epoch: u64,
    /// The group generation the commit was checked under.
    pub generation: u64,
}

/// A change to an offsets partition, proposed through Raft. New variants go at the end:
/// postcard encodes the variant's index, and old log entries must keep decoding.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OffsetsCommand {
    /// A member's commit from before fencing at apply: applied unconditionally. Only
    /// decoded from older logs; [`OffsetsCommand::CommitFenced`] is proposed instead.
    Commit {
        /// The consumer group.
        group: String,
        /// The offsets.
        offsets: Vec<OffsetEntry>,
        /// Commit time.
        commit_ms: i64,
    },
    /// An administrative reset from before fencing: only decoded from older logs;
    /// [`OffsetsCommand::ResetFenced`] is proposed instead.
    Reset {
        /// The consumer group.
        group: String,
        /// The offsets.
        offsets: Vec<OffsetEntry>,
        /// Reset time.
        commit_ms: i64,
    },
    /// Forget every offset of a group.
    DeleteGroup {
        /// The consumer group.
        group: String,
    },
    /// Forget the offsets of a deleted topic's partitions, in every group.
    PurgeTopic {
        /// The topic name.
        topic: String,
        /// The Raft groups of the partitions that no longer exist.
        topic_groups: Vec<GroupId>,
    },
    /// A member's commit, fenced at apply: refused when `fence` is older than the group's,
    /// and an offset below the one committed (for the same topic incarnation) stays.
    CommitFenced {
        /// The consumer group.
        group: String,
        /// The offsets.
        offsets: Vec<OffsetEntry>,
        /// Commit time.
        commit_ms: i64,
        /// The coordinator's epoch and the generation the commit was checked under.
        fence: Fence,
    },
    /// An administrative reset (only proposed while the group has no members): sets the
    /// offsets, and raises the group's fence to `fence` so that commits checked before
    /// the reset are refused.
    ResetFenced {
        /// The consumer group.
        group: String,
        /// The offsets.
        offsets: Vec<OffsetEntry>,
        /// Reset time.
        commit_ms: i64,
        /// The coordinator's epoch and generation when the reset was checked.
        fence: Fence,
    },
    /// Makes the group a push subscription, or changes its settings (only proposed while
    /// the group has no members).
    SetPush {
        /// The consumer group.
        group: String,
        /// The settings.
        config: PushConfig,
    },
    /// Ends the group's push subscription; its committed offsets stay (its totals go).
    DeletePush {
        /// The consumer group.
        group: String,
    },
    /// A push subscription's commit of one partition: a fenced commit of `offset` that
    /// also records the partition's totals so far. Totals never go down for the same
    /// topic incarnation (a late commit keeps the larger ones). A node of an older
    /// version answers `Invalid`: every node must run this version before push
    /// subscriptions commit.
    CommitPush {
        /// The consumer group.
        group: String,
        /// The offset.
        offset: OffsetEntry,
        /// Commit time.
        commit_ms: i64,
        /// The pusher's epoch and generation.
        fence: Fence,
        /// Records dead-lettered in the partition since the subscription began.
        dead_lettered: u64,
        /// Records dropped in the partition since the subscription began.
        dropped: u64,
    },
    /// [`OffsetsCommand::SetPush`] under a bound: refused at apply (alike on every
    /// replica) when the group is not a push subscription yet and this offsets partition
    /// already holds `max_subscriptions` of them. Proposed instead of `SetPush`.
    SetPushBounded {
        /// The consumer group.
        group: String,
        /// The settings.
        config: PushConfig,
        /// Most push subscriptions of this offsets partition, as the proposing node's
        /// `--max-push-subscriptions` says.
        max_subscriptions: u32,
    },
}

/// The state machine's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetsResponse {
    /// Applied.
    Done,
    /// The command did not decode (nodes of different versions); nothing changed.
    Invalid,
    /// A fenced commit older than the group's fence; nothing changed.
    Stale {
        /// The group's fence.
        current: Fence,
    },
    /// A new push subscription past the offsets partition's bound; nothing changed.
    PushLimit {
        /// The bound.
        limit: u32,
    },
}

type OffsetKey = (String, String, u32);
type OffsetMap = BTreeMap<OffsetKey, CommittedOffset>;

const FENCE_PREFIX: u8 = b'f';
const FENCE_END: u8 = b'g';
const PUSH_PREFIX: u8 = b's';
const PUSH_END: u8 = b't';
const TOTALS_PREFIX: u8 = b'c';
const TOTALS_END: u8 = b'd';

fn push_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(group.len() + 1);
    out.push(PUSH_PREFIX);
    out.extend_from_slice(group.as_bytes());
    out
}

fn fence_key(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(group.len() + 1);
    out.push(FENCE_PREFIX);
    out.extend_from_slice(group.as_bytes());
    out
}

/// The replicated state: committed offsets, each group's fence and push subscriptions.
#[derive(Clone, Debug, Default)]
struct OffsetsState {
    offsets: OffsetMap,
    fences: BTreeMap<String, Fence>,
    pushes: BTreeMap<String, PushConfig>,
    /// Push totals by (group, topic, partition); bounded by the push subscriptions'
    /// partitions.
    totals: BTreeMap<OffsetKey, PushTotals>,
}

/// One staged change, published in `applied`.
enum Change {
    Offset(OffsetKey, Option<CommittedOffset>),
    Fence(String, Fence),
    Push(String, Option<PushConfig>),
    Totals(OffsetKey, Option<PushTotals>),
}

fn encode_key(key: &OffsetKey) -> Vec<u8> {
    encode_key_under(KEY_PREFIX, key)
}

/// A (group, topic, partition) key under `prefix` (committed offsets, push totals).
fn encode_key_under(prefix: u8, key: &OffsetKey) -> Vec<u8> {
    let (group, topic, partition) = key;
    let mut out = Vec::with_capacity(group.len() + topic.len() + 7);
    out.push(prefix);
    out.extend_from_slice(group.as_bytes());
    out.push(0);
    out.extend_from_slice(topic.as_bytes());
    out.push(0);
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

fn decode_key(raw: &[u8]) -> Option<OffsetKey> {
    decode_key_under(KEY_PREFIX, raw)
}

fn decode_key_under(prefix: u8, raw: &[u8]) -> Option<OffsetKey> {
    let rest = raw.strip_prefix(&[prefix])?;
    let (names, partition) = rest.split_at_checked(rest.len().checked_sub(4)?)?;
    let partition = u32::from_be_bytes(partition.try_into().ok()?);
    let names = names.strip_suffix(&[0])?;
    let split = names.iter().position(|b| *b == 0)?;
    let group = std::str::from_utf8(&names[..split]).ok()?;
    let topic = std::str::from_utf8(&names[split + 1..]).ok()?;
    Some((group.to_string(), topic.to_string(), partition))
}

fn codec(what: &'static str) -> impl FnOnce(postcard::Error) -> StorageIoError {
    move |source| StorageIoError::Codec { what, source }
}

/// What the state machine shares with readers: the offsets as written.
#[derive(Debug, Default)]
struct Shared {
    /// Set at the first `load`: before it, reads answer "not ready".
    loaded: OnceLock<()>,
    state: RwLock<OffsetsState>,
}

/// The state machine logic of one offsets partition.
///
/// Invariant: `staged` is `shared.state` plus the changes in `pending`, which are
/// written (and so published in `applied`) at the end of the current apply call.
pub struct OffsetsLogic {
    shared: Arc<Shared>,
    staged: OffsetsState,
    pending: Vec<Change>,
}

/// Reads an offsets partition's committed state on this replica.
#[derive(Clone, Debug)]
pub struct OffsetsReader {
    shared: Arc<Shared>,
}

impl OffsetsLogic {
    /// A logic and the reader that shares its state.
    pub fn new() -> (Self, OffsetsReader) {
        let shared = Arc::new(Shared::default());
        (
            Self {
                shared: shared.clone(),
                staged: OffsetsState::default(),
                pending: Vec::new(),
            },
            OffsetsReader { shared },
        )
    }

    fn set(
        &mut self,
        key: OffsetKey,
        value: CommittedOffset,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        batch.insert(
            encode_key(&key),
            postcard::to_stdvec(&value).map_err(codec("committed offset"))?,
        );
        self.staged.offsets.insert(key.clone(), value);
        self.pending.push(Change::Offset(key, Some(value)));
        Ok(())
    }

    fn remove(&mut self, key: OffsetKey, batch: &mut WriteBatch) {
        batch.remove(encode_key(&key));
        self.staged.offsets.remove(&key);
        self.pending.push(Change::Offset(key, None));
    }

    fn set_fence(
        &mut self,
        group: &str,
        fence: Fence,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        batch.insert(
            fence_key(group),
            postcard::to_stdvec(&fence).map_err(codec("fence"))?,
        );
        self.staged.fences.insert(group.to_string(), fence);
        self.pending.push(Change::Fence(group.to_string(), fence));
        Ok(())
    }

    fn set_push(
        &mut self,
        group: String,
        config: Option<PushConfig>,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        match &config {
            Some(config) => {
                batch.insert(
                    push_key(&group),
                    postcard::to_stdvec(config).map_err(codec("push config"))?,
                );
                self.staged.pushes.insert(group.clone(), config.clone());
            }
            None => {
                batch.remove(push_key(&group));
                self.staged.pushes.remove(&group);
            }
        }
        self.pending.push(Change::Push(group, config));
        Ok(())
    }

    fn set_totals(
        &mut self,
        key: OffsetKey,
        totals: Option<PushTotals>,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        match &totals {
            Some(totals) => {
                batch.insert(
                    encode_key_under(TOTALS_PREFIX, &key),
                    postcard::to_stdvec(totals).map_err(codec("push totals"))?,
                );
                self.staged.totals.insert(key.clone(), *totals);
            }
            None => {
                batch.remove(encode_key_under(TOTALS_PREFIX, &key));
                self.staged.totals.remove(&key);
            }
        }
        self.pending.push(Change::Totals(key, totals));
        Ok(())
    }

    /// Forgets the push totals `gone` selects.
    fn remove_totals(
        &mut self,
        gone: impl Fn(&OffsetKey, &PushTotals) -> bool,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        let keys: Vec<OffsetKey> = self
            .staged
            .totals
            .iter()
            .filter(|(key, totals)| gone(key, totals))
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            self.set_totals(key, None, batch)?;
        }
        Ok(())
    }

    /// A push commit: the fenced commit of one offset, then the partition's totals (never
    /// lowered for the same topic incarnation).
    fn commit_push(
        &mut self,
        group: String,
        offset: OffsetEntry,
        commit_ms: i64,
        fence: Fence,
        (dead_lettered, dropped): (u64, u64),
        batch: &mut WriteBatch,
    ) -> Result<OffsetsResponse, StorageIoError> {
        let key = (group.clone(), offset.topic.clone(), offset.partition);
        let given = PushTotals {
            topic_group: offset.topic_group,
            dead_lettered,
            dropped,
        };
        let response = self.commit_fenced(group, vec![offset], commit_ms, fence, batch)?;
        if response != OffsetsResponse::Done {
            return Ok(response);
        }
        let totals = match self.staged.totals.get(&key) {
            Some(current) if current.topic_group == given.topic_group => PushTotals {
                dead_lettered: current.dead_lettered.max(dead_lettered),
                dropped: current.dropped.max(dropped),
                ..given
            },
            _ => given,
        };
        if self.staged.totals.get(&key) != Some(&totals) {
            self.set_totals(key, Some(totals), batch)?;
        }
        Ok(response)
    }

    /// Sets offsets as given (a reset, or a commit from before fencing).
    fn set_offsets(
        &mut self,
        group: &str,
        offsets: Vec<OffsetEntry>,
        commit_ms: i64,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageIoError> {
        for entry in offsets {
            let value = CommittedOffset {
                offset: entry.offset,
                commit_ms,
                topic_group: entry.topic_group,
            };
            self.set(
                (group.to_string(), entry.topic, entry.partition),
                value,
                batch,
            )?;
        }
        Ok(())
    }

    /// A fenced commit: refused below the group's fence; offsets only move forward.
    fn commit_fenced(
        &mut self,
        group: String,
        offsets: Vec<OffsetEntry>,
        commit_ms: i64,
        fence: Fence,
        batch: &mut WriteBatch,
    ) -> Result<OffsetsResponse, StorageIoError> {
        match self.staged.fences.get(&group) {
            Some(current) if fence < *current => {
                return Ok(OffsetsResponse::Stale { current: *current })
            }
            Some(current) if fence == *current => {}
            _ => self.set_fence(&group, fence, batch)?,
        }
        // An entry behind the committed offset (same topic incarnation) is a late or
        // repeated commit: what it covers is committed already, so it is left out.
        let ahead: Vec<OffsetEntry> = offsets
            .into_iter()
            .filter(|entry| {
                let key = (group.clone(), entry.topic.clone(), entry.partition);
                self.staged.offsets.get(&key).is_none_or(|current| {
                    current.topic_group != entry.topic_group || current.offset <= entry.offset
                })
            })
            .collect();
        self.set_offsets(&group, ahead, commit_ms, batch)?;
        Ok(OffsetsResponse::Done)
    }

    fn execute(
        &mut self,
        command: OffsetsCommand,
        batch: &mut WriteBatch,
    ) -> Result<OffsetsResponse, StorageIoError> {
        match command {
            OffsetsCommand::CommitFenced {
                group,
                offsets,
                commit_ms,
                fence,
            } => return self.commit_fenced(group, offsets, commit_ms, fence, batch),
            OffsetsCommand::CommitPush {
                group,
                offset,
                commit_ms,
                fence,
                dead_lettered,
                dropped,
            } => {
                return self.commit_push(
                    group,
                    offset,
                    commit_ms,
                    fence,
                    (dead_lettered, dropped),
                    batch,
                )
            }
            OffsetsCommand::ResetFenced {
                group,
                offsets,
                commit_ms,
                fence,
            } => {
                if self.staged.fences.get(&group).is_none_or(|f| *f < fence) {
                    self.set_fence(&group, fence, batch)?;
                }
                self.set_offsets(&group, offsets, commit_ms, batch)?;
            }
            OffsetsCommand::Commit {
                group,
                offsets,
                commit_ms,
            }
            | OffsetsCommand::Reset {
                group,
                offsets,
                commit_ms,
            } => self.set_offsets(&group, offsets, commit_ms, batch)?,
            OffsetsCommand::DeleteGroup { group } => {
                // The fence stays: a zombie member's commit must not revive the group.
                let keys: Vec<OffsetKey> = group_range(&self.staged.offsets, &group)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in keys {
                    self.remove(key, batch);
                }
                self.remove_totals(|(g, _, _), _| *g == group, batch)?;
            }
            OffsetsCommand::SetPush { group, config } => {
                self.set_push(group, Some(config), batch)?
            }
            OffsetsCommand::SetPushBounded {
                group,
                config,
                max_subscriptions,
            } => {
                let full = self.staged.pushes.len() >= max_subscriptions as usize;
                if full && !self.staged.pushes.contains_key(&group) {
                    return Ok(OffsetsResponse::PushLimit {
                        limit: max_subscriptions,
                    });
                }
                self.set_push(group, Some(config), batch)?
            }
            OffsetsCommand::DeletePush { group } => {
                if self.staged.pushes.contains_key(&group) {
                    self.remove_totals(|(g, _, _), _| *g == group, batch)?;
                    self.set_push(group, None, batch)?;
                }
            }
            OffsetsCommand::PurgeTopic {
                topic,
                topic_groups,
            } => {
                let keys: Vec<OffsetKey> = self
                    .staged
                    .offsets
                    .iter()
                    .filter(|((_, t, _), value)| {
                        *t == topic && topic_groups.contains(&value.topic_group)
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in keys {
                    self.remove(key, batch);
                }
                self.remove_totals(
                    |(_, t, _), totals| *t == topic && topic_groups.contains(&totals.topic_group),
                    batch,
                )?;
            }
        }
        Ok(OffsetsResponse::Done)
    }
}

fn group_range<'a>(
    map: &'a OffsetMap,
    group: &str,
) -> impl Iterator<Item = (&'a OffsetKey, &'a CommittedOffset)> + 'a {
    let group = group.to_string();
    map.range((group.clone(), String::new(), 0)..)
        .take_while(move |((g, _, _), _)| *g == group)
}

impl GroupLogic for OffsetsLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        let mut loaded = OffsetsState::default();
        for item in state.range(&[KEY_PREFIX], Some(&[KEY_END])) {
            let (key, value) = item?;
            let Some(key) = decode_key(&key) else {
                warn!("skipping an undecodable committed-offset key");
                continue;
            };
            loaded.offsets.insert(
                key,
                postcard::from_bytes(&value).map_err(codec("committed offset"))?,
            );
        }
        // State written before fences existed has none: every commit passes until one is
        // recorded.
        for item in state.range(&[FENCE_PREFIX], Some(&[FENCE_END])) {
            let (key, value) = item?;
            let Some(group) = key
                .strip_prefix(&[FENCE_PREFIX])
                .and_then(|g| std::str::from_utf8(g).ok())
            else {
                warn!("skipping an undecodable fence key");
                continue;
            };
            loaded.fences.insert(
                group.to_string(),
                postcard::from_bytes(&value).map_err(codec("fence"))?,
            );
        }
        for item in state.range(&[PUSH_PREFIX], Some(&[PUSH_END])) {
            let (key, value) = item?;
            let Some(group) = key
                .strip_prefix(&[PUSH_PREFIX])
                .and_then(|g| std::str::from_utf8(g).ok())
            else {
                warn!("skipping an undecodable push subscription key");
                continue;
            };
            loaded.pushes.insert(
                group.to_string(),
                postcard::from_bytes(&value).map_err(codec("push config"))?,
            );
        }
        for item in state.range(&[TOTALS_PREFIX], Some(&[TOTALS_END])) {
            let (key, value) = item?;
            let Some(key) = decode_key_under(TOTALS_PREFIX, &key) else {
                warn!("skipping an undecodable push totals key");
                continue;
            };
            loaded.totals.insert(
                key,
                postcard::from_bytes(&value).map_err(codec("push totals"))?,
            );
        }
        self.staged = loaded.clone();
        self.pending.clear();
        *write_lock(&self.shared.state) = loaded;
        let _ = self.shared.loaded.set(());
        Ok(())
    }

    fn apply(
        &mut self,
        _index: u64,
        command: &Command,
        _state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        let response = match postcard::from_bytes::<OffsetsCommand>(&command.0) {
            Ok(command) => self.execute(command, batch)?,
            Err(error) => {
                warn!(%error, "skipping undecodable offsets command");
                OffsetsResponse::Invalid
            }
        };
        let encoded = postcard::to_stdvec(&response).map_err(codec("offsets response"))?;
        Ok(CommandResponse(Bytes::from(encoded)))
    }

    fn applied(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut shared = write_lock(&self.shared.state);
        for change in self.pending.drain(..) {
            match change {
                Change::Offset(key, Some(value)) => {
                    shared.offsets.insert(key, value);
                }
                Change::Offset(key, None) => {
                    shared.offsets.remove(&key);
                }
                Change::Fence(group, fence) => {
                    shared.fences.insert(group, fence);
                }
                Change::Push(group, Some(config)) => {
                    shared.pushes.insert(group, config);
                }
                Change::Push(group, None) => {
                    shared.pushes.remove(&group);
                }
                Change::Totals(key, Some(totals)) => {
                    shared.totals.insert(key, totals);
                }
                Change::Totals(key, None) => {
                    shared.totals.remove(&key);
                }
            }
        }
    }

    fn snapshot_plan(&self, _state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        self.pinned_plan()
    }
}

impl OffsetsLogic {
    /// Values change in place on every commit, so nothing may be read lazily: the whole
    /// (small) map is copied when the plan is made.
    fn pinned_plan(&self) -> Result<SnapshotPlan, StorageIoError> {
        let mut pinned = Vec::with_capacity(
            self.staged.offsets.len()
                + self.staged.fences.len()
                + self.staged.pushes.len()
                + self.staged.totals.len(),
        );
        for (key, totals) in &self.staged.totals {
            pinned.push((
                encode_key_under(TOTALS_PREFIX, key),
                postcard::to_stdvec(totals).map_err(codec("push totals"))?,
            ));
        }
        for (group, config) in &self.staged.pushes {
            pinned.push((
                push_key(group),
                postcard::to_stdvec(config).map_err(codec("push config"))?,
            ));
        }
        for (group, fence) in &self.staged.fences {
            pinned.push((
                fence_key(group),
                postcard::to_stdvec(fence).map_err(codec("fence"))?,
            ));
        }
        for (key, value) in &self.staged.offsets {
            pinned.push((
                encode_key(key),
                postcard::to_stdvec(value).map_err(codec("committed offset"))?,
            ));
        }
        Ok(SnapshotPlan { pinned, lazy: None })
    }
}

impl OffsetsReader {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, OffsetsState> {
        read_lock(&self.shared.state)
    }

    /// The group's fence: the newest (epoch, generation) that committed.
    pub fn fence(&self, group: &str) -> Option<Fence> {
        self.read().fences.get(group).copied()
    }

    /// True once the replica has loaded its state.
    pub fn is_ready(&self) -> bool {
        self.shared.loaded.get().is_some()
    }

    /// Every committed offset of a group, by topic and partition.
    pub fn committed(&self, group: &str) -> Vec<(TopicPartition, CommittedOffset)> {
        group_range(&self.read().offsets, group)
            .map(|((_, topic, partition), value)| {
                (
                    TopicPartition {
                        topic: topic.clone(),
                        partition: *partition,
                    },
                    *value,
                )
            })
            .collect()
    }

    /// One committed offset.
    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<CommittedOffset> {
        self.read()
            .offsets
            .get(&(group.to_string(), topic.to_string(), partition))
            .copied()
    }

    /// The groups with at least one committed offset or a push subscription.
    pub fn groups(&self) -> BTreeSet<String> {
        let state = self.read();
        state
            .offsets
            .keys()
            .map(|(g, _, _)| g.clone())
            .chain(state.pushes.keys().cloned())
            .collect()
    }

    /// The group's push subscription, if it is one.
    pub fn push(&self, group: &str) -> Option<PushConfig> {
        self.read().pushes.get(group).cloned()
    }

    /// A push subscription's totals of one partition, as last committed.
    pub fn push_totals(&self, group: &str, topic: &str, partition: u32) -> Option<PushTotals> {
        self.read()
            .totals
            .get(&(group.to_string(), topic.to_string(), partition))
            .copied()
    }

    /// How many push subscriptions this offsets partition holds.
    pub fn push_count(&self) -> usize {
        self.read().pushes.len()
    }

    /// Every push subscription of this offsets partition, by group.
    pub fn push_subscriptions(&self) -> Vec<(String, PushConfig)> {
        self.read()
            .pushes
            .iter()
            .map(|(group, config)| (group.clone(), config.clone()))
            .collect()
    }

    /// The partition groups offsets were committed for, per topic (for the purge).
    pub fn topic_groups(&self) -> BTreeMap<String, BTreeSet<GroupId>> {
        let mut out: BTreeMap<String, BTreeSet<GroupId>> = BTreeMap::new();
        for ((_, topic, _), value) in self.read().offsets.iter() {
            out.entry(topic.clone())
                .or_default()
                .insert(value.topic_group);
        }
        out
    }
}

/// What a node holds for a local replica of an offsets partition.
#[derive(Clone)]
pub struct OffsetsHandle {
    /// The partition number within [`OFFSETS_TOPIC`].
    pub partition: u32,
    /// The Raft group.
    pub group: GroupId,
    /// The Raft handle (commits, leadership).
    pub raft: Raft,
    /// Committed state as applied here.
    pub reader: OffsetsReader,
}

/// The local offsets replicas by Raft group, shared with the group directory. Written
/// only by the supervisor.
pub type OffsetsTable = Arc<RwLock<HashMap<GroupId, OffsetsHandle>>>;

/// Proposes an offsets command and waits for it to be applied.
///
/// # Errors
/// [`GroupError::OutcomeUnknown`] once proposed without an answer;
/// [`GroupError::NotCoordinator`] when the partition's leadership is being handed over
/// (nothing written).
pub async fn propose(
    raft_node: &RaftNode,
    handle: &OffsetsHandle,
    command: &OffsetsCommand,
    timeout: Duration,
) -> Result<(), GroupError> {
    let encoded = postcard::to_stdvec(command).map_err(|_| GroupError::OutcomeUnknown {
        reason: "offsets command did not encode".into(),
    })?;
    let command_bytes = Command(Bytes::from(encoded));
    let target = proposal::Target {
        raft_node,
        group: handle.group,
        raft: &handle.raft,
        name: "offsets partition",
    };
    let response = proposal::propose(target, command_bytes, timeout).await?;
    match postcard::from_bytes::<OffsetsResponse>(&response.0) {
        Ok(OffsetsResponse::Done) => Ok(()),
        Ok(OffsetsResponse::Stale { current }) => Err(stale(command, current)),
        Ok(OffsetsResponse::PushLimit { limit }) => {
            Err(GroupError::TooManyPushSubscriptions { limit })
        }
        _ => Err(GroupError::OutcomeUnknown {
            reason: "the offsets partition refused the command".into(),
        }),
    }
}

/// Why a fenced commit was refused at apply: a newer coordinator took over (the member
/// must re-join), or the group moved on to a newer generation.
fn stale(command: &OffsetsCommand, current: Fence) -> GroupError {
    match command {
        OffsetsCommand::CommitFenced { fence, .. } | OffsetsCommand::CommitPush { fence, .. }
            if fence.epoch == current.epoch =>
        {
            GroupError::StaleGeneration {
                given: fence.generation,
                current: current.generation,
            }
        }
        _ => GroupError::UnknownMember,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies commands the way one apply call does: stage all, then `applied`.
    fn run(logic: &mut OffsetsLogic, commands: &[OffsetsCommand]) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for command in commands {
            logic.execute(command.clone(), &mut batch).unwrap();
        }
        logic.applied();
        batch
    }

    fn entry(topic: &str, partition: u32, group: GroupId, offset: u64) -> OffsetEntry {
        OffsetEntry {
            topic: topic.into(),
            partition,
            topic_group: group,
            offset,
        }
    }

    fn commit(group: &str, offsets: Vec<OffsetEntry>) -> OffsetsCommand {
        OffsetsCommand::Commit {
            group: group.into(),
            offsets,
            commit_ms: 7,
        }
    }

    fn fenced(
        group: &str,
        epoch: u64,
        generation: u64,
        offsets: Vec<OffsetEntry>,
    ) -> OffsetsCommand {
        OffsetsCommand::CommitFenced {
            group: group.into(),
            offsets,
            commit_ms: 9,
            fence: Fence { epoch, generation },
        }
    }

    /// Applies one command alone and returns the state machine's answer.
    fn apply_one(logic: &mut OffsetsLogic, command: OffsetsCommand) -> OffsetsResponse {
        let mut batch = WriteBatch::default();
        let response = logic.execute(command, &mut batch).unwrap();
        logic.applied();
        response
    }

    /// The coordinator proposes commits from spawned tasks, so generation N's
    /// commit can reach Raft after generation N+1's. Applied in that order, the older one
    /// is refused and the committed offset stays.
    #[test]
    fn a_stale_commit_applied_after_a_newer_one_changes_nothing() {
        let (mut logic, reader) = OffsetsLogic::new();
        let newer = apply_one(&mut logic, fenced("g", 3, 8, vec![entry("t", 0, 1000, 50)]));
        assert_eq!(newer, OffsetsResponse::Done);
        let older = apply_one(&mut logic, fenced("g", 3, 7, vec![entry("t", 0, 1000, 20)]));
        assert_eq!(
            older,
            OffsetsResponse::Stale {
                current: Fence {
                    epoch: 3,
                    generation: 8
                }
            }
        );
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(50));
        // A commit of an older coordinator (lower epoch, higher generation) is stale too.
        let zombie = apply_one(
            &mut logic,
            fenced("g", 2, 40, vec![entry("t", 0, 1000, 10)]),
        );
        assert!(matches!(zombie, OffsetsResponse::Stale { .. }));
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(50));
        // A new coordinator (higher epoch, generations from 1) commits.
        let moved = apply_one(&mut logic, fenced("g", 4, 1, vec![entry("t", 0, 1000, 60)]));
        assert_eq!(moved, OffsetsResponse::Done);
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(60));
        assert_eq!(
            reader.fence("g"),
            Some(Fence {
                epoch: 4,
                generation: 1
            })
        );
        // Other groups have their own fences.
        let other = apply_one(&mut logic, fenced("h", 1, 1, vec![entry("t", 0, 1000, 5)]));
        assert_eq!(other, OffsetsResponse::Done);
    }

    /// Within one generation a late commit of a lower offset leaves the offset where it
    /// is; a reset moves it back; a re-created topic's offset is not "behind" the old one.
    #[test]
    fn committed_offsets_move_back_only_by_reset() {
        let (mut logic, reader) = OffsetsLogic::new();
        apply_one(&mut logic, fenced("g", 1, 1, vec![entry("t", 0, 1000, 30)]));
        let late = apply_one(
            &mut logic,
            fenced(
                "g",
                1,
                1,
                vec![entry("t", 0, 1000, 10), entry("t", 1, 1001, 4)],
            ),
        );
        assert_eq!(late, OffsetsResponse::Done);
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(30));
        assert_eq!(reader.get("g", "t", 1).map(|c| c.offset), Some(4));
        apply_one(
            &mut logic,
            OffsetsCommand::ResetFenced {
                group: "g".into(),
                offsets: vec![entry("t", 0, 1000, 2)],
                commit_ms: 1,
                fence: Fence {
                    epoch: 1,
                    generation: 2,
                },
            },
        );
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(2));
        // A commit checked before the reset and applied after it cannot undo it.
        let in_flight = apply_one(&mut logic, fenced("g", 1, 1, vec![entry("t", 0, 1000, 40)]));
        assert!(matches!(in_flight, OffsetsResponse::Stale { .. }));
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(2));
        apply_one(&mut logic, fenced("g", 1, 3, vec![entry("t", 0, 2000, 1)]));
        let recreated = reader.get("g", "t", 0).unwrap();
        assert_eq!((recreated.offset, recreated.topic_group), (1, 2000));
    }

    /// State written before fences existed (no fence keys) loads, and its first fenced
    /// commit passes; fences are in snapshots and survive a reload.
    #[test]
    fn fences_are_snapshotted_and_old_state_loads() {
        let (mut logic, _) = OffsetsLogic::new();
        run(&mut logic, &[commit("g", vec![entry("t", 0, 1000, 5)])]);
        let old_plan = logic.pinned_plan().unwrap();
        assert!(
            old_plan.pinned.iter().all(|(k, _)| k[0] == KEY_PREFIX),
            "no fence yet"
        );
        apply_one(&mut logic, fenced("g", 2, 3, vec![entry("t", 0, 1000, 6)]));
        let plan = logic.pinned_plan().unwrap();
        let fence = plan
            .pinned
            .iter()
            .find(|(k, _)| k[0] == FENCE_PREFIX)
            .expect("the fence is pinned");
        assert_eq!(fence.0, fence_key("g"));
        assert_eq!(
            postcard::from_bytes::<Fence>(&fence.1).unwrap(),
            Fence {
                epoch: 2,
                generation: 3
            }
        );
    }

    #[test]
    fn keys_round_trip_and_keep_groups_contiguous() {
        let key = ("g.1".to_string(), "orders".to_string(), 258u32);
        assert_eq!(decode_key(&encode_key(&key)), Some(key));
        assert_eq!(decode_key(b"o"), None);
        assert_eq!(decode_key(b"x\0\0\0\0\0\0"), None);
        // "g" and "g2": the separator keeps one group's keys apart from the other's.
        let a = encode_key(&("g".into(), "zzz".into(), u32::MAX));
        let b = encode_key(&("g2".into(), "a".into(), 0));
        assert!(a < b);
    }

    #[test]
    fn commits_overwrite_and_are_read_back() {
        let (mut logic, reader) = OffsetsLogic::new();
        run(
            &mut logic,
            &[
                commit("g", vec![entry("t", 0, 1000, 5), entry("t", 1, 1001, 9)]),
                commit("g", vec![entry("t", 0, 1000, 6)]),
                commit("h", vec![entry("t", 0, 1000, 1)]),
            ],
        );
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(6));
        assert_eq!(reader.get("g", "t", 1).map(|c| c.offset), Some(9));
        assert_eq!(reader.get("g", "t", 0).map(|c| c.commit_ms), Some(7));
        assert_eq!(reader.committed("g").len(), 2);
        assert_eq!(reader.committed("h").len(), 1);
        assert_eq!(
            reader.groups().into_iter().collect::<Vec<_>>(),
            vec!["g".to_string(), "h".to_string()]
        );
    }

    #[test]
    fn readers_see_nothing_before_applied() {
        let (mut logic, reader) = OffsetsLogic::new();
        let mut batch = WriteBatch::default();
        logic
            .execute(commit("g", vec![entry("t", 0, 1000, 5)]), &mut batch)
            .unwrap();
        assert_eq!(reader.get("g", "t", 0), None, "not yet written");
        logic.applied();
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(5));
    }

    #[test]
    fn delete_group_sees_commits_of_the_same_apply_call() {
        let (mut logic, reader) = OffsetsLogic::new();
        run(
            &mut logic,
            &[
                commit("g", vec![entry("t", 0, 1000, 5)]),
                commit("g", vec![entry("u", 3, 1010, 2)]),
                commit("gg", vec![entry("t", 0, 1000, 4)]),
                OffsetsCommand::DeleteGroup { group: "g".into() },
            ],
        );
        assert!(reader.committed("g").is_empty());
        assert_eq!(
            reader.committed("gg").len(),
            1,
            "a group sharing the prefix stays"
        );
    }

    #[test]
    fn purge_drops_only_the_deleted_incarnation() {
        let (mut logic, reader) = OffsetsLogic::new();
        run(
            &mut logic,
            &[
                commit("g", vec![entry("t", 0, 1000, 5), entry("t", 1, 1001, 5)]),
                commit("h", vec![entry("t", 0, 2000, 3), entry("u", 0, 1002, 8)]),
                OffsetsCommand::PurgeTopic {
                    topic: "t".into(),
                    topic_groups: vec![1000, 1001],
                },
            ],
        );
        assert!(reader.committed("g").is_empty());
        let left: Vec<_> = reader
            .committed("h")
            .into_iter()
            .map(|(tp, c)| (tp.topic, c.offset))
            .collect();
        assert_eq!(left, vec![("t".to_string(), 3), ("u".to_string(), 8)]);
        assert_eq!(reader.topic_groups()["t"], [2000].into());
    }

    fn normal(index: u64, command: &OffsetsCommand) -> psubd_raft::types::typ::Entry {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(Command(Bytes::from(
                postcard::to_stdvec(command).unwrap(),
            ))),
        }
    }

    /// Committed offsets are written to the state tree and reloaded on reopen (a restarted
    /// node serves them again); an undecodable command changes nothing.
    #[tokio::test]
    async fn offsets_survive_a_reopen() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let storage = psubd_raft::NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = OffsetsLogic::new();
        let mut sm = storage.state_machine(42, Box::new(logic)).unwrap();
        let garbage = openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 3),
            payload: openraft::EntryPayload::Normal(Command(Bytes::from_static(&[0xff, 0xff]))),
        };
        sm.apply([
            normal(
                1,
                &commit("g", vec![entry("t", 0, 1000, 5), entry("t", 1, 1001, 9)]),
            ),
            normal(
                2,
                &OffsetsCommand::DeleteGroup {
                    group: "none".into(),
                },
            ),
            garbage,
            normal(4, &commit("g", vec![entry("t", 1, 1001, 10)])),
            normal(5, &fenced("g", 2, 6, vec![entry("t", 1, 1001, 11)])),
            normal(
                6,
                &OffsetsCommand::SetPush {
                    group: "p".into(),
                    config: push_config(),
                },
            ),
        ])
        .await
        .unwrap();
        assert_eq!(reader.get("g", "t", 1).map(|c| c.offset), Some(11));
        drop(sm);
        let (logic, reopened) = OffsetsLogic::new();
        let _sm = storage.state_machine(42, Box::new(logic)).unwrap();
        assert!(reopened.is_ready());
        assert_eq!(reopened.committed("g"), reader.committed("g"));
        assert_eq!(reopened.get("g", "t", 0).map(|c| c.offset), Some(5));
        assert_eq!(
            reopened.fence("g"),
            Some(Fence {
                epoch: 2,
                generation: 6
            }),
            "the fence is reloaded too"
        );
        assert_eq!(
            reopened.push("p"),
            Some(push_config()),
            "push subscriptions too"
        );
    }

    fn push_config() -> PushConfig {
        PushConfig {
            topics: vec!["t".into()],
            endpoint: "http://127.0.0.1:9/".into(),
            max_in_flight: 1,
            timeout_ms: 10_000,
            min_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            max_deliveries: 5,
            dead_letter_topic: Some("dead".into()),
            secret: Some("s".into()),
        }
    }

    /// A push subscription is replicated state: readers see it once applied, snapshots
    /// carry it, the group is listed, and deleting it leaves the committed offsets.
    #[test]
    fn push_subscriptions_are_set_snapshotted_and_deleted() {
        let (mut logic, reader) = OffsetsLogic::new();
        run(
            &mut logic,
            &[
                commit("g", vec![entry("t", 0, 1000, 5)]),
                OffsetsCommand::SetPush {
                    group: "g".into(),
                    config: push_config(),
                },
                OffsetsCommand::SetPush {
                    group: "fresh".into(),
                    config: push_config(),
                },
            ],
        );
        assert_eq!(reader.push("g"), Some(push_config()));
        assert_eq!(reader.push_subscriptions().len(), 2);
        assert!(
            reader.groups().contains("fresh"),
            "a push group without commits is listed"
        );
        let plan = logic.pinned_plan().unwrap();
        let pinned: Vec<&Vec<u8>> = plan
            .pinned
            .iter()
            .filter(|(k, _)| k[0] == PUSH_PREFIX)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(pinned, vec![&push_key("fresh"), &push_key("g")]);
        run(
            &mut logic,
            &[OffsetsCommand::DeletePush { group: "g".into() }],
        );
        assert_eq!(reader.push("g"), None);
        assert_eq!(reader.get("g", "t", 0).map(|c| c.offset), Some(5));
    }

    fn push_commit(offset: u64, fence: (u64, u64), counts: (u64, u64)) -> OffsetsCommand {
        OffsetsCommand::CommitPush {
            group: "p".into(),
            offset: entry("t", 0, 1000, offset),
            commit_ms: 1,
            fence: Fence {
                epoch: fence.0,
                generation: fence.1,
            },
            dead_lettered: counts.0,
            dropped: counts.1,
        }
    }

    /// A push commit replicates the partition's dead-letter and drop counts with its
    /// offset: they never go down (a late commit), a stale pusher's commit changes
    /// nothing, they are reloaded on reopen, and they go with the subscription.
    #[tokio::test]
    async fn push_totals_ride_on_the_commits_and_survive_a_reopen() {
        use openraft::storage::RaftStateMachine;
        let dir = tempfile::tempdir().unwrap();
        let storage = psubd_raft::NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = OffsetsLogic::new();
        let mut sm = storage.state_machine(42, Box::new(logic)).unwrap();
        let set = OffsetsCommand::SetPush {
            group: "p".into(),
            config: push_config(),
        };
        sm.apply([
            normal(1, &set),
            normal(2, &push_commit(10, (3, 0), (4, 1))),
            normal(3, &push_commit(8, (3, 0), (2, 1))),
            normal(4, &push_commit(20, (2, 0), (9, 9))),
        ])
        .await
        .unwrap();
        let expected = PushTotals {
            topic_group: 1000,
            dead_lettered: 4,
            dropped: 1,
        };
        assert_eq!(reader.push_totals("p", "t", 0), Some(expected));
        assert_eq!(reader.get("p", "t", 0).map(|c| c.offset), Some(10));
        drop(sm);
        let (logic, reopened) = OffsetsLogic::new();
        let mut sm = storage.state_machine(42, Box::new(logic)).unwrap();
        assert_eq!(reopened.push_totals("p", "t", 0), Some(expected));
        sm.apply([normal(5, &OffsetsCommand::DeletePush { group: "p".into() })])
            .await
            .unwrap();
        assert_eq!(reopened.push_totals("p", "t", 0), None);
        assert_eq!(reopened.get("p", "t", 0).map(|c| c.offset), Some(10));
    }

    /// A new push subscription past the bound is refused at apply, alike on every
    /// replica; changing one that exists is not a new one.
    #[test]
    fn new_push_subscriptions_are_bounded_at_apply() {
        let (mut logic, reader) = OffsetsLogic::new();
        let bounded = |group: &str| OffsetsCommand::SetPushBounded {
            group: group.into(),
            config: push_config(),
            max_subscriptions: 1,
        };
        assert_eq!(apply_one(&mut logic, bounded("a")), OffsetsResponse::Done);
        assert_eq!(
            apply_one(&mut logic, bounded("b")),
            OffsetsResponse::PushLimit { limit: 1 }
        );
        assert_eq!(reader.push("b"), None);
        assert_eq!(apply_one(&mut logic, bounded("a")), OffsetsResponse::Done);
        apply_one(&mut logic, OffsetsCommand::DeletePush { group: "a".into() });
        assert_eq!(apply_one(&mut logic, bounded("b")), OffsetsResponse::Done);
        assert_eq!(reader.push_subscriptions().len(), 1);
    }

    #[test]
    fn snapshot_pins_every_offset() {
        let (mut logic, _) = OffsetsLogic::new();
        run(
            &mut logic,
            &[commit(
                "g",
                vec![entry("t", 0, 1000, 5), entry("u", 2, 1003, 1)],
            )],
        );
        let plan = logic.pinned_plan().unwrap();
        assert!(plan.lazy.is_none());
        let keys: Vec<_> = plan
            .pinned
            .iter()
            .map(|(k, _)| decode_key(k).unwrap())
            .collect();
        assert_eq!(
            keys,
            vec![("g".into(), "t".into(), 0), ("g".into(), "u".into(), 2)]
        );
    }

    #[test]
    fn partition_of_a_group_is_stable_and_in_range() {
        for name in ["a", "orders-consumers", "g.1", ""] {
            assert!(offsets_partition_of(name) < OFFSETS_PARTITIONS);
            assert_eq!(offsets_partition_of(name), offsets_partition_of(name));
        }
        assert_eq!(
            offsets_partition_of("a"),
            (0xaf63_dc4c_8601_ec8cu64 % 4) as u32
        );
    }
}
