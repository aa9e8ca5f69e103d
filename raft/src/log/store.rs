//! A group's Raft log: entries in segment files, vote, committed and last-purged ids in the
//! engine.
//!
//! The entries live in the group's [`SegmentLog`] (`<data dir>/raft-log/<group>/`): written
//! once, sequentially, and purged by deleting whole files. The group's log tree in the engine
//! keeps only the small metadata, under `m` + name (postcard): the vote, the committed id and
//! the last purged id.
//!
//! Trees written by earlier versions also hold the entries, under `e` + big-endian index; a
//! node refuses to start on such a data directory (see [`LogStore::holds_legacy_entries`]).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;

use crate::blocking::blocking;
use crate::codec::{decode, encode};
use crate::engine::{Tree, WriteBatch};
use crate::error::{IntoRaftResult, StorageIoError};
use crate::log::flusher::Flusher;
use crate::log::segments::{EncodedBatch, SegmentLog};
use crate::stats::GroupStats;
use crate::types::{typ, GroupId, TypeConfig};

/// Prefix of the entry keys of the old layout (entries in the engine).
const LEGACY_ENTRY_PREFIX: u8 = b'e';
/// The vote.
const VOTE_KEY: &[u8] = b"mvote";
/// The last committed log id openraft reported.
const COMMITTED_KEY: &[u8] = b"mcommitted";
/// The last purged log id. Invariant: no entry at or below it is visible, and a segment file
/// holding only such entries is deleted only after the mark is durable.
const PURGED_KEY: &[u8] = b"mpurged";

/// The Raft log of one group.
///
/// ### To ensure correctness:
/// - `append` makes the entries readable before it returns, and fires its callback only after
///   a flush that covers them (through the node's [`Flusher`], which syncs the segment files
///   written before the request).
/// - `save_vote` returns only after a flush that covers the vote (the engine included).
/// - No entry at or below the stored last-purged id is visible; a segment file is deleted only
///   once the purge mark covering all its entries is durable.
/// - `truncate` is durable when it returns (see [`SegmentLog::truncate`]).
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    tree: Tree,
    flusher: Flusher,
    /// Shared by every clone (the log reader openraft hands to replication tasks) and by any
    /// later `log_store` call for the group while one is alive.
    log: Arc<RwLock<SegmentLog>>,
    /// The group's counters: the commit index is noted here for the node's metrics.
    stats: Arc<GroupStats>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish()
    }
}

impl LogStore {
    pub(crate) fn new(
        group: GroupId,
        tree: Tree,
        flusher: Flusher,
        log: Arc<RwLock<SegmentLog>>,
        stats: Arc<GroupStats>,
    ) -> Self {
        LogStore {
            group,
            tree,
            flusher,
            log,
            stats,
        }
    }

    /// The group this log belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The index of the durable purge mark in `tree` (a log tree), to open the segments with.
    pub(crate) fn purged_index(tree: &Tree) -> Result<Option<u64>, StorageIoError> {
        match tree.get(PURGED_KEY)? {
            Some(bytes) => {
                decode::<typ::LogId>("last purged log id", &bytes).map(|id| Some(id.index))
            }
            None => Ok(None),
        }
    }

    /// True when `tree` (a log tree) holds no vote and no purge mark. The caller also checks
    /// the group's segment files.
    pub(crate) fn meta_is_pristine(tree: &Tree) -> Result<bool, StorageIoError> {
        Ok(tree.get(VOTE_KEY)?.is_none() && tree.get(PURGED_KEY)?.is_none())
    }

    /// True when `tree` (a log tree) holds entries in the old in-engine layout.
    pub(crate) fn holds_legacy_entries(tree: &Tree) -> Result<bool, StorageIoError> {
        let start = [LEGACY_ENTRY_PREFIX];
        let end = [LEGACY_ENTRY_PREFIX + 1];
        match tree.range(&start, Some(&end)).next() {
            None => Ok(false),
            Some(pair) => pair.map(|_| true),
        }
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StorageIoError> {
        match self.tree.get(key)? {
            Some(bytes) => decode(what, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn read_log(&self) -> RwLockReadGuard<'_, SegmentLog> {
        // A panic while holding the lock would be a bug in the segment code, which keeps its
        // index consistent before every fallible step; reading on is the best left to do.
        self.log.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_log(&self) -> RwLockWriteGuard<'_, SegmentLog> {
        self.log.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_entries(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<typ::Entry>, StorageIoError> {
        // The lock covers the tail lookup (refcounted clones) and the positional reads;
        // checksums and decoding run after it.
        let frames = {
            let log = self.read_log();
            if let Some(entries) = log.read_tail(start, end) {
                return Ok(entries);
            }
            log.read(start, end)?
        };
        let mut entries = Vec::new();
        for chunk in &frames {
            chunk.decode_into(&mut entries)?;
        }
        Ok(entries)
    }
}

/// Converts a range of indexes to `[start, end)`, `end` None = unbounded; None if empty.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<typ::Entry>, typ::StorageError> {
        match index_bounds(&range) {
            None => Ok(Vec::new()),
            Some((start, end)) => self
                .read_entries(start, end)
                .raft_err(ErrorSubject::Logs, ErrorVerb::Read),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, typ::StorageError> {
        let last_purged_log_id: Option<typ::LogId> = self
            .read_meta(PURGED_KEY, "last purged log id")
            .raft_err(ErrorSubject::Logs, ErrorVerb::Read)?;
        let last_entry = self.read_log().last_log_id();
        // The last stored entry may be hidden by the mark while its file awaits deletion.
        let last_log_id = match (last_entry, last_purged_log_id) {
            (Some(entry), Some(purged)) if entry.index <= purged.index => Some(purged),
            (Some(entry), _) => Some(entry),
            (None, purged) => purged,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &typ::Vote) -> Result<(), typ::StorageError> {
        let result = async {
            let mut batch = WriteBatch::default();
            batch.insert(VOTE_KEY, encode("vote", vote)?);
            self.tree.apply(batch)?;
            // A vote must be durable before it is acted on (or a restarted node could vote
            // twice in one term): wait for a flush that covers it.
            self.flusher.flush().await
        };
        result.await.raft_err(ErrorSubject::Vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> Result<Option<typ::Vote>, typ::StorageError> {
        self.read_meta(VOTE_KEY, "vote")
            .raft_err(ErrorSubject::Vote, ErrorVerb::Read)
    }

    async fn save_committed(
        &mut self,
        committed: Option<typ::LogId>,
    ) -> Result<(), typ::StorageError> {
        // No flush of its own: a lost committed id only means openraft re-learns it from the
        // leader; it is a hint for re-applying at startup, not a promise.
        let result = (|| {
            let mut batch = WriteBatch::default();
            match committed {
                Some(log_id) => batch.insert(COMMITTED_KEY, encode("committed log id", &log_id)?),
                None => batch.remove(COMMITTED_KEY),
            }
            self.tree.apply(batch)
        })();
        if result.is_ok() {
            self.stats
                .committed(committed.map_or(0, |log_id| log_id.index));
        }
        result.raft_err(ErrorSubject::Store, ErrorVerb::Write)
    }

    async fn read_committed(&mut self) -> Result<Option<typ::LogId>, typ::StorageError> {
        self.read_meta(COMMITTED_KEY, "committed log id")
            .raft_err(ErrorSubject::Store, ErrorVerb::Read)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), typ::StorageError>
    where
        I: IntoIterator<Item = typ::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = async {
            let batch = EncodedBatch::encode(entries)?;
            if batch.is_empty() {
                return Ok(());
            }
            if self.read_log().append_syncs(&batch) {
                // A roll (or a replacing append) fsyncs first: off the async threads.
                let log = self.log.clone();
                blocking("append to the log", move || {
                    log.write()
                        .unwrap_or_else(|e| e.into_inner())
                        .append(&batch)
                })
                .await
            } else {
                // Readable at once; durable when the flusher's next flush completes.
                self.write_log().append(&batch)
            }
        };
        written
            .await
            .raft_err(ErrorSubject::Logs, ErrorVerb::Write)?;
        self.flusher
            .submit_log(callback)
            .await
            .raft_err(ErrorSubject::Logs, ErrorVerb::Write)
    }

    async fn truncate(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        tracing::debug!(group = self.group, index = log_id.index, "truncating log");
        // Durable before it returns (one fdatasync and a directory sync, off the async
        // threads): truncation is rare, and this keeps every segment but the last complete
        // after a crash (see the segment log's module doc). A truncate removes only
        // uncommitted entries, so it is safe at any point before that, too.
        let log = self.log.clone();
        let index = log_id.index;
        blocking("truncate the log", move || {
            log.write()
                .unwrap_or_else(|e| e.into_inner())
                .truncate(index)
        })
        .await
        .raft_err(ErrorSubject::Log(log_id), ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        tracing::debug!(group = self.group, index = log_id.index, "purging log");
        // openraft purges only entries covered by a durable snapshot (or applied on every
        // member), so losing a purge in a crash leaves extra, still valid entries, which are
        // purged again later. The mark is recorded first and hides the entries at once; whole
        // files are deleted only after a flush made the mark durable, so a crash never leaves
        // the files gone while the mark says they are still there (open deletes the opposite
        // leftover). That flush costs one group commit per segment size, not per purge.
        let result = async {
            let mut mark = WriteBatch::default();
            mark.insert(PURGED_KEY, encode("last purged log id", &log_id)?);
            self.tree.apply(mark)?;
            let whole_files = self.write_log().purge(log_id.index);
            if whole_files == 0 {
                return Ok(());
            }
            self.flusher.flush().await?;
            let log = self.log.clone();
            blocking("delete purged log segments", move || {
                log.write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove_purged()
            })
            .await
        };
        result.await.raft_err(ErrorSubject::Logs, ErrorVerb::Delete)
    }
}
