//! Node log files: one per node, appended by every run of it, with marker lines between
//! runs and events so the file reads as a timeline, and its tail for error messages.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Opens `path` for appending, creating it (and not its directory).
///
/// # Errors
/// The file cannot be opened.
pub fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends a marker line `===== [<unix ms>] <what> =====`. Best effort: a log that
/// cannot be written must not fail the operation it records.
pub fn mark(path: &Path, what: &str) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    if let Ok(mut f) = append(path) {
        let _ = writeln!(f, "===== [{ms}] {what} =====");
    }
}

/// The marker text [`crate::NodeSet`] writes before run `n` of node `id`, after
/// `<who>: `; [`is_start_mark`] recognises it.
pub fn start_text(n: u32, id: u64) -> String {
    format!("start #{n} of node {id}")
}

/// Whether `line` is the marker before a run of a node (see [`start_text`]).
pub fn is_start_mark(line: &str) -> bool {
    line.starts_with("===== [") && line.contains(": start #") && line.ends_with(" =====")
}

/// The last `bytes` bytes of a file as text (lossy), or a note saying why there are none.
pub fn tail_bytes(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(bytes))).is_err()
        || f.read_to_end(&mut buf).is_err()
    {
        return String::from("(log unreadable)");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `lines` lines of a file, reading at most `bytes` from its end.
pub fn tail_lines(path: &Path, lines: usize, bytes: u64) -> String {
    let text = tail_bytes(path, bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_tails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("n.log");
        assert_eq!(tail_lines(&log, 3, 1024), "(no log)");
        mark(&log, &format!("who: {}", start_text(2, 1)));
        let mut f = append(&log).expect("open");
        writeln!(f, "a\nb\nc").expect("write");
        let text = std::fs::read_to_string(&log).expect("read");
        assert!(is_start_mark(text.lines().next().expect("a line")));
        assert!(!is_start_mark("a"));
        assert_eq!(tail_lines(&log, 2, 1024), "b\nc");
        assert_eq!(tail_bytes(&log, 2), "c\n");
    }
}
