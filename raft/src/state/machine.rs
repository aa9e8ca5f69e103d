//! The generic per-group state machine: applies committed entries through a [`GroupLogic`],
//! keeps the last-applied log id and the membership, and takes and installs snapshots.
//!
//! The state tree holds the logic's keys plus, under the reserved prefix
//! [`RESERVED_KEY_PREFIX`] (0xFF 0xFF), the state machine's own metadata: `last_applied`,
//! `membership` and the command bytes applied since the newest snapshot (which the
//! [`SnapshotSchedule`] weighs). All are written in the same batch as the logic's writes of
//! an apply call, so the tree never claims to have applied an entry whose effects it lacks.
//!
//! No fsync of its own (docs/architecture.md § Storage and durability): the log keeps every entry
//! until a durable snapshot covers it, and openraft re-applies from the log after a crash.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend};

use crate::blocking::blocking;
use crate::codec::{decode, encode};
use crate::engine::{Tree, WriteBatch};
use crate::error::{IntoRaftResult, StorageIoError};
use crate::state::logic::{GroupLogic, RESERVED_KEY_PREFIX};
use crate::state::schedule::{Asked, SnapshotProgress, SnapshotSchedule};
use crate::state::snapshot::{self, SnapshotBuilder, SnapshotStore};
use crate::types::{typ, CommandResponse, GroupId, TypeConfig};

/// Key of the last applied log id.
const LAST_APPLIED_KEY: [u8; 3] = [RESERVED_KEY_PREFIX[0], RESERVED_KEY_PREFIX[1], b'a'];
/// Key of the last applied membership.
const MEMBERSHIP_KEY: [u8; 3] = [RESERVED_KEY_PREFIX[0], RESERVED_KEY_PREFIX[1], b'm'];
/// Key of the command bytes applied since the newest snapshot.
const BYTES_SINCE_SNAPSHOT_KEY: [u8; 3] = [RESERVED_KEY_PREFIX[0], RESERVED_KEY_PREFIX[1], b'b'];

/// One group's state machine.
pub struct StateMachine {
    group: GroupId,
    tree: Tree,
    logic: Box<dyn GroupLogic>,
    /// Invariant: equals the `last_applied` stored in the tree (both change in one write).
    last_applied: Option<typ::LogId>,
    /// Invariant: equals the `membership` stored in the tree.
    membership: typ::StoredMembership,
    snapshots: Arc<SnapshotStore>,
    /// The temporary file handed out by the last `begin_receiving_snapshot`, if not installed.
    receiving: Option<PathBuf>,
    /// Entries the newest snapshot (built from here, installed or reloaded) covers.
    covered_entries: u64,
    /// Command bytes applied since the newest snapshot. Equals the count stored in the tree
    /// (written with `last_applied`), but for a reset whose write failed, which the next
    /// apply writes again.
    bytes_since_snapshot: u64,
    /// When to ask for a snapshot; `None` never asks (openraft's policy, or a test, decides).
    schedule: Option<SnapshotSchedule>,
    /// The snapshot request not yet answered by a plan, if any.
    asked: Option<Asked>,
}

impl fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachine")
            .field("group", &self.group)
            .field("last_applied", &self.last_applied)
            .finish()
    }
}

/// The state machine's metadata as a state tree stores it.
struct Applied {
    last_applied: Option<typ::LogId>,
    membership: typ::StoredMembership,
    bytes_since_snapshot: u64,
}

/// The stored metadata of a state tree (a tree written before the byte count existed
/// reads as 0 bytes since the snapshot).
fn read_applied(tree: &Tree) -> Result<Applied, StorageIoError> {
    let last_applied = match tree.get(&LAST_APPLIED_KEY)? {
        Some(bytes) => Some(decode("last applied log id", &bytes)?),
        None => None,
    };
    let membership = match tree.get(&MEMBERSHIP_KEY)? {
        Some(bytes) => decode("membership", &bytes)?,
        None => typ::StoredMembership::default(),
    };
    let bytes_since_snapshot = match tree.get(&BYTES_SINCE_SNAPSHOT_KEY)? {
        Some(bytes) => decode("bytes since snapshot", &bytes)?,
        None => 0,
    };
    Ok(Applied {
        last_applied,
        membership,
        bytes_since_snapshot,
    })
}

/// A batch writing `last_applied`, `bytes_since_snapshot` and, if given, `membership`.
fn applied_batch(
    last_applied: &Option<typ::LogId>,
    membership: Option<&typ::StoredMembership>,
    bytes_since_snapshot: u64,
) -> Result<WriteBatch, StorageIoError> {
    let mut batch = WriteBatch::default();
    match last_applied {
        Some(log_id) => batch.insert(LAST_APPLIED_KEY, encode("last applied log id", log_id)?),
        None => batch.remove(LAST_APPLIED_KEY),
    }
    if let Some(membership) = membership {
        batch.insert(MEMBERSHIP_KEY, encode("membership", membership)?);
    }
    batch.insert(
        BYTES_SINCE_SNAPSHOT_KEY,
        encode("bytes since snapshot", &bytes_since_snapshot)?,
    );
    Ok(batch)
}

/// Entries a snapshot ending at `last` covers.
fn entries_through(last: Option<typ::LogId>) -> u64 {
    last.map_or(0, |id| id.index.saturating_add(1))
}

impl StateMachine {
    /// Opens the state machine on `tree`, reloading from the newest snapshot if the stored
    /// state is behind it, then calls `logic.load()`.
    pub(crate) fn open(
        group: GroupId,
        tree: Tree,
        snapshots: Arc<SnapshotStore>,
        mut logic: Box<dyn GroupLogic>,
    ) -> Result<Self, StorageIoError> {
        let Applied {
            mut last_applied,
            mut membership,
            mut bytes_since_snapshot,
        } = read_applied(&tree)?;
        let mut covered_entries = 0;
        if let Some((path, meta, _file)) = snapshots.open_current()? {
            covered_entries = entries_through(meta.last_log_id);
            // The state tree is not fsynced and a snapshot install is not atomic: after a
            // crash the tree may be behind the newest durable snapshot. That snapshot is
            // committed state, so reload it; openraft re-applies the log after it.
            if meta.last_log_id > last_applied {
                tracing::info!(
                    group,
                    snapshot_id = %meta.snapshot_id,
                    "state behind the newest snapshot, reloading it"
                );
                let last = applied_batch(&meta.last_log_id, Some(&meta.last_membership), 0)?;
                snapshot::load(&path, &tree, last)?;
                last_applied = meta.last_log_id;
                membership = meta.last_membership;
                bytes_since_snapshot = 0;
            }
        }
        logic.load(&tree)?;
        logic.applied();
        Ok(StateMachine {
            group,
            tree,
            logic,
            last_applied,
            membership,
            snapshots,
            receiving: None,
            covered_entries,
            bytes_since_snapshot,
            schedule: None,
            asked: None,
        })
    }

    /// Lets this state machine ask for snapshots on `schedule` (the registry sets it; a
    /// state machine without one leaves snapshots to openraft's policy).
    #[must_use]
    pub fn with_snapshot_schedule(mut self, schedule: SnapshotSchedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// How far this state machine is past its newest snapshot.
    pub fn snapshot_progress(&self) -> SnapshotProgress {
        SnapshotProgress {
            applied_entries: entries_through(self.last_applied),
            covered_entries: self.covered_entries,
            bytes_since: self.bytes_since_snapshot,
            retained_bytes: self.logic.retained_bytes(),
        }
    }

    /// Records that the newest snapshot ends at `last` (planned here or installed).
    fn snapshot_taken(&mut self, last: Option<typ::LogId>) {
        self.covered_entries = entries_through(last);
        self.bytes_since_snapshot = 0;
        self.asked = None;
    }

    /// The group this state machine belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The group's state tree, for readers (e.g. fetches). Read-only: writes go through the
    /// logic's apply.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    fn apply_entries(
        &mut self,
        entries: impl Iterator<Item = typ::Entry>,
    ) -> Result<Vec<CommandResponse>, (Option<typ::LogId>, StorageIoError)> {
        let mut batch = WriteBatch::default();
        let mut responses = Vec::new();
        let mut last = None;
        let mut membership = None;
        let mut command_bytes = 0u64;
        for entry in entries {
            let log_id = entry.log_id;
            last = Some(log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(CommandResponse::default()),
                EntryPayload::Normal(command) => {
                    command_bytes = command_bytes.saturating_add(command.0.len() as u64);
                    let response = self
                        .logic
                        .apply(log_id.index, &command, &self.tree, &mut batch)
                        .map_err(|e| (Some(log_id), e))?;
                    responses.push(response);
                }
                EntryPayload::Membership(m) => {
                    membership = Some(typ::StoredMembership::new(Some(log_id), m));
                    responses.push(CommandResponse::default());
                }
            }
        }
        let Some(last) = last else {
            return Ok(responses);
        };
        let bytes_since_snapshot = self.bytes_since_snapshot.saturating_add(command_bytes);
        // Staged after the logic's writes: a logic writing a reserved key cannot clobber them.
        let mut meta = applied_batch(&Some(last), membership.as_ref(), bytes_since_snapshot)
            .map_err(|e| (Some(last), e))?;
        batch.append(&mut meta);
        self.tree.apply(batch).map_err(|e| (Some(last), e))?;
        self.last_applied = Some(last);
        self.bytes_since_snapshot = bytes_since_snapshot;
        if let Some(membership) = membership {
            self.membership = membership;
        }
        self.logic.applied();
        if let Some(schedule) = &self.schedule {
            self.asked = schedule.ask_if_due(
                self.snapshot_progress(),
                self.snapshots.current(),
                self.asked,
            );
        }
        Ok(responses)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<typ::LogId>, typ::StoredMembership), typ::StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, typ::StorageError>
    where
        I: IntoIterator<Item = typ::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries.into_iter())
            .map_err(|(log_id, err)| match log_id {
                Some(log_id) => err.into_raft(ErrorSubject::Apply(log_id), ErrorVerb::Write),
                None => err.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write),
            })
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Captured now, with no apply running; the builder reads the lazy range later.
        let plan = self.logic.snapshot_plan(&self.tree);
        // Taken in the same exclusive section as the plan: no apply can run in between.
        let hold = self.logic.snapshot_hold();
        // Counted from here even if the build fails: the next one is then a whole interval
        // away, which beats retrying a failing build at every apply.
        self.snapshot_taken(self.last_applied);
        let reset = applied_batch(&self.last_applied, None, 0).and_then(|b| self.tree.apply(b));
        if let Err(err) = reset {
            // Only the schedule's count is lost; the next apply writes it again.
            tracing::warn!(group = self.group, %err, "could not reset the snapshot byte count");
        }
        SnapshotBuilder::new(
            self.group,
            self.tree.clone(),
            self.snapshots.clone(),
            self.last_applied,
            self.membership.clone(),
            plan,
            hold,
        )
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, typ::StorageError> {
        let store = self.snapshots.clone();
        let previous = self.receiving.take();
        let (path, file) = blocking("begin receiving snapshot", move || {
            // openraft streams one snapshot at a time: an earlier, unfinished one is abandoned.
            if let Some(previous) = previous {
                store.discard_temp(&previous)?;
            }
            store.create_temp("recv")
        })
        .await
        .raft_err(ErrorSubject::Snapshot(None), ErrorVerb::Write)?;
        self.receiving = Some(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &typ::SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), typ::StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let file = snapshot.into_std().await;
        let (store, tree, receiving) = (
            self.snapshots.clone(),
            self.tree.clone(),
            self.receiving.take(),
        );
        let owned_meta = meta.clone();
        blocking("install snapshot", move || {
            // The file is verified and durable in place before the tree is touched.
            let path = snapshot::accept_received(&store, file, &owned_meta, receiving)?;
            let last = applied_batch(
                &owned_meta.last_log_id,
                Some(&owned_meta.last_membership),
                0,
            )?;
            snapshot::load(&path, &tree, last)
        })
        .await
        .raft_err(subject.clone(), ErrorVerb::Write)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.snapshot_taken(meta.last_log_id);
        self.logic
            .load(&self.tree)
            .raft_err(subject, ErrorVerb::Read)?;
        self.logic.applied();
        tracing::info!(group = self.group, snapshot_id = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<typ::Snapshot>, typ::StorageError> {
        let store = self.snapshots.clone();
        let current = blocking("open current snapshot", move || store.open_current())
            .await
            .raft_err(ErrorSubject::Snapshot(None), ErrorVerb::Read)?;
        Ok(current.map(|(_path, meta, file)| typ::Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}
