use super::Ctx;
use crate::authz::op;
use crate::groups::coordinator;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

pub const VERSIONS: Versions = Versions::new(0, 2);

/// Deletes Empty groups with their committed offsets.
pub async fn handle(ctx: &Ctx, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in req.groups_names {
        let group = id.0.to_string();
        let error = if group.is_empty() {
            Some(ResponseError::InvalidGroupId)
        } else if !ctx.group_allowed(op::DELETE, &group) {
            Some(ResponseError::GroupAuthorizationFailed)
        } else {
            let g = group.clone();
            coordinator::on_owner(&ctx.shard.smp, &group, move || coordinator::delete(g))
                .await
                .unwrap_or(Some(ResponseError::NotCoordinator))
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(error.map_or(0, |e| e.code())),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
