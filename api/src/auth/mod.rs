//! Who is asking: API keys ([`token`]), the built-in admin's key, and per-node quotas
//! ([`quota`]). This module only identifies; what an identity may do is decided by the
//! service layer (`service::access`) against the replicated ACLs.
//!
//! The check costs one map lookup of the key id in this node's copy of the access model
//! and one SHA-256 of the secret: no cache is kept, so a revoked key stops working on a
//! node as soon as the node applies the revocation from the controller log.

pub mod quota;
pub mod token;

use std::sync::Arc;

use psubd_actors::controller::access::{AccessState, SecretHash, ADMIN};

use quota::Quotas;
use token::{parse_bearer, parse_key, verify, Malformed, MIN_ADMIN_SECRET};

/// Who a request is served for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off (`--auth` not given): every operation is allowed.
    #[default]
    Anonymous,
    /// The built-in admin: every operation is allowed.
    Admin,
    /// A stored principal: its ACLs and quota apply.
    Principal(Arc<str>),
}

impl Identity {
    /// The name logged in the audit log.
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::Admin => ADMIN,
            Identity::Principal(name) => name,
        }
    }
}

/// The admin key of `--admin-key-file`, kept only as the hash of its secret.
#[derive(Clone)]
pub struct AdminKey {
    hash: SecretHash,
}

impl AdminKey {
    /// Reads the key from the file's text: `admin.<secret>` (surrounding whitespace is
    /// ignored), the secret at least [`MIN_ADMIN_SECRET`] characters.
    ///
    /// # Errors
    /// What is wrong with it, never the key itself.
    pub fn parse(text: &str) -> Result<Self, String> {
        let presented = parse_key(text.trim())
            .map_err(|_| "it must hold one key of the form admin.<secret>".to_string())?;
        if presented.key_id != ADMIN {
            return Err("its key id (before the '.') must be 'admin'".into());
        }
        if presented.secret.len() < MIN_ADMIN_SECRET {
            return Err(format!(
                "its secret (after 'admin.') must be at least {MIN_ADMIN_SECRET} characters"
            ));
        }
        Ok(Self {
            hash: token::hash_secret(presented.secret),
        })
    }
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(..)")
    }
}

/// Why a request could not be authenticated (all answer 401).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <key_id>.<secret>`.
    Malformed,
    /// No such key id: never issued, or revoked (with its principal, or alone).
    UnknownKey(String),
    /// The key id exists and the secret does not match.
    WrongSecret(String),
}

impl Refused {
    /// The message for the client and the audit log (never the secret).
    pub fn message(&self) -> String {
        match self {
            Refused::Missing => "missing Authorization header: send 'Bearer <key>'".into(),
            Refused::Malformed => {
                "malformed Authorization header: send 'Bearer <key_id>.<secret>'".into()
            }
            Refused::UnknownKey(id) => format!("unknown or revoked key '{id}'"),
            Refused::WrongSecret(id) => format!("invalid secret for key '{id}'"),
        }
    }
}

/// This node's authentication settings and quota counters.
#[derive(Clone, Default)]
pub struct Auth {
    /// `None`: authentication is off.
    admin: Option<AdminKey>,
    /// Token buckets of the principals this node serves.
    pub quotas: Quotas,
}

impl Auth {
    /// Authentication off: every caller is [`Identity::Anonymous`].
    pub fn off() -> Self {
        Self::default()
    }

    /// Authentication on, with the admin's key.
    pub fn on(admin: AdminKey) -> Self {
        Self {
            admin: Some(admin),
            quotas: Quotas::default(),
        }
    }

    /// True when requests must carry a key.
    pub fn enabled(&self) -> bool {
        self.admin.is_some()
    }

    /// The identity of the `Authorization` header's key.
    ///
    /// # Errors
    /// [`Refused`] for a missing, malformed, unknown or wrong key.
    pub fn identify(
        &self,
        header: Option<&[u8]>,
        access: &AccessState,
    ) -> Result<Identity, Refused> {
        let Some(admin) = &self.admin else {
            return Ok(Identity::Anonymous);
        };
        let presented = parse_bearer(header).map_err(|m| match m {
            Malformed::Missing => Refused::Missing,
            Malformed::Malformed => Refused::Malformed,
        })?;
        if presented.key_id == ADMIN {
            return if verify(presented.secret, &admin.hash) {
                Ok(Identity::Admin)
            } else {
                Err(Refused::WrongSecret(ADMIN.into()))
            };
        }
        let stored = access
            .keys
            .get(presented.key_id)
            .ok_or_else(|| Refused::UnknownKey(presented.key_id.into()))?;
        if verify(presented.secret, &stored.hash) {
            Ok(Identity::Principal(Arc::from(stored.principal.as_str())))
        } else {
            Err(Refused::WrongSecret(presented.key_id.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use psubd_actors::controller::access::AccessChange;

    use super::*;
    use crate::auth::token::NewKey;

    const ADMIN_KEY: &str = "admin.0123456789abcdef0123456789abcdef";

    #[test]
    fn admin_key_files_are_checked() {
        assert!(AdminKey::parse(&format!("{ADMIN_KEY}\n")).is_ok());
        assert!(AdminKey::parse("admin.short").is_err());
        assert!(AdminKey::parse("root.0123456789abcdef0123456789abcdef").is_err());
        assert!(AdminKey::parse("").is_err());
        let error = AdminKey::parse("admin.short").unwrap_err();
        assert!(!error.contains("short"));
    }

    #[test]
    fn keys_identify_their_principal_until_revoked() {
        let auth = Auth::on(AdminKey::parse(ADMIN_KEY).unwrap());
        let mut access = AccessState::default();
        let key = NewKey::generate();
        for change in [
            AccessChange::AddPrincipal {
                name: "app".into(),
                created_ms: 0,
            },
            AccessChange::AddKey {
                principal: "app".into(),
                key_id: key.key_id.clone(),
                hash: key.hash,
                created_ms: 0,
            },
        ] {
            access.apply(change).unwrap();
        }
        let header = format!("Bearer {}", key.key);
        assert_eq!(
            auth.identify(Some(header.as_bytes()), &access),
            Ok(Identity::Principal("app".into()))
        );
        let admin = format!("Bearer {ADMIN_KEY}");
        assert_eq!(
            auth.identify(Some(admin.as_bytes()), &access),
            Ok(Identity::Admin)
        );
        assert_eq!(auth.identify(None, &access), Err(Refused::Missing));
        let wrong = format!("Bearer {}.nope", key.key_id);
        assert_eq!(
            auth.identify(Some(wrong.as_bytes()), &access),
            Err(Refused::WrongSecret(key.key_id.clone()))
        );
        access
            .apply(AccessChange::RemoveKey {
                principal: "app".into(),
                key_id: key.key_id.clone(),
            })
            .unwrap();
        assert_eq!(
            auth.identify(Some(header.as_bytes()), &access),
            Err(Refused::UnknownKey(key.key_id))
        );
        assert_eq!(Auth::off().identify(None, &access), Ok(Identity::Anonymous));
    }
}
