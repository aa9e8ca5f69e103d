//! The transport's error: why a request to a peer got no answer.
//!
//! Kept apart from the storage error because the caller acts differently: every variant here
//! is "try again later, maybe elsewhere" (openraft retries Raft RPCs on its own; the api
//! layer answers 503), while a storage error means this node is broken.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::types::NodeId;

/// Why a request to a peer (or the transport itself) failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection to the peer is up right now (it is down, partitioned, or still being
    /// dialed). Returned at once, so callers do not wait out a timeout for a known-dead peer.
    #[error("peer {peer} is unreachable: no connection")]
    Unreachable {
        /// The peer asked.
        peer: NodeId,
    },
    /// The peer is not in this node's peer list.
    #[error("peer {peer} is not a configured peer")]
    UnknownPeer {
        /// The peer asked.
        peer: NodeId,
    },
    /// No answer within the request's deadline (slow or partitioned peer, or full queues).
    #[error("request to peer {peer} timed out after {after:?}")]
    Timeout {
        /// The peer asked.
        peer: NodeId,
        /// The deadline that passed.
        after: Duration,
    },
    /// The connection carrying the request closed, or the peer fell silent on it, before
    /// the answer came.
    #[error("connection to peer {peer} closed or silent before the answer")]
    ConnectionClosed {
        /// The peer asked.
        peer: NodeId,
    },
    /// The peer answered, but refused the request (unknown group, no service, shutting down).
    #[error("peer {peer} refused the request: {reason}")]
    Refused {
        /// The peer asked.
        peer: NodeId,
        /// What the peer said, as a stable description.
        reason: String,
    },
    /// The peer answered something that does not fit the request (a protocol bug or a
    /// version mismatch).
    #[error("peer {peer} answered with an unexpected response")]
    UnexpectedResponse {
        /// The peer asked.
        peer: NodeId,
    },
    /// The encoded request is larger than the frame limit; sending it would break the
    /// connection for every other request, so it is refused before it is queued.
    #[error("frame of {bytes} bytes exceeds the {limit}-byte frame limit")]
    FrameTooLarge {
        /// Size of the encoded frame.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame could not be encoded or decoded.
    #[error("frame codec failed: {source}")]
    Codec {
        /// The postcard error.
        #[from]
        source: postcard::Error,
    },
    /// The listen socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The transport is shutting down.
    #[error("the transport is shut down")]
    Shutdown,
}
