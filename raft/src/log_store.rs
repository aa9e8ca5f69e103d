//! A group's Raft log on the storage engine: entries, vote, committed and last-purged ids.
//!
//! Everything lives in the group's one log tree, so that a purge (remove entries, record the
//! purged id) or a truncate is one atomic batch:
//!
//! - `e` + big-endian index (9 bytes): a postcard-encoded entry, so entries sort by index;
//! - `m` + name: the vote, the committed id and the last purged id (postcard).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{IntoRaftResult, StorageIoError};
use crate::flusher::Flusher;
use crate::storage::{Tree, WriteBatch};
use crate::types::{typ, GroupId, TypeConfig};

/// Prefix of entry keys.
const ENTRY_PREFIX: u8 = b'e';
/// The first key after every entry key.
const ENTRY_END: [u8; 1] = [ENTRY_PREFIX + 1];
/// The vote.
const VOTE_KEY: &[u8] = b"mvote";
/// The last committed log id openraft reported.
const COMMITTED_KEY: &[u8] = b"mcommitted";
/// The last purged log id. Invariant: no entry at or below it is stored.
const PURGED_KEY: &[u8] = b"mpurged";

/// The key of the entry at `index`.
fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = ENTRY_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Postcard-encodes `value`.
pub(crate) fn encode<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StorageIoError> {
    // Sized first, so a record-batch entry (tens of KiB) is written once into a buffer of
    // its exact size, not copied through every doubling of a growing one.
    let size = postcard::experimental::serialized_size(value)
        .map_err(|e| StorageIoError::codec(what, e))?;
    postcard::to_extend(value, Vec::with_capacity(size)).map_err(|e| StorageIoError::codec(what, e))
}

/// Postcard-decodes `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StorageIoError> {
    postcard::from_bytes(bytes).map_err(|e| StorageIoError::codec(what, e))
}

/// The Raft log of one group.
///
/// ### To ensure correctness:
/// - `append` makes the entries readable before it returns, and fires its callback only after
///   an engine flush that covers them (through the node's [`Flusher`]).
/// - `save_vote` returns only after a flush that covers the vote.
/// - Entry keys below the stored last-purged id never exist (purge removes them in the same
///   batch that records the id).
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    tree: Tree,
    flusher: Flusher,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish()
    }
}

impl LogStore {
    pub(crate) fn new(group: GroupId, tree: Tree, flusher: Flusher) -> Self {
        LogStore {
            group,
            tree,
            flusher,
        }
    }

    /// The group this log belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// True when `tree` (a log tree) holds no vote, no entry and no purge mark.
    pub(crate) fn is_pristine(tree: &Tree) -> Result<bool, StorageIoError> {
        if tree.get(VOTE_KEY)?.is_some() || tree.get(PURGED_KEY)?.is_some() {
            return Ok(false);
        }
        Ok(tree.range(&entry_key(0), Some(&ENTRY_END)).next().is_none())
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

    fn last_entry(&self) -> Result<Option<typ::Entry>, StorageIoError> {
        match self.tree.get_at_or_before(&entry_key(u64::MAX))? {
            Some((key, value)) if key.first() == Some(&ENTRY_PREFIX) => {
                decode("log entry", &value).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn read_entries(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<typ::Entry>, StorageIoError> {
        let start_key = entry_key(start);
        let end_key = end.map(entry_key);
        let end_bound: &[u8] = match &end_key {
            Some(key) => key,
            None => &ENTRY_END,
        };
        self.tree
            .range(&start_key, Some(end_bound))
            .map(|pair| pair.and_then(|(_key, value)| decode("log entry", &value)))
            .collect()
    }

    /// Removes the entries with index in `[start, end)` (`end` None = to the last), plus
    /// `extra` writes, in one atomic batch.
    fn remove_entries(
        &self,
        start: u64,
        end: Option<u64>,
        mut batch: WriteBatch,
    ) -> Result<(), StorageIoError> {
        let start_key = entry_key(start);
        let end_key = end.map(entry_key);
        let end_bound: &[u8] = match &end_key {
            Some(key) => key,
            None => &ENTRY_END,
        };
        // Only the keys are held (9 bytes each); the batch must be one so that a crash never
        // leaves a hole in the middle of the log.
        let mut removals = WriteBatch::default();
        for pair in self.tree.range(&start_key, Some(end_bound)) {
            let (key, _value) = pair?;
            removals.remove(key.to_vec());
        }
        removals.append(&mut batch);
        self.tree.apply(removals)
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
        let last_entry = self
            .last_entry()
            .raft_err(ErrorSubject::Logs, ErrorVerb::Read)?;
        let last_log_id = match last_entry {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
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
        let staged = (|| {
            let mut batch = WriteBatch::default();
            for entry in entries {
                batch.insert(
                    entry_key(entry.log_id.index).to_vec(),
                    encode("log entry", &entry)?,
                );
            }
            // Readable at once; durable when the flusher's next flush completes.
            self.tree.apply(batch)
        })();
        staged.raft_err(ErrorSubject::Logs, ErrorVerb::Write)?;
        self.flusher
            .submit_log(callback)
            .await
            .raft_err(ErrorSubject::Logs, ErrorVerb::Write)
    }

    async fn truncate(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        tracing::debug!(group = self.group, index = log_id.index, "truncating log");
        // No flush here. A truncate removes only uncommitted entries. Until it is durable, a
        // crash brings them back: the same state as if the leader's conflicting request had
        // never arrived, which Raft tolerates. Nothing built on the truncation is acknowledged
        // before then: the entries written in place of the removed ones are acknowledged by
        // their append's callback, after a flush, and the engine recovers a prefix of its
        // writes, so that flush makes this removal durable too.
        self.remove_entries(log_id.index, None, WriteBatch::default())
            .raft_err(ErrorSubject::Log(log_id), ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: typ::LogId) -> Result<(), typ::StorageError> {
        tracing::debug!(group = self.group, index = log_id.index, "purging log");
        // No flush here. openraft purges only entries covered by a durable snapshot (or
        // applied on every member), so losing a purge in a crash leaves extra, still valid
        // entries, which are purged again later. The entries and the purge mark go in one
        // batch: a crash never shows one without the other.
        let result = (|| {
            let mut mark = WriteBatch::default();
            mark.insert(PURGED_KEY, encode("last purged log id", &log_id)?);
            let end = log_id.index.checked_add(1);
            self.remove_entries(0, end, mark)
        })();
        result.raft_err(ErrorSubject::Logs, ErrorVerb::Delete)
    }
}
