//! The JSON bodies of psubd's HTTP API (docs/api.md) as serde types.
//!
//! # Layout
//!
//! - [`topics`]: topic create / alter requests, the topic and its partitions' status.
//! - [`publish`]: the publish request, per-record delivery reports (200 and 207), `acks=0`.
//! - [`records`]: a record as every read renders it, the fetch answer, key-view answers,
//!   and [`records::OffsetSpec`] (`earliest`, `latest`, a number or `@` and a time).
//! - [`streams`]: one item of a partition or member stream (record, assignment, error).
//! - [`groups`]: consumer groups — join, member fetch, commit, offsets, reset, list,
//!   describe.
//! - [`push`]: push subscriptions — their settings and state, and the body of each push.
//! - [`cluster`]: `/v1/cluster`, `/healthz`, `/readyz`.
//! - [`moves`]: moving partition replicas and decommissioning nodes.
//! - [`partitioning`]: the stable hash mapping a record key to its partition, shared by
//!   the server and clients that route records to partition leaders.
//! - [`access`]: principals, API keys, ACLs and quotas (the admin's routes).
//! - [`error`]: the error body every 4xx and 5xx answer carries.
//! - [`ws`]: the frames the WebSocket API sends.
//!
//! # Compatibility
//!
//! Request types refuse unknown fields (`deny_unknown_fields`), as the server does on its
//! JSON request routes, so a typo in hand-written JSON is caught on either side. Response
//! types accept fields they do not know, so a client built today keeps working against a
//! newer node that adds a field; the end-to-end test `tests/tests/wire.rs` checks the other
//! direction — every field a node sends is modelled here — by decoding each route's real
//! answer and comparing its re-encoding with the original.
//!
//! Deliberately light: serde and serde_json only, no HTTP types, so the server, the client
//! library, the tests and third-party tools can all share it. The `openapi` feature adds
//! `utoipa::ToSchema` to every type, for the OpenAPI document the server serves; clients
//! leave it off and do not build utoipa.

pub mod access;
pub mod cluster;
pub mod error;
pub mod groups;
pub mod moves;
pub mod partitioning;
pub mod publish;
pub mod push;
pub mod records;
#[cfg(feature = "openapi")]
mod schema;
pub mod streams;
pub mod topics;
pub mod ws;

pub use access::{
    Acl, NewKey, NewPrincipal, Operation, PatternType, Permission, Principal, PrincipalQuota,
    Quota, ResourceType, MAX_QUOTA_RATE,
};
pub use cluster::{ClusterInfo, ClusterNode, Health, PartitionPlacement, Readiness, StorageStatus};
pub use error::ErrorBody;
pub use groups::{
    AssignmentStrategy, AutoOffsetReset, CommitOffset, CommitRequest, CommittedOffset,
    GroupDescription, GroupOffsets, GroupState, GroupSummary, JoinRequest, JoinResponse,
    MemberDescription, MemberFetchResponse, ResetEntry, ResetOffset, ResetRequest, ResetResponse,
    TopicPartition,
};
pub use moves::{Decommission, MoveReplicas, Reassignment, Reassignments};
pub use publish::{
    Accepted, DelayedReport, DeliveryReport, Encoding, FailedRecord, NewRecord, PublishRequest,
    PublishResponse, RecordReport,
};
pub use push::{PushDelivery, PushPartitionState, PushRequest, PushSubscription};
pub use records::{FetchResponse, KeyScan, OffsetSpec, Record};
pub use streams::{AssignmentEvent, StreamItem};
pub use topics::{CleanupPolicy, PartitionStatus, Topic, TopicSpec, TopicUpdate};
pub use ws::{Ack, AssignmentFrame, ErrorFrame, RecordFrame, ServerFrame};
