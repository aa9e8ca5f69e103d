//! Moving partition replicas and decommissioning nodes:
//! `PUT /v1/topics/{t}/partitions/{p}/replicas`, `GET /v1/reassignments`,
//! `POST /v1/cluster/nodes/{id}/decommission`.

use serde::{Deserialize, Serialize};

/// `PUT /v1/topics/{t}/partitions/{p}/replicas`: the partition's new replica set.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveReplicas {
    /// The nodes to hold the partition: distinct, known, exactly the topic's replication
    /// factor of them. The first is the preferred leader.
    pub replicas: Vec<u64>,
}

/// One move in progress (`GET /v1/reassignments`, and the answer to a move).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The topic (`__consumer_offsets` for the consumer-offsets partitions).
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The replicas when the move started; they hold the partition until it is done.
    pub from: Vec<u64>,
    /// The target replicas.
    pub to: Vec<u64>,
    /// `catching_up` (the new replicas are learners copying the log) or
    /// `changing_membership` (the voters are being changed to the target).
    pub state: String,
    /// When the move started, ms since the epoch.
    pub started_ms: i64,
}

/// `GET /v1/reassignments`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignments {
    /// The moves in progress, by topic and partition.
    pub reassignments: Vec<Reassignment>,
}

/// The answer to `POST /v1/cluster/nodes/{id}/decommission`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decommission {
    /// The node.
    pub node: u64,
    /// Its state: `decommissioning` (its replicas are being moved away), then
    /// `decommissioned`.
    pub state: String,
}
