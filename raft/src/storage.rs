//! The project's storage seam, its sled implementation, and the per-node storage handle.
//!
//! Everything else in the crate (log stores, state machines, snapshots) reaches the disk only
//! through [`Engine`] and [`EngineTree`], as docs/architecture.md § Storage and durability asks: if
//! the chaos tests ever find sled wanting, another engine can be put under these two traits without
//! touching the Raft code. `sled::` appears in this file only.
//!
//! Layout of one node's database (one sled `Db`, bounded cache):
//!
//! - `log/<group>`: the group's vote, committed and last-purged ids
//!   (see [`LogStore`](crate::LogStore)). The log entries themselves are not in the database.
//! - `sm/<group>`: the group's state machine: its logic's keys, plus the state machine's own
//!   metadata under the reserved prefix `0xFF 0xFF` (see [`StateMachine`](crate::StateMachine)).
//!   Its batches are staged in memory and reach the database in bulk, at the next flush
//!   (see [`deferred_tree`](crate::deferred_tree)).
//!
//! Beside the database: the Raft log entries in segment files under `<dir>/raft-log/<group>/`
//! (see [`segment_log`](crate::segment_log)), written once and purged by deleting files, and
//! the snapshot files under `<dir>/snapshots/<group>/`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::deferred_tree::{DeferredTrees, DeferringEngine};
use crate::error::StorageIoError;
use crate::flusher::Flusher;
use crate::health::StorageHealth;
use crate::log_store::LogStore;
use crate::log_sync::LogSyncs;
use crate::logic::GroupLogic;
use crate::segment_log::{self, SegmentLog};
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::types::GroupId;

/// sled's segment size for a new database (an existing one keeps the size it was created
/// with: sled refuses to open it with another). sled writes any page larger than a quarter
/// segment to a file of its own ("blob"), created, written and later deleted, which costs
/// inode allocation and directory updates per page; and it keeps a segment-sized write
/// buffer per segment being filled or written (a heap profile under the batch load found
/// 64 MB of them with 8 MiB segments). Stored batches are at most 8 KiB of records (see
/// the partition log), so a leaf of 16 is well under the 512 KiB a 2 MiB segment writes
/// inline; only pages holding larger records, or compaction's larger rewrites, become
/// blobs.
const SLED_SEGMENT_BYTES: usize = 2 << 20;

/// sled's configuration file inside its directory (text, `name: value` lines).
const SLED_CONF_FILE: &str = "conf";

/// sled's segment log inside its directory: the file [`SledEngine::flush`] fsyncs.
const SLED_LOG_FILE: &str = "db";

/// sled's directory of pages too large for a segment.
const SLED_BLOBS_DIR: &str = "blobs";

/// The name of the sled database directory inside the node's data directory.
const DB_DIR: &str = "db";

/// The name of the snapshot directory inside the node's data directory.
const SNAPSHOTS_DIR: &str = "snapshots";

// ---------------------------------------------------------------------------------------------
// Engine-neutral values and batches
// ---------------------------------------------------------------------------------------------

/// A stored key or value, shared with the engine's cache without copying.
///
/// Cloning is cheap (reference counted). Turn it into [`Bytes`] with [`Value::into_bytes`] to
/// hand it to an HTTP body without a copy.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(sled::IVec);

impl Value {
    /// The value as `Bytes`, sharing the engine's buffer (no copy).
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self.0)
    }
}

impl Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value(sled::IVec::from(bytes))
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value(sled::IVec::from(bytes))
    }
}

impl fmt::Debug for Value {
    // Never log payloads: only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({} bytes)", self.0.len())
    }
}

/// Writes to one tree, applied atomically (all or none, also across a crash).
///
/// Operations apply in the order they were staged: a later write to the same key wins.
#[derive(Default)]
pub struct WriteBatch {
    /// Values are held as [`Value`]s, so the engine (or a deferred tree) takes them without
    /// another copy.
    ops: Vec<(Vec<u8>, Option<Value>)>,
    /// Sum of key and value lengths staged so far, to bound batches (e.g. snapshot loading).
    bytes: usize,
}

impl WriteBatch {
    /// Stages `key = value`.
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.stage(key.into(), Some(Value::from(value.into())));
    }

    /// Stages `key = value` for a value already made (e.g. copied once from a slice).
    pub fn insert_value(&mut self, key: impl Into<Vec<u8>>, value: Value) {
        self.stage(key.into(), Some(value));
    }

    /// Stages the removal of `key` (no error if it is absent).
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.stage(key.into(), None);
    }

    /// Stages `key = value`, or its removal when `value` is None.
    pub(crate) fn stage(&mut self, key: Vec<u8>, value: Option<Value>) {
        self.bytes += key.len() + value.as_ref().map_or(0, |v| v.len());
        self.ops.push((key, value));
    }

    /// The staged operations, in order.
    pub(crate) fn into_ops(self) -> Vec<(Vec<u8>, Option<Value>)> {
        self.ops
    }

    /// Number of staged operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values staged so far.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// Moves `other`'s operations after this batch's (they win on equal keys).
    pub(crate) fn append(&mut self, other: &mut WriteBatch) {
        self.ops.append(&mut other.ops);
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl fmt::Debug for WriteBatch {
    // Never log payloads: only the batch's shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field("ops", &self.ops.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// An iterator over stored pairs, owned (no borrow of the tree), so it can move into a task.
pub(crate) type PairIter = Box<dyn Iterator<Item = Result<(Value, Value), StorageIoError>> + Send>;

// ---------------------------------------------------------------------------------------------
// The seam
// ---------------------------------------------------------------------------------------------

/// A storage engine: named trees (ordered keyspaces) in one database with one durability point.
///
/// ### To ensure correctness:
/// - A batch applied to one tree is atomic, also across a crash.
/// - After a crash the database recovers a prefix of the writes made before it, in order
///   (a write is never durable while an earlier one is lost). A deferred state tree
///   ([`crate::deferred_tree`]) writes to the engine later than its applies, so after a
///   crash it may be further behind than other trees; its own applies stay in order.
/// - [`Engine::flush`] returns only when every write that was visible before it was called is
///   durable, in every tree.
pub(crate) trait Engine: Send + Sync + 'static {
    /// Opens (creating if needed) the tree `name`.
    fn open_tree(&self, name: &str) -> Result<Tree, StorageIoError>;
    /// True when the tree `name` exists (without creating it).
    fn tree_exists(&self, name: &str) -> bool;
    /// The names of every tree (those that are not valid UTF-8 are left out).
    fn tree_names(&self) -> Vec<String>;
    /// Removes the tree `name` and its contents; no error if it does not exist.
    fn drop_tree(&self, name: &str) -> Result<(), StorageIoError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> BoxFuture<'static, Result<(), StorageIoError>>;
    /// Bytes the database uses on disk.
    fn size_on_disk(&self) -> Result<u64, StorageIoError>;
}

/// One ordered keyspace of an [`Engine`].
pub(crate) trait EngineTree: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageIoError>;
    /// The greatest pair with key `<= key`.
    fn get_at_or_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError>;
    /// The greatest pair with key `< key`.
    fn get_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError>;
    /// Ascending pairs in `[start, end)`; `end = None` is unbounded.
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> PairIter;
    /// Applies `batch` atomically.
    fn apply(&self, batch: WriteBatch) -> Result<(), StorageIoError>;
    /// Removes every pair. Not atomic with anything else: callers must tolerate a crash midway.
    fn clear(&self) -> Result<(), StorageIoError>;
}

/// A handle on one keyspace (a group's state tree, or its log tree). Cheap to clone.
#[derive(Clone)]
pub struct Tree {
    inner: Arc<dyn EngineTree>,
}

impl Tree {
    /// A handle on `inner`.
    pub(crate) fn from_engine_tree(inner: Arc<dyn EngineTree>) -> Self {
        Tree { inner }
    }

    /// The value stored at `key`.
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the engine fails to read.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageIoError> {
        self.inner.get(key)
    }

    /// Greatest entry with key <= `key` (find the batch holding an offset).
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the engine fails to read.
    pub fn get_at_or_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        self.inner.get_at_or_before(key)
    }

    /// Greatest entry with key < `key`.
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the engine fails to read.
    pub(crate) fn get_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        self.inner.get_before(key)
    }

    /// Ascending iteration over `[start, end)` (`end` None = unbounded).
    ///
    /// The iterator owns its bounds and reads lazily, so it may outlive this call and move
    /// into another task. Writes made while it runs may or may not be seen (a state tree's
    /// staged writes are taken as they are when it starts, its stored pairs key by key).
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<(Value, Value), StorageIoError>> + Send + 'static {
        self.inner.range(start, end)
    }

    /// Applies `batch` atomically. Only the storage code writes trees directly; a group's
    /// logic writes by staging into the batch its state machine hands it.
    pub(crate) fn apply(&self, batch: WriteBatch) -> Result<(), StorageIoError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.inner.apply(batch)
    }

    /// Removes every pair (snapshot install).
    pub(crate) fn clear(&self) -> Result<(), StorageIoError> {
        self.inner.clear()
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tree")
    }
}

// ---------------------------------------------------------------------------------------------
// sled implementation
// ---------------------------------------------------------------------------------------------

/// The sled engine: one `sled::Db` per node.
///
/// sled's own flush is not a full fsync: on Linux it ends with `sync_file_range`, which
/// neither flushes the device's write cache nor persists the file's size, and it never
/// syncs the blob files it writes for large pages. [`Engine::flush`] therefore follows it
/// with an `fdatasync` of the segment log and an fsync of every blob file not yet synced
/// (and of their directory), so a flush means what the durability contract says.
struct SledEngine {
    db: sled::Db,
    /// Where the segment log and blob files are; only the flush's syncs use it.
    dir: PathBuf,
    /// sled's segment log, opened once: every flush fdatasyncs it, and sled never replaces
    /// the file (it only grows and reuses it), so one handle serves for the database's life.
    log_file: Arc<std::fs::File>,
    /// Names of the blob files and of the database directory's files as of the last flush,
    /// so each new file is synced once and a directory only when its listing changed.
    /// Replaced by the current listings on every flush.
    synced: Arc<SyncedNames>,
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> StorageIoError {
    move |e| StorageIoError::Engine {
        op,
        source: io::Error::from(e),
    }
}

/// The segment size an existing sled database was created with, from its `conf` file.
fn existing_segment_size(dir: &Path) -> Option<usize> {
    let conf = std::fs::read(dir.join(SLED_CONF_FILE)).ok()?;
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: "))
        .and_then(|raw| raw.trim().parse().ok())
}

/// Makes everything sled wrote under `dir` durable after its own flush (see [`SledEngine`]):
/// its segment log, the blob files, and the entries of both directories. sled renames its
/// `snap.*` files into place and deletes old ones without syncing the directory, so a crash
/// could bring back a deleted file or lose a renamed one (sled is known to fail at open on
/// such leftovers); syncing the directory whenever its listing changed closes that window.
fn sync_sled_files(
    dir: &Path,
    log_file: &std::fs::File,
    synced: &SyncedNames,
) -> Result<(), StorageIoError> {
    log_file
        .sync_data()
        .map_err(|e| StorageIoError::file("fsync the segment log", dir.join(SLED_LOG_FILE), e))?;
    // A poisoned lock only means a sync panicked midway: re-syncing is always safe.
    let mut synced = synced
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (blob_names, db_names) = &mut *synced;
    sync_new_entries(&dir.join(SLED_BLOBS_DIR), blob_names)?;
    sync_new_entries(dir, db_names)
}

/// Names in each directory as of the last flush: blobs, then the database directory.
type SyncedNames = std::sync::Mutex<(HashSet<OsString>, HashSet<OsString>)>;

/// fsyncs every file in `dir` not in `synced` (each file once), then the directory itself if
/// its listing changed since the last call; `synced` becomes the current listing. A missing
/// directory needs nothing.
fn sync_new_entries(dir: &Path, synced: &mut HashSet<OsString>) -> Result<(), StorageIoError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageIoError::file("list database files", dir, e)),
    };
    let mut present = HashSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageIoError::file("list database files", dir, e))?;
        let name = entry.file_name();
        if !synced.contains(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::File::open(entry.path()).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // sled removed it meanwhile: nothing left to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StorageIoError::file(
                        "fsync a database file",
                        entry.path(),
                        e,
                    ))
                }
            }
        }
        present.insert(name);
    }
    if present != *synced {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageIoError::file("fsync a database directory", dir, e))?;
    }
    *synced = present;
    Ok(())
}

impl SledEngine {
    fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, StorageIoError> {
        let segment_size = existing_segment_size(dir).unwrap_or(SLED_SEGMENT_BYTES);
        // No background flush: the node's flusher owns every flush (group commit), and a
        // second flusher would only compete with it for the disk.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_bytes)
            .segment_size(segment_size)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(sled_err("open the database"))?;
        let log_path = dir.join(SLED_LOG_FILE);
        let log_file = std::fs::File::open(&log_path)
            .map_err(|e| StorageIoError::file("open the segment log", &log_path, e))?;
        Ok(SledEngine {
            db,
            dir: dir.to_path_buf(),
            log_file: Arc::new(log_file),
            synced: Arc::default(),
        })
    }
}

impl Engine for SledEngine {
    fn open_tree(&self, name: &str) -> Result<Tree, StorageIoError> {
        let tree = self.db.open_tree(name).map_err(sled_err("open a tree"))?;
        Ok(Tree {
            inner: Arc::new(SledTree { tree }),
        })
    }

    fn tree_exists(&self, name: &str) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes())
    }

    fn tree_names(&self) -> Vec<String> {
        self.db
            .tree_names()
            .iter()
            .filter_map(|name| std::str::from_utf8(name).ok().map(str::to_string))
            .collect()
    }

    fn drop_tree(&self, name: &str) -> Result<(), StorageIoError> {
        self.db
            .drop_tree(name)
            .map(|_existed| ())
            .map_err(sled_err("drop a tree"))
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), StorageIoError>> {
        let db = self.db.clone();
        let dir = self.dir.clone();
        let log_file = self.log_file.clone();
        let synced = self.synced.clone();
        Box::pin(async move {
            db.flush_async()
                .await
                .map(|_bytes| ())
                .map_err(sled_err("flush"))?;
            // sled's flush wrote and range-synced the log; now make it durable for real.
            crate::snapshot::blocking("fsync the database", move || {
                sync_sled_files(&dir, &log_file, &synced)
            })
            .await
        })
    }

    fn size_on_disk(&self) -> Result<u64, StorageIoError> {
        self.db
            .size_on_disk()
            .map_err(sled_err("measure size on disk"))
    }
}

/// A sled engine in `dir`, for the tests of the layers above it.
#[cfg(test)]
pub(crate) fn sled_engine_for_tests(dir: &Path) -> Arc<dyn Engine> {
    Arc::new(SledEngine::open(dir, 1 << 20).expect("open a sled database"))
}

/// The last pair of a sled range.
fn last_pair(mut range: sled::Iter) -> Result<Option<(Value, Value)>, StorageIoError> {
    match range.next_back() {
        None => Ok(None),
        Some(Ok((k, v))) => Ok(Some((Value(k), Value(v)))),
        Some(Err(e)) => Err(sled_err("read a key")(e)),
    }
}

/// One sled tree.
struct SledTree {
    tree: sled::Tree,
}

impl EngineTree for SledTree {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageIoError> {
        self.tree
            .get(key)
            .map(|v| v.map(Value))
            .map_err(sled_err("read a key"))
    }

    fn get_at_or_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        last_pair(self.tree.range(..=key))
    }

    fn get_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        last_pair(self.tree.range(..key))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> PairIter {
        let iter = match end {
            Some(end) => self.tree.range(start..end),
            None => self.tree.range(start..),
        };
        Box::new(iter.map(|r| {
            r.map(|(k, v)| (Value(k), Value(v)))
                .map_err(sled_err("iterate a range"))
        }))
    }

    fn apply(&self, mut batch: WriteBatch) -> Result<(), StorageIoError> {
        // One write is atomic by itself. sled's batch is not free: it rolls the I/O buffer
        // before and after (two writes and range-syncs), which made the committed-id hint
        // openraft saves on every commit cost more than the entry's own append.
        if batch.ops.len() == 1 {
            if let Some((key, value)) = batch.ops.pop() {
                let done = match value {
                    Some(value) => self.tree.insert(key, value.0),
                    None => self.tree.remove(key),
                };
                return done.map(|_previous| ()).map_err(sled_err("write a key"));
            }
        }
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.ops {
            match value {
                Some(value) => sled_batch.insert(key, value.0),
                None => sled_batch.remove(key),
            }
        }
        self.tree
            .apply_batch(sled_batch)
            .map_err(sled_err("apply a batch"))
    }

    fn clear(&self) -> Result<(), StorageIoError> {
        self.tree.clear().map_err(sled_err("clear a tree"))
    }
}

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
    /// The state trees (see [`crate::deferred_tree`]).
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
            segment_log::DEFAULT_SEGMENT_BYTES,
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
        let logs_dir = dir.join(segment_log::LOG_DIR);
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
        Ok(LogStore::new(group, tree, self.inner.flusher.clone(), log))
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
        let snapshots = SnapshotStore::open(self.group_snapshot_dir(group))?;
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
        Ok(!segment_log::dir_has_entries(&self.group_log_dir(group))?)
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
        self.flush().await
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
        let logs = segment_log::bytes_under(&self.inner.logs_dir)?;
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
