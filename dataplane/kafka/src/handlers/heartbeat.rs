use super::Ctx;
use crate::authz::op;
use crate::groups::coordinator;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

pub const VERSIONS: Versions = Versions::new(0, 4);

/// Keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin.
pub async fn handle(ctx: &Ctx, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    let error = if group.is_empty() {
        Some(ResponseError::InvalidGroupId)
    } else if !ctx.group_allowed(op::READ, &group) {
        Some(ResponseError::GroupAuthorizationFailed)
    } else {
        let member = req.member_id.to_string();
        let instance = req.group_instance_id.as_ref().map(|s| s.to_string());
        let generation = req.generation_id;
        let g = group.clone();
        coordinator::on_owner(&ctx.shard.smp, &group, move || {
            coordinator::heartbeat(g, member, instance, generation)
        })
        .await
        .unwrap_or(Some(ResponseError::NotCoordinator))
    };
    HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
}
