//! The only place errors become HTTP: one [`ApiError`] enum, one exhaustive mapping to
//! status, stable `error` string and `error_code` (status × 100 + n), and the JSON body
//! `{error_code, error, message, retriable}`. The catalog is in docs/api.md (§ Errors).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use psubd_actors::{ControllerError, GroupError, PartitionError};
use psubd_wire::ErrorBody;
use tracing::error;

/// Seconds a client should wait before retrying a 503 / 429.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Every error the edge answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON, or not of the expected shape.
    #[error("{message}")]
    InvalidJson {
        /// What is wrong.
        message: String,
    },
    /// A parameter or field is invalid.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// A topic or group name breaks the naming rule.
    #[error("{message}")]
    InvalidName {
        /// The rule broken.
        message: String,
    },
    /// No such topic.
    #[error("topic '{topic}' not found")]
    TopicNotFound {
        /// The topic.
        topic: String,
    },
    /// The topic has no such partition.
    #[error("topic '{topic}' has no partition {partition}")]
    PartitionNotFound {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u64,
    },
    /// No route matches the path.
    #[error("no such resource: {path}")]
    RouteNotFound {
        /// The path asked for.
        path: String,
    },
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A topic with this name exists.
    #[error("topic '{topic}' already exists")]
    TopicExists {
        /// The topic.
        topic: String,
    },
    /// The consumer group has neither members nor committed offsets.
    #[error("group '{group}' not found")]
    GroupNotFound {
        /// The group.
        group: String,
    },
    /// The group is not a push subscription.
    #[error("group '{group}' is not a push subscription")]
    PushNotFound {
        /// The group.
        group: String,
    },
    /// The group is a push subscription: members cannot join, and its offsets are not
    /// reset or deleted until the subscription is deleted.
    #[error(
        "group '{group}' is a push subscription: delete it (DELETE /v1/groups/{group}/push) first"
    )]
    PushSubscription {
        /// The group.
        group: String,
    },
    /// The member expired, left, or belongs to a coordinator that moved: re-join.
    #[error("member is not in group '{group}'; join again")]
    MemberFenced {
        /// The group.
        group: String,
    },
    /// A commit carries an older generation than the group's.
    #[error("generation {given} is stale; the group is at generation {current}")]
    StaleGeneration {
        /// The generation sent.
        given: u64,
        /// The group's generation.
        current: u64,
    },
    /// A commit names a partition the member does not own in this generation.
    #[error("partition {partition} of topic '{topic}' is not assigned to this member")]
    PartitionNotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The operation needs a group without members.
    #[error("group '{group}' has {members} active members")]
    GroupNotEmpty {
        /// The group.
        group: String,
        /// How many.
        members: usize,
    },
    /// A join asks for another assignment strategy than the group's members use.
    #[error("group uses the '{current}' assignment strategy")]
    AssignmentStrategyMismatch {
        /// The group's strategy.
        current: String,
    },
    /// The group is at its member limit.
    #[error("group has the maximum of {limit} members")]
    GroupFull {
        /// The limit.
        limit: usize,
    },
    /// One record is larger than the record limit.
    #[error("record of {size} bytes exceeds the {limit}-byte record limit")]
    RecordTooLarge {
        /// The record's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A record's headers are larger than the header limit.
    #[error("record headers of {size} bytes exceed the {limit}-byte limit")]
    HeadersTooLarge {
        /// The headers' size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request body is larger than the request limit.
    #[error("request body exceeds the {limit}-byte limit")]
    RequestTooLarge {
        /// The limit.
        limit: usize,
    },
    /// More records in one request than allowed.
    #[error("{count} records exceed the {limit}-record request limit")]
    TooManyRecords {
        /// Records sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The Content-Type is not one this route takes.
    #[error("unsupported content type '{content_type}'; expected {expected}")]
    UnsupportedMediaType {
        /// What was sent.
        content_type: String,
        /// What the route takes.
        expected: &'static str,
    },
    /// The body's Content-Encoding is not one the node inflates (gzip, zstd).
    #[error("unsupported content encoding '{encoding}'; send gzip, zstd or an uncompressed body")]
    UnsupportedEncoding {
        /// What was sent.
        encoding: String,
    },
    /// A browser request from a web page whose origin is not in `--allowed-origins`: a page
    /// the user opened must not act on a cluster it can reach. Nothing was done.
    #[error("requests from origin '{origin}' are not allowed (see --allowed-origins)")]
    OriginNotAllowed {
        /// The request's `Origin` header.
        origin: String,
    },
    /// The `Accept` header names no representation the route can produce.
    #[error("cannot produce '{accept}'; accept text/event-stream or application/x-ndjson")]
    NotAcceptable {
        /// What the client accepts.
        accept: String,
    },
    /// This node already serves its limit of open streams. Retry later or elsewhere.
    #[error("this node already serves {limit} streams")]
    TooManyStreams {
        /// The limit.
        limit: usize,
    },
    /// An offset outside `[log_start_offset, high_watermark]`.
    #[error("offset {offset} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// First stored offset.
        log_start_offset: u64,
        /// The high watermark.
        high_watermark: u64,
    },
    /// `?expected_offset=N` was not the partition's next offset when the records'
    /// entry was applied: nothing of the request was written.
    #[error("expected_offset is not the partition's next offset, {next_offset}")]
    OffsetMismatch {
        /// The partition's next offset.
        next_offset: u64,
    },
    /// `If-Match` was not the key's latest offset when the write was applied: nothing
    /// was written.
    #[error("If-Match is not the key's latest offset, {key_offset} (-1: no live record)")]
    KeyOffsetMismatch {
        /// The key's latest live offset (-1: none).
        key_offset: i64,
    },
    /// A commit above the partition's high watermark: it would mark records that do not
    /// exist yet as consumed (and the member's next fetch would meet 416 forever).
    #[error("offset {offset} of partition {partition} of topic '{topic}' is beyond the high watermark {high_watermark}")]
    OffsetBeyondHighWatermark {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset committed.
        offset: u64,
        /// The partition's high watermark.
        high_watermark: u64,
    },
    /// Well-formed but impossible configuration.
    #[error("{message}")]
    InvalidConfig {
        /// What is wrong.
        message: String,
    },
    /// No leader or no quorum reachable from here; nothing was written. Retry later.
    #[error("{reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A replica's disk is below its free-space threshold: no new records until space
    /// returns. Nothing was written. Retry later.
    #[error("{reason}")]
    InsufficientStorage {
        /// Which node is low on space.
        reason: String,
    },
    /// A write was proposed and its fate is unknown: it may or may not be committed.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What happened.
        reason: String,
    },
    /// A key view found no live value: the key was never written, or its latest record
    /// is a tombstone.
    #[error("key '{key}' not found in topic '{topic}'")]
    KeyNotFound {
        /// The topic.
        topic: String,
        /// The key (lossily shown as UTF-8).
        key: String,
    },
    /// Key views need a compacted topic (`cleanup_policy: "compact"`).
    #[error("topic '{topic}' is not compacted: key views need cleanup_policy 'compact'")]
    TopicNotCompacted {
        /// The topic.
        topic: String,
    },
    /// The request carries no valid API key: missing, malformed, unknown or revoked.
    #[error("{message}")]
    Unauthenticated {
        /// Which (never the secret).
        message: String,
    },
    /// The caller's ACLs do not allow the operation (or it needs the admin). Nothing was
    /// done.
    #[error("principal '{principal}' may not {operation} {resource}")]
    Forbidden {
        /// The caller.
        principal: String,
        /// The operation.
        operation: String,
        /// The resource, e.g. `topic 'orders'`.
        resource: String,
    },
    /// The caller is over one of its quotas on this node. Nothing was done.
    #[error("over the {quota} quota on this node; retry in {retry_after_secs} s")]
    QuotaExceeded {
        /// Which quota.
        quota: &'static str,
        /// Seconds until the request would be admitted (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// No such principal.
    #[error("principal '{principal}' not found")]
    PrincipalNotFound {
        /// The principal.
        principal: String,
    },
    /// A principal of this name exists.
    #[error("principal '{principal}' already exists")]
    PrincipalExists {
        /// The principal.
        principal: String,
    },
    /// The principal has no API key of this id.
    #[error("principal '{principal}' has no key '{key_id}'")]
    ApiKeyNotFound {
        /// The principal.
        principal: String,
        /// The key id.
        key_id: String,
    },
    /// The principal has no such ACL.
    #[error("no such ACL for principal '{principal}'")]
    AclNotFound {
        /// The principal.
        principal: String,
    },
    /// A bound on principals, keys, ACLs or push subscriptions would be passed. Nothing
    /// was done.
    #[error("{message}")]
    LimitReached {
        /// Which bound.
        message: String,
    },
    /// A replica move or decommission conflicts with the cluster's state: a move of the
    /// partition is in progress, too many moves are, a node is leaving, or the remaining
    /// nodes cannot hold a replication factor. Nothing changed.
    #[error("{message}")]
    MoveConflict {
        /// What conflicts.
        message: String,
    },
    /// A bug or a broken node; logged, not shown.
    #[error("internal error")]
    Internal {
        /// Logged once, never sent to the client.
        detail: String,
    },
}

impl ApiError {
    /// Status, stable error string and n (error_code = status × 100 + n).
    fn describe(&self) -> (StatusCode, &'static str, u16) {
        match self {
            ApiError::InvalidJson { .. } => (StatusCode::BAD_REQUEST, "invalid_json", 1),
            ApiError::InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request", 2),
            ApiError::InvalidName { .. } => (StatusCode::BAD_REQUEST, "invalid_name", 3),
            ApiError::TopicNotFound { .. } => (StatusCode::NOT_FOUND, "topic_not_found", 1),
            ApiError::PartitionNotFound { .. } => (StatusCode::NOT_FOUND, "partition_not_found", 2),
            ApiError::RouteNotFound { .. } => (StatusCode::NOT_FOUND, "not_found", 99),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", 1),
            ApiError::TopicExists { .. } => (StatusCode::CONFLICT, "topic_exists", 1),
            ApiError::GroupNotFound { .. } => (StatusCode::NOT_FOUND, "group_not_found", 3),
            ApiError::MemberFenced { .. } => (StatusCode::CONFLICT, "member_fenced", 2),
            ApiError::StaleGeneration { .. } => (StatusCode::CONFLICT, "stale_generation", 3),
            ApiError::PartitionNotAssigned { .. } => {
                (StatusCode::CONFLICT, "partition_not_assigned", 4)
            }
            ApiError::GroupNotEmpty { .. } => (StatusCode::CONFLICT, "group_not_empty", 5),
            ApiError::AssignmentStrategyMismatch { .. } => {
                (StatusCode::CONFLICT, "assignment_strategy_mismatch", 6)
            }
            ApiError::GroupFull { .. } => (StatusCode::CONFLICT, "group_full", 7),
            ApiError::RecordTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "record_too_large", 1)
            }
            ApiError::RequestTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", 2)
            }
            ApiError::TooManyRecords { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_many_records", 3)
            }
            ApiError::HeadersTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "headers_too_large", 4)
            }
            ApiError::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                1,
            ),
            ApiError::UnsupportedEncoding { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                2,
            ),
            ApiError::NotAcceptable { .. } => (StatusCode::NOT_ACCEPTABLE, "not_acceptable", 1),
            ApiError::OriginNotAllowed { .. } => (StatusCode::FORBIDDEN, "forbidden", 1),
            ApiError::TooManyStreams { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_streams", 1)
            }
            ApiError::OffsetOutOfRange { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "offset_out_of_range", 1)
            }
            ApiError::OffsetMismatch { .. } | ApiError::KeyOffsetMismatch { .. } => {
                (StatusCode::PRECONDITION_FAILED, "offset_mismatch", 1)
            }
            ApiError::InvalidConfig { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", 1)
            }
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_available", 1),
            ApiError::OutcomeUnknown { .. } => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", 1),
            ApiError::InsufficientStorage { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", 1)
            }
            ApiError::KeyNotFound { .. } => (StatusCode::NOT_FOUND, "key_not_found", 4),
            ApiError::TopicNotCompacted { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "topic_not_compacted", 2)
            }
            ApiError::OffsetBeyondHighWatermark { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "offset_beyond_high_watermark",
                3,
            ),
            ApiError::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, "unauthenticated", 1),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden", 1),
            ApiError::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", 2),
            ApiError::PrincipalNotFound { .. } => (StatusCode::NOT_FOUND, "principal_not_found", 5),
            ApiError::ApiKeyNotFound { .. } => (StatusCode::NOT_FOUND, "api_key_not_found", 6),
            ApiError::AclNotFound { .. } => (StatusCode::NOT_FOUND, "acl_not_found", 7),
            ApiError::PrincipalExists { .. } => (StatusCode::CONFLICT, "principal_exists", 8),
            ApiError::LimitReached { .. } => (StatusCode::CONFLICT, "limit_reached", 9),
            ApiError::PushNotFound { .. } => (StatusCode::NOT_FOUND, "push_not_found", 8),
            ApiError::PushSubscription { .. } => (StatusCode::CONFLICT, "push_subscription", 10),
            ApiError::MoveConflict { .. } => (StatusCode::CONFLICT, "move_conflict", 11),
            ApiError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", 1),
        }
    }

    /// True when the same request may succeed later unchanged.
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            ApiError::Unavailable { .. }
                | ApiError::OutcomeUnknown { .. }
                | ApiError::InsufficientStorage { .. }
                | ApiError::QuotaExceeded { .. }
        )
    }

    /// Seconds a client should wait before retrying (the `Retry-After` header), for the
    /// errors that have one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::QuotaExceeded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => match self.status() {
                StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::INSUFFICIENT_STORAGE => Some(RETRY_AFTER_SECS),
                _ => None,
            },
        }
    }

    /// The HTTP status (for logs and metrics).
    pub fn status(&self) -> StatusCode {
        self.describe().0
    }

    /// The stable error string.
    pub fn code(&self) -> &'static str {
        self.describe().1
    }

    /// The JSON body, shared by plain responses, NDJSON delivery reports, stream error
    /// items and WebSocket error frames.
    pub fn body(&self) -> ErrorBody {
        let (status, code, n) = self.describe();
        let message = match self {
            ApiError::Internal { .. } => "internal error; see the node's log".to_string(),
            other => other.to_string(),
        };
        let (log_start_offset, high_watermark) = match self {
            ApiError::OffsetOutOfRange {
                log_start_offset,
                high_watermark,
                ..
            } => (Some(*log_start_offset), Some(*high_watermark)),
            ApiError::OffsetBeyondHighWatermark { high_watermark, .. } => {
                (None, Some(*high_watermark))
            }
            _ => (None, None),
        };
        let current_offset = match self {
            ApiError::OffsetMismatch { next_offset } => Some(offset_as_i64(*next_offset)),
            ApiError::KeyOffsetMismatch { key_offset } => Some(*key_offset),
            _ => None,
        };
        ErrorBody {
            error_code: u32::from(status.as_u16()) * 100 + u32::from(n),
            error: code.to_owned(),
            message,
            retriable: self.retriable(),
            log_start_offset,
            high_watermark,
            current_offset,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal { detail } = &self {
            error!(cause = %detail, "internal error");
        }
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        if let ApiError::RequestTooLarge { .. } = self {
            // The rest of the body is left unread, so the connection cannot be reused:
            // say so rather than let a keep-alive client's next request fail.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<PartitionError> for ApiError {
    fn from(error: PartitionError) -> Self {
        match error {
            PartitionError::NotLeader { .. } | PartitionError::NoReplica => ApiError::Unavailable {
                reason: "the partition has no reachable leader".into(),
            },
            PartitionError::NoQuorum => ApiError::Unavailable {
                reason: "the partition leader cannot reach a quorum".into(),
            },
            PartitionError::Unavailable { reason } => ApiError::Unavailable { reason },
            error @ (PartitionError::InsufficientStorage { .. }
            | PartitionError::DelayQueueFull { .. }) => ApiError::InsufficientStorage {
                reason: error.to_string(),
            },
            PartitionError::OutcomeUnknown { reason } => ApiError::OutcomeUnknown { reason },
            PartitionError::OffsetMismatch { next_offset } => {
                ApiError::OffsetMismatch { next_offset }
            }
            PartitionError::KeyOffsetMismatch { key_offset } => ApiError::KeyOffsetMismatch {
                key_offset: key_offset.map_or(-1, offset_as_i64),
            },
        }
    }
}

/// An offset as the API shows it next to -1 ("none"); offsets stay far below `i64::MAX`.
pub fn offset_as_i64(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

impl ApiError {
    /// 416: `offset` is outside a replica's log `[log_start, high_watermark]`.
    pub fn out_of_range(offset: u64, log_start: u64, high_watermark: u64) -> Self {
        ApiError::OffsetOutOfRange {
            offset,
            log_start_offset: log_start,
            high_watermark,
        }
    }

    /// Maps a controller error for the topic it concerns.
    pub fn from_controller(error: ControllerError, topic: &str) -> Self {
        match error {
            ControllerError::NotLeader { .. } | ControllerError::NoQuorum => {
                ApiError::Unavailable {
                    reason: "the controller has no reachable leader".into(),
                }
            }
            ControllerError::OutcomeUnknown { reason } => ApiError::OutcomeUnknown { reason },
            ControllerError::TopicExists => ApiError::TopicExists {
                topic: topic.into(),
            },
            ControllerError::TopicNotFound => ApiError::TopicNotFound {
                topic: topic.into(),
            },
            ControllerError::Invalid(message) => ApiError::InvalidConfig { message },
            ControllerError::Conflict(message) => ApiError::MoveConflict { message },
        }
    }
}

impl ApiError {
    /// Maps a consumer-group refusal for the group it concerns.
    pub fn from_group(error: GroupError, group: &str) -> Self {
        match error {
            GroupError::NotCoordinator { .. } => ApiError::Unavailable {
                reason: "the group's coordinator is not reachable".into(),
            },
            GroupError::NoQuorum => ApiError::Unavailable {
                reason: "the group's offsets partition cannot reach a quorum".into(),
            },
            GroupError::Unavailable { reason } => ApiError::Unavailable { reason },
            GroupError::OutcomeUnknown { reason } => ApiError::OutcomeUnknown { reason },
            GroupError::UnknownMember => ApiError::MemberFenced {
                group: group.into(),
            },
            GroupError::StaleGeneration { given, current } => {
                ApiError::StaleGeneration { given, current }
            }
            GroupError::NotAssigned { topic, partition } => {
                ApiError::PartitionNotAssigned { topic, partition }
            }
            GroupError::NotEmpty { members } => ApiError::GroupNotEmpty {
                group: group.into(),
                members,
            },
            GroupError::GroupNotFound => ApiError::GroupNotFound {
                group: group.into(),
            },
            GroupError::StrategyMismatch { current } => {
                ApiError::AssignmentStrategyMismatch { current }
            }
            GroupError::TooManyMembers { limit } => ApiError::GroupFull { limit },
            GroupError::InvalidPosition { reason } => ApiError::InvalidRequest { message: reason },
            GroupError::PushSubscription => ApiError::PushSubscription {
                group: group.into(),
            },
            GroupError::NotPushSubscription => ApiError::PushNotFound {
                group: group.into(),
            },
            GroupError::TooManyPushSubscriptions { limit } => ApiError::LimitReached {
                message: format!(
                    "group '{group}' cannot become a push subscription: its offsets partition \
                     holds the maximum of {limit} (--max-push-subscriptions, per offsets partition)"
                ),
            },
        }
    }
}
