//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can stop the harness. A request that fails during the workload is *not*
/// an error: it is an outcome and goes into the history (see `history::Outcome`). These
/// variants are for the harness itself: setting up the network, driving processes,
/// reading and writing files.
#[derive(Debug, thiserror::Error)]
pub enum JepsenError {
    /// An external command (`ip`, `nft`) exited non-zero or could not be started.
    #[error("command `{command}` failed: {detail}")]
    Command {
        /// The command line, for the operator to re-run by hand.
        command: String,
        /// Exit status and stderr, or the spawn error.
        detail: String,
    },
    /// Network namespaces cannot be used here; the caller falls back to loopback.
    #[error("network namespaces unavailable: {reason}")]
    NamespacesUnavailable {
        /// What the probe saw.
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("i/o on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a history file is not a valid event.
    #[error("history line {line}: {source}")]
    HistoryParse {
        /// 1-based line number.
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The JSON results could not be encoded.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A node process could not be started, signalled or stopped.
    #[error("node {node}: {detail}")]
    Node {
        /// The node id.
        node: u64,
        /// What went wrong.
        detail: String,
    },
    /// The cluster did not reach a state the harness needs (ready, leaders, topics) in time.
    #[error("cluster not ready: {what}")]
    NotReady {
        /// What was waited for.
        what: String,
    },
    /// The HTTP client could not be built.
    #[error("http client: {detail}")]
    Client {
        /// What reqwest said.
        detail: String,
    },
    /// A command-line argument makes no sense.
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// Which argument and why.
        detail: String,
    },
    /// The operator pressed Ctrl-C or sent SIGTERM; the run was torn down.
    #[error("interrupted by signal")]
    Interrupted,
}

impl JepsenError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        JepsenError::Io {
            path: path.into(),
            source,
        }
    }
}
