//! Access control at the edge: who a request is ([`Service::authenticate`]), whether its
//! ACLs allow an operation ([`Service::authorize`]), whether its quota admits it, and the
//! admin operations on principals, keys, ACLs and quotas (changes of the controller's
//! replicated access model).
//!
//! Every refusal and every admin operation is written to the `audit` tracing target at
//! info level: the operator sees them where they want them, and a healthy cluster's
//! refused requests never become warnings. No key or secret is ever logged; key ids are.

use psubd_actors::clock::now_ms;
use psubd_actors::controller::access::{
    AccessChange, AccessRefusal, AclRule, Operation, Quota, ResourceType, CLUSTER,
};
use psubd_wire::MAX_QUOTA_RATE;
use tracing::info;

use super::{names, Caller, Result, Service, Via};
use crate::auth::quota::QuotaKind;
use crate::auth::token::{valid_key_id, NewKey};
use crate::auth::Identity;
use crate::error::ApiError;
use crate::protocol::{ForwardRequest, ForwardResponse};

/// The tracing target of the audit log.
pub const AUDIT_TARGET: &str = "audit";

/// One audit record. The resource is logged with `Debug` (quoted, escaped): it may be a
/// name from a request path that was not validated yet.
pub(super) fn audit(caller: &Caller, operation: &str, resource: &str, outcome: &str) {
    info!(
        target: AUDIT_TARGET,
        principal = %caller.identity.name(),
        via = ?caller.via,
        operation,
        resource = ?resource,
        outcome,
        "audit"
    );
}

/// How a resource is named in messages and the audit log.
fn resource_text(resource_type: ResourceType, name: &str) -> String {
    format!("{} '{name}'", resource_type.as_str())
}

/// A principal as the admin lists it.
#[derive(Clone, Debug)]
pub struct PrincipalSummary {
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_ms: i64,
    /// The ids of its keys.
    pub key_ids: Vec<String>,
    /// Its quota.
    pub quota: Quota,
}

impl Service {
    /// The caller of a request carrying `authorization` (the header's value).
    ///
    /// # Errors
    /// 401 `unauthenticated` when authentication is on and the key is missing,
    /// malformed, unknown, revoked or wrong; audited.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        via: Via,
        path: &str,
    ) -> Result<Caller> {
        let metadata = self.edge.broker().metadata();
        match self.auth.identify(authorization, &metadata.access) {
            Ok(identity) => Ok(Caller::new(via, identity)),
            Err(refused) => {
                let message = refused.message();
                audit(
                    &Caller::new(via, Identity::Anonymous),
                    "authenticate",
                    path,
                    &message,
                );
                Err(ApiError::Unauthenticated { message })
            }
        }
    }

    /// True when `caller` may do `operation` on the resource (always, for the admin and
    /// when authentication is off).
    pub fn permits(
        &self,
        caller: &Caller,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> bool {
        match &caller.identity {
            Identity::Anonymous | Identity::Admin => true,
            Identity::Principal(principal) => self.edge.broker().metadata().access.permits(
                principal,
                resource_type,
                name,
                operation,
            ),
        }
    }

    /// Refuses `operation` on the resource unless the caller's ACLs allow it.
    ///
    /// # Errors
    /// 403 `forbidden`; audited.
    pub fn authorize(
        &self,
        caller: &Caller,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> Result<()> {
        if self.permits(caller, resource_type, name, operation) {
            Ok(())
        } else {
            Err(forbidden(
                caller,
                operation.as_str(),
                &resource_text(resource_type, name),
            ))
        }
    }

    /// Refuses a topic creation unless the caller may create this topic or create on
    /// the cluster.
    ///
    /// # Errors
    /// 403 `forbidden`; audited.
    pub fn authorize_topic_creation(&self, caller: &Caller, topic: &str) -> Result<()> {
        if self.permits(caller, ResourceType::Cluster, CLUSTER, Operation::Create) {
            return Ok(());
        }
        self.authorize(caller, ResourceType::Topic, topic, Operation::Create)
    }

    /// Takes one request from the caller's request quota (a request, a stream's start,
    /// a WebSocket operation).
    ///
    /// # Errors
    /// 429 `quota_exceeded` with the wait; audited.
    pub fn admit_request(&self, caller: &Caller) -> Result<()> {
        self.take_quota(caller, QuotaKind::Requests, 1)
    }

    /// Admits `cost` of the caller's quota of `kind`: refused while the caller's bucket
    /// on this node is empty.
    ///
    /// # Errors
    /// 429 `quota_exceeded` with the wait; audited.
    pub(crate) fn take_quota(&self, caller: &Caller, kind: QuotaKind, cost: u64) -> Result<()> {
        let Identity::Principal(principal) = &caller.identity else {
            return Ok(());
        };
        let metadata = self.edge.broker().metadata();
        let Some(rate) = metadata
            .access
            .principals
            .get(&**principal)
            .and_then(|p| rate_of(&p.quota, kind))
        else {
            return Ok(());
        };
        self.auth
            .quotas
            .take(&metadata.access, principal, kind, rate, cost)
            .map_err(|wait| {
                audit(caller, "admit", kind.name(), "quota_exceeded");
                ApiError::QuotaExceeded {
                    quota: kind.name(),
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            })
    }

    /// Charges `cost` to the caller's quota of `kind` after serving it (fetched bytes):
    /// the next request waits out the debt.
    pub(crate) fn charge_quota(&self, caller: &Caller, kind: QuotaKind, cost: u64) {
        let Identity::Principal(principal) = &caller.identity else {
            return;
        };
        let metadata = self.edge.broker().metadata();
        if let Some(rate) = metadata
            .access
            .principals
            .get(&**principal)
            .and_then(|p| rate_of(&p.quota, kind))
        {
            self.auth
                .quotas
                .charge(&metadata.access, principal, kind, rate, cost);
        }
    }

    /// Creates a principal (no keys, no ACLs: it may do nothing yet).
    ///
    /// # Errors
    /// 400 for a bad name, 403 for a non-admin, 409 when it exists or at the bound;
    /// 503 / 504 from the controller.
    pub async fn create_principal(&self, caller: &Caller, name: &str) -> Result<()> {
        names::principal(name)?;
        let change = AccessChange::AddPrincipal {
            name: name.to_string(),
            created_ms: now_ms(),
        };
        self.change_access(caller, "create_principal", change).await
    }

    /// Every principal.
    ///
    /// # Errors
    /// 403 for a non-admin.
    pub fn list_principals(&self, caller: &Caller) -> Result<Vec<PrincipalSummary>> {
        require_admin(caller, "list_principals", "principals")?;
        audit(caller, "list_principals", "principals", "ok");
        let metadata = self.edge.broker().metadata();
        let access = &metadata.access;
        Ok(access
            .principals
            .iter()
            .map(|(name, p)| PrincipalSummary {
                name: name.clone(),
                created_ms: p.created_ms,
                key_ids: access.keys_of(name).cloned().collect(),
                quota: p.quota,
            })
            .collect())
    }

    /// Deletes a principal with its keys, ACLs and quota.
    ///
    /// # Errors
    /// 400 for a bad name, 403 for a non-admin, 404 when unknown; 503 / 504.
    pub async fn delete_principal(&self, caller: &Caller, name: &str) -> Result<()> {
        names::principal(name)?;
        let change = AccessChange::RemovePrincipal {
            name: name.to_string(),
        };
        self.change_access(caller, "delete_principal", change).await
    }

    /// Makes a key for a principal; the answer is the only place its secret ever
    /// appears.
    ///
    /// # Errors
    /// 400 for a bad name, 403 for a non-admin, 404 for an unknown principal, 409 at the
    /// bound of keys; 503 / 504.
    pub async fn create_key(&self, caller: &Caller, principal: &str) -> Result<NewKey> {
        names::principal(principal)?;
        let key = NewKey::generate();
        let change = AccessChange::AddKey {
            principal: principal.to_string(),
            key_id: key.key_id.clone(),
            hash: key.hash,
            created_ms: now_ms(),
        };
        self.change_access(caller, "create_key", change).await?;
        Ok(key)
    }

    /// Revokes a key: every node refuses it once it applies the change.
    ///
    /// # Errors
    /// 400 for a bad name, 403 for a non-admin, 404 for an unknown principal or key;
    /// 503 / 504.
    pub async fn delete_key(&self, caller: &Caller, principal: &str, key_id: &str) -> Result<()> {
        names::principal(principal)?;
        if !valid_key_id(key_id) {
            require_admin(caller, "delete_key", principal)?;
            return Err(ApiError::ApiKeyNotFound {
                principal: principal.to_string(),
                key_id: key_id.chars().take(64).collect(),
            });
        }
        let change = AccessChange::RemoveKey {
            principal: principal.to_string(),
            key_id: key_id.to_string(),
        };
        self.change_access(caller, "delete_key", change).await
    }

    /// Adds an ACL rule to a principal (adding one it has changes nothing).
    ///
    /// # Errors
    /// 400 for bad names, 403 for a non-admin, 404 for an unknown principal, 409 at the
    /// bound of rules; 503 / 504.
    pub async fn add_acl(&self, caller: &Caller, principal: &str, rule: AclRule) -> Result<()> {
        check_rule(principal, &rule)?;
        let change = AccessChange::AddAcl {
            principal: principal.to_string(),
            rule,
        };
        self.change_access(caller, "create_acl", change).await
    }

    /// Removes an ACL rule of a principal.
    ///
    /// # Errors
    /// As [`Service::add_acl`]; 404 when the principal has no such rule.
    pub async fn remove_acl(&self, caller: &Caller, principal: &str, rule: AclRule) -> Result<()> {
        check_rule(principal, &rule)?;
        let change = AccessChange::RemoveAcl {
            principal: principal.to_string(),
            rule,
        };
        self.change_access(caller, "delete_acl", change).await
    }

    /// The ACL rules of every principal, or of one.
    ///
    /// # Errors
    /// 400 for a bad name, 403 for a non-admin, 404 for an unknown principal.
    pub fn list_acls(
        &self,
        caller: &Caller,
        principal: Option<&str>,
    ) -> Result<Vec<(String, AclRule)>> {
        if let Some(name) = principal {
            names::principal(name)?;
        }
        require_admin(caller, "list_acls", principal.unwrap_or("*"))?;
        audit(caller, "list_acls", principal.unwrap_or("*"), "ok");
        let metadata = self.edge.broker().metadata();
        let principals = &metadata.access.principals;
        if let Some(name) = principal {
            if !principals.contains_key(name) {
                return Err(ApiError::PrincipalNotFound {
                    principal: name.to_string(),
                });
            }
        }
        Ok(principals
            .iter()
            .filter(|(name, _)| principal.is_none_or(|p| p == name.as_str()))
            .flat_map(|(name, p)| p.acls.iter().map(|rule| (name.clone(), rule.clone())))
            .collect())
    }

    /// Sets a principal's quota (per node).
    ///
    /// # Errors
    /// 400 for a bad name or a zero rate, 403 for a non-admin, 404 for an unknown
    /// principal; 503 / 504.
    pub async fn set_quota(&self, caller: &Caller, principal: &str, quota: Quota) -> Result<()> {
        names::principal(principal)?;
        for kind in [QuotaKind::Produce, QuotaKind::Fetch, QuotaKind::Requests] {
            if rate_of(&quota, kind).is_some_and(|rate| !(1..=MAX_QUOTA_RATE).contains(&rate)) {
                return Err(ApiError::InvalidRequest {
                    message: format!(
                        "{} must be 1 to {MAX_QUOTA_RATE}, or null for unlimited",
                        kind.name()
                    ),
                });
            }
        }
        let change = AccessChange::SetQuota {
            principal: principal.to_string(),
            quota,
        };
        self.change_access(caller, "set_quota", change).await
    }

    /// Proposes an admin's change of the access model; audits the outcome.
    async fn change_access(
        &self,
        caller: &Caller,
        operation: &str,
        change: AccessChange,
    ) -> Result<()> {
        let resource = describe_change(&change);
        require_admin(caller, operation, &resource)?;
        let outcome = match self
            .edge
            .controller(ForwardRequest::Access(change.clone()), "")
            .await
        {
            Ok(ForwardResponse::Access(Ok(()))) => {
                self.await_local(&change).await;
                Ok(())
            }
            Ok(ForwardResponse::Access(Err(refusal))) => Err(refusal_error(&change, refusal)),
            Ok(other) => Err(ApiError::Internal {
                detail: format!("access change answered {other:?}"),
            }),
            Err(error) => Err(error),
        };
        let result = match &outcome {
            Ok(()) => "ok",
            Err(error) => error.code(),
        };
        audit(caller, operation, &resource, result);
        outcome
    }
}

impl Service {
    /// Waits (up to the write timeout) until this node has applied a committed change, so
    /// the client's next request here sees it. Past the bound the change is committed all
    /// the same: the answer stays a success.
    async fn await_local(&self, change: &AccessChange) {
        let mut metadata = self.edge.broker().subscribe_metadata();
        let applied = metadata.wait_for(|m| m.access.reflects(change));
        if tokio::time::timeout(self.edge.write_timeout(), applied)
            .await
            .is_err()
        {
            tracing::debug!("an access change was not applied here within the write timeout");
        }
    }
}

/// Refuses everyone but the admin (and everyone when authentication is off).
///
/// # Errors
/// 403 `forbidden`; audited.
pub(super) fn require_admin(caller: &Caller, operation: &str, resource: &str) -> Result<()> {
    match caller.identity {
        Identity::Principal(_) => Err(forbidden(caller, operation, resource)),
        Identity::Anonymous | Identity::Admin => Ok(()),
    }
}

/// A 403, audited.
fn forbidden(caller: &Caller, operation: &str, resource: &str) -> ApiError {
    audit(caller, operation, resource, "forbidden");
    ApiError::Forbidden {
        principal: caller.identity.name().to_string(),
        operation: operation.to_string(),
        resource: resource.to_string(),
    }
}

fn rate_of(quota: &Quota, kind: QuotaKind) -> Option<u64> {
    match kind {
        QuotaKind::Produce => quota.produce_bytes_per_sec,
        QuotaKind::Fetch => quota.fetch_bytes_per_sec,
        QuotaKind::Requests => quota.requests_per_sec,
    }
}

/// Checks a rule's names: the principal's, and the resource's (`cluster` or `*` for
/// the cluster).
fn check_rule(principal: &str, rule: &AclRule) -> Result<()> {
    names::principal(principal)?;
    names::acl_resource(&rule.resource_name)?;
    if rule.resource_type == ResourceType::Cluster
        && !matches!(rule.resource_name.as_str(), CLUSTER | "*")
    {
        return Err(ApiError::InvalidName {
            message: "the cluster resource is named 'cluster'".into(),
        });
    }
    Ok(())
}

/// The resource an access change is about, for the audit log (never a secret).
fn describe_change(change: &AccessChange) -> String {
    match change {
        AccessChange::AddPrincipal { name, .. } | AccessChange::RemovePrincipal { name } => {
            format!("principal '{name}'")
        }
        AccessChange::AddKey {
            principal, key_id, ..
        }
        | AccessChange::RemoveKey { principal, key_id } => {
            format!("principal '{principal}' key '{key_id}'")
        }
        AccessChange::AddAcl { principal, rule } | AccessChange::RemoveAcl { principal, rule } => {
            format!(
                "principal '{principal}' acl {} {} {} '{}' {}",
                rule.permission.as_str(),
                rule.operation.as_str(),
                rule.resource_type.as_str(),
                rule.resource_name,
                rule.pattern_type.as_str(),
            )
        }
        AccessChange::SetQuota { principal, .. } => format!("principal '{principal}' quota"),
    }
}

/// The error of a change the model refused.
fn refusal_error(change: &AccessChange, refusal: AccessRefusal) -> ApiError {
    let principal = match change {
        AccessChange::AddPrincipal { name, .. } | AccessChange::RemovePrincipal { name } => name,
        AccessChange::AddKey { principal, .. }
        | AccessChange::RemoveKey { principal, .. }
        | AccessChange::AddAcl { principal, .. }
        | AccessChange::RemoveAcl { principal, .. }
        | AccessChange::SetQuota { principal, .. } => principal,
    }
    .clone();
    match refusal {
        AccessRefusal::PrincipalExists => ApiError::PrincipalExists { principal },
        AccessRefusal::PrincipalNotFound => ApiError::PrincipalNotFound { principal },
        AccessRefusal::KeyNotFound => ApiError::ApiKeyNotFound {
            principal,
            key_id: match change {
                AccessChange::RemoveKey { key_id, .. } => key_id.clone(),
                _ => String::new(),
            },
        },
        AccessRefusal::AclNotFound => ApiError::AclNotFound { principal },
        AccessRefusal::LimitReached(message) => ApiError::LimitReached { message },
    }
}
