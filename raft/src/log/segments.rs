//! A group's Raft log entries in append-only segment files.
//!
//! Each entry is written once, sequentially, and removed by deleting whole files: no engine
//! rewrites it while it lives (the engine keeps only the vote, the committed and the purged
//! ids, see [`LogStore`](crate::LogStore)).
//!
//! ## Layout
//!
//! `<data dir>/raft-log/<group>/<first index, 20 digits>.seg`: the names sort as the indexes
//! do. A segment holds consecutive entries, each in one frame:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC32 of (length bytes, payload) | payload
//! ```
//!
//! where the payload is the postcard-encoded `typ::Entry` (its first field is the log id, so
//! the scan at open reads an entry's index without decoding the rest). A segment is rolled
//! (a new file started) before an append when the active one has reached the size limit;
//! one append always goes into one segment with one write, so a segment may exceed the limit
//! by one append.
//!
//! In memory, per segment: its first index and the byte offset of each entry, so a read of a
//! range is one positional read per segment it touches, then a checksum check per frame.
//! The newest entries are also kept decoded (`log::tail`): the reads that follow an append
//! (replication, apply) are served from there.
//!
//! ## Durability (with the node's flusher)
//!
//! - `append` writes to the page cache and records the file (and the directory when it
//!   created a file) in the node's [`LogSyncs`]; the flusher syncs all of them before it
//!   answers any request sent after the write, so an acknowledged entry is on disk.
//! - Rolling syncs the full segment and the directory *before* the next file is created, so
//!   after a crash every segment but the last is complete. That is what lets the scan at open
//!   tell a torn write (only ever at the end of the last segment: cut off) from corruption
//!   (anywhere else: refused). It costs one extra fdatasync per segment size per group,
//!   run off the async threads.
//! - `truncate` works from the end backwards and makes each step durable before the next:
//!   remove the last segment and fsync the directory, and so on for every segment wholly at
//!   or after the index, then set_len and fdatasync the segment holding the index. A crash
//!   at any point leaves a prefix of the old log, which open accepts (the entries past the
//!   index were never committed; Raft truncates them again). Removing the later files
//!   without a directory sync before shortening an earlier one could bring a removed file
//!   back after the shortening survived: a log with a hole, refused at open. Truncation is
//!   rare (a leader change with conflicting entries), so the extra syncs cost nothing.
//! - `purge` hides the entries at once; the caller makes the purge mark durable (one flush)
//!   before whole files are deleted, so after a crash a file may be left over (deleted at
//!   open, since the mark says it is gone) but never missing while the mark is not there.
//!
//! ## Recovery (open)
//!
//! Every segment is read and each frame's length, checksum and index checked. In the last
//! segment, a frame that is incomplete, or whose checksum fails and that ends the file, or
//! that is followed only by zeros, is a write cut by a crash: it was never acknowledged (its
//! flush never completed, and that flush would have covered it), so it and everything after
//! it is cut off. Any other bad frame, a gap between segments or an empty segment before the
//! last is an error naming the file and the offset: the node refuses to start on a damaged
//! log rather than silently forgetting acknowledged entries.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::StorageIoError;
use crate::log::sync::{sync_dir, LogSyncs};
use crate::log::tail::{self, LogTail};
use crate::types::typ;

/// The segment size limit if the tuning does not say otherwise (16 MiB): a few hundred
/// record-batch entries per file, so purging frees space in steps of this size and the scan
/// at open reads one file at a time.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

/// The name of the directory of all groups' logs inside the node's data directory.
pub(crate) const LOG_DIR: &str = "raft-log";

/// Suffix of segment file names.
const SEGMENT_SUFFIX: &str = ".seg";

/// Digits of the first index in a segment name (u64::MAX has 20).
const NAME_DIGITS: usize = 20;

/// Bytes of a frame header: length and checksum.
const HEADER_BYTES: usize = 8;

/// The file name of the segment whose first entry has index `first`.
fn segment_name(first: u64) -> String {
    format!("{first:0width$}{SEGMENT_SUFFIX}", width = NAME_DIGITS)
}

/// The first index named by a segment file name; None for any other file.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checksum of a frame: over its length bytes and its payload, so a damaged length is
/// caught even when it still points inside the file.
fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(payload);
    hasher.finalize()
}

/// True when the directory holds at least one non-empty segment file (the group has stored
/// entries, or had them before a purge of everything).
pub(crate) fn dir_has_entries(dir: &Path) -> Result<bool, StorageIoError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StorageIoError::file("list log segments", dir, e)),
    };
    for item in listing {
        let item = item.map_err(|e| StorageIoError::file("list log segments", dir, e))?;
        let is_segment = item
            .file_name()
            .to_str()
            .and_then(parse_segment_name)
            .is_some();
        if is_segment {
            let meta = item
                .metadata()
                .map_err(|e| StorageIoError::file("read log segment size", item.path(), e))?;
            if meta.len() > 0 {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Total bytes of the segment files under `root` (every group's log directory).
pub(crate) fn bytes_under(root: &Path) -> Result<u64, StorageIoError> {
    let groups = match std::fs::read_dir(root) {
        Ok(groups) => groups,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageIoError::file("list log directories", root, e)),
    };
    let mut total = 0u64;
    for group in groups {
        let group = group.map_err(|e| StorageIoError::file("list log directories", root, e))?;
        let files = match std::fs::read_dir(group.path()) {
            Ok(files) => files,
            // Removed meanwhile (group destroyed), or not a directory.
            Err(_) => continue,
        };
        for file in files.flatten() {
            if let Ok(meta) = file.metadata() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// The frames of one append, encoded before the log is locked.
pub(crate) struct EncodedBatch {
    /// The frames, back to back: written with one write.
    buf: Vec<u8>,
    /// Where each frame starts in `buf`.
    starts: Vec<usize>,
    /// Index of the first entry.
    first: u64,
    /// Log id of the last entry.
    last: Option<typ::LogId>,
    /// The entries after the last one too large for the log's tail (see [`LogTail`]).
    kept: Vec<typ::Entry>,
}

impl EncodedBatch {
    /// Frames `entries`, each postcard-encoded straight into the shared buffer.
    ///
    /// # Errors
    /// [`StorageIoError::Codec`] if an entry cannot be encoded, [`StorageIoError::Corrupt`]
    /// for an entry over 4 GiB (the frame length is a u32).
    pub(crate) fn encode(
        entries: impl IntoIterator<Item = typ::Entry>,
    ) -> Result<EncodedBatch, StorageIoError> {
        let mut batch = EncodedBatch {
            buf: Vec::new(),
            starts: Vec::new(),
            first: 0,
            last: None,
            kept: Vec::new(),
        };
        for entry in entries {
            if batch.last.is_none() {
                batch.first = entry.log_id.index;
            }
            if tail::fits(&entry) {
                batch.kept.push(entry.clone());
            } else {
                batch.kept.clear();
            }
            let size = postcard::experimental::serialized_size(&entry)
                .map_err(|e| StorageIoError::codec("log entry", e))?;
            let start = batch.buf.len();
            batch.buf.reserve(HEADER_BYTES + size);
            batch.buf.extend_from_slice(&[0u8; HEADER_BYTES]);
            batch.buf = postcard::to_extend(&entry, std::mem::take(&mut batch.buf))
                .map_err(|e| StorageIoError::codec("log entry", e))?;
            let payload = &batch.buf[start + HEADER_BYTES..];
            let len = u32::try_from(payload.len()).map_err(|_| StorageIoError::Corrupt {
                what: "log entry larger than 4 GiB",
            })?;
            let len_bytes = len.to_le_bytes();
            let crc = frame_crc(len_bytes, payload);
            batch.buf[start..start + 4].copy_from_slice(&len_bytes);
            batch.buf[start + 4..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
            batch.starts.push(start);
            batch.last = Some(entry.log_id);
        }
        Ok(batch)
    }

    /// True when the append carries no entry.
    pub(crate) fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Checks that the entries are consecutive (the log's index arithmetic relies on it).
    fn check_consecutive(&self) -> Result<(), StorageIoError> {
        let count = self.starts.len() as u64;
        match self.last {
            Some(last) if last.index.checked_sub(self.first) == Some(count - 1) => Ok(()),
            None => Ok(()),
            Some(_) => Err(StorageIoError::Corrupt {
                what: "appended log entries with non-consecutive indexes",
            }),
        }
    }
}

/// Frames read back from one segment: `buf` starts at byte `offset` of `path`.
pub(crate) struct RawFrames {
    path: PathBuf,
    offset: u64,
    buf: Vec<u8>,
}

impl RawFrames {
    /// Checks each frame and decodes its entry, appending to `out`.
    ///
    /// # Errors
    /// [`StorageIoError::LogCorrupt`] naming the file and offset of a bad frame, or
    /// [`StorageIoError::Codec`] if an intact frame does not decode.
    pub(crate) fn decode_into(&self, out: &mut Vec<typ::Entry>) -> Result<(), StorageIoError> {
        let mut at = 0usize;
        while at < self.buf.len() {
            match check_frame(&self.buf, at) {
                Frame::Intact { payload, next } => {
                    out.push(crate::codec::decode("log entry", &self.buf[payload])?);
                    at = next;
                }
                Frame::Torn { reason } | Frame::Mismatch { reason, .. } => {
                    return Err(StorageIoError::LogCorrupt {
                        path: self.path.clone(),
                        offset: self.offset + at as u64,
                        reason,
                    })
                }
            }
        }
        Ok(())
    }
}

/// The result of checking the frame at one position of a buffer.
enum Frame {
    /// A whole frame with a matching checksum.
    Intact {
        payload: std::ops::Range<usize>,
        next: usize,
    },
    /// The buffer ends inside the frame.
    Torn { reason: &'static str },
    /// A whole frame whose checksum does not match; `ends_buffer` if nothing follows it.
    Mismatch {
        reason: &'static str,
        ends_buffer: bool,
    },
}

fn check_frame(buf: &[u8], at: usize) -> Frame {
    let Some(header) = buf.get(at..at + HEADER_BYTES) else {
        return Frame::Torn {
            reason: "incomplete frame header",
        };
    };
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let start = at + HEADER_BYTES;
    let Some(end) = start.checked_add(u32::from_le_bytes(len_bytes) as usize) else {
        return Frame::Torn {
            reason: "frame runs past the end of the file",
        };
    };
    let Some(payload) = buf.get(start..end) else {
        return Frame::Torn {
            reason: "frame runs past the end of the file",
        };
    };
    if frame_crc(len_bytes, payload) != crc {
        return Frame::Mismatch {
            reason: "frame checksum mismatch",
            ends_buffer: end == buf.len(),
        };
    }
    Frame::Intact {
        payload: start..end,
        next: end,
    }
}

/// The index and log id found in a frame's payload (the entry's first field).
fn payload_log_id(payload: &[u8]) -> Result<typ::LogId, StorageIoError> {
    postcard::take_from_bytes::<typ::LogId>(payload)
        .map(|(log_id, _rest)| log_id)
        .map_err(|e| StorageIoError::codec("log entry id", e))
}

// ---------------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------------

/// One segment file.
struct Segment {
    /// Index of its first entry (also in its name).
    first: u64,
    path: PathBuf,
    /// Shared with the node's [`LogSyncs`] until the next flush syncs it.
    file: Arc<File>,
    /// Byte offset of each entry, in index order.
    offsets: Vec<u64>,
    /// Bytes of whole frames; the file is this long.
    len: u64,
}

impl Segment {
    /// One past the index of its last entry.
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// The byte range of entries `[from, to)` (indexes inside this segment).
    fn byte_range(&self, from: u64, to: u64) -> (u64, u64) {
        let a = (from - self.first) as usize;
        let b = (to - self.first) as usize;
        let start = self.offsets[a];
        let end = self.offsets.get(b).copied().unwrap_or(self.len);
        (start, end)
    }
}

/// The entries of one group in segment files (see the module doc). All methods do blocking
/// file I/O; the ones that may fsync say so, for the caller to run them off the async threads.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// Entries at or below this index are hidden (purged; their file not yet deleted).
    purged: Option<u64>,
    /// Log id of the last stored entry (it may be hidden by the purge mark).
    last: Option<typ::LogId>,
    syncs: LogSyncs,
    /// The newest entries, decoded, for the reads that follow an append.
    tail: LogTail,
    /// Tests: the durable steps left before a simulated crash (see [`SegmentLog::step_done`]).
    #[cfg(test)]
    crash_after_steps: Option<usize>,
}

impl SegmentLog {
    /// Opens the log in `dir` (which may not exist yet), checking and repairing it as the
    /// module doc says. `purged` is the durable purge mark: files wholly at or below it are
    /// leftovers of an interrupted purge and are deleted. Blocking (reads every segment; may
    /// fsync after a repair).
    ///
    /// # Errors
    /// [`StorageIoError::LogCorrupt`] for damage other than a torn tail;
    /// [`StorageIoError::File`] if the directory or a file cannot be read or repaired.
    pub(crate) fn open(
        dir: PathBuf,
        segment_bytes: u64,
        purged: Option<u64>,
        syncs: LogSyncs,
    ) -> Result<SegmentLog, StorageIoError> {
        let mut log = SegmentLog {
            dir,
            segment_bytes: segment_bytes.max(1),
            segments: VecDeque::new(),
            purged,
            last: None,
            syncs,
            tail: LogTail::default(),
            #[cfg(test)]
            crash_after_steps: None,
        };
        let mut found = log.list()?;
        let mut changed = false;
        // Leftovers of a purge cut by a crash: every entry at or below the mark.
        if let Some(mark) = purged {
            while found.len() > 1 && found[1].0 <= mark.saturating_add(1) {
                let (_first, path) = found.remove(0);
                remove_file(&path)?;
                changed = true;
            }
        }
        let count = found.len();
        for (i, (first, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            match log.load_segment(first, path, is_last)? {
                Loaded::Segment(segment, last) => {
                    if let Some(prev) = log.segments.back() {
                        if prev.end() != segment.first {
                            return Err(StorageIoError::LogCorrupt {
                                path: segment.path,
                                offset: 0,
                                reason: "segment does not continue the previous one",
                            });
                        }
                    }
                    log.segments.push_back(segment);
                    log.last = Some(last);
                }
                Loaded::Removed => changed = true,
            }
        }
        // The last segment may be wholly purged too (a purge of everything cut by a crash).
        if let (Some(mark), Some(last)) = (purged, log.last) {
            if last.index <= mark {
                for segment in log.segments.drain(..) {
                    remove_file(&segment.path)?;
                }
                log.last = None;
                changed = true;
            }
        }
        if let (Some(mark), Some(first)) = (purged, log.segments.front()) {
            if first.first > mark.saturating_add(1) {
                return Err(StorageIoError::LogCorrupt {
                    path: first.path.clone(),
                    offset: 0,
                    reason: "entries between the purge mark and this segment are missing",
                });
            }
        }
        if changed {
            sync_dir(&log.dir)
                .map_err(|e| StorageIoError::file("fsync a log directory", &log.dir, e))?;
        }
        Ok(log)
    }

    /// The segment files in `dir`, ascending by first index.
    fn list(&self) -> Result<Vec<(u64, PathBuf)>, StorageIoError> {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageIoError::file("list log segments", &self.dir, e)),
        };
        let mut found = Vec::new();
        for item in listing {
            let item = item.map_err(|e| StorageIoError::file("list log segments", &self.dir, e))?;
            match item.file_name().to_str().and_then(parse_segment_name) {
                Some(first) => found.push((first, item.path())),
                None => {
                    tracing::warn!(path = %item.path().display(), "ignoring a file in a log directory")
                }
            }
        }
        found.sort_unstable_by_key(|(first, _path)| *first);
        Ok(found)
    }

    /// Reads and checks one segment file (see the module doc for what is cut and what is
    /// refused). An empty last segment is removed.
    fn load_segment(
        &self,
        first: u64,
        path: PathBuf,
        is_last: bool,
    ) -> Result<Loaded, StorageIoError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StorageIoError::file("open a log segment", &path, e))?;
        // One segment at a time, bounded by the segment size plus one append.
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut &file, &mut buf)
            .map_err(|e| StorageIoError::file("read a log segment", &path, e))?;
        let mut offsets = Vec::new();
        let mut last = None;
        let mut at = 0usize;
        while at < buf.len() {
            let bad = match check_frame(&buf, at) {
                Frame::Intact { payload, next } => {
                    let log_id = payload_log_id(&buf[payload])?;
                    if log_id.index != first + offsets.len() as u64 {
                        return Err(StorageIoError::LogCorrupt {
                            path,
                            offset: at as u64,
                            reason: "entry index out of sequence",
                        });
                    }
                    offsets.push(at as u64);
                    last = Some(log_id);
                    at = next;
                    continue;
                }
                Frame::Torn { reason } => (reason, true),
                Frame::Mismatch {
                    reason,
                    ends_buffer,
                } => (reason, ends_buffer || buf[at..].iter().all(|b| *b == 0)),
            };
            let (reason, torn) = bad;
            if !(is_last && torn) {
                return Err(StorageIoError::LogCorrupt {
                    path,
                    offset: at as u64,
                    reason,
                });
            }
            tracing::warn!(
                path = %path.display(),
                offset = at,
                cut_bytes = buf.len() - at,
                reason,
                "cutting a torn write off the end of the log"
            );
            file.set_len(at as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| StorageIoError::file("cut a torn log segment", &path, e))?;
            buf.truncate(at);
            break;
        }
        match last {
            Some(last) => Ok(Loaded::Segment(
                Segment {
                    first,
                    path,
                    file: Arc::new(file),
                    offsets,
                    len: buf.len() as u64,
                },
                last,
            )),
            None if is_last => {
                // Created by a roll whose first write never reached the disk.
                drop(file);
                remove_file(&path)?;
                Ok(Loaded::Removed)
            }
            None => Err(StorageIoError::LogCorrupt {
                path,
                offset: 0,
                reason: "empty segment before the last",
            }),
        }
    }

    /// Log id of the last stored entry (possibly hidden by the purge mark).
    pub(crate) fn last_log_id(&self) -> Option<typ::LogId> {
        self.last
    }

    /// True when appending `batch` fsyncs: it starts a new segment after syncing the full
    /// one, or it replaces stored entries (a durable truncate first). The caller runs such an
    /// append off the async threads.
    pub(crate) fn append_syncs(&self, batch: &EncodedBatch) -> bool {
        self.segments
            .back()
            .is_some_and(|active| active.len >= self.segment_bytes)
            || self.append_truncates(batch)
    }

    /// True when `batch` starts at or before the last stored entry.
    fn append_truncates(&self, batch: &EncodedBatch) -> bool {
        !batch.is_empty()
            && self
                .segments
                .back()
                .is_some_and(|active| batch.first < active.end())
    }

    /// Writes `batch` with one write, readable at once; durable after the next flush. May
    /// fsync (see [`SegmentLog::append_syncs`]).
    ///
    /// # Errors
    /// [`StorageIoError::Corrupt`] if the entries do not continue the log,
    /// [`StorageIoError::File`] if the write (or the roll) fails; the log is then unchanged.
    pub(crate) fn append(&mut self, batch: &EncodedBatch) -> Result<(), StorageIoError> {
        let Some(last) = batch.last else {
            return Ok(());
        };
        batch.check_consecutive()?;
        if self.append_truncates(batch) {
            // Raft's rule for a conflicting append: the entries from its first index on are
            // replaced. openraft truncates before such an append itself; this keeps the same
            // meaning for a caller that does not (the storage suite overwrites entries).
            self.truncate(batch.first)?;
        }
        if let Some(active) = self.segments.back() {
            if batch.first != active.end() {
                return Err(StorageIoError::Corrupt {
                    what: "appended log entries that leave a hole in the log",
                });
            }
        }
        let full = self
            .segments
            .back()
            .is_none_or(|active| active.len >= self.segment_bytes);
        if full {
            self.roll(batch.first)?;
        }
        let Some(active) = self.segments.back_mut() else {
            return Err(StorageIoError::Corrupt {
                what: "log has no active segment after a roll",
            });
        };
        if let Err(e) = active.file.write_all_at(&batch.buf, active.len) {
            // Best effort: no partial frame left for the next write to land behind.
            let _ = active.file.set_len(active.len);
            return Err(StorageIoError::file("write a log segment", &active.path, e));
        }
        let base = active.len;
        active
            .offsets
            .extend(batch.starts.iter().map(|start| base + *start as u64));
        active.len += batch.buf.len() as u64;
        self.last = Some(last);
        self.syncs.file_written(&active.path, &active.file);
        self.tail.appended(batch.first, &batch.kept);
        Ok(())
    }

    /// The visible entries with index in `[start, end)` (`end` None = to the last) if the
    /// log's tail holds them all: what replication and apply read just after an append.
    /// `None` means "read them with [`SegmentLog::read`]" (also for an empty range).
    pub(crate) fn read_tail(&self, start: u64, end: Option<u64>) -> Option<Vec<typ::Entry>> {
        let last = self.last?.index;
        if self.tail.last_index() != Some(last) {
            return None;
        }
        let visible = self.purged.map_or(0, |p| p.saturating_add(1));
        let end = end.unwrap_or(u64::MAX).min(last.saturating_add(1));
        self.tail.range(start.max(visible), end)
    }

    /// Starts a new segment at `first`, after making the current one durable and complete.
    fn roll(&mut self, first: u64) -> Result<(), StorageIoError> {
        if let Some(full) = self.segments.back() {
            full.file
                .sync_data()
                .map_err(|e| StorageIoError::file("fsync a log segment", &full.path, e))?;
            sync_dir(&self.dir)
                .map_err(|e| StorageIoError::file("fsync a log directory", &self.dir, e))?;
        } else if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| StorageIoError::file("create a log directory", &self.dir, e))?;
            if let Some(parent) = self.dir.parent() {
                self.syncs.dir_changed(parent);
            }
        }
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageIoError::file("create a log segment", &path, e))?;
        self.syncs.dir_changed(&self.dir);
        tracing::debug!(path = %path.display(), "log segment started");
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            len: 0,
        });
        Ok(())
    }

    /// The frames of the visible entries with index in `[start, end)` (`end` None = to the
    /// last): one positional read per segment touched. Decode with [`RawFrames::decode_into`]
    /// after releasing the log.
    ///
    /// # Errors
    /// [`StorageIoError::File`] if a read fails.
    pub(crate) fn read(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<RawFrames>, StorageIoError> {
        let (Some(first), Some(last)) = (self.segments.front(), self.segments.back()) else {
            return Ok(Vec::new());
        };
        let visible = self.purged.map_or(0, |p| p.saturating_add(1));
        let lo = start.max(visible).max(first.first);
        let hi = end.unwrap_or(u64::MAX).min(last.end());
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        for segment in &self.segments {
            if segment.end() <= lo || segment.first >= hi {
                continue;
            }
            let (from, to) = segment.byte_range(lo.max(segment.first), hi.min(segment.end()));
            let mut buf = vec![0u8; (to - from) as usize];
            segment
                .file
                .read_exact_at(&mut buf, from)
                .map_err(|e| StorageIoError::file("read a log segment", &segment.path, e))?;
            out.push(RawFrames {
                path: segment.path.clone(),
                offset: from,
                buf,
            });
        }
        Ok(out)
    }

    /// Removes the entries at and after `index`, durably before it returns (see the module
    /// doc). Blocking: fsyncs.
    ///
    /// # Errors
    /// [`StorageIoError::File`] if a file cannot be cut, removed or synced.
    pub(crate) fn truncate(&mut self, index: u64) -> Result<(), StorageIoError> {
        // Rare: forget the whole tail rather than reason about a truncation that fails midway.
        self.tail.clear();
        // Newest first, each removal durable before the next step (see the module doc).
        while let Some(segment) = self.segments.back() {
            if segment.first < index {
                break;
            }
            remove_file(&segment.path)?;
            sync_dir(&self.dir)
                .map_err(|e| StorageIoError::file("fsync a log directory", &self.dir, e))?;
            self.segments.pop_back();
            self.step_done()?;
        }
        if let Some(segment) = self.segments.back_mut() {
            if index < segment.end() {
                let keep = (index - segment.first) as usize;
                let len = segment.offsets[keep];
                segment
                    .file
                    .set_len(len)
                    .and_then(|()| segment.file.sync_data())
                    .map_err(|e| {
                        StorageIoError::file("truncate a log segment", &segment.path, e)
                    })?;
                segment.offsets.truncate(keep);
                segment.len = len;
            }
        }
        self.last = match self.segments.back() {
            Some(segment) => Some(self.read_log_id(segment, segment.end() - 1)?),
            None => None,
        };
        Ok(())
    }

    fn read_log_id(&self, segment: &Segment, index: u64) -> Result<typ::LogId, StorageIoError> {
        let (from, to) = segment.byte_range(index, index + 1);
        let mut buf = vec![0u8; (to - from) as usize];
        segment
            .file
            .read_exact_at(&mut buf, from)
            .map_err(|e| StorageIoError::file("read a log segment", &segment.path, e))?;
        match check_frame(&buf, 0) {
            Frame::Intact { payload, .. } => payload_log_id(&buf[payload]),
            Frame::Torn { reason } | Frame::Mismatch { reason, .. } => {
                Err(StorageIoError::LogCorrupt {
                    path: segment.path.clone(),
                    offset: from,
                    reason,
                })
            }
        }
    }

    /// Hides the entries at and below `index` at once. Returns how many whole segments are
    /// now purged: the caller deletes them with [`SegmentLog::remove_purged`] once the purge
    /// mark is durable.
    pub(crate) fn purge(&mut self, index: u64) -> usize {
        if self.purged.is_none_or(|p| p < index) {
            self.purged = Some(index);
        }
        self.tail.purged(index);
        self.purgeable()
    }

    /// Whole segments whose every entry is at or below the purge mark.
    fn purgeable(&self) -> usize {
        let Some(mark) = self.purged else {
            return 0;
        };
        self.segments
            .iter()
            .take_while(|segment| segment.end() <= mark.saturating_add(1))
            .count()
    }

    /// Deletes the whole segments the purge mark covers. Call only once the mark is durable.
    /// No directory sync: a deletion lost in a crash leaves a file that open deletes again.
    ///
    /// # Errors
    /// [`StorageIoError::File`] if a file cannot be removed.
    pub(crate) fn remove_purged(&mut self) -> Result<(), StorageIoError> {
        for _ in 0..self.purgeable() {
            if let Some(segment) = self.segments.front() {
                remove_file(&segment.path)?;
            }
            self.segments.pop_front();
        }
        if self.segments.is_empty() {
            self.last = None;
        }
        Ok(())
    }

    /// Marks the end of one durable step of a multi-step change. Tests make the log "crash"
    /// (return an error, leaving the files as they are) after a chosen number of steps and
    /// reopen the directory; in other builds it does nothing.
    #[allow(clippy::unnecessary_wraps)] // the error exists only in test builds
    fn step_done(&mut self) -> Result<(), StorageIoError> {
        #[cfg(test)]
        if let Some(left) = self.crash_after_steps.as_mut() {
            if *left == 0 {
                return Err(StorageIoError::Corrupt {
                    what: "simulated crash",
                });
            }
            *left -= 1;
        }
        Ok(())
    }

    /// Segment files currently in use (tests, diagnostics).
    #[cfg(test)]
    fn segment_firsts(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.first).collect()
    }
}

/// What loading one segment file gave.
enum Loaded {
    Segment(Segment, typ::LogId),
    Removed,
}

/// Removes a file; already gone is fine.
fn remove_file(path: &Path) -> Result<(), StorageIoError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageIoError::file("remove a log segment", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, TypeConfig};
    use bytes::Bytes;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use tempfile::TempDir;

    /// Small segments, so a few entries roll them.
    const SEGMENT: u64 = 1_000;
    /// Payload per entry: about four entries per segment.
    const PAYLOAD: usize = 200;

    fn entry(term: u64, index: u64) -> typ::Entry {
        let mut body = vec![(index % 251) as u8; PAYLOAD];
        body[0] = term as u8;
        Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command(Bytes::from(body))),
        }
    }

    fn batch(term: u64, indexes: std::ops::RangeInclusive<u64>) -> EncodedBatch {
        EncodedBatch::encode(indexes.map(|i| entry(term, i))).unwrap()
    }

    fn open(dir: &Path, purged: Option<u64>) -> Result<SegmentLog, StorageIoError> {
        SegmentLog::open(dir.to_path_buf(), SEGMENT, purged, LogSyncs::default())
    }

    fn read(log: &SegmentLog, start: u64, end: Option<u64>) -> Vec<typ::Entry> {
        let mut out = Vec::new();
        for chunk in log.read(start, end).unwrap() {
            chunk.decode_into(&mut out).unwrap();
        }
        out
    }

    /// Asserts that every range the tail serves equals what the segment files hold.
    fn assert_tail_matches_files(log: &SegmentLog) {
        let last = log.last_log_id().map_or(0, |id| id.index);
        for start in 0..=last + 1 {
            for end in [Some(start + 1), Some(start + 3), None] {
                if let Some(hit) = log.read_tail(start, end) {
                    assert_eq!(hit, read(log, start, end), "[{start}, {end:?})");
                }
            }
        }
    }

    #[test]
    fn the_tail_serves_what_the_files_hold() {
        let dir = TempDir::new().unwrap();
        let mut log = open(dir.path(), None).unwrap();
        let served = |log: &SegmentLog, start: u64| {
            log.read_tail(start, None)
                .map(|entries| entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        };
        log.append(&batch(1, 1..=5)).unwrap();
        assert_tail_matches_files(&log);
        assert_eq!(served(&log, 3), Some(vec![3, 4, 5]));

        // An entry too large for the tail: only what follows it is served from memory.
        let mut big = entry(1, 6);
        big.payload = EntryPayload::Normal(Command(Bytes::from(vec![6u8; 200 << 10])));
        log.append(&EncodedBatch::encode(vec![big, entry(1, 7)]).unwrap())
            .unwrap();
        assert_tail_matches_files(&log);
        assert_eq!(served(&log, 6), None);
        assert_eq!(served(&log, 7), Some(vec![7]));

        // A truncation and a new term's entries at the same indexes.
        log.truncate(7).unwrap();
        assert_eq!(served(&log, 6), None);
        log.append(&batch(2, 7..=9)).unwrap();
        assert_tail_matches_files(&log);
        let terms: Vec<u64> = log
            .read_tail(7, None)
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, vec![2, 2, 2]);

        // A purge hides entries from the tail as from the files.
        log.purge(8);
        assert_tail_matches_files(&log);
        assert_eq!(served(&log, 0), Some(vec![9]));
    }

    /// Asserts the log holds exactly `expected` (term, index) pairs, with intact payloads.
    fn assert_holds(log: &SegmentLog, expected: &[(u64, u64)]) {
        let got = read(log, 0, None);
        let ids: Vec<(u64, u64)> = got
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect();
        assert_eq!(ids, expected);
        for e in &got {
            assert_eq!(*e, entry(e.log_id.leader_id.term, e.log_id.index));
        }
        let last = expected
            .last()
            .map(|(term, index)| LogId::new(CommittedLeaderId::new(*term, 1), *index));
        assert_eq!(log.last_log_id(), last);
    }

    fn files(dir: &Path) -> Vec<u64> {
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|f| parse_segment_name(f.unwrap().file_name().to_str().unwrap()))
            .collect();
        firsts.sort_unstable();
        firsts
    }

    fn ids(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
        indexes.map(|i| (term, i)).collect()
    }

    /// 1..=30 in appends of three: several segments.
    fn filled(dir: &Path) -> SegmentLog {
        let mut log = open(dir, None).unwrap();
        for start in (1..=30).step_by(3) {
            log.append(&batch(1, start..=start + 2)).unwrap();
        }
        log
    }

    #[test]
    fn appends_roll_segments_and_read_back_across_them() {
        let dir = TempDir::new().unwrap();
        let log = filled(dir.path());
        let segments = files(dir.path());
        assert!(segments.len() >= 5, "segments: {segments:?}");
        assert_eq!(segments, log.segment_firsts());
        assert_eq!(segments[0], 1);
        // One append is never split: every segment starts an append.
        assert!(segments.iter().all(|first| first % 3 == 1));
        assert_holds(&log, &ids(1, 1..=30));
        // A range crossing two segment boundaries, and bounded ranges at the edges.
        let middle: Vec<u64> = read(&log, 5, Some(23))
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(middle, (5..23).collect::<Vec<_>>());
        assert!(read(&log, 31, None).is_empty());
        assert_eq!(read(&log, 30, Some(31)).len(), 1);
        drop(log);

        let log = open(dir.path(), None).unwrap();
        assert_eq!(log.segment_firsts(), segments);
        assert_holds(&log, &ids(1, 1..=30));
    }

    #[test]
    fn truncate_inside_a_segment_keeps_the_prefix_and_survives_reopen() {
        let dir = TempDir::new().unwrap();
        let mut log = filled(dir.path());
        let segments = log.segment_firsts();
        let holder = *segments.iter().rev().find(|first| **first < 17).unwrap();
        assert_ne!(holder, 17, "17 must be inside a segment for this test");
        log.truncate(17).unwrap();
        assert_holds(&log, &ids(1, 1..=16));
        assert_eq!(
            files(dir.path()).last(),
            Some(&holder),
            "later segments removed"
        );
        log.append(&batch(2, 17..=20)).unwrap();
        let mut expected = ids(1, 1..=16);
        expected.extend(ids(2, 17..=20));
        assert_holds(&log, &expected);
        drop(log);

        let log = open(dir.path(), None).unwrap();
        assert_holds(&log, &expected);
    }

    #[test]
    fn truncate_at_a_segment_boundary_removes_that_segment() {
        let dir = TempDir::new().unwrap();
        let mut log = filled(dir.path());
        let segments = log.segment_firsts();
        let boundary = segments[2];
        log.truncate(boundary).unwrap();
        assert_eq!(files(dir.path()), segments[..2].to_vec());
        assert_holds(&log, &ids(1, 1..=boundary - 1));
        drop(log);

        let mut log = open(dir.path(), None).unwrap();
        assert_holds(&log, &ids(1, 1..=boundary - 1));
        // The next append continues the previous (full) segment or starts one at `boundary`.
        log.append(&batch(3, boundary..=boundary)).unwrap();
        let mut expected = ids(1, 1..=boundary - 1);
        expected.push((3, boundary));
        assert_holds(&log, &expected);
        // Truncating everything leaves no segment at all.
        log.truncate(1).unwrap();
        assert!(files(dir.path()).is_empty());
        assert_holds(&log, &[]);
        drop(log);
        assert_holds(&open(dir.path(), None).unwrap(), &[]);
    }

    /// A crash after each durable step of a truncation that removes several segments and
    /// cuts one: every state left behind opens as a prefix of the old log at least as long
    /// as the truncated one, and the log takes appends from there.
    #[test]
    fn a_truncation_cut_by_a_crash_leaves_a_prefix_that_opens() {
        let probe = TempDir::new().unwrap();
        let segments = filled(probe.path()).segment_firsts();
        assert!(
            segments.len() >= 4,
            "several segments to remove: {segments:?}"
        );
        let index = segments[1] + 1; // inside the second segment
        let all = 30;
        // One step per removed segment; the cut of the holder is the last act.
        let steps = segments.iter().filter(|first| **first >= index).count();
        for crash_after in 0..=steps {
            let dir = TempDir::new().unwrap();
            let mut log = filled(dir.path());
            log.crash_after_steps = Some(crash_after);
            let result = log.truncate(index);
            assert_eq!(
                result.is_ok(),
                crash_after == steps,
                "crash after {crash_after}"
            );
            drop(log);
            let mut log = open(dir.path(), None).unwrap_or_else(|e| {
                panic!("crash after {crash_after} steps left a log that does not open: {e}")
            });
            let last = log.last_log_id().map_or(0, |id| id.index);
            assert!(
                (index - 1..=all).contains(&last),
                "crash after {crash_after}: last {last}"
            );
            assert_holds(&log, &ids(1, 1..=last));
            // Raft truncates again and appends the leader's entries.
            log.truncate(index).unwrap();
            log.append(&batch(2, index..=index + 2)).unwrap();
            let mut expected = ids(1, 1..=index - 1);
            expected.extend(ids(2, index..=index + 2));
            assert_holds(&log, &expected);
            drop(log);
            assert_holds(&open(dir.path(), None).unwrap(), &expected);
        }
    }

    /// A purge cut by a crash once its mark is durable: whichever whole files were deleted,
    /// the log opens with the entries after the mark and the leftovers gone.
    #[test]
    fn a_purge_cut_by_a_crash_opens_with_the_leftovers_removed() {
        let probe = TempDir::new().unwrap();
        let segments = filled(probe.path()).segment_firsts();
        let mark = segments[3] - 1; // the first three segments wholly purged
        for deleted in 0..=3 {
            let dir = TempDir::new().unwrap();
            drop(filled(dir.path()));
            for first in &segments[..deleted] {
                std::fs::remove_file(dir.path().join(segment_name(*first))).unwrap();
            }
            let log = open(dir.path(), Some(mark)).unwrap();
            assert_eq!(
                files(dir.path()),
                segments[3..].to_vec(),
                "{deleted} deleted"
            );
            assert_holds(&log, &ids(1, mark + 1..=30));
        }
    }

    #[test]
    fn purge_deletes_whole_files_only() {
        let dir = TempDir::new().unwrap();
        let mut log = filled(dir.path());
        let segments = log.segment_firsts();
        // An index inside the third segment: the first two are wholly purged.
        let mark = segments[2] + 1;
        assert!(mark + 1 < segments[3]);
        assert_eq!(log.purge(mark), 2);
        // Hidden at once, files still there until the mark is durable.
        assert_eq!(
            read(&log, 0, None).first().map(|e| e.log_id.index),
            Some(mark + 1)
        );
        assert_eq!(files(dir.path()), segments);

        // A crash now: the mark is durable, the files are not yet deleted. Open deletes them.
        let reopened = open(dir.path(), Some(mark)).unwrap();
        assert_eq!(files(dir.path()), segments[2..].to_vec());
        assert_eq!(reopened.segment_firsts(), segments[2..].to_vec());
        assert_eq!(read(&reopened, 0, None).len() as u64, 30 - mark);
        drop(reopened);

        // The normal path: delete after the flush.
        let mut log = open(dir.path(), Some(mark)).unwrap();
        assert_eq!(log.purge(mark), 0, "the segment holding the mark is kept");
        log.remove_purged().unwrap();
        assert_eq!(files(dir.path()), segments[2..].to_vec());
        let visible = read(&log, 0, None);
        assert_eq!(visible.first().map(|e| e.log_id.index), Some(mark + 1));
        assert_eq!(visible.len() as u64, 30 - mark);
        // Purging past the end deletes every file; appends continue after the mark.
        assert_eq!(log.purge(40), segments.len() - 2);
        log.remove_purged().unwrap();
        assert!(files(dir.path()).is_empty());
        log.append(&batch(2, 41..=42)).unwrap();
        assert_eq!(files(dir.path()), vec![41]);
        drop(log);
        let log = open(dir.path(), Some(40)).unwrap();
        assert_holds(&log, &ids(2, 41..=42));
    }

    /// Appends 1..=10 to a fresh log and returns the path and length of its last segment.
    fn ten(dir: &Path) -> (PathBuf, u64) {
        let mut log = open(dir, None).unwrap();
        log.append(&batch(1, 1..=10)).unwrap();
        let last = log.segments.back().unwrap();
        (last.path.clone(), last.len)
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_at_open() {
        let half_frame = {
            let encoded = batch(1, 11..=11);
            encoded.buf[..encoded.buf.len() / 2].to_vec()
        };
        let tails: [(&str, Vec<u8>); 4] = [
            ("half a frame", half_frame),
            ("half a header", vec![7, 0, 0]),
            ("garbage", vec![0xAB; 100]),
            ("zeros", vec![0; 4096]),
        ];
        for (what, tail) in tails {
            let dir = TempDir::new().unwrap();
            let (path, len) = ten(dir.path());
            append_bytes(&path, &tail);
            let mut log = open(dir.path(), None).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "{what}: cut");
            assert_holds(&log, &ids(1, 1..=10));
            log.append(&batch(1, 11..=11)).unwrap();
            drop(log);
            assert_holds(&open(dir.path(), None).unwrap(), &ids(1, 1..=11));
        }
    }

    #[test]
    fn a_last_frame_with_a_bad_checksum_is_a_torn_write() {
        let dir = TempDir::new().unwrap();
        let (path, len) = ten(dir.path());
        let mut last = batch(1, 11..=11).buf;
        let n = last.len();
        last[n - 1] ^= 0xFF;
        append_bytes(&path, &last);
        let log = open(dir.path(), None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_holds(&log, &ids(1, 1..=10));
    }

    fn flip_byte(path: &Path, at: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, at).unwrap();
        byte[0] ^= 0x55;
        file.write_all_at(&byte, at).unwrap();
    }

    fn expect_corrupt(dir: &Path, path: &Path, offset: u64) {
        match open(dir, None) {
            Err(StorageIoError::LogCorrupt {
                path: bad,
                offset: at,
                ..
            }) => {
                assert_eq!(bad, path);
                assert_eq!(at, offset);
            }
            Err(other) => panic!("expected LogCorrupt, got {other}"),
            Ok(_) => panic!("a corrupt log was opened"),
        }
    }

    #[test]
    fn corruption_before_the_tail_is_refused() {
        // In a segment before the last.
        let dir = TempDir::new().unwrap();
        let log = filled(dir.path());
        let first = &log.segments[0];
        let (path, offset) = (first.path.clone(), first.offsets[1]);
        drop(log);
        flip_byte(&path, offset + HEADER_BYTES as u64 + 20);
        expect_corrupt(dir.path(), &path, offset);
        let message = open(dir.path(), None).err().unwrap().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("byte {offset}")), "{message}");

        // In the last segment, with intact frames after it.
        let dir = TempDir::new().unwrap();
        let (path, _len) = ten(dir.path());
        let log = open(dir.path(), None).unwrap();
        let offset = log.segments[0].offsets[4];
        drop(log);
        flip_byte(&path, offset + HEADER_BYTES as u64 + 3);
        expect_corrupt(dir.path(), &path, offset);

        // A damaged length in the middle reads as a frame running past the end of a
        // segment that is not the last.
        let dir = TempDir::new().unwrap();
        let log = filled(dir.path());
        let second = &log.segments[1];
        let (path, offset) = (second.path.clone(), second.offsets[1]);
        drop(log);
        flip_byte(&path, offset + 3);
        expect_corrupt(dir.path(), &path, offset);
    }

    #[test]
    fn a_missing_segment_is_refused() {
        let dir = TempDir::new().unwrap();
        let log = filled(dir.path());
        let middle = log.segments[2].path.clone();
        let after = log.segments[3].path.clone();
        drop(log);
        std::fs::remove_file(&middle).unwrap();
        expect_corrupt(dir.path(), &after, 0);
    }

    #[test]
    fn an_append_with_a_hole_is_refused() {
        let dir = TempDir::new().unwrap();
        let mut log = filled(dir.path());
        assert!(log.append(&batch(1, 32..=33)).is_err());
        assert_holds(&log, &ids(1, 1..=30));
        log.append(&batch(1, 31..=31)).unwrap();
    }

    #[test]
    fn an_overlapping_append_replaces_the_entries_from_its_first_index() {
        let dir = TempDir::new().unwrap();
        let mut log = filled(dir.path());
        let new = batch(2, 12..=13);
        assert!(
            log.append_syncs(&new),
            "a replacing append truncates durably first"
        );
        log.append(&new).unwrap();
        let mut expected = ids(1, 1..=11);
        expected.extend(ids(2, 12..=13));
        assert_holds(&log, &expected);
        drop(log);
        assert_holds(&open(dir.path(), None).unwrap(), &expected);
    }
}
