//! The replicated access model: principals, their API keys (hashes only), ACLs and
//! quotas. It lives in the controller group so every node applies the same changes in
//! the same order and answers authentication and ACL checks from its own copy, without a
//! message on the request path: a revoked key stops working on a node as soon as that
//! node applies the revocation.
//!
//! The built-in `admin` principal is not stored here: its key comes from each node's
//! `--admin-key-file`, so a cluster can be administered before anything is replicated.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The built-in principal allowed every operation. Never stored, never creatable.
pub const ADMIN: &str = "admin";

/// Most principals a cluster holds: the state is replicated whole and read on every
/// request, so it must stay small.
pub const MAX_PRINCIPALS: usize = 1_000;

/// Most API keys of one principal: enough to rotate (old and new side by side) with room.
pub const MAX_KEYS_PER_PRINCIPAL: usize = 10;

/// Most ACL rules of one principal: every request of the principal scans its rules.
pub const MAX_ACLS_PER_PRINCIPAL: usize = 1_000;

/// The SHA-256 of a key's secret part.
pub type SecretHash = [u8; 32];

/// What an ACL rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
// Lower-case names are the JSON API's; postcard (the log) encodes by variant index.
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// A topic, by name.
    Topic,
    /// A consumer group, by name.
    Group,
    /// The cluster itself (name `cluster`): creating topics, listing, describing.
    Cluster,
}

/// How an ACL rule's name matches a resource's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
// Lower-case names are the JSON API's; postcard (the log) encodes by variant index.
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    /// The names are equal (`*` matches every name).
    Literal,
    /// The resource's name starts with the rule's name.
    Prefixed,
}

/// An operation on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
// Lower-case names are the JSON API's; postcard (the log) encodes by variant index.
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
    /// Every operation (in a rule only).
    All,
}

/// Whether a matching rule lets the operation through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
// Lower-case names are the JSON API's; postcard (the log) encodes by variant index.
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Lets it through unless a deny also matches.
    Allow,
    /// Refuses it, whatever allows match.
    Deny,
}

impl ResourceType {
    /// The name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
        }
    }
}

impl Operation {
    /// The name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::All => "all",
        }
    }
}

impl PatternType {
    /// The name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            PatternType::Literal => "literal",
            PatternType::Prefixed => "prefixed",
        }
    }
}

impl Permission {
    /// The name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        }
    }
}

/// The name of the one cluster resource in ACL rules.
pub const CLUSTER: &str = "cluster";

/// One ACL rule of a principal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclRule {
    /// The kind of resource.
    pub resource_type: ResourceType,
    /// How `resource_name` matches.
    pub pattern_type: PatternType,
    /// The name or prefix.
    pub resource_name: String,
    /// The operation (or `All`).
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

impl AclRule {
    /// True when the rule speaks of `operation` on this resource.
    pub fn matches(&self, resource_type: ResourceType, name: &str, operation: Operation) -> bool {
        self.resource_type == resource_type
            && (self.operation == Operation::All || self.operation == operation)
            && match self.pattern_type {
                PatternType::Literal => self.resource_name == "*" || self.resource_name == name,
                PatternType::Prefixed => name.starts_with(&self.resource_name),
            }
    }
}

/// Byte and request rates of a principal, per node; `None` is unlimited. Also the JSON
/// body of `PUT /v1/principals/{p}/quota` (an absent field is unlimited; the attributes
/// change nothing in the log's postcard encoding, which always holds every field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Record bytes published per second.
    pub produce_bytes_per_sec: Option<u64>,
    /// Record bytes fetched per second.
    pub fetch_bytes_per_sec: Option<u64>,
    /// Requests (and WebSocket operations) per second.
    pub requests_per_sec: Option<u64>,
}

/// A stored principal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Creation time (proposer's clock).
    pub created_ms: i64,
    /// Its rates.
    pub quota: Quota,
    /// Its ACL rules.
    pub acls: BTreeSet<AclRule>,
}

/// A stored API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Whose key it is.
    pub principal: String,
    /// SHA-256 of the secret part; the secret itself is never stored.
    pub hash: SecretHash,
    /// Creation time (proposer's clock).
    pub created_ms: i64,
}

/// Everything the controller replicates about access.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessState {
    /// Principals by name.
    pub principals: BTreeMap<String, Principal>,
    /// API keys by key id (ids are unique cluster-wide: the lookup of a presented key is
    /// one map access).
    pub keys: BTreeMap<String, StoredKey>,
}

/// A change to the access model (validated by the proposer, checked again at apply
/// against the state of that moment).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AccessChange {
    /// Adds a principal.
    AddPrincipal {
        /// Its name.
        name: String,
        /// Creation time.
        created_ms: i64,
    },
    /// Removes a principal with its keys, rules and quota.
    RemovePrincipal {
        /// Its name.
        name: String,
    },
    /// Adds a key to a principal.
    AddKey {
        /// The principal.
        principal: String,
        /// The new key's id.
        key_id: String,
        /// The hash of its secret.
        hash: SecretHash,
        /// Creation time.
        created_ms: i64,
    },
    /// Revokes a key of a principal.
    RemoveKey {
        /// The principal.
        principal: String,
        /// The key's id.
        key_id: String,
    },
    /// Adds a rule to a principal (adding an existing rule changes nothing).
    AddAcl {
        /// The principal.
        principal: String,
        /// The rule.
        rule: AclRule,
    },
    /// Removes a rule of a principal.
    RemoveAcl {
        /// The principal.
        principal: String,
        /// The rule.
        rule: AclRule,
    },
    /// Sets a principal's quota.
    SetQuota {
        /// The principal.
        principal: String,
        /// The new quota.
        quota: Quota,
    },
}

/// Why an access change was not applied. Travels between nodes (postcard, by variant
/// index): add variants at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AccessRefusal {
    /// A principal of this name exists.
    #[error("principal exists")]
    PrincipalExists,
    /// No such principal.
    #[error("principal not found")]
    PrincipalNotFound,
    /// The principal has no key of this id.
    #[error("key not found")]
    KeyNotFound,
    /// The principal has no such rule.
    #[error("ACL not found")]
    AclNotFound,
    /// A bound on the model would be passed; the message says which.
    #[error("{0}")]
    LimitReached(String),
}

impl AccessState {
    /// True when `principal` may do `operation` on the resource: some rule allows it and
    /// none denies it (deny wins; no allow means refused).
    pub fn permits(
        &self,
        principal: &str,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> bool {
        let Some(stored) = self.principals.get(principal) else {
            return false;
        };
        let mut allowed = false;
        for rule in stored
            .acls
            .iter()
            .filter(|r| r.matches(resource_type, name, operation))
        {
            match rule.permission {
                Permission::Deny => return false,
                Permission::Allow => allowed = true,
            }
        }
        allowed
    }

    /// Applies a change, or refuses it and changes nothing.
    ///
    /// # Errors
    /// The [`AccessRefusal`] that applies.
    pub fn apply(&mut self, change: AccessChange) -> Result<(), AccessRefusal> {
        match change {
            AccessChange::AddPrincipal { name, created_ms } => {
                if self.principals.contains_key(&name) {
                    return Err(AccessRefusal::PrincipalExists);
                }
                if self.principals.len() >= MAX_PRINCIPALS {
                    return Err(AccessRefusal::LimitReached(format!(
                        "the cluster already has the maximum of {MAX_PRINCIPALS} principals"
                    )));
                }
                self.principals.insert(
                    name,
                    Principal {
                        created_ms,
                        ..Principal::default()
                    },
                );
            }
            AccessChange::RemovePrincipal { name } => {
                if self.principals.remove(&name).is_none() {
                    return Err(AccessRefusal::PrincipalNotFound);
                }
                self.keys.retain(|_, key| key.principal != name);
            }
            AccessChange::AddKey {
                principal,
                key_id,
                hash,
                created_ms,
            } => {
                self.principal(&principal)?;
                let owned = self.keys_of(&principal).count();
                if owned >= MAX_KEYS_PER_PRINCIPAL {
                    return Err(AccessRefusal::LimitReached(format!(
                        "principal '{principal}' already has the maximum of \
                         {MAX_KEYS_PER_PRINCIPAL} keys; delete one first"
                    )));
                }
                if self.keys.contains_key(&key_id) {
                    // Ids are random; a collision is refused rather than overwriting.
                    return Err(AccessRefusal::LimitReached(
                        "key id collision; retry".into(),
                    ));
                }
                self.keys.insert(
                    key_id,
                    StoredKey {
                        principal,
                        hash,
                        created_ms,
                    },
                );
            }
            AccessChange::RemoveKey { principal, key_id } => {
                self.principal(&principal)?;
                match self.keys.get(&key_id) {
                    Some(key) if key.principal == principal => {
                        self.keys.remove(&key_id);
                    }
                    _ => return Err(AccessRefusal::KeyNotFound),
                }
            }
            AccessChange::AddAcl { principal, rule } => {
                let stored = self.principal(&principal)?;
                if !stored.acls.contains(&rule) && stored.acls.len() >= MAX_ACLS_PER_PRINCIPAL {
                    return Err(AccessRefusal::LimitReached(format!(
                        "principal '{principal}' already has the maximum of \
                         {MAX_ACLS_PER_PRINCIPAL} ACLs"
                    )));
                }
                stored.acls.insert(rule);
            }
            AccessChange::RemoveAcl { principal, rule } => {
                if !self.principal(&principal)?.acls.remove(&rule) {
                    return Err(AccessRefusal::AclNotFound);
                }
            }
            AccessChange::SetQuota { principal, quota } => {
                self.principal(&principal)?.quota = quota;
            }
        }
        Ok(())
    }

    /// True when the state shows `change` done (a removal: the thing is gone). An edge
    /// that proposed a change waits for its own copy to show it before answering, so the
    /// client's next request to that node sees it.
    pub fn reflects(&self, change: &AccessChange) -> bool {
        match change {
            AccessChange::AddPrincipal { name, .. } => self.principals.contains_key(name),
            AccessChange::RemovePrincipal { name } => !self.principals.contains_key(name),
            AccessChange::AddKey { key_id, .. } => self.keys.contains_key(key_id),
            AccessChange::RemoveKey { key_id, .. } => !self.keys.contains_key(key_id),
            AccessChange::AddAcl { principal, rule } => self
                .principals
                .get(principal)
                .is_some_and(|p| p.acls.contains(rule)),
            AccessChange::RemoveAcl { principal, rule } => !self
                .principals
                .get(principal)
                .is_some_and(|p| p.acls.contains(rule)),
            AccessChange::SetQuota { principal, quota } => self
                .principals
                .get(principal)
                .is_some_and(|p| p.quota == *quota),
        }
    }

    /// The key ids of a principal.
    pub fn keys_of<'a>(&'a self, principal: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.keys
            .iter()
            .filter(move |(_, key)| key.principal == principal)
            .map(|(id, _)| id)
    }

    fn principal(&mut self, name: &str) -> Result<&mut Principal, AccessRefusal> {
        self.principals
            .get_mut(name)
            .ok_or(AccessRefusal::PrincipalNotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        resource_type: ResourceType,
        pattern_type: PatternType,
        name: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclRule {
        AclRule {
            resource_type,
            pattern_type,
            resource_name: name.into(),
            operation,
            permission,
        }
    }

    fn with_rules(rules: Vec<AclRule>) -> AccessState {
        let mut state = AccessState::default();
        state
            .apply(AccessChange::AddPrincipal {
                name: "app".into(),
                created_ms: 0,
            })
            .unwrap();
        for rule in rules {
            state
                .apply(AccessChange::AddAcl {
                    principal: "app".into(),
                    rule,
                })
                .unwrap();
        }
        state
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn literal_rules_match_one_name_and_star_every_name() {
        let state = with_rules(vec![
            rule(Topic, Literal, "orders", Write, Allow),
            rule(Group, Literal, "*", Read, Allow),
        ]);
        assert!(state.permits("app", Topic, "orders", Write));
        assert!(!state.permits("app", Topic, "orders-eu", Write));
        assert!(!state.permits("app", Topic, "orders", Read));
        assert!(state.permits("app", Group, "anything", Read));
        assert!(!state.permits("app", Topic, "anything", Read));
    }

    #[test]
    fn prefixed_rules_match_names_starting_with_the_prefix() {
        let state = with_rules(vec![rule(Topic, Prefixed, "orders.", Read, Allow)]);
        assert!(state.permits("app", Topic, "orders.eu", Read));
        assert!(state.permits("app", Topic, "orders.", Read));
        assert!(!state.permits("app", Topic, "orders", Read));
        assert!(!state.permits("app", Group, "orders.eu", Read));
    }

    #[test]
    fn deny_wins_over_allow_and_nothing_is_allowed_by_default() {
        let state = with_rules(vec![
            rule(Topic, Prefixed, "", All, Allow),
            rule(Topic, Literal, "secret", Read, Deny),
        ]);
        assert!(state.permits("app", Topic, "public", Read));
        assert!(state.permits("app", Topic, "secret", Write));
        assert!(!state.permits("app", Topic, "secret", Read));
        assert!(!state.permits("app", Cluster, "cluster", Create));
        assert!(!state.permits("nobody", Topic, "public", Read));
    }

    #[test]
    fn all_matches_every_operation_for_allow_and_deny() {
        let state = with_rules(vec![
            rule(Topic, Literal, "t", All, Allow),
            rule(Topic, Literal, "t", Delete, Deny),
        ]);
        for op in [Read, Write, Create, Alter, Describe] {
            assert!(state.permits("app", Topic, "t", op), "{op:?}");
        }
        assert!(!state.permits("app", Topic, "t", Delete));
        let denied = with_rules(vec![
            rule(Topic, Literal, "t", Read, Allow),
            rule(Topic, Literal, "t", All, Deny),
        ]);
        assert!(!denied.permits("app", Topic, "t", Read));
    }

    #[test]
    fn removing_a_principal_removes_its_keys_and_bounds_hold() {
        let mut state = with_rules(vec![]);
        for i in 0..MAX_KEYS_PER_PRINCIPAL {
            state
                .apply(AccessChange::AddKey {
                    principal: "app".into(),
                    key_id: format!("k{i}"),
                    hash: [0; 32],
                    created_ms: 0,
                })
                .unwrap();
        }
        let over = state.apply(AccessChange::AddKey {
            principal: "app".into(),
            key_id: "one-more".into(),
            hash: [0; 32],
            created_ms: 0,
        });
        assert!(matches!(over, Err(AccessRefusal::LimitReached(_))));
        assert_eq!(
            state.apply(AccessChange::RemoveKey {
                principal: "other".into(),
                key_id: "k0".into(),
            }),
            Err(AccessRefusal::PrincipalNotFound)
        );
        state
            .apply(AccessChange::RemovePrincipal { name: "app".into() })
            .unwrap();
        assert!(state.keys.is_empty());
        assert!(state.principals.is_empty());
    }
}
