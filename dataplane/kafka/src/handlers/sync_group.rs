use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::groups::coordinator;
use crate::groups::group::{SyncArgs, SyncResult};
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

pub const VERSIONS: Versions = Versions::new(0, 5);

/// The leader sends every member's assignment; each member gets its own
/// once the leader's has been persisted.
pub async fn handle(ctx: &Ctx, req: SyncGroupRequest) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    let result = if group.is_empty() {
        SyncResult::failed(ResponseError::InvalidGroupId)
    } else if !ctx.group_allowed(op::READ, &group) {
        SyncResult::failed(ResponseError::GroupAuthorizationFailed)
    } else {
        let args = SyncArgs {
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            generation: req.generation_id,
            protocol_type: req.protocol_type.as_ref().map(|s| s.to_string()),
            protocol: req.protocol_name.as_ref().map(|s| s.to_string()),
            assignments: req
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        };
        let g = group.clone();
        coordinator::on_owner(&ctx.shard.smp, &group, move || coordinator::sync(g, args))
            .await
            .unwrap_or_else(|_| SyncResult::failed(ResponseError::NotCoordinator))
    };
    let mut out = SyncGroupResponse::default()
        .with_error_code(result.error.map_or(0, |e| e.code()))
        .with_assignment(result.assignment);
    if ctx.version >= 5 {
        out = out
            .with_protocol_type(result.protocol_type.map(str_bytes))
            .with_protocol_name(result.protocol.map(str_bytes));
    }
    out
}
