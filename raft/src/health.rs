//! The node's storage health: whether its storage failed, whether its disk (or a peer's) is
//! short of free space, and which Raft groups stopped on a fatal error.
//!
//! Two policies live here (docs/operations.md § Disk faults):
//! - **Fail-stop on a failed sync.** After an fsync or fdatasync fails, Linux may drop the
//!   dirty pages and report the next sync of the same file as a success, for data that never
//!   reached the disk. So a failed sync is never retried: the flusher records the failure
//!   here, answers every later request with an error without touching the disk, and the node
//!   binary exits non-zero when it sees the failure. After a restart the node recovers from
//!   what it had synced and from its peers.
//! - **Refuse writes before the disk is full.** A monitor checks the data directory's free
//!   space every [`SPACE_CHECK_EVERY`]. Below the threshold the node is *low on space*: the
//!   partitions it leads refuse new records, and so does every partition leader whose
//!   replica set includes it (peers learn it over the transport, see
//!   [`crate::RaftNode::low_space_among`]), because replicas of one partition fill
//!   together. Reads and elections go on; writes resume by themselves once space returns.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::StorageIoError;
use crate::types::GroupId;

/// How often the free space of the data directory is measured.
pub const SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Once low, a node takes writes again only when free space is this share (in percent)
/// above the threshold, so a disk hovering at the threshold does not flap.
const RESUME_ABOVE_PERCENT: u64 = 10;

/// Why the node's storage failed; the first failure is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    /// What failed, naming the file or directory.
    pub cause: String,
}

/// Free space of the data directory as last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceReport {
    /// Bytes available to the node, `None` before the first measurement or if it failed.
    pub free_bytes: Option<u64>,
    /// The configured threshold (0: never low).
    pub min_free_bytes: u64,
    /// True while writes are refused for lack of space.
    pub low: bool,
}

/// The node's storage health, shared by the flusher, the Raft registry, the transport and
/// the request paths. Cheap to clone.
#[derive(Clone, Default)]
pub struct StorageHealth {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    failure: Mutex<Option<StorageFailure>>,
    failed: watch::Sender<bool>,
    low_space: watch::Sender<bool>,
    free_bytes: AtomicU64,
    measured: AtomicBool,
    min_free_bytes: AtomicU64,
    /// Groups that stopped on a fatal error other than a storage failure.
    stopped_groups: Mutex<BTreeSet<GroupId>>,
}

impl StorageHealth {
    /// Records that storage failed (the first cause is kept) and logs it once, naming the
    /// file. From now on nothing may be acknowledged as durable.
    pub fn fail(&self, error: &StorageIoError) {
        let mut failure = lock(&self.inner.failure);
        if failure.is_some() {
            return;
        }
        let cause = error.to_string();
        tracing::error!(
            cause = %cause,
            "storage failed: a write or sync did not complete, so nothing more is acknowledged; \
             the node stops and recovers from its synced data and its peers at restart"
        );
        *failure = Some(StorageFailure { cause });
        self.inner.failed.send_replace(true);
    }

    /// The failure, if storage failed.
    pub fn failure(&self) -> Option<StorageFailure> {
        lock(&self.inner.failure).clone()
    }

    /// Resolves once storage has failed (at once if it already has).
    pub async fn failed(&self) -> StorageFailure {
        let mut failed = self.inner.failed.subscribe();
        // The sender lives in `self`, so the wait ends only with a failure.
        let _ = failed.wait_for(|failed| *failed).await;
        self.failure().unwrap_or(StorageFailure {
            cause: "storage failed".into(),
        })
    }

    /// Records that `group` stopped on a fatal error (it serves nothing until the node
    /// restarts); `/readyz` reports it.
    pub fn group_stopped(&self, group: GroupId) {
        lock(&self.inner.stopped_groups).insert(group);
    }

    /// Forgets a stopped group (it was closed, e.g. its topic deleted).
    pub fn group_closed(&self, group: GroupId) {
        lock(&self.inner.stopped_groups).remove(&group);
    }

    /// Groups that stopped on a fatal error.
    pub fn stopped_groups(&self) -> Vec<GroupId> {
        lock(&self.inner.stopped_groups).iter().copied().collect()
    }

    /// This node's free space as last measured.
    pub fn space(&self) -> SpaceReport {
        SpaceReport {
            free_bytes: self
                .inner
                .measured
                .load(Ordering::Relaxed)
                .then(|| self.inner.free_bytes.load(Ordering::Relaxed)),
            min_free_bytes: self.inner.min_free_bytes.load(Ordering::Relaxed),
            low: *self.inner.low_space.borrow(),
        }
    }

    /// Whether this node is low on space, as a watch (the transport tells peers on change).
    pub(crate) fn low_space_watch(&self) -> watch::Receiver<bool> {
        self.inner.low_space.subscribe()
    }

    /// True while this node is low on space.
    pub fn is_low_on_space(&self) -> bool {
        *self.inner.low_space.borrow()
    }

    /// Starts measuring the free space of `dir` every [`SPACE_CHECK_EVERY`] against
    /// `min_free_bytes` (0: never low), on the current runtime, until the health and every
    /// clone of it are dropped. Measures once before returning.
    pub fn watch_free_space(&self, dir: PathBuf, min_free_bytes: u64) {
        self.inner
            .min_free_bytes
            .store(min_free_bytes, Ordering::Relaxed);
        self.measure(&dir);
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SPACE_CHECK_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let health = StorageHealth { inner };
                let dir = dir.clone();
                let probe = health.clone();
                // statvfs is a syscall that may block on a sick disk: keep it off the
                // async threads.
                if tokio::task::spawn_blocking(move || probe.measure(&dir))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// One measurement of `dir`'s free space, updating the low-space state.
    fn measure(&self, dir: &Path) {
        let free = match free_bytes(dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), cause = %e, "cannot measure free space");
                return;
            }
        };
        self.inner.free_bytes.store(free, Ordering::Relaxed);
        self.inner.measured.store(true, Ordering::Relaxed);
        let min = self.inner.min_free_bytes.load(Ordering::Relaxed);
        let was_low = *self.inner.low_space.borrow();
        let low = if was_low {
            free < min.saturating_add(min / 100 * RESUME_ABOVE_PERCENT)
        } else {
            free < min
        };
        if low == was_low {
            return;
        }
        if low {
            tracing::warn!(
                free_bytes = free,
                min_free_bytes = min,
                dir = %dir.display(),
                "free space below the threshold: refusing new records (507) until space returns"
            );
        } else {
            tracing::info!(
                free_bytes = free,
                min_free_bytes = min,
                "free space back: taking writes again"
            );
        }
        self.inner.low_space.send_replace(low);
    }
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory
    // of the right type; statvfs fills it in full when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every guarded value is a plain set or option, consistent after any panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_is_kept_and_wakes_the_waiters() {
        let health = StorageHealth::default();
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.failed().await }
        });
        health.fail(&StorageIoError::file(
            "fsync a log segment",
            "/data/logs/7/00000000000000000001.seg",
            std::io::Error::from_raw_os_error(libc::EIO),
        ));
        health.fail(&StorageIoError::FlusherStopped);
        let failure = waiter.await.unwrap();
        assert!(
            failure.cause.contains("00000000000000000001.seg"),
            "{failure:?}"
        );
        assert_eq!(health.failure(), Some(failure));
    }

    #[tokio::test]
    async fn low_space_is_measured_against_the_threshold_with_hysteresis() {
        let dir = tempfile::tempdir().unwrap();
        let health = StorageHealth::default();
        health.watch_free_space(dir.path().to_path_buf(), 0);
        let report = health.space();
        assert!(report.free_bytes.is_some_and(|free| free > 0));
        assert!(!report.low, "a threshold of 0 is never low");
        let free = report.free_bytes.unwrap();
        health
            .inner
            .min_free_bytes
            .store(free.saturating_mul(2), Ordering::Relaxed);
        health.measure(dir.path());
        assert!(health.space().low, "twice the free space is out of reach");
        assert!(health.is_low_on_space());
        // Just above the threshold is not yet enough to resume.
        health
            .inner
            .min_free_bytes
            .store(free - free / 50, Ordering::Relaxed);
        health.measure(dir.path());
        assert!(health.space().low, "resumes only well above the threshold");
        health.inner.min_free_bytes.store(1, Ordering::Relaxed);
        health.measure(dir.path());
        assert!(!health.space().low);
    }
}
