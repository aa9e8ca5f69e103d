//! The node-wide set of Raft log files and directories written since the last flush.
//!
//! A group's segment log (`log::segments`) writes its entries to the page
//! cache and records the segment file here (and the directory, when it created or removed a
//! file). The node's flusher takes the whole set at the start of each flush and syncs it
//! (with the engine too when a waiter needs it), so one flush makes every group's appends
//! durable (group commit across groups, docs/architecture.md § Storage and durability).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::StorageIoError;

/// Files and directories to sync at the next flush. Cheap to clone (shared).
///
/// Bounded by the node's open segment files and group directories: each appears at most once.
#[derive(Clone, Default)]
pub(crate) struct LogSyncs {
    inner: Arc<Mutex<Pending>>,
}

/// What the next flush must sync.
#[derive(Default)]
pub(crate) struct Pending {
    /// Segment files with writes not yet synced, by path. A file replaced under the same path
    /// (truncated away and created again) replaces the old handle: the old inode is gone.
    files: HashMap<PathBuf, Arc<File>>,
    /// Directories whose entries (files created, removed) are not yet synced.
    dirs: HashSet<PathBuf>,
}

impl LogSyncs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Each critical section is one map operation: a poisoned set is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `file` at `path` was written and must be synced by the next flush.
    pub(crate) fn file_written(&self, path: &Path, file: &Arc<File>) {
        let mut pending = self.lock();
        if let Some(known) = pending.files.get(path) {
            if Arc::ptr_eq(known, file) {
                return;
            }
        }
        pending.files.insert(path.to_path_buf(), file.clone());
    }

    /// Records that entries of directory `dir` changed and must be synced by the next flush.
    pub(crate) fn dir_changed(&self, dir: &Path) {
        let mut pending = self.lock();
        if !pending.dirs.contains(dir) {
            pending.dirs.insert(dir.to_path_buf());
        }
    }

    /// Takes everything recorded so far; the caller syncs it with [`Pending::sync`].
    pub(crate) fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }
}

impl Pending {
    /// True when nothing needs syncing.
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    /// Splits the work into at most `parts` shares (files dealt round-robin, directories in
    /// the first), so several threads can sync at once: the file system then commits their
    /// metadata (file sizes) in shared journal transactions instead of one after another.
    pub(crate) fn split(self, parts: usize) -> Vec<Pending> {
        let parts = parts.clamp(1, self.files.len().max(1));
        let mut shares: Vec<Pending> = (0..parts).map(|_| Pending::default()).collect();
        for (i, (path, file)) in self.files.into_iter().enumerate() {
            shares[i % parts].files.insert(path, file);
        }
        shares[0].dirs = self.dirs;
        shares
    }

    /// fdatasyncs every file, then fsyncs every directory (blocking: run it off the async
    /// threads). A directory removed meanwhile (group destroyed) needs nothing.
    ///
    /// # Errors
    /// The first failure, naming the file or directory. Never retried: the node fail-stops
    /// (see the flusher's module doc).
    pub(crate) fn sync(&self) -> Result<(), StorageIoError> {
        for (path, file) in &self.files {
            if cfg!(feature = "chaos-skip-log-fsync") {
                continue;
            }
            file.sync_data()
                .map_err(|e| StorageIoError::file("fsync a log segment", path, e))?;
        }
        for dir in &self.dirs {
            sync_dir(dir).map_err(|e| StorageIoError::file("fsync a log directory", dir, e))?;
        }
        Ok(())
    }
}

/// fsyncs a directory, so the files created or removed in it stay so after a crash. A missing
/// directory is not an error: there is nothing left in it to make durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir) {
        Ok(handle) => handle.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
