//! Every operation of the API, by resource: the one table of the router's routes (the
//! test in `mod.rs` compares it with the routers).

use psubd_wire as w;
use utoipa::openapi::path::HttpMethod::{Delete, Get, Patch, Post, Put};

use super::build::{any, bytes, example, text, Kind, Op, Spec};
use super::{DOCS_PATH, SPEC_PATH};
use crate::console;

/// Every operation of the API.
/// Every operation, resource by resource.
pub(super) fn all(s: &mut Spec) -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(cluster(s));
    ops.extend(topics(s));
    ops.extend(records(s));
    ops.extend(streams(s));
    ops.extend(keys(s));
    ops.extend(groups(s));
    ops.extend(websocket());
    ops.extend(access(s));
    ops.extend(moves(s));
    ops.extend(reference());
    ops
}

/// The read-your-writes parameters of key views.
fn read_freshness(op: Op) -> Op {
    op.query(
        "min_offset",
        Kind::Count,
        "Read-your-writes: wait until the serving replica has applied this offset.",
    )
    .query(
        "timeout_ms",
        Kind::Count,
        "How long to wait for min_offset (default 5000, at most 30,000).",
    )
}

/// The bounds of a fetch.
fn bounds(op: Op) -> Op {
    op.query(
        "max_records",
        Kind::Count,
        "At most this many records (default 500, at most 10,000).",
    )
    .query(
        "max_bytes",
        Kind::Count,
        "About this many bytes (default 1 MiB, at most 16 MiB).",
    )
    .query(
        "timeout_ms",
        Kind::Count,
        "Long-poll: wait up to this long for a record (at most 30,000).",
    )
}

/// A stream's answer: SSE or NDJSON by `Accept`, one `StreamItem` per event or line.
fn stream_answer(op: Op, s: &mut Spec) -> Op {
    op.answer(
        200,
        "The stream: SSE (`Accept: text/event-stream`) or NDJSON \
         (`Accept: application/x-ndjson`), one item per event or line.",
        Some(("text/event-stream", s.sse_event())),
    )
    .answer(
        200,
        "",
        Some(("application/x-ndjson", s.schema::<w::StreamItem>())),
    )
}

/// Cluster.
fn cluster(s: &mut Spec) -> Vec<Op> {
    vec![
        Op::new(
            Get,
            "/healthz",
            "cluster",
            "health",
            "Liveness: 200 while the process runs.",
        )
        .ok(200, "Alive.", s.schema::<w::Health>())
        .builder_security_open(),
        Op::new(
            Get,
            "/readyz",
            "cluster",
            "readiness",
            "Readiness: a controller quorum is reachable and storage is healthy.",
        )
        .ok(200, "Ready.", s.schema::<w::Readiness>())
        .ok(
            503,
            "Not ready (`Retry-After: 1`).",
            s.schema::<w::Readiness>(),
        )
        .builder_security_open(),
        Op::new(
            Get,
            "/metrics",
            "cluster",
            "metrics",
            "Prometheus metrics, text format.",
        )
        .answer(200, "The metrics.", Some(("text/plain", text())))
        .builder_security_open(),
        Op::new(
            Get,
            "/v1/cluster",
            "cluster",
            "cluster",
            "The cluster's nodes and partitions as this node sees them.",
        )
        .ok(200, "The cluster.", s.schema::<w::ClusterInfo>()),
    ]
}

/// Replica moves and decommissions.
fn moves(s: &mut Spec) -> Vec<Op> {
    vec![
        Op::new(
            Put,
            "/v1/topics/{topic}/partitions/{partition}/replicas",
            "cluster",
            "moveReplicas",
            "Admin: move a partition's replicas (the new ones catch up as learners, then one \
             joint-consensus change of the voters). 409 `move_conflict` when a move of the \
             partition, or the most moves at once, are in progress.",
        )
        .body(
            "application/json",
            s.schema::<w::MoveReplicas>(),
            example(w::MoveReplicas {
                replicas: vec![2, 3, 4],
            }),
        )
        .ok(202, "The move, started.", s.schema::<w::Reassignment>()),
        Op::new(
            Get,
            "/v1/reassignments",
            "cluster",
            "reassignments",
            "The replica moves in progress.",
        )
        .ok(200, "The moves.", s.schema::<w::Reassignments>()),
        Op::new(
            Post,
            "/v1/cluster/nodes/{id}/decommission",
            "cluster",
            "decommission",
            "Admin: move every replica off a node, then remove it from the controller group. \
             409 `move_conflict` when the other nodes cannot hold a replication factor.",
        )
        .ok(202, "Decommissioning.", s.schema::<w::Decommission>()),
    ]
}

/// Topics.
fn topics(s: &mut Spec) -> Vec<Op> {
    vec![
        Op::new(
            Post,
            "/v1/topics",
            "topics",
            "createTopic",
            "Create a topic; answers once every partition has a leader.",
        )
        .body(
            "application/json",
            s.schema::<w::TopicSpec>(),
            example(w::TopicSpec {
                partitions: Some(3),
                ..w::TopicSpec::new("orders")
            }),
        )
        .ok_example(
            201,
            "Created.",
            s.schema::<w::Topic>(),
            example(topic_example()),
        ),
        Op::new(
            Get,
            "/v1/topics",
            "topics",
            "listTopics",
            "Every topic the caller may describe (internal topics are not listed).",
        )
        .ok(200, "The topics.", s.array::<w::Topic>()),
        Op::new(
            Get,
            "/v1/topics/{topic}",
            "topics",
            "describeTopic",
            "One topic.",
        )
        .ok(200, "The topic.", s.schema::<w::Topic>()),
        Op::new(
            Patch,
            "/v1/topics/{topic}",
            "topics",
            "alterTopic",
            "Change a topic's retention, or raise its partition count (the other settings are \
             fixed at creation).",
        )
        .body(
            "application/json",
            s.schema::<w::TopicUpdate>(),
            example(w::TopicUpdate {
                retention_ms: Some(86_400_000),
                retention_bytes: None,
                duplicate_window_ms: None,
                partitions: None,
            }),
        )
        .ok(200, "The topic now.", s.schema::<w::Topic>()),
        Op::new(
            Delete,
            "/v1/topics/{topic}",
            "topics",
            "deleteTopic",
            "Delete a topic and its records.",
        )
        .answer(204, "Deleted.", None),
        Op::new(
            Get,
            "/v1/topics/{topic}/partitions",
            "topics",
            "topicPartitions",
            "Each partition's leader, replicas, offsets and size.",
        )
        .ok(
            200,
            "One row per partition.",
            s.array::<w::PartitionStatus>(),
        ),
    ]
}

/// Records.
fn records(s: &mut Spec) -> Vec<Op> {
    let publish_example = example(w::PublishRequest {
        encoding: None,
        records: vec![w::NewRecord::new(serde_json::Value::from(5))
            .key("alice")
            .header("source", "web")],
    });
    vec![
        Op::new(Post, "/v1/topics/{topic}/records", "records", "publish", "Publish a JSON batch of records, or one raw record.")
            .describe("A JSON batch (`application/json`), or a raw body (`application/octet-stream` or `text/plain`) that is one record's value, with its key in `X-Key` or `?key=`. 200: every record stored; 207: some failed (their reports hold the errors); 202 with `acks=0`.")
            .query("acks", Kind::Text, "`all` (default, also `-1`) or `0`.")
            .query("encoding", Kind::Text, "`json`, `string` or `base64`: overrides the body's `encoding`.")
            .query("key", Kind::Text, "Raw body: the record's key (`X-Key` wins).")
            .query("partition", Kind::Count, "Raw body: the partition.")
            .query("expected_offset", Kind::Count, "Store the records only if their one partition's next offset is this; else 412 `offset_mismatch` with `current_offset`.")
            .header("X-Key", "Raw body: the record's key.")
            .header("Idempotency-Key", "Raw body: the record's id (1 to 256 bytes): stored once per duplicate window.")
            .body("application/json", s.schema::<w::PublishRequest>(), publish_example)
            .body("application/octet-stream", bytes(), None)
            .body("text/plain", text(), None)
            .ok_example(200, "Every record is stored; one report per record, in request order.", s.schema::<w::PublishResponse>(), example(w::PublishResponse {
                offsets: vec![w::RecordReport::Delivered(w::DeliveryReport {
                    partition: 2,
                    offset: 41,
                    timestamp_ms: 1_700_000_000_000,
                    duplicate: false,
                })],
            }))
            .ok(207, "Some records failed: their reports are error bodies.", s.schema::<w::PublishResponse>())
            .ok(202, "`acks=0`: accepted for a background append.", s.schema::<w::Accepted>()),
        Op::new(Post, "/v1/topics/{topic}/records:stream", "records", "publishStream", "Publish an NDJSON stream of records; one report line per record line.")
            .query("acks", Kind::Text, "`all` or `0` (validated; every line is answered).")
            .query("encoding", Kind::Text, "`json`, `string` or `base64`, for every line.")
            .body("application/x-ndjson", s.schema::<w::NewRecord>(), None)
            .answer(200, "One report per non-blank line, in line order.", Some(("application/x-ndjson", s.schema::<w::RecordReport>()))),
        bounds(Op::new(Get, "/v1/topics/{topic}/partitions/{partition}/records", "records", "fetch", "Read a partition from an offset.")
            .query("offset", Kind::Offset, "A number, `earliest` (default), `latest`, or `@` and a time in ms: the first record at or after it."))
            .query("replica", Kind::Text, "`local`: read only this node's replica (for comparing replicas).")
            .ok_example(200, "Records from the offset.", s.schema::<w::FetchResponse>(), example(w::FetchResponse {
                records: vec![record_example()],
                next_offset: 42,
                high_watermark: 42,
            })),
    ]
}

/// Streams.
fn streams(s: &mut Spec) -> Vec<Op> {
    vec![
        stream_answer(
            Op::new(
                Get,
                "/v1/topics/{topic}/partitions/{partition}/stream",
                "streams",
                "streamPartition",
                "A partition's records as a stream.",
            )
            .query(
                "offset",
                Kind::Offset,
                "Where to start (default `earliest`); `Last-Event-ID` resumes an SSE stream.",
            )
            .header(
                "Last-Event-ID",
                "SSE: resume after this `<partition>-<offset>`.",
            ),
            s,
        ),
        stream_answer(
            Op::new(
                Get,
                "/v1/groups/{group}/members/{member}/stream",
                "streams",
                "streamMember",
                "A group member's records as a stream, from the committed offsets.",
            ),
            s,
        ),
    ]
}

/// Key views.
fn keys(s: &mut Spec) -> Vec<Op> {
    vec![
        read_freshness(
            Op::new(
                Get,
                "/v1/topics/{topic}/keys",
                "keys",
                "scanKeys",
                "Live keys of a compacted topic in key order, each as its latest record.",
            )
            .query("prefix", Kind::Text, "Only keys starting with this.")
            .query(
                "start",
                Kind::Text,
                "Start at this key (the previous page's `next`).",
            )
            .query(
                "limit",
                Kind::Count,
                "Keys per page (default 100, at most 1000).",
            ),
        )
        .ok(200, "A page of keys.", s.schema::<w::KeyScan>()),
        read_freshness(Op::new(
            Get,
            "/v1/topics/{topic}/keys/{key}",
            "keys",
            "lookupKey",
            "A key's latest record.",
        ))
        .ok(200, "The record.", s.schema::<w::Record>()),
        Op::new(
            Put,
            "/v1/topics/{topic}/keys/{key}",
            "keys",
            "putKey",
            "Publish a value for a key.",
        )
        .header(
            "If-Match",
            "Write only if the key's latest live record is at this offset (-1: it has none); else 412 `offset_mismatch` with `current_offset`.",
        )
        .body("application/json", any(), None)
        .body("text/plain", text(), None)
        .body("application/octet-stream", bytes(), None)
        .ok(200, "Where it was stored.", s.schema::<w::DeliveryReport>()),
        Op::new(
            Delete,
            "/v1/topics/{topic}/keys/{key}",
            "keys",
            "deleteKey",
            "Publish a tombstone for a key.",
        )
        .header(
            "If-Match",
            "Delete only if the key's latest live record is at this offset; else 412 `offset_mismatch`.",
        )
        .ok(
            200,
            "Where the tombstone was stored.",
            s.schema::<w::DeliveryReport>(),
        ),
    ]
}

/// Groups.
fn groups(s: &mut Spec) -> Vec<Op> {
    vec![
        Op::new(
            Get,
            "/v1/groups",
            "groups",
            "listGroups",
            "Every group the caller may describe.",
        )
        .ok(200, "The groups.", s.array::<w::GroupSummary>()),
        Op::new(
            Get,
            "/v1/groups/{group}",
            "groups",
            "describeGroup",
            "A group, its members and their partitions.",
        )
        .ok(200, "The group.", s.schema::<w::GroupDescription>()),
        Op::new(
            Delete,
            "/v1/groups/{group}",
            "groups",
            "deleteGroup",
            "Delete a group without members, and its offsets.",
        )
        .answer(204, "Deleted.", None),
        Op::new(
            Post,
            "/v1/groups/{group}/members",
            "groups",
            "joinGroup",
            "Join a group.",
        )
        .body(
            "application/json",
            s.schema::<w::JoinRequest>(),
            example(w::JoinRequest {
                topics: vec!["orders".into()],
                auto_offset_reset: Some(w::AutoOffsetReset::Earliest),
                ..w::JoinRequest::default()
            }),
        )
        .ok_example(
            201,
            "Joined.",
            s.schema::<w::JoinResponse>(),
            example(w::JoinResponse {
                member_id: "6f1d2c3b4a5968778695a4b3c2d1e0f1".into(),
                generation: 1,
                assignments: vec![w::TopicPartition {
                    topic: "orders".into(),
                    partition: 0,
                }],
            }),
        ),
        Op::new(
            Delete,
            "/v1/groups/{group}/members/{member}",
            "groups",
            "leaveGroup",
            "Leave a group.",
        )
        .answer(204, "Left.", None),
        bounds(
            Op::new(
                Get,
                "/v1/groups/{group}/members/{member}/records",
                "groups",
                "memberFetch",
                "Fetch a member's records.",
            )
            .query(
                "position",
                Kind::Text,
                "The previous answer's `position`: confirms its records were received.",
            ),
        )
        .ok(
            200,
            "The member's records.",
            s.schema::<w::MemberFetchResponse>(),
        ),
        Op::new(
            Post,
            "/v1/groups/{group}/offsets",
            "groups",
            "commitOffsets",
            "Commit offsets (the next offset to read).",
        )
        .body("application/json", s.schema::<w::CommitRequest>(), None)
        .answer(204, "Committed.", None),
        Op::new(
            Get,
            "/v1/groups/{group}/offsets",
            "groups",
            "groupOffsets",
            "A group's committed offsets and lag.",
        )
        .ok(200, "The offsets.", s.schema::<w::GroupOffsets>()),
        Op::new(
            Put,
            "/v1/groups/{group}/offsets",
            "groups",
            "resetOffsets",
            "Reset offsets of a group without members.",
        )
        .body(
            "application/json",
            s.schema::<w::ResetRequest>(),
            example(w::ResetRequest {
                offsets: vec![w::ResetEntry {
                    topic: "orders".into(),
                    partition: None,
                    offset: Some(w::ResetOffset::Earliest),
                    timestamp_ms: None,
                }],
            }),
        )
        .ok(
            200,
            "The offsets now committed.",
            s.schema::<w::ResetResponse>(),
        ),
        Op::new(
            Put,
            "/v1/groups/{group}/push",
            "groups",
            "setPush",
            "Make a group without members a push subscription, or change its settings.",
        )
        .describe(&format!(
            "The coordinator's node POSTs each record (schema `{}`) to the endpoint; a 2xx answer acknowledges it. See docs/api.md § Push subscriptions.",
            push_delivery_schema(s)
        ))
        .body(
            "application/json",
            s.schema::<w::PushRequest>(),
            example(w::PushRequest {
                topics: vec!["orders".into()],
                endpoint: "https://hooks.example.com/orders".into(),
                dead_letter_topic: Some("orders-dead".into()),
                secret: Some("a shared secret".into()),
                ..w::PushRequest::default()
            }),
        )
        .ok(
            200,
            "The subscription as stored.",
            s.schema::<w::PushSubscription>(),
        ),
        Op::new(
            Get,
            "/v1/groups/{group}/push",
            "groups",
            "getPush",
            "A push subscription's settings (never the secret) and per-partition state.",
        )
        .ok(
            200,
            "The subscription.",
            s.schema::<w::PushSubscription>(),
        ),
        Op::new(
            Delete,
            "/v1/groups/{group}/push",
            "groups",
            "deletePush",
            "End a push subscription; its committed offsets stay.",
        )
        .answer(204, "Ended.", None),
    ]
}

/// Registers the body of each push POST (no route takes it: the cluster sends it) and
/// names it.
fn push_delivery_schema(s: &mut Spec) -> &'static str {
    let _ = s.schema::<w::PushDelivery>();
    "PushDelivery"
}

/// WebSocket.
fn websocket() -> Vec<Op> {
    vec![
        Op::new(Get, "/v1/ws", "websocket", "websocket", "Upgrade to a WebSocket of JSON operations and frames.")
            .describe("Client messages are `{\"op\": \"publish\"|\"subscribe\"|\"credit\"|\"commit\"|\"unsubscribe\", \"id\"?: …}`; the server sends the frames of the `ServerFrame` schema. See docs/api.md § WebSocket.")
            .answer(101, "Switching to the WebSocket protocol.", None),
    ]
}

/// Access control.
fn access(s: &mut Spec) -> Vec<Op> {
    vec![
        Op::new(
            Post,
            "/v1/principals",
            "access",
            "createPrincipal",
            "Create a principal.",
        )
        .body(
            "application/json",
            s.schema::<w::NewPrincipal>(),
            example(w::NewPrincipal {
                name: "billing".into(),
            }),
        )
        .ok(201, "Created.", s.schema::<w::NewPrincipal>()),
        Op::new(
            Get,
            "/v1/principals",
            "access",
            "listPrincipals",
            "Every principal, its key ids and quota.",
        )
        .ok(200, "The principals.", s.array::<w::Principal>()),
        Op::new(
            Delete,
            "/v1/principals/{principal}",
            "access",
            "deletePrincipal",
            "Delete a principal with its keys, ACLs and quota.",
        )
        .answer(204, "Deleted.", None),
        Op::new(
            Post,
            "/v1/principals/{principal}/keys",
            "access",
            "createApiKey",
            "Make an API key; its secret is shown only in this answer.",
        )
        .ok(201, "The key.", s.schema::<w::NewKey>()),
        Op::new(
            Delete,
            "/v1/principals/{principal}/keys/{key_id}",
            "access",
            "deleteApiKey",
            "Revoke an API key.",
        )
        .answer(204, "Revoked.", None),
        Op::new(
            Put,
            "/v1/principals/{principal}/quota",
            "access",
            "setQuota",
            "Set a principal's rates per node (absent or null: unlimited).",
        )
        .body(
            "application/json",
            s.schema::<w::Quota>(),
            example(w::Quota {
                produce_bytes_per_sec: Some(1 << 20),
                ..w::Quota::default()
            }),
        )
        .ok(200, "The quota now.", s.schema::<w::PrincipalQuota>()),
        Op::new(
            Post,
            "/v1/acls",
            "access",
            "createAcl",
            "Add an ACL (adding one that exists changes nothing).",
        )
        .body(
            "application/json",
            s.schema::<w::Acl>(),
            example(w::Acl {
                principal: "billing".into(),
                resource_type: w::ResourceType::Topic,
                pattern_type: w::PatternType::Prefixed,
                resource_name: "orders".into(),
                operation: w::Operation::Read,
                permission: w::Permission::Allow,
            }),
        )
        .ok(201, "The ACL.", s.schema::<w::Acl>()),
        Op::new(
            Get,
            "/v1/acls",
            "access",
            "listAcls",
            "Every ACL, or one principal's.",
        )
        .query("principal", Kind::Text, "Only this principal's ACLs.")
        .ok(200, "The ACLs.", s.array::<w::Acl>()),
        Op::new(Delete, "/v1/acls", "access", "deleteAcl", "Remove an ACL.")
            .body("application/json", s.schema::<w::Acl>(), None)
            .answer(204, "Removed.", None),
    ]
}

/// This document.
fn reference() -> Vec<Op> {
    vec![
        Op::new(
            Get,
            SPEC_PATH,
            "reference",
            "openapi",
            "This OpenAPI 3.1 document.",
        )
        .ok(200, "The document.", any())
        .builder_security_open(),
        Op::new(
            Get,
            DOCS_PATH,
            "reference",
            "docs",
            "A browsable reference rendered from this document.",
        )
        .answer(200, "An HTML page.", Some(("text/html", text())))
        .builder_security_open(),
        Op::new(
            Get,
            console::PAGE_PATH,
            "reference",
            "console",
            "The web console: cluster, topics, records, groups and publishing, through this API from the browser.",
        )
        .answer(200, "An HTML page.", Some(("text/html", text())))
        .builder_security_open(),
        Op::new(
            Get,
            console::SCRIPT_PATH,
            "reference",
            "console_script",
            "The web console's script.",
        )
        .answer(200, "JavaScript.", Some(("text/javascript", text())))
        .builder_security_open(),
        Op::new(
            Get,
            console::STYLE_PATH,
            "reference",
            "console_style",
            "The web console's stylesheet.",
        )
        .answer(200, "CSS.", Some(("text/css", text())))
        .builder_security_open(),
    ]
}

/// A topic as the examples show it.
fn topic_example() -> w::Topic {
    w::Topic {
        name: "orders".into(),
        partitions: 3,
        replication_factor: 3,
        retention_ms: psubd_actors::topic::DEFAULT_RETENTION_MS,
        retention_bytes: -1,
        cleanup_policy: w::CleanupPolicy::Delete,
        delete_retention_ms: psubd_actors::topic::DEFAULT_DELETE_RETENTION_MS,
        duplicate_window_ms: psubd_actors::topic::DEFAULT_DUPLICATE_WINDOW_MS,
    }
}

/// A record as the examples show it.
fn record_example() -> w::Record {
    w::Record {
        topic: "orders".into(),
        partition: 0,
        offset: 41,
        timestamp_ms: 1_700_000_000_000,
        key: Some("alice".into()),
        value: serde_json::from_str(r#"{"total":12}"#).unwrap_or_default(),
        headers: Default::default(),
        encoding: None,
    }
}
