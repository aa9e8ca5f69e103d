//! Access control: `/v1/principals` and `/v1/acls` (docs/api.md § Principals, keys, ACLs
//! and quotas). Every route needs the admin principal.

use serde::{Deserialize, Serialize};

/// The body of `POST /v1/principals`, and its 201 answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    /// As topic names; `admin` and names starting with `__` are reserved.
    pub name: String,
}

/// One row of `GET /v1/principals`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The principal.
    pub name: String,
    /// When it was created (the proposing node's clock).
    pub created_ms: i64,
    /// The ids of its API keys (never their secrets).
    pub key_ids: Vec<String>,
    /// Its rates.
    pub quota: Quota,
}

/// The 201 answer of `POST /v1/principals/{p}/keys`: the only place the key is shown.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    /// The principal the key acts as.
    pub principal: String,
    /// The key's id (its part before the dot), to delete it by.
    pub key_id: String,
    /// `<key_id>.<secret>`: send as `Authorization: Bearer <key>`.
    pub key: String,
}

/// A principal's rates, per node; `None` (`null` or absent) is unlimited. The body of
/// `PUT /v1/principals/{p}/quota`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Record bytes published per second.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_125_899_906_842_624_u64)
    )]
    pub produce_bytes_per_sec: Option<u64>,
    /// Record bytes fetched per second.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_125_899_906_842_624_u64)
    )]
    pub fetch_bytes_per_sec: Option<u64>,
    /// Requests (and WebSocket operations) per second.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_125_899_906_842_624_u64)
    )]
    pub requests_per_sec: Option<u64>,
}

/// The highest rate a [`Quota`] takes (2^50 per second: unlimited in practice, and an
/// integer every JSON reader, JavaScript's included, holds exactly). The schema's
/// `maximum` repeats it as a literal.
pub const MAX_QUOTA_RATE: u64 = 1 << 50;

/// The 200 answer of `PUT /v1/principals/{p}/quota`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalQuota {
    /// The principal.
    pub principal: String,
    /// Its quota now.
    pub quota: Quota,
}

/// What an ACL applies to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// A topic, by name.
    Topic,
    /// A consumer group, by name.
    Group,
    /// The cluster itself (name `cluster`): creating topics, listing, describing.
    Cluster,
}

/// How an ACL's name matches a resource's name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    /// The names are equal (`*` matches every name).
    Literal,
    /// The resource's name starts with the ACL's name.
    Prefixed,
}

/// An operation on a resource.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Fetch, stream, key reads; group membership and commits.
    Read,
    /// Publish, key writes.
    Write,
    /// Create a topic.
    Create,
    /// Delete a topic or group.
    Delete,
    /// Change a topic's settings, reset a group's offsets.
    Alter,
    /// List and describe.
    Describe,
    /// Every operation.
    All,
}

/// Whether a matching ACL lets an operation through.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Lets it through unless a deny also matches.
    Allow,
    /// Refuses it, whatever allows match.
    Deny,
}

/// An ACL: the body of `POST` and `DELETE /v1/acls`, the 201 answer of `POST`, and a row
/// of `GET /v1/acls`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    /// Whom it applies to.
    pub principal: String,
    /// `topic`, `group` or `cluster`.
    pub resource_type: ResourceType,
    /// `literal` or `prefixed`.
    pub pattern_type: PatternType,
    /// The resource's name (or prefix); `*` with `literal` matches every name.
    pub resource_name: String,
    /// The operation it allows or denies.
    pub operation: Operation,
    /// `allow` or `deny`.
    pub permission: Permission,
}
