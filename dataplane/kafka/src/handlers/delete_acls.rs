//! DeleteAcls (API 31): removes the bindings each filter selects and
//! answers them. Needs ALTER on the cluster. A filter with an unknown code
//! answers INVALID_REQUEST with the reason; the others still apply.

use super::{str_bytes, Ctx};
use crate::authz::{self, op};
use crate::registry::Versions;
use ferrolog_controlplane::acls::AclFilter;
use ferrolog_controlplane::state::{Applied, Command};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};

pub const VERSIONS: Versions = Versions::new(1, 3);

fn failed(code: ResponseError, msg: String) -> DeleteAclsFilterResult {
    DeleteAclsFilterResult::default()
        .with_error_code(code.code())
        .with_error_message(Some(str_bytes(msg)))
}

pub async fn handle(ctx: &Ctx, req: DeleteAclsRequest) -> DeleteAclsResponse {
    if !ctx.cluster_allowed(op::ALTER) {
        let msg = authz::denied("ALTER", "the cluster (DeleteAcls)");
        let results = req
            .filters
            .iter()
            .map(|_| failed(ResponseError::ClusterAuthorizationFailed, msg.clone()))
            .collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let checked: Vec<Result<AclFilter, String>> = req
        .filters
        .into_iter()
        .map(|f| {
            let filter = AclFilter {
                resource_type: f.resource_type_filter,
                resource_name: f.resource_name_filter.map(|s| s.to_string()),
                pattern_type: f.pattern_type_filter,
                principal: f.principal_filter.map(|s| s.to_string()),
                host: f.host_filter.map(|s| s.to_string()),
                operation: f.operation,
                permission: f.permission_type,
            };
            filter.validate().map(|()| filter).map_err(|e| e.to_string())
        })
        .collect();
    let cmds: Vec<Command> = checked
        .iter()
        .filter_map(|f| f.as_ref().ok().cloned().map(Command::DeleteAcls))
        .collect();
    let mut answers = authz::propose(&ctx.shard, cmds).await.into_iter();
    let results = checked
        .into_iter()
        .map(|f| match f {
            Err(msg) => failed(ResponseError::InvalidRequest, msg),
            Ok(_) => match answers.next().expect("one answer per proposed command") {
                Ok(Applied::AclsDeleted(gone)) => DeleteAclsFilterResult::default()
                    .with_error_message(None)
                    .with_matching_acls(
                        gone.into_iter()
                            .map(|b| {
                                DeleteAclsMatchingAcl::default()
                                    .with_error_message(None)
                                    .with_resource_type(b.resource_type)
                                    .with_resource_name(str_bytes(b.resource_name))
                                    .with_pattern_type(b.pattern_type)
                                    .with_principal(str_bytes(b.principal))
                                    .with_host(str_bytes(b.host))
                                    .with_operation(b.operation)
                                    .with_permission_type(b.permission)
                            })
                            .collect(),
                    ),
                Ok(other) => failed(
                    ResponseError::UnknownServerError,
                    format!("DeleteAcls answered {other:?}"),
                ),
                Err((code, msg)) => failed(code, msg),
            },
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
