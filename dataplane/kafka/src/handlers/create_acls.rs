//! CreateAcls (API 30): stores ACL bindings in the cluster metadata. Needs
//! ALTER on the cluster. Each creation is checked here first (an unknown
//! resource type, pattern type, operation or permission, or a malformed
//! principal, answers INVALID_REQUEST with the reason) and the valid ones
//! are proposed together; the state machine checks them again.

use super::{str_bytes, Ctx};
use crate::authz::{self, op};
use crate::registry::Versions;
use ferrolog_controlplane::acls::AclBinding;
use ferrolog_controlplane::state::{Applied, Command};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};

pub const VERSIONS: Versions = Versions::new(1, 3);

fn result(error: Option<(ResponseError, String)>) -> AclCreationResult {
    match error {
        None => AclCreationResult::default().with_error_message(None),
        Some((code, msg)) => AclCreationResult::default()
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(msg))),
    }
}

pub async fn handle(ctx: &Ctx, req: CreateAclsRequest) -> CreateAclsResponse {
    if !ctx.cluster_allowed(op::ALTER) {
        let msg = authz::denied("ALTER", "the cluster (CreateAcls)");
        let results = req
            .creations
            .iter()
            .map(|_| result(Some((ResponseError::ClusterAuthorizationFailed, msg.clone()))))
            .collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let checked: Vec<Result<AclBinding, (ResponseError, String)>> = req
        .creations
        .into_iter()
        .map(|c| {
            let b = AclBinding {
                resource_type: c.resource_type,
                resource_name: c.resource_name.to_string(),
                pattern_type: c.resource_pattern_type,
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: c.operation,
                permission: c.permission_type,
            };
            b.validate()
                .map(|()| b)
                .map_err(|e| (ResponseError::InvalidRequest, e.to_string()))
        })
        .collect();
    let cmds: Vec<Command> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().cloned().map(Command::CreateAcl))
        .collect();
    let mut answers = authz::propose(&ctx.shard, cmds).await.into_iter();
    let results = checked
        .into_iter()
        .map(|c| match c {
            Err(e) => result(Some(e)),
            Ok(_) => match answers.next().expect("one answer per proposed command") {
                Ok(Applied::AclCreated(_)) => result(None),
                Ok(other) => result(Some((
                    ResponseError::UnknownServerError,
                    format!("CreateAcl answered {other:?}"),
                ))),
                Err(e) => result(Some(e)),
            },
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}
