//! Cluster membership: adding a node to the running cluster (`POST /v1/cluster/nodes`).
//! Admin only. The controller leader does the work (see
//! `psubd_actors::controller::membership`); this checks the request's shape first.

use psubd_actors::controller::membership::{self, Admission, Member};
use psubd_raft::PeerAddr;
use psubd_wire::{AddNode, ClusterNode};

use super::access::require_admin;
use super::{Caller, Result, Service};
use crate::error::ApiError;
use crate::protocol::ForwardRequest;

impl Service {
    /// Adds a node: records its addresses, makes it a learner of the controller group and,
    /// once caught up, a voter. Idempotent for the same id and transport address.
    ///
    /// # Errors
    /// 403 for anyone but the admin; 400 for a bad id or address; 409 `node_conflict` when
    /// the id or address is another node's; 422 when the cluster is full or the address
    /// may not join; 503 / 504 from the controller (send it again: each step resumes).
    pub async fn add_node(&self, caller: &Caller, request: AddNode) -> Result<ClusterNode> {
        require_admin(caller, "alter", "cluster")?;
        let raft = PeerAddr::parse(&request.raft).map_err(|message| ApiError::InvalidRequest {
            message: format!("raft: {message}"),
        })?;
        let member = Member {
            id: request.id,
            raft,
            http: request.http,
        };
        membership::validate(&member).map_err(|error| ApiError::InvalidRequest {
            message: error.to_string(),
        })?;
        let answer = ClusterNode {
            id: member.id,
            raft: member.raft.to_string(),
            http: Some(member.http.clone()),
            alive: true,
            state: "active".into(),
            voter: true,
        };
        let request = ForwardRequest::AdmitNode {
            member,
            admission: Admission::Join,
        };
        self.edge.controller(request, "").await?;
        Ok(answer)
    }
}
