//! The sled implementation of the engine seam, and the syncs that make its flush mean what
//! the durability contract says.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::blocking::blocking;
use crate::engine::{Engine, EngineTree, PairIter, Tree, Value, WriteBatch};
use crate::error::StorageIoError;

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
pub(crate) const SLED_LOG_FILE: &str = "db";

/// sled's directory of pages too large for a segment.
const SLED_BLOBS_DIR: &str = "blobs";

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
pub(crate) struct SledEngine {
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
    pub(crate) fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, StorageIoError> {
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
            blocking("fsync the database", move || {
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
