//! Authorization of requests against the cluster's ACLs.
//!
//! Every handler asks [`Ctx::allowed`] (or its topic, group and cluster
//! forms) before it acts, with the operation Kafka's KafkaApis uses for that
//! API, and answers a refusal with the API's authorization error for that
//! resource (TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED,
//! CLUSTER_AUTHORIZATION_FAILED, ...): never a closed connection. The
//! decision itself is `ferrolog_controlplane::acls::authorize`, pure, over
//! the ACL table of the shard's metadata snapshot, so it costs no
//! cross-shard call; with authorization off (the default) it is one branch.

use crate::handlers::Ctx;
use ferrolog_controlplane::acls::{self, resource, Request, CLUSTER_NAME};
use ferrolog_controlplane::controller::{self as control, ControllerError};
use ferrolog_controlplane::state::{Applied, Command};
use kafka_protocol::error::ResponseError;
use std::rc::Rc;

pub use ferrolog_controlplane::acls::op;

impl Ctx {
    /// The principal the request runs as: the session's (ANONYMOUS until
    /// SASL authenticates it), or, with the test-only
    /// `principal_from_client_id_test_only` setting, `User:<client.id>`.
    pub fn principal(&self) -> Rc<str> {
        if self.shard.config.principal_from_client_id_test_only && !self.client_id.is_empty() {
            return format!("User:{}", self.client_id).into();
        }
        self.session.principal()
    }

    /// The client's IP address as ACL hosts name it (no leading `/`).
    fn host(&self) -> &str {
        self.peer.strip_prefix('/').unwrap_or(&self.peer)
    }

    /// Whether the request's principal may perform `operation` on the
    /// resource; always true with authorization off.
    pub fn allowed(&self, operation: i8, resource_type: i8, name: &str) -> bool {
        let config = &self.shard.config.authorizer;
        if !config.enabled {
            return true;
        }
        let principal = self.principal();
        acls::authorize(
            config,
            &self.shard.metadata().acls,
            &Request {
                principal: &principal,
                host: self.host(),
                operation,
                resource_type,
                resource_name: name,
            },
        )
    }

    /// Whether the principal may perform `operation` on some resource of
    /// the type (Kafka's authorizeByResourceType).
    pub fn allowed_on_any(&self, operation: i8, resource_type: i8) -> bool {
        let config = &self.shard.config.authorizer;
        if !config.enabled {
            return true;
        }
        let principal = self.principal();
        acls::authorize_any(
            config,
            &self.shard.metadata().acls,
            &Request {
                principal: &principal,
                host: self.host(),
                operation,
                resource_type,
                resource_name: "",
            },
        )
    }

    pub fn topic_allowed(&self, operation: i8, topic: &str) -> bool {
        self.allowed(operation, resource::TOPIC, topic)
    }

    pub fn group_allowed(&self, operation: i8, group: &str) -> bool {
        self.allowed(operation, resource::GROUP, group)
    }

    pub fn cluster_allowed(&self, operation: i8) -> bool {
        self.allowed(operation, resource::CLUSTER, CLUSTER_NAME)
    }

    pub fn transactional_id_allowed(&self, operation: i8, id: &str) -> bool {
        self.allowed(operation, resource::TRANSACTIONAL_ID, id)
    }
}

/// The message of an authorization error: which operation on what.
pub fn denied(operation: &str, what: &str) -> String {
    format!("not authorized to {operation} {what}")
}

/// Proposes ACL commands on the control executor (through the Raft leader);
/// one answer per command, in order. The controller answers once the
/// change is applied and published to this node's shards, so a
/// DescribeAcls or a request on any shard of this node sees it next.
pub async fn propose(
    shard: &crate::shard::Shard,
    cmds: Vec<Command>,
) -> Vec<Result<Applied, (ResponseError, String)>> {
    let n = cmds.len();
    let Some(control) = shard.smp.control_shard() else {
        return (0..n)
            .map(|_| {
                Err((
                    ResponseError::NotController,
                    "this node runs no controller".into(),
                ))
            })
            .collect();
    };
    let answers = shard
        .smp
        .submit_to(control, move || async move {
            match control::local().propose_commands(cmds).await {
                Ok(answers) => answers
                    .into_iter()
                    .map(|a| {
                        a.map_err(|e| {
                            let e = ControllerError::Rejected(e);
                            (crate::errors::controller(&e), e.to_string())
                        })
                    })
                    .collect::<Vec<_>>(),
                Err(e) => (0..n)
                    .map(|_| Err((crate::errors::controller(&e), e.to_string())))
                    .collect(),
            }
        })
        .await;
    match answers {
        Ok(a) => a,
        Err(e) => (0..n)
            .map(|_| Err((crate::errors::shard(&e), e.to_string())))
            .collect(),
    }
}
