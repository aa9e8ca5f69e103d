//! openraft's outbound network for one group, over the shared peer transport.
//!
//! Every group gets its own [`GroupNetworkFactory`] (openraft wants one per `Raft`), but all
//! of them send through the node's single [`Transport`](crate::transport): each RPC is
//! wrapped in `PeerRequest::Raft { group, .. }` so the receiving node routes it to the
//! same group. Snapshots use openraft 0.9's chunked `install_snapshot` (the default
//! `full_snapshot` reads the snapshot file chunk by chunk), so a snapshot is never held in
//! memory whole.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::{BasicNode, EntryPayload};

use crate::transport::codec::{PeerRequest, PeerResponse, RaftRequest, RaftResponse};
use crate::transport::{Transport, TransportError};
use crate::types::{typ, GroupId, NodeId, TypeConfig};

/// The RPC error openraft expects, for an RPC whose API error is `E`.
type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

/// Builds the per-peer clients of one group.
#[derive(Clone)]
pub(crate) struct GroupNetworkFactory {
    group: GroupId,
    transport: Transport,
    /// Payload bytes allowed in one AppendEntries (see `RaftTuning::max_append_bytes`).
    max_append_bytes: u64,
}

impl GroupNetworkFactory {
    /// The factory for `group`.
    pub(crate) fn new(group: GroupId, transport: Transport, max_append_bytes: u64) -> Self {
        GroupNetworkFactory {
            group,
            transport,
            max_append_bytes,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> GroupNetwork {
        // The target's address comes from the transport's peer list, not from the
        // membership's `BasicNode`: the membership only names node ids.
        GroupNetwork {
            group: self.group,
            target,
            transport: self.transport.clone(),
            max_append_bytes: self.max_append_bytes,
        }
    }
}

/// One group's client to one peer.
pub(crate) struct GroupNetwork {
    group: GroupId,
    target: NodeId,
    transport: Transport,
    max_append_bytes: u64,
}

impl GroupNetwork {
    /// Sends one Raft RPC and unwraps the group's answer, mapping transport failures to
    /// the openraft error openraft retries on.
    async fn call<E>(
        &self,
        action: RPCTypes,
        rpc: RaftRequest,
        ttl: Duration,
    ) -> Result<RaftResponse, RpcError<E>>
    where
        E: std::error::Error,
    {
        let request = PeerRequest::Raft {
            group: self.group,
            rpc,
        };
        match self.transport.request(self.target, request, ttl).await {
            Ok(PeerResponse::Raft(RaftResponse::Fatal(fatal))) => Err(RPCError::RemoteError(
                RemoteError::new(self.target, RaftError::Fatal(fatal)),
            )),
            Ok(PeerResponse::Raft(response)) => Ok(response),
            Ok(PeerResponse::Refused(refusal)) => {
                // The group is not (yet, or any more) running there: transient, retried.
                let err = TransportError::Refused {
                    peer: self.target,
                    reason: refusal.to_string(),
                };
                Err(RPCError::Network(NetworkError::new(&err)))
            }
            Ok(_) => {
                let err = TransportError::UnexpectedResponse { peer: self.target };
                Err(RPCError::Network(NetworkError::new(&err)))
            }
            Err(err @ (TransportError::Unreachable { .. } | TransportError::Shutdown)) => {
                Err(RPCError::Unreachable(Unreachable::new(&err)))
            }
            Err(TransportError::Timeout { after, .. }) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.transport.id(),
                target: self.target,
                timeout: after,
            })),
            Err(err) => Err(RPCError::Network(NetworkError::new(&err))),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RpcError<E> {
        let err = TransportError::UnexpectedResponse { peer: self.target };
        RPCError::Network(NetworkError::new(&err))
    }
}

/// How many leading entries of `entries` fit in `budget` payload bytes (at least one,
/// so a single oversized entry still travels).
fn entries_within(entries: &[typ::Entry], budget: u64) -> usize {
    let mut used = 0u64;
    for (i, entry) in entries.iter().enumerate() {
        let size = match &entry.payload {
            EntryPayload::Normal(command) => command.0.len() as u64,
            _ => 0,
        };
        used = used.saturating_add(size);
        if used > budget {
            return i.max(1);
        }
    }
    entries.len()
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: typ::AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<typ::AppendEntriesResponse, RpcError> {
        let fit = entries_within(&rpc.entries, self.max_append_bytes);
        if fit < rpc.entries.len() {
            // openraft sends at most `fit` entries for the next few RPCs.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit as u64),
            ));
        }
        match self
            .call(
                RPCTypes::AppendEntries,
                RaftRequest::AppendEntries(rpc),
                option.hard_ttl(),
            )
            .await?
        {
            RaftResponse::AppendEntries(resp) => Ok(resp),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: typ::InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<typ::InstallSnapshotResponse, RpcError<InstallSnapshotError>> {
        match self
            .call(
                RPCTypes::InstallSnapshot,
                RaftRequest::InstallSnapshot(rpc),
                option.hard_ttl(),
            )
            .await?
        {
            RaftResponse::InstallSnapshot(resp) => Ok(resp),
            RaftResponse::SnapshotMismatch(mismatch) => {
                Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
                )))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: typ::VoteRequest,
        option: RPCOption,
    ) -> Result<typ::VoteResponse, RpcError> {
        match self
            .call(RPCTypes::Vote, RaftRequest::Vote(rpc), option.hard_ttl())
            .await?
        {
            RaftResponse::Vote(resp) => Ok(resp),
            _ => Err(self.unexpected()),
        }
    }

    fn backoff(&self) -> Backoff {
        // After `Unreachable` (no connection), retry at 100 ms, growing to 1 s: the
        // transport redials within its own backoff, and a short first retry lets a
        // restarted follower be caught up soon after its connection is back.
        Backoff::new(std::iter::successors(
            Some(Duration::from_millis(100)),
            |d| Some((*d * 2).min(Duration::from_secs(1))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use openraft::{CommittedLeaderId, LogId};

    use crate::types::Command;

    fn entry(index: u64, size: usize) -> typ::Entry {
        typ::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command(Bytes::from(vec![0u8; size]))),
        }
    }

    #[test]
    fn append_budget_counts_payload_bytes_and_always_allows_one() {
        let entries: Vec<_> = (0..4).map(|i| entry(i, 100)).collect();
        assert_eq!(entries_within(&entries, 1_000), 4);
        assert_eq!(entries_within(&entries, 250), 2);
        assert_eq!(entries_within(&entries, 10), 1);
        assert_eq!(entries_within(&[], 10), 0);
    }
}
