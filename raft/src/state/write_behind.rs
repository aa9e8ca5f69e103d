//! Write-behind for large files (snapshots): their data goes to the disk in steps while they
//! are written, instead of all at once in their final fsync.
//!
//! Why: on ext4 (`data=ordered`) a journal commit waits for the data of every block allocated
//! in its transaction, and every Raft log `fdatasync` that grew a segment needs a commit. A
//! snapshot of tens of MiB left dirty until its final fsync gets its blocks allocated in one
//! go, so every log flush of every node on that disk waits for all of it: measured 650 ms for
//! a 75 MiB partition snapshot under publish load, past the AppendEntries deadline (300 ms),
//! so replication timed out on all three nodes at once. Started and awaited a step at a time,
//! a log flush waits behind at most about two steps.
//!
//! Durability is unchanged: callers still fsync the file before they use it; this only
//! moves the writing earlier. Where `sync_file_range(2)` is missing (not Linux, or a file
//! system without it) the writer falls back to writing as before.

use std::fs::File;
use std::io::{self, Write};

/// Bytes between two writeback starts: small enough that a log flush queued behind one step
/// waits milliseconds, large enough that the extra syscalls cost nothing measurable.
pub const STEP_BYTES: u64 = 1 << 20;

/// A [`Write`] over a new file (written from offset 0, sequentially) that starts the
/// writeback of every full step and waits for the step before it.
pub struct WriteBehind {
    file: File,
    /// Bytes written so far (the file offset, as the file is written from 0).
    written: u64,
    /// Writeback was started for `[0, started)`.
    started: u64,
    /// Writeback finished for `[0, waited)`.
    waited: u64,
    /// False once the file system refused `sync_file_range`: plain writes from then on.
    enabled: bool,
}

impl WriteBehind {
    /// Wraps a new, empty `file`.
    pub fn new(file: File) -> Self {
        WriteBehind {
            file,
            written: 0,
            started: 0,
            waited: 0,
            enabled: true,
        }
    }

    /// The file (everything written is in it; not yet fsynced).
    pub fn into_inner(self) -> File {
        self.file
    }

    /// Waits for the step started last time, then starts writeback of what came since.
    fn step(&mut self) -> io::Result<()> {
        if self.started > self.waited {
            let done = range_sync(&self.file, self.waited, self.started, Wait::Finish)?;
            if !done {
                self.enabled = false;
                return Ok(());
            }
            self.waited = self.started;
        }
        if !range_sync(&self.file, self.started, self.written, Wait::Start)? {
            self.enabled = false;
            return Ok(());
        }
        self.started = self.written;
        Ok(())
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.enabled && self.written - self.started >= STEP_BYTES {
            self.step()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes an existing file's dirty data to the disk a step at a time (waiting for each), so
/// the fsync that follows finds little left to do. Used on received snapshots, which are
/// written by openraft's chunked install rather than through a [`WriteBehind`].
///
/// # Errors
/// An I/O error from the writeback; a file system without `sync_file_range` is not an error.
pub fn write_out_in_steps(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut from = 0;
    while from < len {
        let to = (from + STEP_BYTES).min(len);
        if !range_sync(file, from, to, Wait::Finish)? {
            return Ok(());
        }
        from = to;
    }
    Ok(())
}

/// What [`range_sync`] waits for.
#[derive(Clone, Copy)]
enum Wait {
    /// Only start the writeback of the range.
    Start,
    /// Start it and wait until the range is on the disk (its earlier writeback included).
    Finish,
}

/// `sync_file_range(2)` over `[from, to)`. Returns false when the file system does not
/// support it (the caller stops trying).
#[cfg(target_os = "linux")]
fn range_sync(file: &File, from: u64, to: u64, wait: Wait) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    let flags = match wait {
        Wait::Start => libc::SYNC_FILE_RANGE_WRITE,
        Wait::Finish => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return Ok(false);
    };
    // SAFETY: the descriptor is owned by `file` and open for the whole call; the call reads
    // no memory of ours.
    let ret = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ESPIPE) => {
            Ok(false)
        }
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn range_sync(_file: &File, _from: u64, _to: u64, _wait: Wait) -> io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn everything_written_reads_back_in_order_across_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = WriteBehind::new(File::create(&path).unwrap());
        let chunk: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let rounds = (3 * STEP_BYTES as usize) / chunk.len() + 2;
        for _ in 0..rounds {
            writer.write_all(&chunk).unwrap();
        }
        assert!(
            writer.started >= 3 * STEP_BYTES,
            "writeback was started step by step (started at {})",
            writer.started
        );
        assert!(writer.waited > 0 && writer.waited <= writer.started);
        let file = writer.into_inner();
        file.sync_all().unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), chunk.len() * rounds);
        assert!(back.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    }

    #[test]
    fn writing_out_an_existing_file_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        let data: Vec<u8> = (0..(2 * STEP_BYTES + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        write_out_in_steps(&file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
