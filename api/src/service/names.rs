//! The one check of user-given topic, group, principal and member names: the naming rule
//! (`psubd_actors::topic::validate_name`) and the reserved `__` prefix.

use psubd_actors::controller::access::ADMIN;
use psubd_actors::topic::{is_internal, validate_name};

use super::Result;
use crate::error::ApiError;

/// Checks a name of `kind` against the naming rule and refuses reserved names with
/// `reserved` as the message.
fn user_name(kind: &str, name: &str, reserved: &str) -> Result<()> {
    validate_name(kind, name).map_err(|e| ApiError::InvalidName { message: e.0 })?;
    if is_internal(name) {
        return Err(ApiError::InvalidName {
            message: reserved.into(),
        });
    }
    Ok(())
}

/// Checks the name of a topic to create.
///
/// # Errors
/// 400 `invalid_name`.
pub fn new_topic(name: &str) -> Result<()> {
    user_name("topic", name, "topic names starting with '__' are reserved")
}

/// Checks the name of a topic a consumer group reads or commits.
///
/// # Errors
/// 400 `invalid_name`.
pub fn group_topic(name: &str) -> Result<()> {
    user_name(
        "topic",
        name,
        "internal topics cannot be consumed by groups",
    )
}

/// Checks a consumer group's name.
///
/// # Errors
/// 400 `invalid_name`.
pub fn group(name: &str) -> Result<()> {
    user_name("group", name, "group names starting with '__' are reserved")
}

/// Checks the name of a principal to create or name: the naming rule, and neither the
/// reserved prefix nor the built-in `admin`.
///
/// # Errors
/// 400 `invalid_name`.
pub fn principal(name: &str) -> Result<()> {
    user_name(
        "principal",
        name,
        "principal names starting with '__' are reserved",
    )?;
    if name == ADMIN {
        return Err(ApiError::InvalidName {
            message: "'admin' is the built-in principal; it cannot be created or changed".into(),
        });
    }
    Ok(())
}

/// Checks the name of an ACL rule: `*` (every name), or a name (for a prefix, its
/// start) that follows the naming rule.
///
/// # Errors
/// 400 `invalid_name`.
pub fn acl_resource(name: &str) -> Result<()> {
    if name == "*" {
        return Ok(());
    }
    validate_name("resource", name).map_err(|e| ApiError::InvalidName { message: e.0 })
}

/// Checks a member id: the 128-bit random number in lower-case hex that join gave.
///
/// # Errors
/// 400 `invalid_request`.
pub fn member(member: &str) -> Result<()> {
    if member.len() == 32
        && member
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest {
            message: "member_id must be the 32 hex digits returned by join".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_and_group_names_are_validated() {
        assert!(member("0123456789abcdef0123456789abcdef").is_ok());
        assert!(member("0123456789ABCDEF0123456789abcdef").is_err());
        assert!(member("short").is_err());
        assert!(group("__internal").is_err());
        assert!(group("orders-consumers").is_ok());
        assert!(new_topic("__consumer_offsets").is_err());
        assert!(group_topic("orders").is_ok());
        assert!(principal("admin").is_err());
        assert!(principal("__p").is_err());
        assert!(principal("billing-app").is_ok());
        assert!(principal("a b").is_err());
        assert!(acl_resource("*").is_ok());
        assert!(acl_resource("orders.").is_ok());
        assert!(acl_resource("").is_err());
    }
}
