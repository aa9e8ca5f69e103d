//! OpenAPI schemas (feature `openapi`) of the types whose serde form is written by hand:
//! an offset that is a number or a name.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::groups::ResetOffset;
use crate::records::OffsetSpec;

/// `earliest`, `latest` or an offset (a non-negative integer).
fn number_or_name(description: &str) -> RefOr<Schema> {
    let number = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(0));
    let name = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .enum_values(Some(["earliest", "latest"]));
    Schema::OneOf(
        OneOfBuilder::new()
            .item(number)
            .item(name)
            .description(Some(description))
            .build(),
    )
    .into()
}

impl PartialSchema for ResetOffset {
    fn schema() -> RefOr<Schema> {
        number_or_name("Where a reset puts a partition: `earliest`, `latest` or an offset.")
    }
}

impl ToSchema for ResetOffset {}

impl PartialSchema for OffsetSpec {
    fn schema() -> RefOr<Schema> {
        number_or_name("Where a read starts: `earliest`, `latest` or an offset.")
    }
}

impl ToSchema for OffsetSpec {}
