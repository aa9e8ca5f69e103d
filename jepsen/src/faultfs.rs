//! A fault-injecting FUSE file system under each node's data directory.
//!
//! A passthrough onto a backing directory, except that file *data* is not written through:
//! every write, truncate and fallocate of a regular file is kept in memory (dirty pages and
//! a pending length) and reaches the backing file only when that file is made durable
//! (`fsync` or `fdatasync` on it). Reads see the dirty overlay, so the node sees its own
//! writes as it would through a page cache. Files are opened with `direct_io`, so the
//! kernel keeps no page cache of its own that could outlive a fault.
//!
//! The harness drives three faults through a [`FaultFs`] handle:
//!
//! - **power loss** ([`FaultFs::power_loss`], after the node is SIGKILLed): every unsynced
//!   write is dropped; each file goes back to its last synced content and length.
//! - **disk full** ([`FaultFs::set_capacity`]): writes that would grow the used bytes past
//!   the capacity fail with `ENOSPC`, and `statfs` reports the same capacity and free space.
//! - **fsync errors** ([`FaultFs::set_fail_sync`]): `fsync`/`fdatasync` answer `EIO`, and the
//!   data of that sync is dropped, as Linux drops the dirty pages of a failed writeback.
//!
//! Namespace operations (create, mkdir, rename, unlink, rmdir) are applied to the backing
//! directory at once (removed and replaced entries are moved to a trash directory beside
//! it) and journaled; a power loss undoes, newest first, every one whose directory (the
//! one holding the new name) was not synced since.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use tracing::{info, warn};

use crate::error::JepsenError;

/// Page size of the dirty overlay.
const PAGE: u64 = 4096;
/// Attributes and entries are never cached by the kernel: sizes change under it at a fault.
const TTL: Duration = Duration::ZERO;
/// Block size reported by `statfs`.
const BLOCK: u64 = 4096;
/// Capacity when none is set: effectively unlimited (1 PiB).
const UNLIMITED: u64 = 1 << 50;
/// Threads serving one mount.
const THREADS: usize = 4;

/// The shared state of one mounted file system; the harness keeps it to drive faults.
#[derive(Clone)]
pub struct FaultFs {
    inner: Arc<Inner>,
}

struct Inner {
    backing: PathBuf,
    /// Inodes and paths.
    table: Mutex<Table>,
    /// Bytes used: the sum of every regular file's current (unsynced) length.
    used: AtomicU64,
    /// Bytes the file system may hold.
    capacity: AtomicU64,
    /// fsync/fdatasync answer EIO while set.
    fail_sync: AtomicBool,
    /// Syncs that failed on purpose, for the log.
    failed_syncs: AtomicU64,
    /// Received-snapshot files created (`recv-*.tmp`, raft/src/snapshot.rs).
    snapshots_received: AtomicU64,
    /// Namespace changes not yet made durable by a sync of their directory.
    journal: Mutex<Journal>,
}

/// The undo log of namespace operations: each is applied to the backing directory at
/// once (removed entries are moved to a trash directory beside it), and undone at a
/// power loss unless its directory was synced since.
struct Journal {
    /// Where removed and replaced entries wait (outside the mounted tree, same file system).
    trash: PathBuf,
    next_trash: u64,
    undo: Vec<Undo>,
}

#[derive(Debug)]
enum Undo {
    /// `path` was created (file or directory): removed again.
    Created { path: PathBuf },
    /// `path` was removed (moved to `trash`): put back.
    Removed { path: PathBuf, trash: PathBuf },
    /// `from` was renamed to `to`, moving a replaced entry to `replaced`: renamed back.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
}

impl Undo {
    /// Whether a sync of directory `dir` makes it durable: the directory that holds the
    /// entry's (new) name.
    fn made_durable_by(&self, dir: &Path) -> bool {
        let path = match self {
            Undo::Created { path } | Undo::Removed { path, .. } => path,
            Undo::Renamed { to, .. } => to,
        };
        path.parent() == Some(dir)
    }

    /// Trash this entry holds, deleted once it is durable.
    fn trash(&self) -> Option<&Path> {
        match self {
            Undo::Removed { trash, .. } => Some(trash),
            Undo::Renamed { replaced, .. } => replaced.as_deref(),
            Undo::Created { .. } => None,
        }
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    let res = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[derive(Default)]
struct Table {
    next_ino: u64,
    /// ino -> node.
    nodes: HashMap<u64, Node>,
    /// Relative path -> ino, for every node that still has a name.
    by_path: HashMap<PathBuf, u64>,
    /// Open directory handles: their entries, listed at opendir.
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
}

struct Node {
    /// Relative path under the backing directory; `None` once unlinked or replaced.
    path: Option<PathBuf>,
    /// Kernel lookups not yet forgotten.
    lookups: u64,
    /// The file's data state; `None` for directories and other kinds.
    file: Option<Arc<Mutex<FileState>>>,
}

/// One regular file: its backing file, what is synced, and what is not yet.
struct FileState {
    backing: File,
    /// Length of the backing file: the durable length.
    synced_len: u64,
    /// Length seen by the node.
    len: u64,
    /// Bytes at or beyond this offset read as zero unless dirty (a truncate below the
    /// durable length that is not synced yet).
    zero_from: u64,
    /// Dirty pages by page index, each PAGE bytes.
    dirty: BTreeMap<u64, Box<[u8]>>,
}

impl FileState {
    fn open(path: &Path) -> io::Result<Self> {
        let backing = OpenOptions::new().read(true).write(true).open(path)?;
        let len = backing.metadata()?.len();
        Ok(FileState {
            backing,
            synced_len: len,
            len,
            zero_from: u64::MAX,
            dirty: BTreeMap::new(),
        })
    }

    /// The durable content of page `index` (zero past the durable length and `zero_from`).
    fn clean_page(&self, index: u64) -> io::Result<Box<[u8]>> {
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = index * PAGE;
        let limit = self.synced_len.min(self.zero_from).min(self.len);
        if start < limit {
            let n = (limit - start).min(PAGE) as usize;
            read_exact_at(&self.backing, &mut page[..n], start)?;
        }
        Ok(page)
    }

    fn read(&self, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        if offset >= self.len {
            return Ok(Vec::new());
        }
        let end = self.len.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / PAGE;
            let within = (pos % PAGE) as usize;
            let n = ((index + 1) * PAGE).min(end) - pos;
            match self.dirty.get(&index) {
                Some(page) => out.extend_from_slice(&page[within..within + n as usize]),
                None => {
                    let page = self.clean_page(index)?;
                    out.extend_from_slice(&page[within..within + n as usize]);
                }
            }
            pos += n;
        }
        Ok(out)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = pos / PAGE;
            let within = (pos % PAGE) as usize;
            let n = rest.len().min(PAGE as usize - within);
            if !self.dirty.contains_key(&index) {
                let page = self.clean_page(index)?;
                self.dirty.insert(index, page);
            }
            if let Some(page) = self.dirty.get_mut(&index) {
                page[within..within + n].copy_from_slice(&rest[..n]);
            }
            pos += n as u64;
            rest = &rest[n..];
        }
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len < self.len {
            // Pages wholly past the new end go; the page holding it is zeroed past it.
            let first_gone = len.div_ceil(PAGE);
            self.dirty.split_off(&first_gone);
            if !len.is_multiple_of(PAGE) {
                let index = len / PAGE;
                if !self.dirty.contains_key(&index) {
                    let page = self.clean_page(index)?;
                    self.dirty.insert(index, page);
                }
                if let Some(page) = self.dirty.get_mut(&index) {
                    page[(len % PAGE) as usize..].fill(0);
                }
            }
            self.zero_from = self.zero_from.min(len);
        }
        self.len = len;
        Ok(())
    }

    /// Writes the dirty pages and the length to the backing file and syncs it.
    fn sync(&mut self) -> io::Result<()> {
        if self.zero_from < self.synced_len {
            self.backing.set_len(self.zero_from)?;
        }
        for (index, page) in &self.dirty {
            let start = index * PAGE;
            if start >= self.len {
                break;
            }
            let n = (self.len - start).min(PAGE) as usize;
            self.backing.write_all_at(&page[..n], start)?;
        }
        self.backing.set_len(self.len)?;
        self.backing.sync_all()?;
        self.dirty.clear();
        self.synced_len = self.len;
        self.zero_from = u64::MAX;
        Ok(())
    }

    /// Forgets everything not synced. Returns the bytes the length changed by (old, new).
    fn revert(&mut self) -> (u64, u64) {
        let old = self.len;
        self.dirty.clear();
        self.len = self.synced_len;
        self.zero_from = u64::MAX;
        (old, self.len)
    }
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            // The backing file is shorter than recorded: the rest reads as zero.
            Ok(0) => return Ok(()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent-enough state for a test file system.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_of(ft: std::fs::FileType) -> FileType {
    FileType::from_std(ft).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
    } else {
        UNIX_EPOCH
    }
}

impl FaultFs {
    /// Mounts a new fault file system at `mountpoint` over `backing` (both created when
    /// missing). The mount lives as long as the returned session.
    ///
    /// # Errors
    /// The directories cannot be made, or FUSE cannot mount (no `/dev/fuse`, no
    /// permission).
    pub fn mount(
        backing: &Path,
        mountpoint: &Path,
    ) -> Result<(FaultFs, fuser::BackgroundSession), JepsenError> {
        std::fs::create_dir_all(backing).map_err(|e| JepsenError::io(backing, e))?;
        std::fs::create_dir_all(mountpoint).map_err(|e| JepsenError::io(mountpoint, e))?;
        let backing = std::fs::canonicalize(backing).map_err(|e| JepsenError::io(backing, e))?;
        let used = dir_bytes(&backing);
        let trash = backing.with_extension("trash");
        if trash.exists() {
            std::fs::remove_dir_all(&trash).map_err(|e| JepsenError::io(&trash, e))?;
        }
        std::fs::create_dir_all(&trash).map_err(|e| JepsenError::io(&trash, e))?;
        let mut table = Table {
            next_ino: 2,
            next_fh: 1,
            ..Table::default()
        };
        table.by_path.insert(PathBuf::new(), 1);
        table.nodes.insert(
            1,
            Node {
                path: Some(PathBuf::new()),
                lookups: 1,
                file: None,
            },
        );
        let fs = FaultFs {
            inner: Arc::new(Inner {
                backing,
                table: Mutex::new(table),
                used: AtomicU64::new(used),
                capacity: AtomicU64::new(UNLIMITED),
                fail_sync: AtomicBool::new(false),
                failed_syncs: AtomicU64::new(0),
                snapshots_received: AtomicU64::new(0),
                journal: Mutex::new(Journal {
                    trash,
                    next_trash: 0,
                    undo: Vec::new(),
                }),
            }),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("psubd-faultfs".into()),
            MountOption::Subtype("psubd-faultfs".into()),
        ];
        config.n_threads = Some(THREADS);
        let session =
            fuser::spawn_mount(fs.clone(), mountpoint, &config).map_err(|e| JepsenError::Node {
                node: 0,
                detail: format!("FUSE mount at {}: {e}", mountpoint.display()),
            })?;
        Ok((fs, session))
    }

    /// Power loss: every write not yet synced is dropped, every file goes back to its last
    /// synced content and length, and every namespace operation whose directory was not
    /// synced since is undone. Call only while the node using it is dead.
    pub fn power_loss(&self) -> PowerLoss {
        let files: Vec<Arc<Mutex<FileState>>> = {
            let table = lock(&self.inner.table);
            // Detached files (unlinked, replaced) no longer count towards `used`.
            table
                .nodes
                .values()
                .filter(|n| n.path.is_some())
                .filter_map(|n| n.file.clone())
                .collect()
        };
        let mut report = PowerLoss::default();
        for f in files {
            let mut f = lock(&f);
            let dirty = f.dirty.len() as u64 * PAGE;
            let (old, new) = f.revert();
            if old != new || dirty > 0 {
                report.files += 1;
            }
            report.dirty_bytes += dirty;
            self.adjust_used(old, new);
        }
        // Namespace changes whose directory was not synced are undone, newest first.
        let undo: Vec<Undo> = std::mem::take(&mut lock(&self.inner.journal).undo);
        report.namespace_ops = undo.len() as u64;
        for u in undo.iter().rev() {
            let res = match u {
                Undo::Created { path } => remove_any(&self.full(path)),
                Undo::Removed { path, trash } => std::fs::rename(trash, self.full(path)),
                Undo::Renamed { from, to, replaced } => {
                    std::fs::rename(self.full(to), self.full(from)).and_then(|()| match replaced {
                        Some(r) => std::fs::rename(r, self.full(to)),
                        None => Ok(()),
                    })
                }
            };
            if let Err(e) = res {
                warn!(op = ?u, cause = %e, "undoing a namespace operation at a power loss failed");
            }
        }
        // Names may have changed under every inode: start the table afresh (the node is
        // dead; the kernel looks every name up again, attributes are never cached).
        if !undo.is_empty() {
            let mut table = lock(&self.inner.table);
            table.nodes.retain(|ino, _| *ino == 1);
            table.by_path.clear();
            table.by_path.insert(PathBuf::new(), 1);
            table.dirs.clear();
            drop(table);
            self.inner
                .used
                .store(dir_bytes(&self.inner.backing), Ordering::SeqCst);
        }
        report
    }

    fn journal(&self, u: Undo) {
        lock(&self.inner.journal).undo.push(u);
    }

    /// Removes `rel` (a file, or a directory found empty) by moving it to the trash,
    /// journaled so a power loss puts it back, and answers the kernel.
    fn remove_to_trash(&self, rel: &Path, reply: ReplyEmpty) {
        match self.to_trash(rel) {
            Ok(trash) => {
                self.journal(Undo::Removed {
                    path: rel.to_path_buf(),
                    trash,
                });
                self.detach(rel);
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Moves `rel` to the trash and returns where it went.
    fn to_trash(&self, rel: &Path) -> io::Result<PathBuf> {
        let trash = {
            let mut j = lock(&self.inner.journal);
            j.next_trash += 1;
            j.trash.join(j.next_trash.to_string())
        };
        std::fs::rename(self.full(rel), &trash)?;
        Ok(trash)
    }

    /// Sets the capacity in bytes (`None`: unlimited).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.inner
            .capacity
            .store(bytes.unwrap_or(UNLIMITED), Ordering::SeqCst);
    }

    /// Bytes in use now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::SeqCst)
    }

    /// While set, every fsync/fdatasync fails with EIO and drops the data it would have
    /// made durable.
    pub fn set_fail_sync(&self, fail: bool) {
        self.inner.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// Received-snapshot files (`recv-*.tmp`) created so far: a node starting to receive
    /// a snapshot from its leader.
    pub fn snapshots_received(&self) -> u64 {
        self.inner.snapshots_received.load(Ordering::SeqCst)
    }

    /// Syncs failed on purpose so far.
    pub fn failed_syncs(&self) -> u64 {
        self.inner.failed_syncs.load(Ordering::SeqCst)
    }

    fn adjust_used(&self, old: u64, new: u64) {
        if new >= old {
            self.inner.used.fetch_add(new - old, Ordering::SeqCst);
        } else {
            let _ = self
                .inner
                .used
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                    Some(u.saturating_sub(old - new))
                });
        }
    }

    /// Reserves `grow` more bytes, or ENOSPC.
    fn reserve(&self, grow: u64) -> Result<(), Errno> {
        if grow == 0 {
            return Ok(());
        }
        let cap = self.inner.capacity.load(Ordering::SeqCst);
        self.inner
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                let n = u.checked_add(grow)?;
                (n <= cap).then_some(n)
            })
            .map(|_| ())
            .map_err(|_| Errno::ENOSPC)
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.inner.backing.join(rel)
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let table = lock(&self.inner.table);
        table
            .nodes
            .get(&ino.0)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(Errno::EINVAL);
        }
        Ok(self.path_of(parent)?.join(name))
    }

    fn file_of(&self, ino: INodeNo) -> Option<Arc<Mutex<FileState>>> {
        lock(&self.inner.table)
            .nodes
            .get(&ino.0)
            .and_then(|n| n.file.clone())
    }

    /// The inode for `rel` (allocated when new), counting a kernel lookup when `lookup`.
    fn ino_for(&self, rel: &Path, meta: &std::fs::Metadata, lookup: bool) -> io::Result<u64> {
        let mut table = lock(&self.inner.table);
        if let Some(ino) = table.by_path.get(rel).copied() {
            if let Some(node) = table.nodes.get_mut(&ino) {
                if lookup {
                    node.lookups += 1;
                }
                return Ok(ino);
            }
        }
        let file = if meta.is_file() {
            Some(Arc::new(Mutex::new(FileState::open(&self.full(rel))?)))
        } else {
            None
        };
        let ino = table.next_ino;
        table.next_ino += 1;
        table.by_path.insert(rel.to_path_buf(), ino);
        table.nodes.insert(
            ino,
            Node {
                path: Some(rel.to_path_buf()),
                lookups: u64::from(lookup),
                file,
            },
        );
        Ok(ino)
    }

    fn attr(&self, ino: u64, meta: &std::fs::Metadata) -> FileAttr {
        let size = if meta.is_file() {
            self.file_of(INodeNo(ino))
                .map(|f| lock(&f).len)
                .unwrap_or(meta.len())
        } else {
            meta.len()
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: time(meta.ctime(), meta.ctime_nsec()),
            kind: kind_of(meta.file_type()),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: BLOCK as u32,
            flags: 0,
        }
    }

    fn entry(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.full(rel)).map_err(|e| errno(&e))?;
        let ino = self.ino_for(rel, &meta, true).map_err(|e| errno(&e))?;
        Ok(self.attr(ino, &meta))
    }

    /// Detaches whatever inode `rel` names (unlinked or replaced), releasing its bytes.
    fn detach(&self, rel: &Path) {
        let mut table = lock(&self.inner.table);
        if let Some(ino) = table.by_path.remove(rel) {
            let mut gone = None;
            if let Some(node) = table.nodes.get_mut(&ino) {
                node.path = None;
                if let Some(f) = &node.file {
                    gone = Some(lock(f).len);
                }
                if node.lookups == 0 {
                    table.nodes.remove(&ino);
                }
            }
            drop(table);
            if let Some(len) = gone {
                self.adjust_used(len, 0);
            }
        }
    }

    fn do_sync(&self, ino: INodeNo) -> Result<(), Errno> {
        let Some(file) = self.file_of(ino) else {
            return Ok(());
        };
        let mut f = lock(&file);
        if self.inner.fail_sync.load(Ordering::SeqCst) {
            let (old, new) = f.revert();
            self.adjust_used(old, new);
            self.inner.failed_syncs.fetch_add(1, Ordering::SeqCst);
            return Err(Errno::EIO);
        }
        f.sync().map_err(|e| errno(&e))
    }
}

/// What a power loss dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct PowerLoss {
    /// Files that lost unsynced data or length.
    pub files: u64,
    /// Dirty bytes dropped (whole pages).
    pub dirty_bytes: u64,
    /// Namespace operations undone (their directory was not synced).
    pub namespace_ops: u64,
}

/// Bytes of the regular files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
            Ok(m) if m.is_file() => total += m.len(),
            _ => {}
        }
    }
    total
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child_path(parent, name).and_then(|p| self.entry(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut table = lock(&self.inner.table);
        if let Some(node) = table.nodes.get_mut(&ino.0) {
            node.lookups = node.lookups.saturating_sub(nlookup);
            if node.lookups == 0 && node.path.is_none() {
                table.nodes.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let file = self.file_of(ino);
        let meta = match (&file, self.path_of(ino)) {
            (Some(f), _) => lock(f).backing.metadata(),
            (None, Ok(p)) => std::fs::symlink_metadata(self.full(&p)),
            (None, Err(e)) => return reply.error(e),
        };
        match meta {
            Ok(meta) => reply.attr(&TTL, &self.attr(ino.0, &meta)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(size) = size {
            let Some(file) = self.file_of(ino) else {
                return reply.error(Errno::EISDIR);
            };
            let mut f = lock(&file);
            let old = f.len;
            if size > old {
                if let Err(e) = self.reserve(size - old) {
                    return reply.error(e);
                }
            }
            if let Err(e) = f.set_len(size) {
                if size > old {
                    self.adjust_used(size, old);
                }
                return reply.error(errno(&e));
            }
            if size < old {
                self.adjust_used(old, size);
            }
        }
        if let Some(mode) = mode {
            if let Ok(p) = self.path_of(ino) {
                let perms = std::fs::Permissions::from_mode(mode & 0o7777);
                if let Err(e) = std::fs::set_permissions(self.full(&p), perms) {
                    return reply.error(errno(&e));
                }
            }
        }
        self.getattr(_req, ino, fh, reply);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let rel = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let res = std::fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(self.full(&rel));
        if res.is_ok() {
            self.journal(Undo::Created { path: rel.clone() });
        }
        match res.map_err(|e| errno(&e)).and_then(|()| self.entry(&rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let rel = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::fs::symlink_metadata(self.full(&rel)) {
            Ok(m) if m.is_dir() => return reply.error(Errno::EISDIR),
            Ok(_) => {}
            Err(e) => return reply.error(errno(&e)),
        }
        self.remove_to_trash(&rel, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let rel = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::fs::read_dir(self.full(&rel)) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return reply.error(Errno::ENOTEMPTY);
                }
            }
            Err(e) => return reply.error(errno(&e)),
        }
        self.remove_to_trash(&rel, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let (from, to) = match (
            self.child_path(parent, name),
            self.child_path(newparent, newname),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let from_meta = match std::fs::symlink_metadata(self.full(&from)) {
            Ok(m) => m,
            Err(e) => return reply.error(errno(&e)),
        };
        // A replaced entry goes to the trash first, so a power loss can put it back.
        let mut replaced = None;
        if let Ok(to_meta) = std::fs::symlink_metadata(self.full(&to)) {
            if from == to {
                return reply.ok();
            }
            match (from_meta.is_dir(), to_meta.is_dir()) {
                (true, false) => return reply.error(Errno::ENOTDIR),
                (false, true) => return reply.error(Errno::EISDIR),
                (true, true) => {
                    if std::fs::read_dir(self.full(&to)).map_or(true, |mut it| it.next().is_some())
                    {
                        return reply.error(Errno::ENOTEMPTY);
                    }
                }
                (false, false) => {}
            }
            match self.to_trash(&to) {
                Ok(t) => replaced = Some(t),
                Err(e) => return reply.error(errno(&e)),
            }
        }
        if let Err(e) = std::fs::rename(self.full(&from), self.full(&to)) {
            if let Some(t) = &replaced {
                let _ = std::fs::rename(t, self.full(&to));
            }
            return reply.error(errno(&e));
        }
        self.journal(Undo::Renamed {
            from: from.clone(),
            to: to.clone(),
            replaced,
        });
        self.detach(&to);
        let mut table = lock(&self.inner.table);
        // Move `from` and everything under it.
        let moved: Vec<(PathBuf, u64)> = table
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(&from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            table.by_path.remove(&old);
            let new = match old.strip_prefix(&from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.clone(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            if let Some(node) = table.nodes.get_mut(&ino) {
                node.path = Some(new.clone());
            }
            table.by_path.insert(new, ino);
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(file) = self.file_of(ino) else {
            return reply.error(Errno::EISDIR);
        };
        if flags.0 & libc::O_TRUNC != 0 {
            let mut f = lock(&file);
            let old = f.len;
            if let Err(e) = f.set_len(0) {
                return reply.error(errno(&e));
            }
            self.adjust_used(old, 0);
        }
        reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let rel = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let existed = std::fs::symlink_metadata(self.full(&rel)).is_ok();
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        }
        if let Err(e) = opts.open(self.full(&rel)) {
            return reply.error(errno(&e));
        }
        if !existed {
            self.journal(Undo::Created { path: rel.clone() });
        }
        if name.as_bytes().starts_with(b"recv-") {
            self.inner.snapshots_received.fetch_add(1, Ordering::SeqCst);
        }
        let attr = match self.entry(&rel) {
            Ok(a) => a,
            Err(e) => return reply.error(e),
        };
        if flags & libc::O_TRUNC != 0 {
            if let Some(file) = self.file_of(attr.ino) {
                let mut f = lock(&file);
                let old = f.len;
                if f.set_len(0).is_ok() {
                    self.adjust_used(old, 0);
                }
            }
        }
        let size = self.file_of(attr.ino).map_or(0, |f| lock(&f).len);
        let attr = FileAttr { size, ..attr };
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(attr.ino.0),
            FopenFlags::FOPEN_DIRECT_IO,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.file_of(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let f = lock(&file);
        match f.read(offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(file) = self.file_of(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let mut f = lock(&file);
        let offset = if flags.0 & libc::O_APPEND != 0 {
            f.len
        } else {
            offset
        };
        let end = offset + data.len() as u64;
        let grow = end.saturating_sub(f.len);
        if let Err(e) = self.reserve(grow) {
            return reply.error(e);
        }
        match f.write(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                self.adjust_used(grow, 0);
                reply.error(errno(&e))
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_sync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Only plain allocation (mode 0, or keep-size, which changes nothing visible).
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let Some(file) = self.file_of(ino) else {
            return reply.error(Errno::EISDIR);
        };
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.ok();
        }
        let mut f = lock(&file);
        let end = offset.saturating_add(length);
        if end > f.len {
            let old = f.len;
            if let Err(e) = self.reserve(end - old) {
                return reply.error(e);
            }
            if let Err(e) = f.set_len(end) {
                self.adjust_used(end, old);
                return reply.error(errno(&e));
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let rel = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let entries = match std::fs::read_dir(self.full(&rel)) {
            Ok(it) => it,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut list = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (1, FileType::Directory, OsString::from("..")),
        ];
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let child = rel.join(e.file_name());
            let Ok(child_ino) = self.ino_for(&child, &meta, false) else {
                continue;
            };
            list.push((child_ino, kind_of(meta.file_type()), e.file_name()));
        }
        let mut table = lock(&self.inner.table);
        let fh = table.next_fh;
        table.next_fh += 1;
        table.dirs.insert(fh, list);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let table = lock(&self.inner.table);
        let Some(list) = table.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.inner.table).dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.inner.fail_sync.load(Ordering::SeqCst) {
            self.inner.failed_syncs.fetch_add(1, Ordering::SeqCst);
            return reply.error(Errno::EIO);
        }
        // The directory's namespace changes become durable: sync the backing directory,
        // forget their undo entries, and empty the trash they held.
        let dir = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = File::open(self.full(&dir)).and_then(|d| d.sync_all()) {
            return reply.error(errno(&e));
        }
        let durable: Vec<Undo> = {
            let mut j = lock(&self.inner.journal);
            let (durable, pending) = std::mem::take(&mut j.undo)
                .into_iter()
                .partition(|u| u.made_durable_by(&dir));
            j.undo = pending;
            durable
        };
        for u in &durable {
            if let Some(t) = u.trash() {
                if let Err(e) = remove_any(t) {
                    warn!(path = %t.display(), cause = %e, "emptying the trash failed");
                }
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let cap = self.inner.capacity.load(Ordering::SeqCst);
        let used = self.used();
        let blocks = cap / BLOCK;
        let free = cap.saturating_sub(used) / BLOCK;
        reply.statfs(
            blocks,
            free,
            free,
            1 << 20,
            1 << 20,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// Unmounts a FUSE mount left behind by a harness that died (lazy, so a busy mount goes
/// too). Errors are ignored: usually nothing is mounted there.
pub fn unmount_stale(path: &Path) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2 with a valid NUL-terminated path; the result is only inspected.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        info!(path = %path.display(), "unmounted a stale fault file system");
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            warn!(path = %path.display(), cause = %e, "unmounting a stale mount failed");
        }
    }
}

/// One fault file system per node, mounted at each node's data directory over a backing
/// directory beside it (`nN.disk`). Unmounted when dropped.
pub struct Disks {
    disks: Vec<(u64, FaultFs)>,
    sessions: Mutex<Vec<fuser::BackgroundSession>>,
}

impl Disks {
    /// Mounts one file system per `(node id, data dir)`.
    ///
    /// # Errors
    /// The first mount that fails (the ones before it are unmounted).
    pub fn mount(nodes: &[(u64, PathBuf)]) -> Result<Disks, JepsenError> {
        let mut disks = Vec::new();
        let mut sessions = Vec::new();
        for (id, data_dir) in nodes {
            let backing = data_dir.with_extension("disk");
            let (fs, session) = FaultFs::mount(&backing, data_dir)?;
            info!(node = id, mount = %data_dir.display(), backing = %backing.display(), "fault file system mounted");
            disks.push((*id, fs));
            sessions.push(session);
        }
        Ok(Disks {
            disks,
            sessions: Mutex::new(sessions),
        })
    }

    /// Node `id`'s file system.
    pub fn of(&self, id: u64) -> Option<&FaultFs> {
        self.disks.iter().find(|(n, _)| *n == id).map(|(_, d)| d)
    }

    /// Restores every capacity and stops failing syncs.
    pub fn heal_all(&self) {
        for (_, d) in &self.disks {
            d.set_capacity(None);
            d.set_fail_sync(false);
        }
    }

    /// Unmounts every file system (the nodes must be dead).
    pub fn unmount(&self) {
        for s in lock(&self.sessions).drain(..) {
            if let Err(e) = s.umount_and_join() {
                warn!(cause = %e, "unmounting a fault file system failed");
            }
        }
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        self.unmount();
    }
}
