//! The node's storage assembly: one engine, the flusher, the storage health, and every group's
//! log store and state machine opened on them. The top of the storage layers (engine, log,
//! state machines below it).
//!
//! Layout of one node's database (one sled `Db`, bounded cache):
//!
//! - `log/<group>`: the group's vote, committed and last-purged ids
//!   (see [`LogStore`](crate::LogStore)). The log entries themselves are not in the database.
//! - `sm/<group>`: the group's state machine: its logic's keys, plus the state machine's own
//!   metadata under the reserved prefix `0xFF 0xFF` (see [`StateMachine`](crate::StateMachine)).
//!   Its batches are staged in memory and reach the database in bulk, at the next flush
//!   (see [`engine::deferred`](crate::engine::deferred)).
//!
//! Beside the database: the Raft log entries in segment files under `<dir>/raft-log/<group>/`
//! (see [`log::segments`](crate::log::segments)), written once and purged by deleting files, and
//! the snapshot files under `<dir>/snapshots/<group>/`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::engine::deferred::{DeferredTrees, DeferringEngine};
use crate::engine::sled_engine::{SledEngine, SLED_LOG_FILE};
use crate::engine::Engine;
use crate::error::StorageIoError;
use crate::health::StorageHealth;
use crate::log::flusher::Flusher;
use crate::log::segments::{self, SegmentLog};
use crate::log::store::LogStore;
use crate::log::sync::LogSyncs;
use crate::state::logic::GroupLogic;
use crate::state::machine::StateMachine;
use crate::state::snapshot::SnapshotStore;
use crate::stats::{GroupStats, GroupStatsTable};
use crate::types::GroupId;

/// The name of the sled database directory inside the node's data directory.
const DB_DIR: &str = "db";

/// The name of the snapshot directory inside the node's data directory.
const SNAPSHOTS_DIR: &str = "snapshots";

// ---------------------------------------------------------------------------------------------
// The node's storage handle
// ---------------------------------------------------------------------------------------------

/// The prefix of the log trees' names.
const LOG_TREE_PREFIX: &str = "log/";

/// The name of a group's log tree.
fn log_tree_name(group: GroupId) -> String {
    format!("{LOG_TREE_PREFIX}{group}")
}

/// The name of a group's state tree.
fn sm_tree_name(group: GroupId) -> String {
    format!("sm/{group}")
}

/// One per node: one database with a bounded cache, the groups' log segment directories
/// `<dir>/raft-log/<group>/`, the node-wide flusher task (group commit), and the snapshot
/// directory `<dir>/snapshots/<group>/`. Cheap to clone.
#[derive(Clone)]
pub struct NodeStorage {
    inner: Arc<NodeStorageInner>,
}

struct NodeStorageInner {
    /// The database, with the state trees' staged writes written out before each flush.
    engine: Arc<dyn Engine>,
    /// The state trees (see [`crate::engine::deferred`]).
    state_trees: DeferredTrees,
    flusher: Flusher,
    /// Whether storage failed, free space, stopped groups (see [`crate::health`]).
    health: StorageHealth,
    log_syncs: LogSyncs,
    logs_dir: PathBuf,
    log_segment_bytes: u64,
    /// The groups' open segment logs: a second `log_store` call for a group whose log is
    /// still in use shares it, since two in-memory indexes of one directory would diverge.
    /// Dead entries are dropped whenever one is added, so it holds at most the live logs
    /// plus the ones closed since.
    open_logs: Mutex<HashMap<GroupId, Weak<RwLock<SegmentLog>>>>,
    snapshots_dir: PathBuf,
    /// Each group's counters (leader changes, commit index, snapshots), for the metrics.
    stats: GroupStatsTable,
}

impl fmt::Debug for NodeStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeStorage")
            .field("snapshots_dir", &self.inner.snapshots_dir)
            .finish()
    }
}

impl NodeStorage {
    /// Opens (or creates) the node's storage under `dir` and starts the flusher task.
    ///
    /// Must be called inside a tokio runtime: the flusher task is spawned on it, and lives
    /// until this handle and every log store made from it are dropped.
    ///
    /// # Errors
    /// [`StorageIoError::File`] if `dir` cannot be created, [`StorageIoError::Engine`] if the
    /// database cannot be opened (e.g. another process holds it), [`StorageIoError::NoRuntime`]
    /// outside a tokio runtime.
    pub fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<NodeStorage, StorageIoError> {
        Self::open_with_log_segment_bytes(
            dir,
            cache_capacity_bytes,
            segments::DEFAULT_SEGMENT_BYTES,
        )
    }

    /// As [`NodeStorage::open`], rolling the groups' log segment files at
    /// `log_segment_bytes` (see [`RaftTuning::log_segment_bytes`](crate::RaftTuning)).
    ///
    /// # Errors
    /// As [`NodeStorage::open`]; also [`StorageIoError::LegacyLog`] if the database holds
    /// log entries in the layout of earlier versions.
    pub fn open_with_log_segment_bytes(
        dir: &Path,
        cache_capacity_bytes: u64,
        log_segment_bytes: u64,
    ) -> Result<NodeStorage, StorageIoError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| StorageIoError::NoRuntime)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageIoError::file("create data directory", dir, e))?;
        let snapshots_dir = dir.join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&snapshots_dir)
            .map_err(|e| StorageIoError::file("create snapshot directory", &snapshots_dir, e))?;
        let sled: Arc<dyn Engine> =
            Arc::new(SledEngine::open(&dir.join(DB_DIR), cache_capacity_bytes)?);
        refuse_legacy_logs(sled.as_ref(), dir)?;
        let state_trees = DeferredTrees::default();
        let engine: Arc<dyn Engine> = Arc::new(DeferringEngine::new(sled, state_trees.clone()));
        let logs_dir = dir.join(segments::LOG_DIR);
        std::fs::create_dir_all(&logs_dir)
            .map_err(|e| StorageIoError::file("create log directory", &logs_dir, e))?;
        let log_syncs = LogSyncs::default();
        // The new directories must survive a crash before anything in them is acknowledged.
        log_syncs.dir_changed(dir);
        log_syncs.dir_changed(&logs_dir);
        let health = StorageHealth::default();
        let flusher = Flusher::spawn(&handle, engine.clone(), log_syncs.clone(), health.clone());
        Ok(NodeStorage {
            inner: Arc::new(NodeStorageInner {
                engine,
                state_trees,
                flusher,
                health,
                log_syncs,
                logs_dir,
                log_segment_bytes,
                open_logs: Mutex::new(HashMap::new()),
                snapshots_dir,
                stats: GroupStatsTable::default(),
            }),
        })
    }

    /// Waits, at most `timeout`, until nothing holds the database lock under `dir`; returns
    /// at once if there is no database. sled lets go of its lock from its own worker
    /// threads a moment after the last handle is dropped, so a directory reopened in the
    /// same process (a test restarting a node) must wait for that here first; a process
    /// that exits releases it at once. The wait is on the lock itself, not a poll.
    ///
    /// # Errors
    /// [`StorageIoError::File`] if the lock file cannot be opened or locked, or if the lock
    /// is still held after `timeout` (kind [`io::ErrorKind::TimedOut`]).
    pub fn wait_until_released(dir: &Path, timeout: Duration) -> Result<(), StorageIoError> {
        let lock_path = dir.join(DB_DIR).join(SLED_LOG_FILE);
        let file = match std::fs::File::open(&lock_path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(StorageIoError::file(
                    "open the database lock",
                    &lock_path,
                    e,
                ))
            }
        };
        let (locked_tx, locked) = std::sync::mpsc::sync_channel(1);
        // A blocking lock has no timeout of its own: it waits on a thread of its own, which
        // releases the lock (drops the file) as soon as it has it.
        std::thread::spawn(move || {
            let _ = locked_tx.send(file.lock().and_then(|()| file.unlock()));
        });
        match locked.recv_timeout(timeout) {
            Ok(result) => result
                .map_err(|e| StorageIoError::file("wait for the database lock", &lock_path, e)),
            Err(_) => Err(StorageIoError::file(
                "wait for the database lock",
                &lock_path,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("still held after {timeout:?}"),
                ),
            )),
        }
    }

    /// The Raft log of `group` (created empty if new). The first call for a group (or the
    /// first after every handle was dropped) reads and checks its segment files, which blocks
    /// the caller for the time of that scan; a torn write at the end is cut off there.
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the log tree cannot be opened,
    /// [`StorageIoError::LogCorrupt`] if a segment file is damaged, [`StorageIoError::File`]
    /// if one cannot be read or repaired.
    pub fn log_store(&self, group: GroupId) -> Result<LogStore, StorageIoError> {
        let tree = self.inner.engine.open_tree(&log_tree_name(group))?;
        let mut open_logs = self
            .inner
            .open_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let live = open_logs.get(&group).and_then(Weak::upgrade);
        let log = match live {
            Some(log) => log,
            None => {
                let purged = LogStore::purged_index(&tree)?;
                let log = Arc::new(RwLock::new(SegmentLog::open(
                    self.group_log_dir(group),
                    self.inner.log_segment_bytes,
                    purged,
                    self.inner.log_syncs.clone(),
                )?));
                open_logs.retain(|_group, log| log.strong_count() > 0);
                open_logs.insert(group, Arc::downgrade(&log));
                log
            }
        };
        Ok(LogStore::new(
            group,
            tree,
            self.inner.flusher.clone(),
            log,
            self.inner.stats.entry(group),
        ))
    }

    /// The state machine of `group`, driven by `logic`. Calls `logic.load()` once the state is
    /// in place; if the newest snapshot file is ahead of the stored state (a crash during an
    /// install, or state lost in a crash), the state is first reloaded from that file, which
    /// blocks the caller for the time of the load.
    ///
    /// # Errors
    /// Any [`StorageIoError`] from the tree, the snapshot directory or the logic's `load`.
    pub fn state_machine(
        &self,
        group: GroupId,
        logic: Box<dyn GroupLogic>,
    ) -> Result<StateMachine, StorageIoError> {
        let tree = self
            .inner
            .state_trees
            .open(self.inner.engine.as_ref(), &sm_tree_name(group))?;
        let snapshots = SnapshotStore::open(
            self.group_snapshot_dir(group),
            self.inner.stats.entry(group),
        )?;
        StateMachine::open(group, tree, Arc::new(snapshots), logic)
    }

    /// True when the group has never stored a vote or a log entry (pristine: may initialize).
    /// A segment file holding only a torn write (not yet cut off by opening the log) counts
    /// as an entry: the answer errs on the side of not initializing twice.
    ///
    /// # Errors
    /// [`StorageIoError`] if the log tree or the segment directory cannot be read.
    pub fn group_is_pristine(&self, group: GroupId) -> Result<bool, StorageIoError> {
        let name = log_tree_name(group);
        if self.inner.engine.tree_exists(&name) {
            let tree = self.inner.engine.open_tree(&name)?;
            if !LogStore::meta_is_pristine(&tree)? {
                return Ok(false);
            }
        }
        Ok(!segments::dir_has_entries(&self.group_log_dir(group))?)
    }

    /// Removes the group's trees, log segments and snapshot files (topic deleted), then
    /// flushes. Call after its Raft is shut down and its log store and state machine are
    /// dropped.
    ///
    /// # Errors
    /// [`StorageIoError`] if a tree cannot be dropped, the log or snapshot directory cannot
    /// be removed, or the flush fails.
    pub async fn destroy_group(&self, group: GroupId) -> Result<(), StorageIoError> {
        self.inner.engine.drop_tree(&log_tree_name(group))?;
        self.inner.engine.drop_tree(&sm_tree_name(group))?;
        self.inner
            .open_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
        let log_dir = self.group_log_dir(group);
        match tokio::fs::remove_dir_all(&log_dir).await {
            Ok(()) => self.inner.log_syncs.dir_changed(&self.inner.logs_dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageIoError::file("remove log directory", log_dir, e)),
        }
        let dir = self.group_snapshot_dir(group);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageIoError::file("remove snapshot directory", dir, e)),
        }
        self.inner.stats.remove(group);
        self.flush().await
    }

    /// The counters of `group` (leader changes, commit index, snapshots), if it was opened
    /// on this node and its storage not destroyed since.
    pub fn group_stats(&self, group: GroupId) -> Option<Arc<GroupStats>> {
        self.inner.stats.get(group)
    }

    /// The counters of `group`, made on first use (the registry's leader watcher).
    pub(crate) fn group_stats_entry(&self, group: GroupId) -> Arc<GroupStats> {
        self.inner.stats.entry(group)
    }

    /// One fsync of everything written so far (goes through the flusher).
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the flush fails, [`StorageIoError::FlusherStopped`] if
    /// the flusher is gone.
    pub async fn flush(&self) -> Result<(), StorageIoError> {
        self.inner.flusher.flush().await
    }

    /// Shutdown: one last fsync of everything written, then the flusher and its background
    /// write-back stop. Returns once they have let go of the database, so that dropping the
    /// last handle releases its lock at once and the directory can be opened again in this
    /// process. Dropping the runtime instead may abandon a flush whose worker thread still
    /// holds the database. Every later flush or append fails.
    ///
    /// # Errors
    /// As [`NodeStorage::flush`]; [`StorageIoError::FlusherStopped`] if already closed.
    pub async fn close(&self) -> Result<(), StorageIoError> {
        self.inner.flusher.close().await
    }

    /// Bytes on disk used by the database and the log segment files (metrics, retention
    /// reports). Lists every group's log directory: meant for reports, not hot paths.
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the engine cannot measure it, [`StorageIoError::File`]
    /// if the log directory cannot be listed.
    pub fn size_on_disk(&self) -> Result<u64, StorageIoError> {
        let engine = self.inner.engine.size_on_disk()?;
        let logs = segments::bytes_under(&self.inner.logs_dir)?;
        Ok(engine.saturating_add(logs))
    }

    /// The node's storage health: failure, free space, stopped groups.
    pub fn health(&self) -> &StorageHealth {
        &self.inner.health
    }

    /// How many engine flushes the flusher has run since open. With many groups appending
    /// at once this grows far slower than the number of appends (group commit); exposed for
    /// metrics and for the test that proves it.
    pub fn flush_count(&self) -> u64 {
        self.inner.flusher.flush_count()
    }

    fn group_snapshot_dir(&self, group: GroupId) -> PathBuf {
        self.inner.snapshots_dir.join(group.to_string())
    }

    fn group_log_dir(&self, group: GroupId) -> PathBuf {
        self.inner.logs_dir.join(group.to_string())
    }
}

/// Refuses a database whose log trees hold entries (the layout before segment files): this
/// version would not see them, and a node that forgot its log could break Raft's promises.
fn refuse_legacy_logs(engine: &dyn Engine, data_dir: &Path) -> Result<(), StorageIoError> {
    for name in engine.tree_names() {
        if !name.starts_with(LOG_TREE_PREFIX) {
            continue;
        }
        let tree = engine.open_tree(&name)?;
        if LogStore::holds_legacy_entries(&tree)? {
            return Err(StorageIoError::LegacyLog {
                dir: data_dir.to_path_buf(),
            });
        }
    }
    Ok(())
}
