//! The storage errors of `psubd-raft`, and their translation into openraft's `StorageError`.
//!
//! Every failure of the engine, of a snapshot file or of a stored value's encoding becomes a
//! [`StorageIoError`] with enough context to find the cause, and is handed to openraft as a
//! `StorageError` with the subject and verb of the operation that failed. openraft treats
//! those as fatal for the group: the node is broken, the caller cannot act on it.

use std::io;
use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::types::{typ, NodeId};

/// A storage failure: the engine, a snapshot file, or a stored value that cannot be read back.
///
/// These mean "the node's storage is broken" — none is a control-flow answer. Domain refusals
/// of a group's logic are encoded in its [`CommandResponse`](crate::CommandResponse) instead.
#[derive(Debug, thiserror::Error)]
pub enum StorageIoError {
    /// The storage engine failed an operation (disk I/O, corruption detected by the engine).
    #[error("storage engine failed to {op}: {source}")]
    Engine {
        /// What the engine was asked to do, e.g. "apply a batch".
        op: &'static str,
        /// The engine's error, as an I/O error.
        #[source]
        source: io::Error,
    },

    /// A value could not be encoded, or a stored value could not be decoded (corruption or a
    /// format from another version).
    #[error("failed to encode or decode {what}: {source}")]
    Codec {
        /// What was being encoded or decoded, e.g. "log entry".
        what: &'static str,
        /// The codec's error.
        #[source]
        source: postcard::Error,
    },

    /// A stored key or value does not have the layout this version writes.
    #[error("corrupt {what} in storage")]
    Corrupt {
        /// What was malformed, e.g. "log entry key".
        what: &'static str,
    },

    /// A snapshot file or directory operation failed.
    #[error("failed to {op} {path}: {source}")]
    File {
        /// What was being done, e.g. "fsync snapshot file".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A snapshot file is malformed: bad magic, truncated, checksum or metadata mismatch.
    #[error("snapshot file {path} is invalid: {reason}")]
    SnapshotInvalid {
        /// The snapshot file.
        path: PathBuf,
        /// Which check failed.
        reason: &'static str,
    },

    /// A Raft log segment file is damaged somewhere a crash cannot explain (anything but a
    /// torn write at the end of the last segment): the node refuses to start on it rather
    /// than forget entries it acknowledged.
    #[error("raft log segment {path} is corrupt at byte {offset}: {reason}")]
    LogCorrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad frame (0 for a whole-file problem).
        offset: u64,
        /// Which check failed.
        reason: &'static str,
    },

    /// The data directory holds Raft log entries in the engine, the layout of versions before
    /// segment files. There is no migration: the node refuses to start on it.
    #[error(
        "data directory {dir} holds a Raft log in the old in-database layout, which this \
         version does not read (no migration): start on an empty data directory"
    )]
    LegacyLog {
        /// The node's data directory.
        dir: PathBuf,
    },

    /// The node-wide flusher task is gone (the node is shutting down), so nothing can be made
    /// durable any more.
    #[error("the storage flusher has stopped")]
    FlusherStopped,

    /// An earlier write or sync failed; the node's storage acknowledges nothing more and the
    /// node stops (fail-stop, see `health`).
    #[error("storage failed earlier: {cause}")]
    Failed {
        /// The first failure, naming the file.
        cause: String,
    },

    /// Storage was opened outside a tokio runtime, so the flusher task cannot be started.
    #[error("node storage must be opened inside a tokio runtime")]
    NoRuntime,

    /// A blocking storage task was cancelled or panicked before it finished.
    #[error("storage task for {op} did not complete: {reason}")]
    TaskFailed {
        /// The operation the task was running.
        op: &'static str,
        /// Why it did not complete.
        reason: String,
    },
}

impl StorageIoError {
    /// A file error with its path, for the snapshot code.
    pub(crate) fn file(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageIoError::File {
            op,
            path: path.into(),
            source,
        }
    }

    /// A codec error.
    pub(crate) fn codec(what: &'static str, source: postcard::Error) -> Self {
        StorageIoError::Codec { what, source }
    }

    /// Converts into openraft's error, naming what was being done to which subject.
    pub(crate) fn into_raft(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> typ::StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Shorthand for converting a `Result<T, StorageIoError>` at the openraft boundary.
///
/// openraft's `StorageError` is large; it is what openraft's storage traits return, so the
/// size is not ours to change.
#[allow(clippy::result_large_err)]
pub(crate) trait IntoRaftResult<T> {
    /// Converts the error with the given subject and verb.
    fn raft_err(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> Result<T, typ::StorageError>;
}

impl<T> IntoRaftResult<T> for Result<T, StorageIoError> {
    fn raft_err(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> Result<T, typ::StorageError> {
        self.map_err(|e| e.into_raft(subject, verb))
    }
}
