//! The cluster: `GET /v1/cluster`, `/healthz`, `/readyz`.

use serde::{Deserialize, Serialize};

/// `GET /v1/cluster`, as the answering node sees the cluster.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The answering node.
    pub node_id: u64,
    /// The controller's leader, if known.
    pub controller_leader: Option<u64>,
    /// Every node.
    pub nodes: Vec<ClusterNode>,
    /// Every partition of every topic and where it lives.
    pub partitions: Vec<PartitionPlacement>,
}

/// One node in [`ClusterInfo`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: u64,
    /// Its peer-transport address.
    pub raft: String,
    /// Its HTTP base URL; `None` until it registered with the controller.
    pub http: Option<String>,
    /// Whether it answered a short probe of the answering node.
    pub alive: bool,
    /// `active`, `decommissioning` (its replicas are being moved away) or
    /// `decommissioned` (it holds no replica and left the controller group). Absent from
    /// nodes of earlier builds, which know only active nodes.
    #[serde(default = "active")]
    pub state: String,
}

fn active() -> String {
    "active".into()
}

/// One partition in [`ClusterInfo`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlacement {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Nodes holding a replica.
    pub replicas: Vec<u64>,
    /// Its leader, if known.
    pub leader: Option<u64>,
}

/// `GET /healthz`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `GET /readyz`, 200 or 503.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Ready: the controller's leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_leader: Option<u64>,
    /// Not ready: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node's storage.
    pub storage: StorageStatus,
}

/// The storage part of [`Readiness`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// `ok`, `low_space` or `failed`.
    pub state: String,
    /// Free bytes on the data directory's file system, if measured.
    pub free_bytes: Option<u64>,
    /// The threshold below which new records are refused.
    pub min_free_bytes: u64,
    /// Raft groups stopped by a storage failure.
    pub stopped_groups: Vec<u64>,
}
