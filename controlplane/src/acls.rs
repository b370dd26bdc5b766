//! Access control lists: the bindings the cluster stores, the filters that
//! select them (DescribeAcls, DeleteAcls) and the authorizer that decides a
//! request against them, with the semantics of Kafka's AclAuthorizer.
//!
//! Pure data and functions: the table is part of the replicated
//! [`crate::state::ClusterState`], changed only by the state machine's ACL
//! commands, and published to the shards in the metadata snapshot, where
//! [`authorize`] reads it without locks. Codes are Kafka's wire codes
//! (`i8`), checked once when a binding or filter enters (`AclBinding::new`,
//! `AclFilter::new`), so a stored binding always holds known values.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Most bindings the cluster stores; a create beyond it is refused. Each
/// is a few hundred bytes, so the table stays within a few tens of MiB,
/// and every node keeps one copy per published snapshot.
pub const ACLS_MAX: usize = 100_000;

/// Longest principal, host or resource name accepted in a binding.
pub const ACL_FIELD_BYTES_MAX: usize = 1024;

/// The one name of the CLUSTER resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// A literal resource name matching every resource of its type.
pub const WILDCARD: &str = "*";

/// The principal that matches every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// Kafka's ResourceType codes.
pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    pub const DELEGATION_TOKEN: i8 = 6;
    pub const USER: i8 = 7;
}

/// Kafka's PatternType codes.
pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's AclOperation codes.
pub mod op {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
    pub const CREATE_TOKENS: i8 = 13;
    pub const DESCRIBE_TOKENS: i8 = 14;
}

/// Kafka's AclPermissionType codes.
pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// Why a binding or filter is refused (Kafka's INVALID_REQUEST with this
/// message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct AclError(pub String);

fn bad(msg: String) -> AclError {
    AclError(msg)
}

fn resource_name(code: i8) -> Option<&'static str> {
    Some(match code {
        resource::ANY => "ANY",
        resource::TOPIC => "TOPIC",
        resource::GROUP => "GROUP",
        resource::CLUSTER => "CLUSTER",
        resource::TRANSACTIONAL_ID => "TRANSACTIONAL_ID",
        resource::DELEGATION_TOKEN => "DELEGATION_TOKEN",
        resource::USER => "USER",
        _ => return None,
    })
}

fn operation_name(code: i8) -> Option<&'static str> {
    Some(match code {
        op::ANY => "ANY",
        op::ALL => "ALL",
        op::READ => "READ",
        op::WRITE => "WRITE",
        op::CREATE => "CREATE",
        op::DELETE => "DELETE",
        op::ALTER => "ALTER",
        op::DESCRIBE => "DESCRIBE",
        op::CLUSTER_ACTION => "CLUSTER_ACTION",
        op::DESCRIBE_CONFIGS => "DESCRIBE_CONFIGS",
        op::ALTER_CONFIGS => "ALTER_CONFIGS",
        op::IDEMPOTENT_WRITE => "IDEMPOTENT_WRITE",
        op::CREATE_TOKENS => "CREATE_TOKENS",
        op::DESCRIBE_TOKENS => "DESCRIBE_TOKENS",
        _ => return None,
    })
}

/// The principal's type and name, `Type:name` with both non-empty.
fn check_principal(p: &str) -> Result<(), AclError> {
    match p.split_once(':') {
        Some((t, n)) if !t.is_empty() && !n.is_empty() => Ok(()),
        _ => Err(bad(format!(
            "principal {p:?} is not of the form Type:name (e.g. User:alice, User:*)"
        ))),
    }
}

fn check_len(what: &str, s: &str) -> Result<(), AclError> {
    if s.len() > ACL_FIELD_BYTES_MAX {
        return Err(bad(format!(
            "{what} is {} bytes long, more than {ACL_FIELD_BYTES_MAX}",
            s.len()
        )));
    }
    Ok(())
}

/// One ACL: who (principal, host) may or may not (permission) do what
/// (operation) on which resources (type, name, pattern type).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    /// LITERAL or PREFIXED.
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission: i8,
}

impl AclBinding {
    /// Checks every field as Kafka's CreateAcls does: a concrete resource
    /// type, LITERAL or PREFIXED, a concrete operation and permission, a
    /// `Type:name` principal, a non-empty host and name, and `kafka-cluster`
    /// as the CLUSTER resource's name.
    pub fn validate(&self) -> Result<(), AclError> {
        match resource_name(self.resource_type) {
            Some(_) if self.resource_type != resource::ANY => {}
            _ => {
                return Err(bad(format!(
                    "unknown resource type {} (expected TOPIC=2, GROUP=3, CLUSTER=4, TRANSACTIONAL_ID=5, \
                     DELEGATION_TOKEN=6 or USER=7)",
                    self.resource_type
                )))
            }
        }
        if !matches!(self.pattern_type, pattern::LITERAL | pattern::PREFIXED) {
            return Err(bad(format!(
                "pattern type {} cannot be stored (expected LITERAL=3 or PREFIXED=4)",
                self.pattern_type
            )));
        }
        match operation_name(self.operation) {
            Some(_) if self.operation != op::ANY => {}
            _ => return Err(bad(format!("unknown operation {}", self.operation))),
        }
        if !matches!(self.permission, permission::ALLOW | permission::DENY) {
            return Err(bad(format!(
                "permission type {} is neither DENY=2 nor ALLOW=3",
                self.permission
            )));
        }
        check_principal(&self.principal)?;
        if self.host.is_empty() {
            return Err(bad("the host is empty (use * for any host)".into()));
        }
        if self.resource_name.is_empty() {
            return Err(bad("the resource name is empty".into()));
        }
        if self.resource_type == resource::CLUSTER && self.resource_name != CLUSTER_NAME {
            return Err(bad(format!(
                "the CLUSTER resource is named {CLUSTER_NAME}, not {:?}",
                self.resource_name
            )));
        }
        check_len("the principal", &self.principal)?;
        check_len("the host", &self.host)?;
        check_len("the resource name", &self.resource_name)
    }

    /// Whether this binding's resource pattern covers the resource `name`
    /// (of its type): a literal of that name or `*`, or a prefix of it.
    pub fn covers(&self, name: &str) -> bool {
        match self.pattern_type {
            pattern::LITERAL => self.resource_name == name || self.resource_name == WILDCARD,
            pattern::PREFIXED => name.starts_with(self.resource_name.as_str()),
            _ => false,
        }
    }
}

/// A selection of bindings (DescribeAcls, DeleteAcls); `None` fields and
/// ANY codes match everything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    /// ANY, MATCH, LITERAL or PREFIXED.
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

impl AclFilter {
    /// Refuses codes that are not Kafka's, and UNKNOWN, as Kafka does.
    pub fn validate(&self) -> Result<(), AclError> {
        if resource_name(self.resource_type).is_none() {
            return Err(bad(format!("unknown resource type {}", self.resource_type)));
        }
        if !(pattern::ANY..=pattern::PREFIXED).contains(&self.pattern_type) {
            return Err(bad(format!("unknown pattern type {}", self.pattern_type)));
        }
        if operation_name(self.operation).is_none() {
            return Err(bad(format!("unknown operation {}", self.operation)));
        }
        if !(permission::ANY..=permission::ALLOW).contains(&self.permission) {
            return Err(bad(format!("unknown permission type {}", self.permission)));
        }
        Ok(())
    }

    /// Kafka's AclBindingFilter.matches: the resource pattern filter (MATCH
    /// selects every binding that would apply to the named resource; ANY
    /// any pattern type with exactly that name) and the entry filter.
    pub fn matches(&self, b: &AclBinding) -> bool {
        if self.resource_type != resource::ANY && self.resource_type != b.resource_type {
            return false;
        }
        if !matches!(self.pattern_type, pattern::ANY | pattern::MATCH) && self.pattern_type != b.pattern_type
        {
            return false;
        }
        let name_ok = match &self.resource_name {
            None => true,
            Some(n) if self.pattern_type == pattern::ANY || self.pattern_type == b.pattern_type => {
                *n == b.resource_name
            }
            Some(n) => b.covers(n),
        };
        name_ok
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && (self.operation == op::ANY || self.operation == b.operation)
            && (self.permission == permission::ANY || self.permission == b.permission)
    }
}

/// Every binding of the cluster, in a fixed order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclTable {
    pub bindings: BTreeSet<AclBinding>,
}

impl AclTable {
    /// Adds a valid binding; `Ok(false)` if it was already there (a create
    /// of an existing binding succeeds, as in Kafka).
    pub fn create(&mut self, b: &AclBinding) -> Result<bool, AclError> {
        b.validate()?;
        if self.bindings.contains(b) {
            return Ok(false);
        }
        if self.bindings.len() >= ACLS_MAX {
            return Err(bad(format!(
                "the cluster already stores {ACLS_MAX} ACLs, the most it may"
            )));
        }
        Ok(self.bindings.insert(b.clone()))
    }

    /// Removes and returns the bindings `f` matches.
    pub fn delete(&mut self, f: &AclFilter) -> Result<Vec<AclBinding>, AclError> {
        f.validate()?;
        let gone: Vec<AclBinding> = self.bindings.iter().filter(|b| f.matches(b)).cloned().collect();
        for b in &gone {
            self.bindings.remove(b);
        }
        Ok(gone)
    }

    pub fn describe<'a>(&'a self, f: &'a AclFilter) -> impl Iterator<Item = &'a AclBinding> {
        self.bindings.iter().filter(move |b| f.matches(b))
    }
}

/// The authorizer's settings, from the node config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthorizerConfig {
    /// Off: every request is allowed and ACLs are only stored.
    pub enabled: bool,
    /// Principals allowed everything (Kafka's super.users).
    pub super_users: Vec<String>,
    /// Kafka's allow.everyone.if.no.acl.found: a resource no binding covers
    /// is open to everyone.
    pub allow_everyone_if_no_acl_found: bool,
}

/// One question to the authorizer.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub principal: &'a str,
    /// The client's IP address, without Kafka's leading `/`.
    pub host: &'a str,
    pub operation: i8,
    pub resource_type: i8,
    pub resource_name: &'a str,
}

/// Operations whose ALLOW also allows `operation` (Kafka: READ, WRITE,
/// DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS).
fn allowing(operation: i8) -> &'static [i8] {
    match operation {
        op::DESCRIBE => &[op::DESCRIBE, op::READ, op::WRITE, op::DELETE, op::ALTER],
        op::DESCRIBE_CONFIGS => &[op::DESCRIBE_CONFIGS, op::ALTER_CONFIGS],
        op::READ => &[op::READ],
        op::WRITE => &[op::WRITE],
        op::CREATE => &[op::CREATE],
        op::DELETE => &[op::DELETE],
        op::ALTER => &[op::ALTER],
        op::CLUSTER_ACTION => &[op::CLUSTER_ACTION],
        op::ALTER_CONFIGS => &[op::ALTER_CONFIGS],
        op::IDEMPOTENT_WRITE => &[op::IDEMPOTENT_WRITE],
        op::CREATE_TOKENS => &[op::CREATE_TOKENS],
        op::DESCRIBE_TOKENS => &[op::DESCRIBE_TOKENS],
        other => panic!("authorize asked about operation {other}, which no request performs"),
    }
}

/// Kafka's AclAuthorizer: superusers may do anything; otherwise a DENY
/// binding for the operation (or ALL) that applies to the principal, host
/// and resource refuses it whatever else allows it; with no binding on the
/// resource at all, `allow_everyone_if_no_acl_found` decides; else an ALLOW
/// binding of the operation, an operation implying it, or ALL is needed.
/// Authorization off allows everything.
pub fn authorize(config: &AuthorizerConfig, table: &AclTable, req: &Request<'_>) -> bool {
    if !config.enabled || config.super_users.iter().any(|s| s == req.principal) {
        return true;
    }
    let mut on_resource = table
        .bindings
        .iter()
        .filter(|b| b.resource_type == req.resource_type && b.covers(req.resource_name))
        .peekable();
    if on_resource.peek().is_none() {
        return config.allow_everyone_if_no_acl_found;
    }
    let mine: Vec<&AclBinding> = on_resource
        .filter(|b| {
            (b.principal == req.principal || b.principal == WILDCARD_PRINCIPAL)
                && (b.host == req.host || b.host == WILDCARD)
        })
        .collect();
    let denied = mine.iter().any(|b| {
        b.permission == permission::DENY && (b.operation == req.operation || b.operation == op::ALL)
    });
    if denied {
        return false;
    }
    let ops = allowing(req.operation);
    mine.iter()
        .any(|b| b.permission == permission::ALLOW && (b.operation == op::ALL || ops.contains(&b.operation)))
}

/// Whether the principal may perform `operation` on at least one resource
/// of `resource_type` (Kafka's authorizeByResourceType, used for an
/// idempotent producer without IDEMPOTENT_WRITE): some ALLOW binding of the
/// operation applies to it and no DENY of it covers every resource of the
/// type (a literal `*` or the empty prefix).
pub fn authorize_any(config: &AuthorizerConfig, table: &AclTable, req: &Request<'_>) -> bool {
    if !config.enabled || config.super_users.iter().any(|s| s == req.principal) {
        return true;
    }
    let mine = table.bindings.iter().filter(|b| {
        b.resource_type == req.resource_type
            && (b.principal == req.principal || b.principal == WILDCARD_PRINCIPAL)
            && (b.host == req.host || b.host == WILDCARD)
            && (b.operation == req.operation || b.operation == op::ALL)
    });
    let mut allowed = false;
    for b in mine {
        if b.permission == permission::DENY && b.covers("") {
            return false;
        }
        if b.permission == permission::DENY
            && b.pattern_type == pattern::LITERAL
            && b.resource_name == WILDCARD
        {
            return false;
        }
        allowed |= b.permission == permission::ALLOW;
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn binding(
        rt: i8,
        name: &str,
        pt: i8,
        principal: &str,
        host: &str,
        operation: i8,
        perm: i8,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: principal.into(),
            host: host.into(),
            operation,
            permission: perm,
        }
    }

    fn allow_topic(name: &str, pt: i8, principal: &str, operation: i8) -> AclBinding {
        binding(
            resource::TOPIC,
            name,
            pt,
            principal,
            "*",
            operation,
            permission::ALLOW,
        )
    }

    fn on() -> AuthorizerConfig {
        AuthorizerConfig {
            enabled: true,
            super_users: vec!["User:admin".into()],
            allow_everyone_if_no_acl_found: false,
        }
    }

    fn table(bs: &[AclBinding]) -> AclTable {
        let mut t = AclTable::default();
        for b in bs {
            t.create(b).expect("valid binding");
        }
        t
    }

    fn can(t: &AclTable, principal: &str, operation: i8, rt: i8, name: &str) -> bool {
        authorize(
            &on(),
            t,
            &Request {
                principal,
                host: "10.0.0.1",
                operation,
                resource_type: rt,
                resource_name: name,
            },
        )
    }

    #[test]
    fn off_allows_everything_and_superusers_are_allowed_everything() {
        let t = table(&[binding(
            resource::TOPIC,
            "*",
            pattern::LITERAL,
            "User:*",
            "*",
            op::ALL,
            permission::DENY,
        )]);
        let req = Request {
            principal: "User:bob",
            host: "h",
            operation: op::READ,
            resource_type: resource::TOPIC,
            resource_name: "t",
        };
        assert!(authorize(&AuthorizerConfig::default(), &t, &req));
        assert!(!authorize(&on(), &t, &req));
        assert!(authorize(
            &on(),
            &t,
            &Request {
                principal: "User:admin",
                ..req
            }
        ));
    }

    #[test]
    fn no_acl_found_is_closed_unless_configured_open() {
        let t = table(&[allow_topic("other", pattern::LITERAL, "User:bob", op::READ)]);
        assert!(!can(&t, "User:bob", op::READ, resource::TOPIC, "t"));
        let open = AuthorizerConfig {
            allow_everyone_if_no_acl_found: true,
            ..on()
        };
        let req = Request {
            principal: "User:bob",
            host: "h",
            operation: op::WRITE,
            resource_type: resource::TOPIC,
            resource_name: "t",
        };
        assert!(authorize(&open, &t, &req));
        // A binding on the resource (for someone else) closes it.
        let t = table(&[allow_topic("t", pattern::LITERAL, "User:carol", op::READ)]);
        assert!(!authorize(&open, &t, &req));
    }

    #[test]
    fn deny_wins_over_allow() {
        let t = table(&[
            allow_topic("t", pattern::LITERAL, "User:bob", op::ALL),
            binding(
                resource::TOPIC,
                "t",
                pattern::LITERAL,
                "User:*",
                "10.0.0.1",
                op::WRITE,
                permission::DENY,
            ),
        ]);
        assert!(can(&t, "User:bob", op::READ, resource::TOPIC, "t"));
        assert!(!can(&t, "User:bob", op::WRITE, resource::TOPIC, "t"));
        // The DENY is for one host only.
        let other_host = Request {
            principal: "User:bob",
            host: "10.0.0.2",
            operation: op::WRITE,
            resource_type: resource::TOPIC,
            resource_name: "t",
        };
        assert!(authorize(&on(), &t, &other_host));
        // DENY ALL refuses every operation, DESCRIBE included.
        let t = table(&[
            allow_topic("t", pattern::LITERAL, "User:bob", op::READ),
            binding(
                resource::TOPIC,
                "t",
                pattern::PREFIXED,
                "User:bob",
                "*",
                op::ALL,
                permission::DENY,
            ),
        ]);
        assert!(!can(&t, "User:bob", op::DESCRIBE, resource::TOPIC, "t"));
    }

    #[test]
    fn implied_operations() {
        for implying in [op::READ, op::WRITE, op::DELETE, op::ALTER] {
            let t = table(&[allow_topic("t", pattern::LITERAL, "User:bob", implying)]);
            assert!(
                can(&t, "User:bob", op::DESCRIBE, resource::TOPIC, "t"),
                "{implying}"
            );
            assert!(!can(&t, "User:bob", op::DESCRIBE_CONFIGS, resource::TOPIC, "t"));
        }
        let t = table(&[allow_topic("t", pattern::LITERAL, "User:bob", op::ALTER_CONFIGS)]);
        assert!(can(&t, "User:bob", op::DESCRIBE_CONFIGS, resource::TOPIC, "t"));
        assert!(!can(&t, "User:bob", op::DESCRIBE, resource::TOPIC, "t"));
        // Implication is one way: DESCRIBE does not allow READ.
        let t = table(&[allow_topic("t", pattern::LITERAL, "User:bob", op::DESCRIBE)]);
        assert!(!can(&t, "User:bob", op::READ, resource::TOPIC, "t"));
        // A DENY of READ does not deny DESCRIBE implied by WRITE.
        let t = table(&[
            allow_topic("t", pattern::LITERAL, "User:bob", op::WRITE),
            binding(
                resource::TOPIC,
                "t",
                pattern::LITERAL,
                "User:bob",
                "*",
                op::READ,
                permission::DENY,
            ),
        ]);
        assert!(can(&t, "User:bob", op::DESCRIBE, resource::TOPIC, "t"));
    }

    #[test]
    fn prefixes_wildcards_and_resource_types() {
        let t = table(&[
            allow_topic("orders-", pattern::PREFIXED, "User:bob", op::READ),
            allow_topic("*", pattern::LITERAL, "User:*", op::DESCRIBE),
        ]);
        assert!(can(&t, "User:bob", op::READ, resource::TOPIC, "orders-eu"));
        assert!(!can(&t, "User:bob", op::READ, resource::TOPIC, "orders"));
        assert!(!can(&t, "User:carol", op::READ, resource::TOPIC, "orders-eu"));
        assert!(can(&t, "User:carol", op::DESCRIBE, resource::TOPIC, "anything"));
        // A literal "*" is not a prefix: only a literal pattern is a wildcard.
        let t = table(&[allow_topic("*", pattern::PREFIXED, "User:bob", op::READ)]);
        assert!(!can(&t, "User:bob", op::READ, resource::TOPIC, "t"));
        assert!(can(&t, "User:bob", op::READ, resource::TOPIC, "*x"));
        // A topic ACL says nothing about a group of the same name.
        let t = table(&[allow_topic("g", pattern::LITERAL, "User:bob", op::READ)]);
        assert!(!can(&t, "User:bob", op::READ, resource::GROUP, "g"));
    }

    #[test]
    fn authorize_any_needs_an_allow_and_no_deny_of_every_resource() {
        let req = Request {
            principal: "User:bob",
            host: "h",
            operation: op::WRITE,
            resource_type: resource::TOPIC,
            resource_name: "",
        };
        assert!(!authorize_any(&on(), &AclTable::default(), &req));
        let t = table(&[allow_topic("p-", pattern::PREFIXED, "User:bob", op::WRITE)]);
        assert!(authorize_any(&on(), &t, &req));
        let t = table(&[
            allow_topic("p-", pattern::PREFIXED, "User:bob", op::WRITE),
            binding(
                resource::TOPIC,
                "*",
                pattern::LITERAL,
                "User:*",
                "*",
                op::ALL,
                permission::DENY,
            ),
        ]);
        assert!(!authorize_any(&on(), &t, &req));
    }

    #[test]
    fn invalid_bindings_and_filters_are_refused_with_a_reason() {
        let good = allow_topic("t", pattern::LITERAL, "User:bob", op::READ);
        assert_eq!(good.validate(), Ok(()));
        let cases = [
            (
                AclBinding {
                    resource_type: 0,
                    ..good.clone()
                },
                "unknown resource type 0",
            ),
            (
                AclBinding {
                    resource_type: 42,
                    ..good.clone()
                },
                "unknown resource type 42",
            ),
            (
                AclBinding {
                    resource_type: resource::ANY,
                    ..good.clone()
                },
                "unknown resource type 1",
            ),
            (
                AclBinding {
                    pattern_type: pattern::MATCH,
                    ..good.clone()
                },
                "pattern type 2",
            ),
            (
                AclBinding {
                    operation: 99,
                    ..good.clone()
                },
                "unknown operation 99",
            ),
            (
                AclBinding {
                    operation: op::ANY,
                    ..good.clone()
                },
                "unknown operation 1",
            ),
            (
                AclBinding {
                    permission: permission::ANY,
                    ..good.clone()
                },
                "permission type 1",
            ),
            (
                AclBinding {
                    principal: "bob".into(),
                    ..good.clone()
                },
                "Type:name",
            ),
            (
                AclBinding {
                    principal: "User:".into(),
                    ..good.clone()
                },
                "Type:name",
            ),
            (
                AclBinding {
                    host: "".into(),
                    ..good.clone()
                },
                "host is empty",
            ),
            (
                AclBinding {
                    resource_name: "".into(),
                    ..good.clone()
                },
                "name is empty",
            ),
            (
                AclBinding {
                    resource_type: resource::CLUSTER,
                    resource_name: "c".into(),
                    ..good.clone()
                },
                "kafka-cluster",
            ),
            (
                AclBinding {
                    resource_name: "x".repeat(ACL_FIELD_BYTES_MAX + 1),
                    ..good.clone()
                },
                "bytes long",
            ),
        ];
        for (b, why) in cases {
            let mut t = AclTable::default();
            let e = t.create(&b).expect_err("refused");
            assert!(e.0.contains(why), "{b:?}: {e}");
            assert!(t.bindings.is_empty());
        }
        let f = AclFilter {
            resource_type: resource::ANY,
            resource_name: None,
            pattern_type: pattern::ANY,
            principal: None,
            host: None,
            operation: op::ANY,
            permission: permission::ANY,
        };
        assert_eq!(f.validate(), Ok(()));
        for bad in [
            AclFilter {
                resource_type: 0,
                ..f.clone()
            },
            AclFilter {
                resource_type: 8,
                ..f.clone()
            },
            AclFilter {
                pattern_type: 0,
                ..f.clone()
            },
            AclFilter {
                pattern_type: 5,
                ..f.clone()
            },
            AclFilter {
                operation: 0,
                ..f.clone()
            },
            AclFilter {
                operation: 15,
                ..f.clone()
            },
            AclFilter {
                permission: 0,
                ..f.clone()
            },
            AclFilter {
                permission: 4,
                ..f.clone()
            },
        ] {
            assert!(AclTable::default().delete(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_select_like_kafka_and_delete_returns_what_it_removed() {
        let lit = allow_topic("orders", pattern::LITERAL, "User:bob", op::READ);
        let wild = allow_topic("*", pattern::LITERAL, "User:bob", op::READ);
        let pre = allow_topic("ord", pattern::PREFIXED, "User:bob", op::WRITE);
        let grp = binding(
            resource::GROUP,
            "orders",
            pattern::LITERAL,
            "User:bob",
            "*",
            op::READ,
            permission::ALLOW,
        );
        let mut t = table(&[lit.clone(), wild.clone(), pre.clone(), grp.clone()]);
        let all = AclFilter {
            resource_type: resource::ANY,
            resource_name: None,
            pattern_type: pattern::ANY,
            principal: None,
            host: None,
            operation: op::ANY,
            permission: permission::ANY,
        };
        let sel = |f: &AclFilter, t: &AclTable| t.describe(f).cloned().collect::<Vec<_>>();
        assert_eq!(sel(&all, &t).len(), 4);
        let matching = AclFilter {
            resource_type: resource::TOPIC,
            resource_name: Some("orders".into()),
            pattern_type: pattern::MATCH,
            ..all.clone()
        };
        let mut want = vec![lit.clone(), wild.clone(), pre.clone()];
        want.sort();
        assert_eq!(sel(&matching, &t), want);
        let any_exact = AclFilter {
            pattern_type: pattern::ANY,
            ..matching.clone()
        };
        assert_eq!(sel(&any_exact, &t), vec![lit.clone()]);
        let prefixed = AclFilter {
            resource_name: None,
            pattern_type: pattern::PREFIXED,
            ..matching.clone()
        };
        assert_eq!(sel(&prefixed, &t), vec![pre.clone()]);
        let by_op = AclFilter {
            operation: op::WRITE,
            ..all.clone()
        };
        assert_eq!(t.delete(&by_op), Ok(vec![pre.clone()]));
        assert_eq!(t.delete(&by_op), Ok(vec![]));
        assert_eq!(t.bindings.len(), 3);
        // Creating an existing binding is a success that adds nothing.
        assert_eq!(t.create(&lit), Ok(false));
        assert_eq!(t.bindings.len(), 3);
    }

    fn arb_binding() -> impl Strategy<Value = AclBinding> {
        (
            prop_oneof![Just(resource::TOPIC), Just(resource::GROUP)],
            prop_oneof![Just("a"), Just("ab"), Just("abc"), Just("b"), Just("*")],
            prop_oneof![Just(pattern::LITERAL), Just(pattern::PREFIXED)],
            prop_oneof![Just("User:x"), Just("User:y"), Just("User:*")],
            prop_oneof![Just("h1"), Just("*")],
            prop_oneof![
                Just(op::ALL),
                Just(op::READ),
                Just(op::WRITE),
                Just(op::DESCRIBE),
                Just(op::ALTER_CONFIGS),
                Just(op::DESCRIBE_CONFIGS)
            ],
            prop_oneof![Just(permission::ALLOW), Just(permission::DENY)],
        )
            .prop_map(|(rt, n, pt, p, h, o, perm)| binding(rt, n, pt, p, h, o, perm))
    }

    /// The model: Kafka's rules written out per binding, without the
    /// authorizer's filtering and implication table.
    fn model(bs: &[AclBinding], principal: &str, host: &str, operation: i8, rt: i8, name: &str) -> bool {
        let applies = |b: &AclBinding| {
            b.resource_type == rt
                && match b.pattern_type {
                    pattern::LITERAL => b.resource_name == name || b.resource_name == "*",
                    _ => name.starts_with(&b.resource_name),
                }
        };
        let who = |b: &AclBinding| {
            (b.principal == principal || b.principal == "User:*") && (b.host == host || b.host == "*")
        };
        let implies = |granted: i8| {
            granted == op::ALL
                || granted == operation
                || (operation == op::DESCRIBE
                    && [op::READ, op::WRITE, op::DELETE, op::ALTER].contains(&granted))
                || (operation == op::DESCRIBE_CONFIGS && granted == op::ALTER_CONFIGS)
        };
        if bs.iter().any(|b| {
            applies(b)
                && who(b)
                && b.permission == permission::DENY
                && (b.operation == op::ALL || b.operation == operation)
        }) {
            return false;
        }
        bs.iter()
            .any(|b| applies(b) && who(b) && b.permission == permission::ALLOW && implies(b.operation))
    }

    proptest! {
        #[test]
        fn authorize_agrees_with_the_model(
            bs in proptest::collection::vec(arb_binding(), 0..12),
            principal in prop_oneof![Just("User:x"), Just("User:y")],
            host in prop_oneof![Just("h1"), Just("h2")],
            operation in prop_oneof![Just(op::READ), Just(op::WRITE), Just(op::DESCRIBE), Just(op::DESCRIBE_CONFIGS), Just(op::ALTER_CONFIGS)],
            rt in prop_oneof![Just(resource::TOPIC), Just(resource::GROUP)],
            name in prop_oneof![Just("a"), Just("ab"), Just("abc"), Just("b")],
        ) {
            let t = table(&bs);
            let got = authorize(&on(), &t, &Request { principal, host, operation, resource_type: rt, resource_name: name });
            prop_assert_eq!(got, model(&bs, principal, host, operation, rt, name));
            // Adding a DENY ALL for everyone on the resource always refuses.
            let mut denied = t.clone();
            denied.create(&binding(rt, name, pattern::LITERAL, "User:*", "*", op::ALL, permission::DENY)).expect("valid");
            let after = authorize(&on(), &denied, &Request { principal, host, operation, resource_type: rt, resource_name: name });
            prop_assert!(!after, "a DENY ALL on the resource was not obeyed");
        }

        #[test]
        fn delete_removes_exactly_what_describe_selects(
            bs in proptest::collection::vec(arb_binding(), 0..12),
            name in proptest::option::of(prop_oneof![Just("a".to_string()), Just("ab".to_string()), Just("*".to_string())]),
            pt in 1i8..=4,
            operation in prop_oneof![Just(op::ANY), Just(op::READ), Just(op::ALL)],
        ) {
            let mut t = table(&bs);
            let f = AclFilter { resource_type: resource::ANY, resource_name: name, pattern_type: pt, principal: None, host: None, operation, permission: permission::ANY };
            let selected: Vec<AclBinding> = t.describe(&f).cloned().collect();
            let before = t.bindings.len();
            let gone = t.delete(&f).expect("valid filter");
            prop_assert_eq!(&gone, &selected);
            prop_assert_eq!(t.bindings.len(), before - gone.len());
            prop_assert!(t.describe(&f).next().is_none());
        }
    }
}
