//! Building the document: [`Spec`] collects operations and the schemas they reference,
//! [`Op`] describes one operation (parameters, bodies, answers).

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, PathsBuilder, Ref, RefOr, Required, ResponseBuilder};
use utoipa::ToSchema;

/// A topic, group or principal name: `^[A-Za-z0-9._-]{1,249}$`, not starting with `__`
/// (written without look-ahead, which not every tool's regex engine has).
pub const NAME_PATTERN: &str = "^(_|(_[A-Za-z0-9.-]|[A-Za-z0-9.-])[A-Za-z0-9._-]{0,247})$";

/// How a parameter's value is written.
#[derive(Clone, Copy)]
pub(super) enum Kind {
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
pub(super) struct Op {
    method: HttpMethod,
    path: &'static str,
    builder: OperationBuilder,
    body: Option<RequestBodyBuilder>,
    responses: Vec<(String, ResponseBuilder)>,
    /// Examples of answers, by status.
    examples: Vec<(String, Option<Value>)>,
}

/// Collects operations and the schemas they reference.
pub(super) struct Spec {
    pub(super) schemas: BTreeMap<String, RefOr<Schema>>,
    pub(super) paths: PathsBuilder,
    /// Every (method, path) described, for the router test.
    pub(super) routes: Vec<(HttpMethod, &'static str)>,
}

impl Spec {
    /// A reference to `T`'s schema, registering it (and the schemas it uses).
    pub(super) fn schema<T: ToSchema>(&mut self) -> RefOr<Schema> {
        let name = T::name().to_string();
        if !self.schemas.contains_key(&name) {
            self.schemas.insert(name.clone(), T::schema());
            let mut deps = Vec::new();
            T::schemas(&mut deps);
            self.schemas.extend(deps);
        }
        RefOr::Ref(Ref::from_schema_name(name))
    }

    /// One Server-Sent Event of a stream: its `event` name, its `id` (records:
    /// `<partition>-<offset>`) and its `data`, a `StreamItem` as JSON. utoipa has no
    /// `contentSchema` keyword, so [`with_content_schemas`] adds it to the served JSON.
    pub(super) fn sse_event(&mut self) -> RefOr<Schema> {
        self.schema::<psubd_wire::StreamItem>();
        let event = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "One Server-Sent Event: `data` holds a `StreamItem` as JSON.",
            ))
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["record", "assignment", "error"])),
            )
            .property(
                "id",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("Records: `<partition>-<offset>`.")),
            )
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json"),
            )
            .required("data");
        self.schemas
            .insert(SSE_EVENT.to_string(), Schema::from(event).into());
        RefOr::Ref(Ref::from_schema_name(SSE_EVENT))
    }

    /// A JSON array of `T`.
    pub(super) fn array<T: ToSchema>(&mut self) -> RefOr<Schema> {
        let item = self.schema::<T>();
        Schema::Array(ArrayBuilder::new().items(item).build()).into()
    }

    pub(super) fn add(&mut self, op: Op) {
        let mut builder = op.builder;
        if let Some(body) = op.body {
            builder = builder.request_body(Some(body.required(Some(Required::True)).build()));
        }
        for (status, response) in op.responses {
            builder = builder.response(status, response.build());
        }
        let error = self.schema::<psubd_wire::ErrorBody>();
        builder = builder.response(
            "default",
            ResponseBuilder::new()
                .description("An error (docs/api.md § Errors).")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(error))
                        .example(example(psubd_wire::ErrorBody {
                            error_code: 40401,
                            error: "topic_not_found".into(),
                            message: "topic 'nope' not found".into(),
                            retriable: false,
                            log_start_offset: None,
                            high_watermark: None,
                            current_offset: None,
                        }))
                        .build(),
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
    pub(super) fn new(
        method: HttpMethod,
        path: &'static str,
        tag: &str,
        id: &str,
        summary: &str,
    ) -> Self {
        Self {
            method,
            path,
            builder: OperationBuilder::new()
                .tag(tag)
                .operation_id(Some(id))
                .summary(Some(summary)),
            body: None,
            responses: Vec::new(),
            examples: Vec::new(),
        }
    }

    /// An optional query parameter.
    pub(super) fn query(mut self, name: &str, kind: Kind, description: &str) -> Self {
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
    pub(super) fn header(mut self, name: &str, description: &str) -> Self {
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
    pub(super) fn describe(mut self, text: &str) -> Self {
        self.builder = self.builder.description(Some(text));
        self
    }

    /// A request body of this media type (repeat for alternatives), with an example.
    pub(super) fn body(
        mut self,
        media: &str,
        schema: RefOr<Schema>,
        example: Option<Value>,
    ) -> Self {
        let content = ContentBuilder::new()
            .schema(Some(schema))
            .example(example)
            .build();
        self.body = Some(self.body.take().unwrap_or_default().content(media, content));
        self
    }

    /// A JSON answer.
    pub(super) fn ok(self, status: u16, description: &str, schema: RefOr<Schema>) -> Self {
        self.answer(status, description, Some(("application/json", schema)))
    }

    /// A JSON answer with an example.
    pub(super) fn ok_example(
        mut self,
        status: u16,
        description: &str,
        schema: RefOr<Schema>,
        example: Option<Value>,
    ) -> Self {
        self.examples.push((status.to_string(), example));
        self.ok(status, description, schema)
    }

    /// An answer of any media type, or none.
    pub(super) fn answer(
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
            let example = self
                .examples
                .iter()
                .find(|(s, _)| *s == status)
                .and_then(|(_, e)| e.clone());
            let content = ContentBuilder::new()
                .schema(Some(schema))
                .example(example)
                .build();
            let response = response.content(media, content);
            self.responses.insert(index, (status, response));
        }
        self
    }
}

/// The component name of one SSE event ([`Spec::sse_event`]).
const SSE_EVENT: &str = "SseEvent";

/// The served document, with the `contentSchema` keywords utoipa cannot express: an SSE
/// event's `data` is a `StreamItem` (JSON Schema 2020-12 `contentSchema`, which OpenAPI 3.1
/// tools such as schemathesis use to check each event).
pub(super) fn with_content_schemas(mut document: Value) -> Value {
    if let Some(data) =
        document.pointer_mut(&format!("/components/schemas/{SSE_EVENT}/properties/data"))
    {
        if let Some(data) = data.as_object_mut() {
            data.insert(
                "contentSchema".into(),
                serde_json::json!({ "$ref": "#/components/schemas/StreamItem" }),
            );
        }
    }
    document
}

pub(super) fn text() -> RefOr<Schema> {
    Schema::from(ObjectBuilder::new().schema_type(Type::String)).into()
}

pub(super) fn bytes() -> RefOr<Schema> {
    Schema::from(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream"),
    )
    .into()
}

pub(super) fn any() -> RefOr<Schema> {
    Schema::from(ObjectBuilder::new()).into()
}

/// An example body built from its wire type (so examples cannot drift either).
pub(super) fn example<T: serde::Serialize>(value: T) -> Option<Value> {
    serde_json::to_value(value).ok()
}

impl Op {
    /// Marks an operation open without a key (see `OPEN_PATHS`).
    pub(super) fn builder_security_open(mut self) -> Self {
        self.builder = self.builder.security(SecurityRequirement::default());
        self
    }
}
