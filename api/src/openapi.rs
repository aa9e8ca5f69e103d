//! The OpenAPI 3.1 document every node serves at `GET /openapi.json`, and the browsable
//! reference at `GET /docs` (a page embedded in the binary that renders the document, so
//! it works offline and needs no CDN).
//!
//! Schemas come from the psubd-wire types (their `openapi` feature derives `ToSchema`), so
//! the document cannot drift from the bodies the handlers build. Operations are listed in
//! [`operations`], one table for the whole router; a test checks that it names exactly the
//! routes the routers register.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use psubd_wire as w;
use serde_json::Value;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder,
};
use utoipa::ToSchema;

use crate::state::AppState;

/// The document's path.
pub const SPEC_PATH: &str = "/openapi.json";
/// The reference page's path.
pub const DOCS_PATH: &str = "/docs";

/// The reference page: plain HTML and JavaScript, no external assets.
const DOCS_PAGE: &str = include_str!("openapi/docs.html");

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(SPEC_PATH, get(spec))
        .route(DOCS_PATH, get(docs))
        .with_state(state)
}

/// The document's JSON, built once per process: it depends only on the code.
fn spec_json() -> &'static [u8] {
    static SPEC: OnceLock<Vec<u8>> = OnceLock::new();
    SPEC.get_or_init(|| serde_json::to_vec(&document()).unwrap_or_default())
}

async fn spec() -> Response {
    let mut response = spec_json().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn docs() -> Response {
    let mut response = DOCS_PAGE.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// A topic, group or principal name: `^[A-Za-z0-9._-]{1,249}$`, not starting with `__`
/// (written without look-ahead, which not every tool's regex engine has).
pub const NAME_PATTERN: &str = "^(_|(_[A-Za-z0-9.-]|[A-Za-z0-9.-])[A-Za-z0-9._-]{0,247})$";

/// How a parameter's value is written.
#[derive(Clone, Copy)]
enum Kind {
    /// Free text.
    Text,
    /// A topic, group or principal name.
    Name,
    /// A member id: 32 lower-case hex digits.
    Member,
    /// A non-negative integer.
    Count,
    /// `earliest`, `latest`, a number, or `@` and a time in ms.
    Offset,
}

/// One operation being described.
struct Op {
    method: HttpMethod,
    path: &'static str,
    builder: OperationBuilder,
    body: Option<RequestBodyBuilder>,
    responses: Vec<(String, ResponseBuilder)>,
}

/// Collects operations and the schemas they reference.
struct Spec {
    schemas: BTreeMap<String, RefOr<Schema>>,
    paths: PathsBuilder,
    /// Every (method, path) described, for the router test.
    routes: Vec<(HttpMethod, &'static str)>,
}

impl Spec {
    /// A reference to `T`'s schema, registering it (and the schemas it uses).
    fn schema<T: ToSchema>(&mut self) -> RefOr<Schema> {
        let name = T::name().to_string();
        if !self.schemas.contains_key(&name) {
            self.schemas.insert(name.clone(), T::schema());
            let mut deps = Vec::new();
            T::schemas(&mut deps);
            self.schemas.extend(deps);
        }
        RefOr::Ref(Ref::from_schema_name(name))
    }

    /// A JSON array of `T`.
    fn array<T: ToSchema>(&mut self) -> RefOr<Schema> {
        let item = self.schema::<T>();
        Schema::Array(ArrayBuilder::new().items(item).build()).into()
    }

    fn add(&mut self, op: Op) {
        let mut builder = op.builder;
        if let Some(body) = op.body {
            builder = builder.request_body(Some(body.required(Some(Required::True)).build()));
        }
        for (status, response) in op.responses {
            builder = builder.response(status, response.build());
        }
        let error = self.schema::<w::ErrorBody>();
        builder = builder.response(
            "default",
            ResponseBuilder::new()
                .description("An error (docs/api.md § Errors).")
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(error)).build(),
                )
                .build(),
        );
        // Path parameters come from the template: each `{name}` is one, always required.
        for name in op
            .path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
        {
            builder = builder.parameter(path_parameter(name));
        }
        self.routes.push((op.method.clone(), op.path));
        let paths = std::mem::take(&mut self.paths);
        self.paths = paths.path(op.path, PathItem::new(op.method, builder.build()));
    }
}

fn path_parameter(name: &str) -> utoipa::openapi::path::Parameter {
    let (kind, description) = match name {
        "topic" => (Kind::Name, "Topic name."),
        "partition" => (Kind::Count, "Partition index."),
        "group" => (Kind::Name, "Consumer group name."),
        "member" => (Kind::Member, "Member id, as the join answered it."),
        "key" => (Kind::Text, "Record key (URL-encoded)."),
        "principal" => (Kind::Name, "Principal name."),
        "key_id" => (
            Kind::Text,
            "API key id (the part of the key before the dot).",
        ),
        _ => (Kind::Text, ""),
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(kind_schema(kind)))
        .build()
}

fn kind_schema(kind: Kind) -> Schema {
    match kind {
        Kind::Text => ObjectBuilder::new().schema_type(Type::String).into(),
        Kind::Name => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(NAME_PATTERN))
            .into(),
        Kind::Member => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9a-f]{32}$"))
            .into(),
        Kind::Count => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .into(),
        Kind::Offset => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^(earliest|latest|[0-9]+|@-?[0-9]+)$"))
            .into(),
    }
}

impl Op {
    fn new(method: HttpMethod, path: &'static str, tag: &str, id: &str, summary: &str) -> Self {
        Self {
            method,
            path,
            builder: OperationBuilder::new()
                .tag(tag)
                .operation_id(Some(id))
                .summary(Some(summary)),
            body: None,
            responses: Vec::new(),
        }
    }

    /// An optional query parameter.
    fn query(mut self, name: &str, kind: Kind, description: &str) -> Self {
        self.builder = self.builder.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(kind_schema(kind))),
        );
        self
    }

    /// An optional request header.
    fn header(mut self, name: &str, description: &str) -> Self {
        self.builder = self.builder.parameter(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(description))
                .schema(Some(kind_schema(Kind::Text))),
        );
        self
    }

    /// A longer description.
    fn describe(mut self, text: &str) -> Self {
        self.builder = self.builder.description(Some(text));
        self
    }

    /// A request body of this media type (repeat for alternatives), with an example.
    fn body(mut self, media: &str, schema: RefOr<Schema>, example: Option<Value>) -> Self {
        let content = ContentBuilder::new()
            .schema(Some(schema))
            .example(example)
            .build();
        self.body = Some(self.body.take().unwrap_or_default().content(media, content));
        self
    }

    /// A JSON answer.
    fn ok(self, status: u16, description: &str, schema: RefOr<Schema>) -> Self {
        self.answer(status, description, Some(("application/json", schema)))
    }

    /// An answer of any media type, or none.
    fn answer(
        mut self,
        status: u16,
        description: &str,
        content: Option<(&str, RefOr<Schema>)>,
    ) -> Self {
        let status = status.to_string();
        let index = match self.responses.iter().position(|(s, _)| *s == status) {
            Some(index) => index,
            None => {
                self.responses
                    .push((status, ResponseBuilder::new().description(description)));
                self.responses.len() - 1
            }
        };
        if let Some((media, schema)) = content {
            let (status, response) = self.responses.remove(index);
            let response =
                response.content(media, ContentBuilder::new().schema(Some(schema)).build());
            self.responses.insert(index, (status, response));
        }
        self
    }
}

fn text() -> RefOr<Schema> {
    Schema::from(ObjectBuilder::new().schema_type(Type::String)).into()
}

fn bytes() -> RefOr<Schema> {
    Schema::from(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream"),
    )
    .into()
}

fn any() -> RefOr<Schema> {
    Schema::from(ObjectBuilder::new()).into()
}

/// An example body built from its wire type (so examples cannot drift either).
fn example<T: serde::Serialize>(value: T) -> Option<Value> {
    serde_json::to_value(value).ok()
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut spec = Spec {
        schemas: BTreeMap::new(),
        paths: PathsBuilder::new(),
        routes: Vec::new(),
    };
    for op in operations(&mut spec) {
        spec.add(op);
    }
    // Frames of the WebSocket API, which OpenAPI cannot attach to an operation.
    spec.schema::<w::ServerFrame>();
    spec.schema::<w::StreamItem>();
    let components = ComponentsBuilder::new()
        .schemas_from_iter(spec.schemas)
        .security_scheme(
            "api_key",
            SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    let tags = [
        (
            "cluster",
            "Health, readiness, metrics and the cluster's layout.",
        ),
        (
            "topics",
            "Creating, describing, altering and deleting topics.",
        ),
        ("records", "Publishing and reading records."),
        (
            "streams",
            "Server-Sent Events or NDJSON streams of records.",
        ),
        ("keys", "Key views of compacted topics."),
        (
            "groups",
            "Consumer groups: members, fetches, commits, offsets.",
        ),
        (
            "access",
            "Principals, API keys, ACLs and quotas (the admin's routes).",
        ),
        ("websocket", "The WebSocket API."),
        ("reference", "This document and its browsable form."),
    ];
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("psubd")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "psubd's HTTP API: any node answers any request. With `--auth`, every \
                     route but /healthz, /readyz, /metrics, /openapi.json and /docs needs \
                     `Authorization: Bearer <key>`.",
                )),
        )
        .paths(spec.paths.build())
        .components(Some(components))
        // A key is needed only on a cluster started with --auth: both are valid.
        .security(Some([
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]))
        .tags(Some(tags.into_iter().map(|(name, description)| {
            TagBuilder::new()
                .name(name)
                .description(Some(description))
                .build()
        })))
        .build()
}

/// Every (method, path) the document describes.
#[cfg(test)]
fn described_routes() -> Vec<(HttpMethod, &'static str)> {
    let mut spec = Spec {
        schemas: BTreeMap::new(),
        paths: PathsBuilder::new(),
        routes: Vec::new(),
    };
    for op in operations(&mut spec) {
        spec.add(op);
    }
    spec.routes
}

/// Every operation of the API.
fn operations(s: &mut Spec) -> Vec<Op> {
    use HttpMethod::{Delete, Get, Patch, Post, Put};
    let read_freshness = |op: Op| {
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
    };
    let bounds = |op: Op| {
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
    };
    let stream_answer = |op: Op, item: RefOr<Schema>| {
        op.answer(
            200,
            "The stream: SSE (`Accept: text/event-stream`) or NDJSON (`Accept: application/x-ndjson`), one item per event or line.",
            Some(("text/event-stream", item.clone())),
        )
        .answer(200, "", Some(("application/x-ndjson", item)))
    };
    let publish_example = example(w::PublishRequest {
        encoding: None,
        records: vec![w::NewRecord::new(serde_json::Value::from(5))
            .key("alice")
            .header("source", "web")],
    });
    vec![
        // Cluster.
        Op::new(Get, "/healthz", "cluster", "health", "Liveness: 200 while the process runs.")
            .ok(200, "Alive.", s.schema::<w::Health>())
            .builder_security_open(),
        Op::new(Get, "/readyz", "cluster", "readiness", "Readiness: a controller quorum is reachable and storage is healthy.")
            .ok(200, "Ready.", s.schema::<w::Readiness>())
            .ok(503, "Not ready (`Retry-After: 1`).", s.schema::<w::Readiness>())
            .builder_security_open(),
        Op::new(Get, "/metrics", "cluster", "metrics", "Prometheus metrics, text format.")
            .answer(200, "The metrics.", Some(("text/plain", text())))
            .builder_security_open(),
        Op::new(Get, "/v1/cluster", "cluster", "cluster", "The cluster's nodes and partitions as this node sees them.")
            .ok(200, "The cluster.", s.schema::<w::ClusterInfo>()),
        // Topics.
        Op::new(Post, "/v1/topics", "topics", "createTopic", "Create a topic; answers once every partition has a leader.")
            .body("application/json", s.schema::<w::TopicSpec>(), example(w::TopicSpec {
                partitions: Some(3),
                ..w::TopicSpec::new("orders")
            }))
            .ok(201, "Created.", s.schema::<w::Topic>()),
        Op::new(Get, "/v1/topics", "topics", "listTopics", "Every topic the caller may describe (internal topics are not listed).")
            .ok(200, "The topics.", s.array::<w::Topic>()),
        Op::new(Get, "/v1/topics/{topic}", "topics", "describeTopic", "One topic.")
            .ok(200, "The topic.", s.schema::<w::Topic>()),
        Op::new(Patch, "/v1/topics/{topic}", "topics", "alterTopic", "Change a topic's retention (the other settings are fixed at creation).")
            .body("application/json", s.schema::<w::TopicUpdate>(), example(w::TopicUpdate {
                retention_ms: Some(86_400_000),
                retention_bytes: None,
            }))
            .ok(200, "The topic now.", s.schema::<w::Topic>()),
        Op::new(Delete, "/v1/topics/{topic}", "topics", "deleteTopic", "Delete a topic and its records.")
            .answer(204, "Deleted.", None),
        Op::new(Get, "/v1/topics/{topic}/partitions", "topics", "topicPartitions", "Each partition's leader, replicas, offsets and size.")
            .ok(200, "One row per partition.", s.array::<w::PartitionStatus>()),
        // Records.
        Op::new(Post, "/v1/topics/{topic}/records", "records", "publish", "Publish a JSON batch of records, or one raw record.")
            .describe("A JSON batch (`application/json`), or a raw body (`application/octet-stream` or `text/plain`) that is one record's value, with its key in `X-Key` or `?key=`. 200: every record stored; 207: some failed (their reports hold the errors); 202 with `acks=0`.")
            .query("acks", Kind::Text, "`all` (default, also `-1`) or `0`.")
            .query("encoding", Kind::Text, "`json`, `string` or `base64`: overrides the body's `encoding`.")
            .query("key", Kind::Text, "Raw body: the record's key (`X-Key` wins).")
            .query("partition", Kind::Count, "Raw body: the partition.")
            .header("X-Key", "Raw body: the record's key.")
            .body("application/json", s.schema::<w::PublishRequest>(), publish_example)
            .body("application/octet-stream", bytes(), None)
            .body("text/plain", text(), None)
            .ok(200, "Every record is stored; one report per record, in request order.", s.schema::<w::PublishResponse>())
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
            .ok(200, "Records from the offset.", s.schema::<w::FetchResponse>()),
        // Streams.
        stream_answer(
            Op::new(Get, "/v1/topics/{topic}/partitions/{partition}/stream", "streams", "streamPartition", "A partition's records as a stream.")
                .query("offset", Kind::Offset, "Where to start (default `earliest`); `Last-Event-ID` resumes an SSE stream.")
                .header("Last-Event-ID", "SSE: resume after this `<partition>-<offset>`."),
            s.schema::<w::StreamItem>(),
        ),
        stream_answer(
            Op::new(Get, "/v1/groups/{group}/members/{member}/stream", "streams", "streamMember", "A group member's records as a stream, from the committed offsets."),
            s.schema::<w::StreamItem>(),
        ),
        // Key views.
        read_freshness(Op::new(Get, "/v1/topics/{topic}/keys", "keys", "scanKeys", "Live keys of a compacted topic in key order, each as its latest record.")
            .query("prefix", Kind::Text, "Only keys starting with this.")
            .query("start", Kind::Text, "Start at this key (the previous page's `next`).")
            .query("limit", Kind::Count, "Keys per page (default 100, at most 1000)."))
            .ok(200, "A page of keys.", s.schema::<w::KeyScan>()),
        read_freshness(Op::new(Get, "/v1/topics/{topic}/keys/{key}", "keys", "lookupKey", "A key's latest record."))
            .ok(200, "The record.", s.schema::<w::Record>()),
        Op::new(Put, "/v1/topics/{topic}/keys/{key}", "keys", "putKey", "Publish a value for a key.")
            .body("application/json", any(), None)
            .body("text/plain", text(), None)
            .body("application/octet-stream", bytes(), None)
            .ok(200, "Where it was stored.", s.schema::<w::DeliveryReport>()),
        Op::new(Delete, "/v1/topics/{topic}/keys/{key}", "keys", "deleteKey", "Publish a tombstone for a key.")
            .ok(200, "Where the tombstone was stored.", s.schema::<w::DeliveryReport>()),
        // Groups.
        Op::new(Get, "/v1/groups", "groups", "listGroups", "Every group the caller may describe.")
            .ok(200, "The groups.", s.array::<w::GroupSummary>()),
        Op::new(Get, "/v1/groups/{group}", "groups", "describeGroup", "A group, its members and their partitions.")
            .ok(200, "The group.", s.schema::<w::GroupDescription>()),
        Op::new(Delete, "/v1/groups/{group}", "groups", "deleteGroup", "Delete a group without members, and its offsets.")
            .answer(204, "Deleted.", None),
        Op::new(Post, "/v1/groups/{group}/members", "groups", "joinGroup", "Join a group.")
            .body("application/json", s.schema::<w::JoinRequest>(), example(w::JoinRequest {
                topics: vec!["orders".into()],
                auto_offset_reset: Some(w::AutoOffsetReset::Earliest),
                ..w::JoinRequest::default()
            }))
            .ok(201, "Joined.", s.schema::<w::JoinResponse>()),
        Op::new(Delete, "/v1/groups/{group}/members/{member}", "groups", "leaveGroup", "Leave a group.")
            .answer(204, "Left.", None),
        bounds(Op::new(Get, "/v1/groups/{group}/members/{member}/records", "groups", "memberFetch", "Fetch a member's records.")
            .query("position", Kind::Text, "The previous answer's `position`: confirms its records were received."))
            .ok(200, "The member's records.", s.schema::<w::MemberFetchResponse>()),
        Op::new(Post, "/v1/groups/{group}/offsets", "groups", "commitOffsets", "Commit offsets (the next offset to read).")
            .body("application/json", s.schema::<w::CommitRequest>(), None)
            .answer(204, "Committed.", None),
        Op::new(Get, "/v1/groups/{group}/offsets", "groups", "groupOffsets", "A group's committed offsets and lag.")
            .ok(200, "The offsets.", s.schema::<w::GroupOffsets>()),
        Op::new(Put, "/v1/groups/{group}/offsets", "groups", "resetOffsets", "Reset offsets of a group without members.")
            .body("application/json", s.schema::<w::ResetRequest>(), example(w::ResetRequest {
                offsets: vec![w::ResetEntry {
                    topic: "orders".into(),
                    partition: None,
                    offset: Some(w::ResetOffset::Earliest),
                    timestamp_ms: None,
                }],
            }))
            .ok(200, "The offsets now committed.", s.schema::<w::ResetResponse>()),
        // WebSocket.
        Op::new(Get, "/v1/ws", "websocket", "websocket", "Upgrade to a WebSocket of JSON operations and frames.")
            .describe("Client messages are `{\"op\": \"publish\"|\"subscribe\"|\"credit\"|\"commit\"|\"unsubscribe\", \"id\"?: …}`; the server sends the frames of the `ServerFrame` schema. See docs/api.md § WebSocket.")
            .answer(101, "Switching to the WebSocket protocol.", None),
        // Access control.
        Op::new(Post, "/v1/principals", "access", "createPrincipal", "Create a principal.")
            .body("application/json", s.schema::<w::NewPrincipal>(), example(w::NewPrincipal { name: "billing".into() }))
            .ok(201, "Created.", s.schema::<w::NewPrincipal>()),
        Op::new(Get, "/v1/principals", "access", "listPrincipals", "Every principal, its key ids and quota.")
            .ok(200, "The principals.", s.array::<w::Principal>()),
        Op::new(Delete, "/v1/principals/{principal}", "access", "deletePrincipal", "Delete a principal with its keys, ACLs and quota.")
            .answer(204, "Deleted.", None),
        Op::new(Post, "/v1/principals/{principal}/keys", "access", "createApiKey", "Make an API key; its secret is shown only in this answer.")
            .ok(201, "The key.", s.schema::<w::NewKey>()),
        Op::new(Delete, "/v1/principals/{principal}/keys/{key_id}", "access", "deleteApiKey", "Revoke an API key.")
            .answer(204, "Revoked.", None),
        Op::new(Put, "/v1/principals/{principal}/quota", "access", "setQuota", "Set a principal's rates per node (absent or null: unlimited).")
            .body("application/json", s.schema::<w::Quota>(), example(w::Quota {
                produce_bytes_per_sec: Some(1 << 20),
                ..w::Quota::default()
            }))
            .ok(200, "The quota now.", s.schema::<w::PrincipalQuota>()),
        Op::new(Post, "/v1/acls", "access", "createAcl", "Add an ACL (adding one that exists changes nothing).")
            .body("application/json", s.schema::<w::Acl>(), example(w::Acl {
                principal: "billing".into(),
                resource_type: w::ResourceType::Topic,
                pattern_type: w::PatternType::Prefixed,
                resource_name: "orders".into(),
                operation: w::Operation::Read,
                permission: w::Permission::Allow,
            }))
            .ok(201, "The ACL.", s.schema::<w::Acl>()),
        Op::new(Get, "/v1/acls", "access", "listAcls", "Every ACL, or one principal's.")
            .query("principal", Kind::Text, "Only this principal's ACLs.")
            .ok(200, "The ACLs.", s.array::<w::Acl>()),
        Op::new(Delete, "/v1/acls", "access", "deleteAcl", "Remove an ACL.")
            .body("application/json", s.schema::<w::Acl>(), None)
            .answer(204, "Removed.", None),
        // This document.
        Op::new(Get, SPEC_PATH, "reference", "openapi", "This OpenAPI 3.1 document.")
            .ok(200, "The document.", any())
            .builder_security_open(),
        Op::new(Get, DOCS_PATH, "reference", "docs", "A browsable reference rendered from this document.")
            .answer(200, "An HTML page.", Some(("text/html", text())))
            .builder_security_open(),
    ]
}

impl Op {
    /// Marks an operation open without a key (see `OPEN_PATHS`).
    fn builder_security_open(mut self) -> Self {
        self.builder = self.builder.security(SecurityRequirement::default());
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The routes registered in the routers' sources: each `.route("path", get(..).post(..))`
    /// (and the WebSocket's `PATH`). Read from the sources because axum's router does not
    /// list its routes.
    fn registered_routes() -> BTreeSet<(String, String)> {
        let sources = [
            include_str!("access.rs"),
            include_str!("cluster.rs"),
            include_str!("fetch.rs"),
            include_str!("group_stream.rs"),
            include_str!("groups.rs"),
            include_str!("keys.rs"),
            include_str!("openapi.rs"),
            include_str!("publish.rs"),
            include_str!("stream.rs"),
            include_str!("topics.rs"),
            include_str!("ws/mod.rs"),
        ];
        let mut routes = BTreeSet::new();
        for source in sources {
            // Only the code: this module's tests talk about `.route(` too.
            let code = source
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or(source);
            for call in code.split(".route(").skip(1) {
                // The call's arguments end at the parenthesis that closes `.route(`.
                let mut depth = 1;
                let end = call
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(call.len(), |(i, _)| i);
                let call = &call[..end];
                let Some((path, handlers)) = call.split_once(',') else {
                    continue;
                };
                let path = match path.trim() {
                    "PATH" => crate::ws::PATH.to_string(),
                    "SPEC_PATH" => SPEC_PATH.to_string(),
                    "DOCS_PATH" => DOCS_PATH.to_string(),
                    literal => literal.trim_matches('"').to_string(),
                };
                for method in ["get", "post", "put", "patch", "delete"] {
                    let called = handlers.trim_start().starts_with(&format!("{method}("))
                        || handlers.contains(&format!(".{method}("));
                    if called {
                        routes.insert((method.to_string(), path.clone()));
                    }
                }
            }
        }
        routes
    }

    #[test]
    fn the_document_describes_exactly_the_routers_routes() {
        let registered = registered_routes();
        assert!(
            registered.len() > 30,
            "only {} routes found",
            registered.len()
        );
        let described: BTreeSet<(String, String)> = described_routes()
            .into_iter()
            .map(|(method, path)| {
                let method = serde_json::to_value(&method)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (method, path.to_string())
            })
            .collect();
        let missing: Vec<_> = registered.difference(&described).collect();
        let extra: Vec<_> = described.difference(&registered).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "documented routes no router has: {extra:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_referenced_schema() {
        let json: Value = serde_json::from_slice(spec_json()).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        let schemas = json["components"]["schemas"].as_object().unwrap();
        let text = json.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
        for name in [
            "ErrorBody",
            "Topic",
            "Record",
            "ServerFrame",
            "Acl",
            "StreamItem",
        ] {
            assert!(schemas.contains_key(name), "{name} is missing");
        }
    }
}
