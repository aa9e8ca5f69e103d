//! The wire format between peers: what a frame holds and how it is encoded.
//!
//! A connection carries length-delimited frames (tokio-util's `LengthDelimitedCodec`, a
//! 4-byte big-endian length then the body), each body one postcard-encoded [`Frame`].
//! Postcard is compact and fast but not self-describing: both ends must run the same
//! definitions, which the hello frame's [`PROTOCOL_VERSION`] checks.

use bytes::Bytes;
use openraft::error::{Fatal, SnapshotMismatch};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::transport::auth::{Nonce, Proof};
use crate::transport::error::TransportError;
use crate::types::{typ, GroupId, NodeId};

/// Bumped whenever a change to these types changes the encoding; peers with another
/// version are refused at hello instead of misreading each other's frames.
pub(crate) const PROTOCOL_VERSION: u32 = 4;

/// The largest frame either side sends or accepts. Big enough for any Raft message the
/// tuning allows (appends are capped in bytes well below it, snapshot chunks are 1 MiB by
/// default); a peer announcing more is broken, and its connection is dropped.
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// One unit on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// First frame each side sends on a new connection: who it is. The dialer sends it,
    /// the acceptor checks it and answers with its own.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// The sender's node id.
        node: NodeId,
        /// The sender's fresh challenge (see `transport::auth`).
        nonce: Nonce,
        /// The acceptor's proof that it holds the cluster secret; none from the dialer.
        proof: Option<Proof>,
    },
    /// The dialer's proof that it holds the cluster secret, its answer to the acceptor's
    /// hello. Nothing else is taken from it before.
    Proof {
        /// HMAC over both ids and nonces (see `transport::auth`).
        proof: Proof,
    },
    /// A request; the answer carries the same `id`. Ids are per connection and direction.
    Request {
        /// Chosen by the sender, unique among its pending requests on this connection.
        id: u64,
        /// What is asked.
        body: PeerRequest,
    },
    /// The answer to the request with the same `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        body: PeerResponse,
    },
    /// Sent when a side has been idle for a while, so the other side can tell a silent
    /// connection from a dead one.
    Ping,
    /// The sender's storage state: sent first on every connection and again whenever it
    /// changes. A leader refuses new records for partitions replicated on a peer low on space.
    Status {
        /// The sender's free space is below its threshold.
        low_space: bool,
    },
}

/// What one node asks another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    /// A Raft RPC for one group.
    Raft {
        /// The group the RPC belongs to.
        group: GroupId,
        /// The RPC.
        rpc: RaftRequest,
    },
    /// Does the peer hold any state (a vote or a log entry) for `group`?
    GroupState {
        /// The group asked about.
        group: GroupId,
    },
    /// An application request for the peer's [`PeerService`](crate::PeerService).
    Service(Bytes),
    /// Is `group` running on the peer? The peer answers once it is, or after `wait_ms`
    /// (capped by the peer): a new group's preferred replica asks before its first
    /// election, so no vote meets a replica that has not opened the group yet.
    AwaitGroup {
        /// The group asked about.
        group: GroupId,
        /// How long the peer may wait for the group to open.
        wait_ms: u32,
    },
}

/// The Raft RPCs openraft sends.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftRequest {
    /// Append entries (or heartbeat).
    AppendEntries(typ::AppendEntriesRequest),
    /// Request a vote.
    Vote(typ::VoteRequest),
    /// One chunk of a snapshot.
    InstallSnapshot(typ::InstallSnapshotRequest),
}

/// What a node answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    /// The group's Raft answered.
    Raft(RaftResponse),
    /// The answer to [`PeerRequest::GroupState`].
    GroupState {
        /// True when the peer has stored a vote or a log entry for the group.
        has_state: bool,
    },
    /// The peer service's answer.
    Service(Bytes),
    /// The answer to [`PeerRequest::AwaitGroup`].
    GroupRunning {
        /// True when the group runs on the peer.
        running: bool,
    },
    /// The request could not be served at all.
    Refused(Refusal),
}

/// A Raft group's answer, or the error its Raft returned.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftResponse {
    /// Answer to [`RaftRequest::AppendEntries`].
    AppendEntries(typ::AppendEntriesResponse),
    /// Answer to [`RaftRequest::Vote`].
    Vote(typ::VoteResponse),
    /// Answer to [`RaftRequest::InstallSnapshot`].
    InstallSnapshot(typ::InstallSnapshotResponse),
    /// The receiving Raft is stopped or broken.
    Fatal(Fatal<NodeId>),
    /// A snapshot chunk arrived out of sequence; the sender restarts the snapshot.
    SnapshotMismatch(SnapshotMismatch),
}

/// Why a peer could not serve a request. Every variant is transient from the asker's
/// point of view (the group may open, the service may be installed, the node may restart).
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum Refusal {
    /// The group is not running on the peer (not created yet, or closed).
    #[error("group {group} is not running on the peer")]
    UnknownGroup {
        /// The group asked for.
        group: GroupId,
    },
    /// The peer has no application service installed yet.
    #[error("no peer service installed")]
    NoService,
    /// The peer's storage failed to answer.
    #[error("storage failed on the peer: {message}")]
    Storage {
        /// The error's text.
        message: String,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The answer would exceed the frame limit.
    #[error("the answer exceeds the frame limit")]
    TooLarge,
}

/// The length-delimited codec both directions use.
pub(crate) fn length_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// The largest frame taken before the handshake completed: a hello or a proof is well under
/// 100 bytes, and an unauthenticated stranger must not make us buffer megabytes.
pub(crate) const MAX_HANDSHAKE_FRAME_BYTES: usize = 1024;

/// The length codec a connection reads with until the peer has proved itself; raise the
/// limit to [`MAX_FRAME_BYTES`] afterwards.
pub(crate) fn handshake_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_HANDSHAKE_FRAME_BYTES)
        .new_codec()
}

/// Encodes one frame, refusing frames the peer would reject as too large.
///
/// # Errors
/// [`TransportError::Codec`] if postcard fails, [`TransportError::FrameTooLarge`] if the
/// result exceeds [`MAX_FRAME_BYTES`].
pub(crate) fn encode(frame: &Frame) -> Result<Bytes, TransportError> {
    // Sized first: an AppendEntries frame carries whole record batches, and a growing
    // buffer would copy them once per doubling.
    let size = postcard::experimental::serialized_size(frame)?;
    let body = postcard::to_extend(frame, Vec::with_capacity(size))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(TransportError::FrameTooLarge {
            bytes: body.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    Ok(Bytes::from(body))
}

/// Decodes one frame body.
///
/// # Errors
/// [`TransportError::Codec`] if the bytes are not a valid frame.
pub(crate) fn decode(body: &[u8]) -> Result<Frame, TransportError> {
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    use crate::types::Command;

    #[test]
    fn append_entries_round_trips_with_payload_bytes_intact() {
        let payload = Bytes::from(vec![7u8; 70_000]);
        let entry = typ::Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 2), 41),
            payload: EntryPayload::Normal(Command(payload.clone())),
        };
        let req = typ::AppendEntriesRequest {
            vote: Vote::new_committed(3, 2),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 2), 40)),
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 2), 39)),
            entries: vec![entry],
        };
        let frame = Frame::Request {
            id: 9,
            body: PeerRequest::Raft {
                group: 12,
                rpc: RaftRequest::AppendEntries(req),
            },
        };
        let bytes = encode(&frame).unwrap();
        // Payload bytes travel once, plus a small header: no per-byte expansion.
        assert!(bytes.len() < 70_000 + 200, "encoded {} bytes", bytes.len());
        match decode(&bytes).unwrap() {
            Frame::Request {
                id: 9,
                body:
                    PeerRequest::Raft {
                        group: 12,
                        rpc: RaftRequest::AppendEntries(req),
                    },
            } => {
                assert_eq!(req.entries.len(), 1);
                assert_eq!(req.entries[0].log_id.index, 41);
                match &req.entries[0].payload {
                    EntryPayload::Normal(Command(b)) => assert_eq!(b, &payload),
                    other => panic!("unexpected payload {other:?}"),
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_codec_error_not_a_panic() {
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(TransportError::Codec { .. })
        ));
    }
}
