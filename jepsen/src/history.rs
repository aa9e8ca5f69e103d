//! The history: every operation the harness invoked and how it completed, one JSON event
//! per line in `history.jsonl`, in the order the harness observed them.
//!
//! The checker reads nothing but this file, so a run can be re-checked later with
//! `psubd-jepsen check history.jsonl`. Each operation is an `invoke` event followed, on
//! the same `process`, by exactly one completion (`ok`, `fail` or `info`); a process never
//! has two operations open at once. An `invoke` with no completion (the run was cut short)
//! is read as `info`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::JepsenError;

/// How an operation completed, or that it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The operation is about to be sent.
    Invoke,
    /// The system acknowledged it; for a publish, the record is durable at `offset`.
    Ok,
    /// The operation certainly did not take effect (see [`classify_status`]).
    Fail,
    /// Unknown: it may or may not have taken effect (timeouts, 5xx other than the 503s
    /// listed in [`NOT_APPLIED_503`], a connection that broke after the request was sent).
    Info,
}

/// What an operation does. Serialized in kebab-case, the `f` of the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// `POST /v1/topics/{t}/records` with one record to an explicit partition.
    Publish,
    /// `GET /v1/topics/{t}/partitions/{p}/records?offset=N`.
    Read,
    /// `POST /v1/groups/{g}/members`.
    Join,
    /// `GET /v1/groups/{g}/members/{m}/records` (also the heartbeat).
    Poll,
    /// `POST /v1/groups/{g}/offsets`.
    Commit,
    /// `GET /v1/groups/{g}/offsets`: the committed offsets read back.
    Committed,
    /// `DELETE /v1/groups/{g}/members/{m}`.
    Leave,
    /// The final phase's stable read of one partition, from offset 0, on one node.
    FinalState,
    /// The nemesis injecting a fault (`value` describes it).
    Fault,
    /// The nemesis healing the fault it injected last.
    Heal,
    /// A phase boundary of the run (`value` names the phase that begins).
    Phase,
    /// One step of a `membership` fault (`value`: `step` = `join`, `joined`, `move`,
    /// `moved`, `decommission`, `decommissioned`, `stopped`, with its node and partitions),
    /// recorded by process `membership` while the fault's own event is open.
    Membership,
}

/// One record seen by a read or a poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenRecord {
    /// `topic/partition`.
    pub key: String,
    /// Its offset.
    pub offset: u64,
    /// Its value as returned (the harness publishes unique integers; anything else read
    /// back is a phantom).
    pub value: serde_json::Value,
}

/// A `(topic/partition, offset)` pair: a commit's offsets, a committed offset read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyOffset {
    /// `topic/partition`.
    pub key: String,
    /// For commits and committed reads: the next offset to read. `None` in a committed
    /// read means the group has no commit for that partition.
    pub offset: Option<u64>,
}

/// One line of `history.jsonl`.
///
/// Fields that do not apply to an operation are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history; strictly increasing, the real-time order the harness saw.
    pub index: u64,
    /// Nanoseconds since the run began, from a monotonic clock.
    pub time: u64,
    /// The logical client (`w3`, `r1`, `g2`, `o0`, `nemesis`, `final`...). One open
    /// operation per process at a time.
    pub process: String,
    /// `invoke`, `ok`, `fail` or `info`.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// What the operation does.
    pub f: Op,
    /// `topic/partition` the operation addresses, when it addresses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Publish: the unique value sent. Fault/heal/phase: a description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Publish ok: the acknowledged offset. Read invoke: the requested offset; read ok:
    /// the `next_offset` answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The node the request was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Consumer group name, for group operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Member id, for group operations once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Group generation, for group operations once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Records returned by a read, a poll or a final read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<SeenRecord>>,
    /// Commit: offsets sent. Committed: offsets read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<Vec<KeyOffset>>,
    /// Assignments (`topic/partition`) answered by a join, or by a poll when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignments: Option<Vec<String>>,
    /// High watermark answered by a read or a final read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<u64>,
    /// For `fail`/`info`: HTTP status and error string, or the transport error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// A new event with only the mandatory fields; `index` and `time` are assigned by
    /// [`History::record`].
    pub fn new(process: impl Into<String>, kind: EventType, f: Op) -> Self {
        Event {
            index: 0,
            time: 0,
            process: process.into(),
            kind,
            f,
            key: None,
            value: None,
            offset: None,
            node: None,
            group: None,
            member: None,
            generation: None,
            records: None,
            offsets: None,
            assignments: None,
            high_watermark: None,
            error: None,
        }
    }

    /// The completion of `self` (an invoke) with the same process, f, key, node and group
    /// fields, so each completion can be read on its own.
    pub fn complete(&self, kind: EventType) -> Self {
        let mut e = Event::new(self.process.clone(), kind, self.f);
        e.key = self.key.clone();
        e.node = self.node;
        e.group = self.group.clone();
        e.member = self.member.clone();
        e.generation = self.generation;
        if self.f == Op::Publish {
            e.value = self.value.clone();
        }
        e
    }
}

/// `topic/partition`, the key used throughout the history.
pub fn key_of(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

/// Splits a `topic/partition` key. Topic names cannot contain `/` (docs/api.md § Names).
pub fn split_key(key: &str) -> Option<(&str, u32)> {
    let (t, p) = key.rsplit_once('/')?;
    Some((t, p.parse().ok()?))
}

/// 503 `error` strings that guarantee nothing was appended.
///
/// The API gives 503 exactly one meaning: no leader or no quorum could take the request
/// (a minority side, a leaderless partition), answered with Retry-After; a write that was
/// already proposed and timed out is 504 `outcome_unknown` instead (it may or may not be
/// committed). The error catalog (docs/api.md § Errors) names that 503 `not_available`:
/// nothing was written. So a 503 `not_available` is a refusal before proposal: the harness
/// records it as `fail`, and the checker treats any later read of that value as an
/// aborted read, a violation by the node.
///
/// Any other 503 (another error string, or a body that is not the documented error JSON,
/// e.g. a half-written response) is recorded as `info`: the harness only claims "not
/// applied" where the contract says so.
pub const NOT_APPLIED_503: &[&str] = &["not_available"];

/// Whether the operation can change state on the server. Reads cannot, so any error of
/// a read is a `fail`; for the rest an unclear error is `info`.
pub fn is_mutation(f: Op) -> bool {
    matches!(
        f,
        Op::Publish | Op::Join | Op::Poll | Op::Commit | Op::Leave
    )
}

/// Classifies an HTTP error answer (status >= 400) of operation `f`.
///
/// - 4xx: `fail`: bad input gets a 4xx and changes nothing (docs/api.md); a fenced member
///   or a stale generation is a 409 refusal.
/// - 503 with an `error` in [`NOT_APPLIED_503`] (`not_available`): `fail`.
/// - everything else (504 `outcome_unknown`, 500, other 503s): `info` for mutations.
pub fn classify_status(f: Op, status: u16, error: Option<&str>) -> EventType {
    if !is_mutation(f) {
        return EventType::Fail;
    }
    match status {
        400..=499 => EventType::Fail,
        503 if error.is_some_and(|e| NOT_APPLIED_503.contains(&e)) => EventType::Fail,
        _ => EventType::Info,
    }
}

/// Classifies a transport error: `fail` only when no connection was established (refused,
/// unreachable, connect timeout: not one byte of the request left the harness); a timeout
/// or a reset after connecting is `info` for mutations.
pub fn classify_transport(f: Op, connect_failed: bool) -> EventType {
    if connect_failed || !is_mutation(f) {
        EventType::Fail
    } else {
        EventType::Info
    }
}

/// The history being written during a run.
///
/// Events are appended under one lock, which also assigns `index` and `time`, so the file
/// order is the real-time order the harness saw. The writer is buffered and flushed on
/// [`History::flush`]; the checker reads the file after the run.
pub struct History {
    start: Instant,
    path: PathBuf,
    inner: Mutex<HistoryInner>,
}

struct HistoryInner {
    next_index: u64,
    out: BufWriter<File>,
    /// The first write error; later events are dropped and the run reports it at flush.
    failed: Option<std::io::Error>,
}

impl History {
    /// Creates (truncates) `path`.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &Path) -> Result<Self, JepsenError> {
        let file = File::create(path).map_err(|e| JepsenError::io(path, e))?;
        Ok(History {
            start: Instant::now(),
            path: path.to_path_buf(),
            inner: Mutex::new(HistoryInner {
                next_index: 0,
                out: BufWriter::new(file),
                failed: None,
            }),
        })
    }

    /// Appends `event`, assigning its index and time, and returns the stored copy.
    pub fn record(&self, mut event: Event) -> Event {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        event.index = inner.next_index;
        inner.next_index += 1;
        event.time = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if inner.failed.is_none() {
            let res = serde_json::to_writer(&mut inner.out, &event)
                .map_err(std::io::Error::from)
                .and_then(|()| inner.out.write_all(b"\n"));
            if let Err(e) = res {
                inner.failed = Some(e);
            }
        }
        event
    }

    /// Nanoseconds since the run began (the clock of `time`).
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Flushes buffered events to disk.
    ///
    /// # Errors
    /// Any write error seen since the start (events after it were dropped).
    pub fn flush(&self) -> Result<(), JepsenError> {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(e) = inner.failed.take() {
            return Err(JepsenError::io(&self.path, e));
        }
        inner
            .out
            .flush()
            .map_err(|e| JepsenError::io(&self.path, e))
    }

    /// Where the history is written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a history file back.
///
/// # Errors
/// The file cannot be read, or a line is not an event.
pub fn read_history(path: &Path) -> Result<Vec<Event>, JepsenError> {
    let file = File::open(path).map_err(|e| JepsenError::io(path, e))?;
    let mut events = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| JepsenError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|source| JepsenError::HistoryParse {
            line: i + 1,
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let h = History::create(&path).unwrap();
        let mut inv = Event::new("w0", EventType::Invoke, Op::Publish);
        inv.key = Some(key_of("t", 1));
        inv.value = Some(serde_json::json!(7));
        let inv = h.record(inv);
        let mut ok = inv.complete(EventType::Ok);
        ok.offset = Some(3);
        h.record(ok);
        h.flush().unwrap();
        let back = read_history(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].index, 0);
        assert_eq!(back[1].index, 1);
        assert!(back[1].time >= back[0].time);
        assert_eq!(back[1].kind, EventType::Ok);
        assert_eq!(back[1].value, Some(serde_json::json!(7)));
        assert_eq!(back[1].offset, Some(3));
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.contains("\"type\":\"invoke\""));
        assert!(line.contains("\"f\":\"publish\""));
    }

    #[test]
    fn only_certain_refusals_are_fail() {
        assert_eq!(
            classify_status(Op::Publish, 400, Some("invalid")),
            EventType::Fail
        );
        assert_eq!(
            classify_status(Op::Publish, 503, Some("not_available")),
            EventType::Fail
        );
        assert_eq!(
            classify_status(Op::Publish, 503, Some("shutting_down")),
            EventType::Info
        );
        assert_eq!(classify_status(Op::Publish, 503, None), EventType::Info);
        assert_eq!(
            classify_status(Op::Publish, 504, Some("outcome_unknown")),
            EventType::Info
        );
        assert_eq!(classify_status(Op::Publish, 500, None), EventType::Info);
        assert_eq!(classify_status(Op::Read, 504, None), EventType::Fail);
        assert_eq!(classify_transport(Op::Publish, true), EventType::Fail);
        assert_eq!(classify_transport(Op::Publish, false), EventType::Info);
        assert_eq!(classify_transport(Op::Commit, false), EventType::Info);
    }

    #[test]
    fn keys_split_back() {
        assert_eq!(split_key("a.b-c/12"), Some(("a.b-c", 12)));
        assert_eq!(split_key("nope"), None);
    }
}
