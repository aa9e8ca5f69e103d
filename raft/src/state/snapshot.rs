//! Snapshot files: their format, the per-group snapshot directory, building and installing.
//!
//! A snapshot is one file under `<data_dir>/snapshots/<group>/`, streamed to and from disk
//! pair by pair, so a large partition is never held in memory. The file format:
//!
//! ```text
//! magic     8 bytes  "PSUBSNP1" (the digit is the format version)
//! header    u32 LE length, then the postcard-encoded SnapshotMeta
//! pairs     repeated: tag 1 (u8), key length (u32 LE), value length (u32 LE), key, value
//! trailer   tag 0 (u8), pair count (u64 LE), checksum (u64 LE)
//! ```
//!
//! The checksum is FNV-1a (64 bit) over every byte before it; a file that is truncated, torn
//! or altered is refused before the state tree is touched.
//!
//! File names are `<ordinal:020>-<nonce:016x>.psnap`, where the ordinal is the last included
//! log index + 1 (0 for an empty state): the greatest name is the newest snapshot, the only one
//! kept. Files being written end in `.tmp` and are removed at open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};

use crate::blocking::blocking;
use crate::engine::{Tree, WriteBatch};
use crate::error::{IntoRaftResult, StorageIoError};
use crate::state::logic::{SnapshotHold, SnapshotPlan, RESERVED_KEY_PREFIX};
use crate::state::schedule::CurrentSnapshot;
use crate::state::write_behind::{write_out_in_steps, WriteBehind};
use crate::stats::{GroupStats, SnapshotOrigin};
use crate::types::{typ, GroupId, TypeConfig};

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"PSUBSNP1";
/// Extension of complete snapshot files.
const SNAPSHOT_EXT: &str = "psnap";
/// Extension of files being written or received.
const TEMP_EXT: &str = "tmp";
/// Frame tag of a key/value pair.
const TAG_PAIR: u8 = 1;
/// Frame tag of the trailer.
const TAG_END: u8 = 0;
/// Largest header accepted: membership configs are small; a larger one means corruption.
const MAX_HEADER_BYTES: u32 = 1 << 20;
/// Largest key + value accepted in one frame, so a corrupt length cannot make us allocate
/// without bound. Far above any record batch the api layer accepts.
const MAX_PAIR_BYTES: u64 = 256 << 20;
/// Buffer size for reading and writing snapshot files.
const IO_BUFFER_BYTES: usize = 1 << 20;
/// A snapshot load writes the tree in batches of at most this many pairs...
const LOAD_BATCH_PAIRS: usize = 16_384;
/// ...or this many bytes, so memory stays bounded whatever the snapshot's size.
const LOAD_BATCH_BYTES: usize = 8 << 20;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds `bytes` into an FNV-1a hash.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes the framed format, hashing as it goes.
struct SnapshotWriter<W: Write> {
    inner: W,
    hash: u64,
    pairs: u64,
    path: PathBuf,
}

impl<W: Write> SnapshotWriter<W> {
    fn new(inner: W, path: &Path, meta: &typ::SnapshotMeta) -> Result<Self, StorageIoError> {
        let header =
            postcard::to_allocvec(meta).map_err(|e| StorageIoError::codec("snapshot header", e))?;
        let header_len = u32::try_from(header.len())
            .ok()
            .filter(|len| *len <= MAX_HEADER_BYTES)
            .ok_or_else(|| StorageIoError::SnapshotInvalid {
                path: path.to_path_buf(),
                reason: "header too large",
            })?;
        let mut writer = SnapshotWriter {
            inner,
            hash: FNV_OFFSET,
            pairs: 0,
            path: path.to_path_buf(),
        };
        writer.write(MAGIC)?;
        writer.write(&header_len.to_le_bytes())?;
        writer.write(&header)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageIoError> {
        self.hash = fnv1a(self.hash, bytes);
        self.inner
            .write_all(bytes)
            .map_err(|e| StorageIoError::file("write snapshot file", &self.path, e))
    }

    fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageIoError> {
        let too_large = || StorageIoError::SnapshotInvalid {
            path: self.path.clone(),
            reason: "pair too large",
        };
        let key_len = u32::try_from(key.len()).map_err(|_| too_large())?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_large())?;
        if u64::from(key_len) + u64::from(value_len) > MAX_PAIR_BYTES {
            return Err(too_large());
        }
        self.write(&[TAG_PAIR])?;
        self.write(&key_len.to_le_bytes())?;
        self.write(&value_len.to_le_bytes())?;
        self.write(key)?;
        self.write(value)?;
        self.pairs += 1;
        Ok(())
    }

    /// Writes the trailer and returns the inner writer (not yet flushed to disk).
    fn finish(mut self) -> Result<W, StorageIoError> {
        self.write(&[TAG_END])?;
        let pairs = self.pairs;
        self.write(&pairs.to_le_bytes())?;
        let checksum = self.hash;
        self.inner
            .write_all(&checksum.to_le_bytes())
            .map_err(|e| StorageIoError::file("write snapshot file", &self.path, e))?;
        Ok(self.inner)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// A key and its value, as read from a snapshot file.
type Pair = (Vec<u8>, Vec<u8>);

/// Reads the framed format, verifying the checksum at the end.
struct SnapshotReader<R: Read> {
    inner: R,
    hash: u64,
    pairs: u64,
    path: PathBuf,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the magic and the header.
    fn open(inner: R, path: &Path) -> Result<(typ::SnapshotMeta, Self), StorageIoError> {
        let mut reader = SnapshotReader {
            inner,
            hash: FNV_OFFSET,
            pairs: 0,
            path: path.to_path_buf(),
            done: false,
        };
        let mut magic = [0u8; 8];
        reader.read_hashed(&mut magic)?;
        if &magic != MAGIC {
            return Err(reader.invalid("not a snapshot file (bad magic)"));
        }
        let header_len = u32::from_le_bytes(reader.read_array()?);
        if header_len > MAX_HEADER_BYTES {
            return Err(reader.invalid("header too large"));
        }
        let mut header = vec![0u8; header_len as usize];
        reader.read_hashed(&mut header)?;
        let meta = postcard::from_bytes(&header)
            .map_err(|e| StorageIoError::codec("snapshot header", e))?;
        Ok((meta, reader))
    }

    fn invalid(&self, reason: &'static str) -> StorageIoError {
        StorageIoError::SnapshotInvalid {
            path: self.path.clone(),
            reason,
        }
    }

    fn read_raw(&mut self, buf: &mut [u8]) -> Result<(), StorageIoError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.invalid("truncated")
            } else {
                StorageIoError::file("read snapshot file", &self.path, e)
            }
        })
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> Result<(), StorageIoError> {
        self.read_raw(buf)?;
        self.hash = fnv1a(self.hash, buf);
        Ok(())
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], StorageIoError> {
        let mut buf = [0u8; N];
        self.read_hashed(&mut buf)?;
        Ok(buf)
    }

    /// The next pair, or None after the trailer was read and verified.
    fn next_pair(&mut self) -> Result<Option<Pair>, StorageIoError> {
        if self.done {
            return Ok(None);
        }
        let [tag] = self.read_array::<1>()?;
        match tag {
            TAG_PAIR => {
                let key_len = u32::from_le_bytes(self.read_array()?);
                let value_len = u32::from_le_bytes(self.read_array()?);
                if u64::from(key_len) + u64::from(value_len) > MAX_PAIR_BYTES {
                    return Err(self.invalid("pair too large"));
                }
                let mut key = vec![0u8; key_len as usize];
                self.read_hashed(&mut key)?;
                let mut value = vec![0u8; value_len as usize];
                self.read_hashed(&mut value)?;
                self.pairs += 1;
                Ok(Some((key, value)))
            }
            TAG_END => {
                let pairs = u64::from_le_bytes(self.read_array()?);
                let expected = self.hash;
                let mut checksum = [0u8; 8];
                self.read_raw(&mut checksum)?;
                if pairs != self.pairs {
                    return Err(self.invalid("pair count mismatch"));
                }
                if u64::from_le_bytes(checksum) != expected {
                    return Err(self.invalid("checksum mismatch"));
                }
                self.done = true;
                Ok(None)
            }
            _ => Err(self.invalid("unknown frame tag")),
        }
    }
}

/// Reads a whole snapshot from `source`, verifying it; returns its metadata.
fn verify(source: impl Read, path: &Path) -> Result<typ::SnapshotMeta, StorageIoError> {
    let (meta, mut reader) = SnapshotReader::open(source, path)?;
    while reader.next_pair()?.is_some() {}
    Ok(meta)
}

/// Reads only the metadata of the snapshot file at `path`.
fn read_meta(file: &mut File, path: &Path) -> Result<typ::SnapshotMeta, StorageIoError> {
    let (meta, _reader) = SnapshotReader::open(BufReader::new(&mut *file), path)?;
    Ok(meta)
}

// ---------------------------------------------------------------------------------------------
// The directory
// ---------------------------------------------------------------------------------------------

/// A group's snapshot directory.
///
/// Invariant: at most one complete (`.psnap`) file is kept after each publish; it is the
/// newest, i.e. the one with the greatest name.
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    /// Serialises the steps that change which file is current (rename, delete) with the ones
    /// that pick it (open current), so a reader never picks a file being deleted. Held only
    /// for short, non-async file operations; never held together with another lock.
    lock: Mutex<()>,
    /// Length in bytes of the current snapshot file, 0 without one (the snapshot schedule
    /// weighs the state's growth against it).
    current_bytes: AtomicU64,
    /// Snapshots published since the store was opened (the schedule repeats a request
    /// openraft may have dropped once one was).
    published: AtomicU64,
    /// The group's counters of snapshots built and installed (the node's metrics).
    stats: Arc<GroupStats>,
}

impl SnapshotStore {
    /// Opens the directory (creating it), removing leftovers of interrupted writes.
    pub(crate) fn open(dir: PathBuf, stats: Arc<GroupStats>) -> Result<Self, StorageIoError> {
        fs::create_dir_all(&dir)
            .map_err(|e| StorageIoError::file("create snapshot directory", &dir, e))?;
        let store = SnapshotStore {
            dir,
            lock: Mutex::new(()),
            current_bytes: AtomicU64::new(0),
            published: AtomicU64::new(0),
            stats,
        };
        for path in store.list(TEMP_EXT)? {
            remove_if_exists(&path)?;
        }
        {
            let _guard = store.guard();
            store.retain_newest()?;
            if let Some(path) = store.newest_path()? {
                store.note_current(&path)?;
            }
        }
        Ok(store)
    }

    /// The current snapshot file's length and how many were published so far.
    pub(crate) fn current(&self) -> CurrentSnapshot {
        CurrentSnapshot {
            bytes: self.current_bytes.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
        }
    }

    /// Records `path` as the current snapshot file. Call with the lock held.
    fn note_current(&self, path: &Path) -> Result<(), StorageIoError> {
        let len = fs::metadata(path)
            .map_err(|e| StorageIoError::file("stat snapshot file", path, e))?
            .len();
        self.current_bytes.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Files in the directory with extension `ext`, sorted by name.
    fn list(&self, ext: &str) -> Result<Vec<PathBuf>, StorageIoError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| StorageIoError::file("list snapshot directory", &self.dir, e))?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| StorageIoError::file("list snapshot directory", &self.dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|x| x.to_str()) == Some(ext) {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// The newest complete snapshot file, if any.
    fn newest_path(&self) -> Result<Option<PathBuf>, StorageIoError> {
        Ok(self.list(SNAPSHOT_EXT)?.pop())
    }

    /// Deletes every complete snapshot but the newest. Call with the lock held.
    fn retain_newest(&self) -> Result<(), StorageIoError> {
        let mut paths = self.list(SNAPSHOT_EXT)?;
        paths.pop();
        for path in paths {
            remove_if_exists(&path)?;
        }
        Ok(())
    }

    /// The newest snapshot's path, metadata and an open handle on it, positioned at its start.
    pub(crate) fn open_current(
        &self,
    ) -> Result<Option<(PathBuf, typ::SnapshotMeta, File)>, StorageIoError> {
        let _guard = self.guard();
        let Some(path) = self.newest_path()? else {
            return Ok(None);
        };
        let mut file =
            File::open(&path).map_err(|e| StorageIoError::file("open snapshot file", &path, e))?;
        let meta = read_meta(&mut file, &path)?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| StorageIoError::file("seek snapshot file", &path, e))?;
        Ok(Some((path, meta, file)))
    }

    /// A new, empty temporary file (read + write) for a snapshot being written or received.
    pub(crate) fn create_temp(&self, kind: &str) -> Result<(PathBuf, File), StorageIoError> {
        let path = self
            .dir
            .join(format!("{kind}-{:016x}.{TEMP_EXT}", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageIoError::file("create snapshot file", &path, e))?;
        Ok((path, file))
    }

    /// Removes a temporary file that will not be used (no error if already gone).
    pub(crate) fn discard_temp(&self, path: &Path) -> Result<(), StorageIoError> {
        remove_if_exists(path)
    }

    /// Makes the complete, fsynced temporary file `temp` the current snapshot: renames it
    /// into place, fsyncs the directory (so the rename survives a crash), and deletes older
    /// snapshots. Returns the final path. `origin` is counted in the group's stats.
    fn publish(
        &self,
        temp: &Path,
        meta: &typ::SnapshotMeta,
        origin: SnapshotOrigin,
    ) -> Result<PathBuf, StorageIoError> {
        let ordinal = meta.last_log_id.map_or(0, |id| id.index.saturating_add(1));
        let path = self.dir.join(format!(
            "{ordinal:020}-{:016x}.{SNAPSHOT_EXT}",
            rand::random::<u64>()
        ));
        let _guard = self.guard();
        fs::rename(temp, &path)
            .map_err(|e| StorageIoError::file("rename snapshot file", &path, e))?;
        sync_dir(&self.dir)?;
        self.retain_newest()?;
        self.note_current(&path)?;
        self.published.fetch_add(1, Ordering::Relaxed);
        self.stats
            .snapshot_published(origin, self.current_bytes.load(Ordering::Relaxed));
        Ok(path)
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StorageIoError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageIoError::file("remove snapshot file", path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageIoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageIoError::file("fsync snapshot directory", dir, e))
}

/// True when `file` is the file at `path` (same device and inode).
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Without inode numbers, always copy.
#[cfg(not(unix))]
fn same_file(_file: &File, _path: &Path) -> bool {
    false
}

// ---------------------------------------------------------------------------------------------
// Build, accept, load
// ---------------------------------------------------------------------------------------------

/// Writes a snapshot of `tree` per `plan`, publishes it, and returns its final path.
fn write_snapshot(
    store: &SnapshotStore,
    tree: &Tree,
    meta: &typ::SnapshotMeta,
    plan: SnapshotPlan,
) -> Result<PathBuf, StorageIoError> {
    let (temp, file) = store.create_temp("build")?;
    let result = (|| {
        let mut writer = SnapshotWriter::new(
            BufWriter::with_capacity(IO_BUFFER_BYTES, WriteBehind::new(file)),
            &temp,
            meta,
        )?;
        for (key, value) in &plan.pinned {
            if !key.starts_with(&RESERVED_KEY_PREFIX) {
                writer.pair(key, value)?;
            }
        }
        if let Some((start, end)) = &plan.lazy {
            for pair in tree.range(start, end.as_deref()) {
                let (key, value) = pair?;
                if !key.starts_with(&RESERVED_KEY_PREFIX) {
                    writer.pair(&key, &value)?;
                }
            }
        }
        let file = writer
            .finish()?
            .into_inner()
            .map_err(|e| StorageIoError::file("write snapshot file", &temp, e.into_error()))?
            .into_inner();
        file.sync_all()
            .map_err(|e| StorageIoError::file("fsync snapshot file", &temp, e))?;
        store.publish(&temp, meta, SnapshotOrigin::Built)
    })();
    if result.is_err() {
        if let Err(cleanup) = store.discard_temp(&temp) {
            tracing::warn!(cause = %cleanup, "failed to remove a partial snapshot file");
        }
    }
    result
}

/// Takes a received snapshot (`file`, positioned anywhere) for `meta`: verifies it whole, then
/// makes it the current snapshot, by renaming when it is the temporary file `receiving` this
/// store handed out, else by copying it. Returns the final path.
pub(crate) fn accept_received(
    store: &SnapshotStore,
    mut file: File,
    meta: &typ::SnapshotMeta,
    receiving: Option<PathBuf>,
) -> Result<PathBuf, StorageIoError> {
    let own = receiving
        .as_deref()
        .filter(|path| same_file(&file, path))
        .map(Path::to_path_buf);
    let label = own
        .clone()
        .unwrap_or_else(|| PathBuf::from("received snapshot"));
    file.seek(SeekFrom::Start(0))
        .map_err(|e| StorageIoError::file("seek snapshot file", &label, e))?;
    let found = verify(BufReader::with_capacity(IO_BUFFER_BYTES, &mut file), &label)?;
    if found != *meta {
        return Err(StorageIoError::SnapshotInvalid {
            path: label,
            reason: "metadata differs from the install request",
        });
    }
    let temp = match own {
        Some(path) => {
            write_out_in_steps(&file)
                .and_then(|()| file.sync_all())
                .map_err(|e| StorageIoError::file("fsync snapshot file", &path, e))?;
            path
        }
        None => {
            if let Some(unused) = &receiving {
                store.discard_temp(unused)?;
            }
            let (temp, copy) = store.create_temp("recv")?;
            let copied = (|| {
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| StorageIoError::file("seek snapshot file", &label, e))?;
                let mut copy = WriteBehind::new(copy);
                io::copy(
                    &mut BufReader::with_capacity(IO_BUFFER_BYTES, &mut file),
                    &mut copy,
                )
                .map_err(|e| StorageIoError::file("copy snapshot file", &temp, e))?;
                copy.into_inner()
                    .sync_all()
                    .map_err(|e| StorageIoError::file("fsync snapshot file", &temp, e))
            })();
            if let Err(err) = copied {
                store.discard_temp(&temp)?;
                return Err(err);
            }
            temp
        }
    };
    store.publish(&temp, meta, SnapshotOrigin::Installed)
}

/// Replaces the contents of `tree` with the snapshot at `path`, writing `last` (the state
/// machine's metadata) with the final batch. Memory stays bounded: pairs go to the tree in
/// batches as they are read.
///
/// The whole file is verified (checksum, framing) before the tree is cleared: a file damaged
/// on disk since it was published leaves the state as it was and fails the load, naming the
/// file. That costs one extra read of the file, on the rare paths that load one (an install,
/// or a state found behind its newest snapshot at open).
///
/// Not atomic: a crash midway leaves a partial tree without `last`, which the state machine
/// detects at open (its stored last-applied is behind the newest snapshot) and reloads.
pub(crate) fn load(
    path: &Path,
    tree: &Tree,
    mut last: WriteBatch,
) -> Result<typ::SnapshotMeta, StorageIoError> {
    let open = || File::open(path).map_err(|e| StorageIoError::file("open snapshot file", path, e));
    let verified = verify(BufReader::with_capacity(IO_BUFFER_BYTES, open()?), path)?;
    let (meta, mut reader) =
        SnapshotReader::open(BufReader::with_capacity(IO_BUFFER_BYTES, open()?), path)?;
    if meta != verified {
        return Err(StorageIoError::SnapshotInvalid {
            path: path.to_path_buf(),
            reason: "file changed while it was loaded",
        });
    }
    tree.clear()?;
    let mut batch = WriteBatch::default();
    while let Some((key, value)) = reader.next_pair()? {
        if key.starts_with(&RESERVED_KEY_PREFIX) {
            continue;
        }
        batch.insert(key, value);
        if batch.len() >= LOAD_BATCH_PAIRS || batch.size_bytes() >= LOAD_BATCH_BYTES {
            tree.apply(std::mem::take(&mut batch))?;
        }
    }
    batch.append(&mut last);
    tree.apply(batch)?;
    Ok(meta)
}

// ---------------------------------------------------------------------------------------------
// The builder
// ---------------------------------------------------------------------------------------------

/// Builds one snapshot of a group's state, from what was captured when openraft asked for the
/// builder (last applied, membership, the logic's plan). Runs while applies continue.
pub struct SnapshotBuilder {
    group: GroupId,
    tree: Tree,
    store: Arc<SnapshotStore>,
    meta: typ::SnapshotMeta,
    /// Taken by the first build; a builder builds once.
    plan: Option<Result<SnapshotPlan, StorageIoError>>,
    /// The logic's hold on the plan's lazy range: dropped once the range is read (or the
    /// builder is dropped unused), letting deferred removals in that range go ahead.
    hold: Option<SnapshotHold>,
}

impl SnapshotBuilder {
    pub(crate) fn new(
        group: GroupId,
        tree: Tree,
        store: Arc<SnapshotStore>,
        last_applied: Option<typ::LogId>,
        membership: typ::StoredMembership,
        plan: Result<SnapshotPlan, StorageIoError>,
        hold: Option<SnapshotHold>,
    ) -> Self {
        let nonce = rand::random::<u64>();
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{nonce:016x}", id.leader_id.term, id.index),
            None => format!("empty-{nonce:016x}"),
        };
        SnapshotBuilder {
            group,
            tree,
            store,
            meta: typ::SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            plan: Some(plan),
            hold,
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<typ::Snapshot, typ::StorageError> {
        let subject = ErrorSubject::Snapshot(Some(self.meta.signature()));
        let plan = match self.plan.take() {
            Some(plan) => plan,
            None => Err(StorageIoError::TaskFailed {
                op: "build snapshot",
                reason: "this builder was already used".to_string(),
            }),
        }
        .raft_err(subject.clone(), ErrorVerb::Read)?;
        let (store, tree, meta) = (self.store.clone(), self.tree.clone(), self.meta.clone());
        let hold = self.hold.take();
        let path = blocking("build snapshot", move || {
            let written = write_snapshot(&store, &tree, &meta, plan);
            // The lazy range has been read (or the build failed): release it.
            drop(hold);
            written
        })
        .await
        .raft_err(subject.clone(), ErrorVerb::Write)?;
        tracing::info!(group = self.group, snapshot_id = %self.meta.snapshot_id, "snapshot built");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageIoError::file("open snapshot file", &path, e))
            .raft_err(subject, ErrorVerb::Read)?;
        Ok(typ::Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sled_engine::sled_engine_for_tests;

    fn pairs(tree: &Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.range(b"", None)
            .map(|pair| {
                let (key, value) = pair.unwrap();
                (key.to_vec(), value.to_vec())
            })
            .collect()
    }

    /// A snapshot file damaged on disk after it was published (bit rot, a torn copy) is
    /// refused by a load before the state tree is touched, wherever the damage is.
    #[test]
    fn a_damaged_snapshot_file_leaves_the_state_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let engine = sled_engine_for_tests(&dir.path().join("db"));
        let source = engine.open_tree("source").unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..2_000u32 {
            batch.insert(format!("k{i:05}"), vec![7u8; 100]);
        }
        source.apply(batch).unwrap();
        let store = SnapshotStore::open(dir.path().join("snapshots"), Arc::default()).unwrap();
        let meta = typ::SnapshotMeta {
            last_log_id: None,
            last_membership: typ::StoredMembership::default(),
            snapshot_id: "test".into(),
        };
        let plan = SnapshotPlan {
            pinned: Vec::new(),
            lazy: Some((Vec::new(), None)),
        };
        let path = write_snapshot(&store, &source, &meta, plan).unwrap();
        let good = std::fs::read(&path).unwrap();

        let target = engine.open_tree("target").unwrap();
        let mut own = WriteBatch::default();
        own.insert(b"mine".to_vec(), b"kept".to_vec());
        target.apply(own).unwrap();
        let before = pairs(&target);
        for at in [good.len() / 3, good.len() / 2, good.len() - 12] {
            let mut damaged = good.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let loaded = load(&path, &target, WriteBatch::default());
            assert!(loaded.is_err(), "damage at byte {at} was loaded");
            assert_eq!(
                pairs(&target),
                before,
                "damage at byte {at} touched the state"
            );
        }
        std::fs::write(&path, &good).unwrap();
        load(&path, &target, WriteBatch::default()).unwrap();
        assert_eq!(pairs(&target), pairs(&source));
    }
}
