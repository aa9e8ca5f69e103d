//! One error type for every call: the server's error body when there is one, else what
//! went wrong on the way.

use std::time::Duration;

use psubd_wire::ErrorBody;

/// Why a call failed. Cheap to clone, so one failed publish can be reported to every
/// record it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with its error body (docs/api.md § Errors).
    #[error("{} ({}, HTTP {status})", .body.message, .body.error)]
    Api {
        /// HTTP status.
        status: u16,
        /// The body: `error`, `message`, `error_code`, `retriable`.
        body: ErrorBody,
        /// The `Retry-After` header, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// One record of a publish was refused while others of its request were stored (a
    /// 207 row, or a report of the producer).
    #[error("record for partition {partition:?} failed: {} ({})", .body.message, .body.error)]
    Record {
        /// The partition it was meant for, when known.
        partition: Option<u32>,
        /// Why.
        body: ErrorBody,
    },
    /// No answer: no seed could be reached, or the connection failed mid-request.
    #[error("no answer from {url}: {message}")]
    Transport {
        /// The URL last tried.
        url: String,
        /// The cause, with its sources.
        message: String,
        /// False when the request certainly never reached a node (connection refused),
        /// so nothing it asked for can have happened.
        maybe_sent: bool,
    },
    /// An answer that is not what docs/api.md promises (unexpected status or body).
    #[error("unexpected answer from {url} (HTTP {status}): {detail}")]
    Unexpected {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What did not fit.
        detail: String,
    },
    /// The client was configured wrongly (no seed, a malformed URL…).
    #[error("{0}")]
    Config(String),
    /// The producer's background task has stopped; the record was not sent.
    #[error("the producer is closed")]
    Closed,
}

/// Errors that mean a consumer group rebalanced under the member: what it fetched will
/// be delivered again (to it or another member) from the committed offsets.
const REBALANCE_CODES: [&str; 3] = [
    "member_fenced",
    "stale_generation",
    "partition_not_assigned",
];

impl Error {
    /// The server's stable error name (`topic_not_found`, …), if the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.body().map(|b| b.error.as_str())
    }

    /// The server's numeric `error_code`, if it sent one.
    pub fn error_code(&self) -> Option<u32> {
        self.body().map(|b| b.error_code)
    }

    /// The server's error body, if it sent one.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            Error::Api { body, .. } | Error::Record { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Whether the same request may succeed later unchanged: the server's `retriable`, or
    /// a request that never reached a node.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Api { body, .. } | Error::Record { body, .. } => body.retriable,
            Error::Transport { maybe_sent, .. } => !maybe_sent,
            _ => false,
        }
    }

    /// True when the group rebalanced under the member (fenced, stale generation, or a
    /// partition no longer assigned): join again / fetch again, records are re-delivered.
    pub fn is_rebalance(&self) -> bool {
        self.code().is_some_and(|c| REBALANCE_CODES.contains(&c))
    }
}

/// The error and its sources on one line (reqwest's own message names only the URL).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
