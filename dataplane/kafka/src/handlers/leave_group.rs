use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::groups::coordinator;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

pub const VERSIONS: Versions = Versions::new(0, 5);

/// Removes members (v3+: several, static ones by instance id); the rest of
/// the group rebalances.
pub async fn handle(ctx: &Ctx, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    let leaving: Vec<(String, Option<String>)> = if ctx.version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let answers = if group.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else if !ctx.group_allowed(op::READ, &group) {
        Err(ResponseError::GroupAuthorizationFailed)
    } else {
        let g = group.clone();
        let l = leaving.clone();
        coordinator::on_owner(&ctx.shard.smp, &group, move || coordinator::leave(g, l))
            .await
            .unwrap_or(Err(ResponseError::NotCoordinator))
    };
    let code = |e: Option<ResponseError>| e.map_or(0, |e| e.code());
    match answers {
        Err(e) => LeaveGroupResponse::default().with_error_code(e.code()),
        Ok(per_member) if ctx.version >= 3 => {
            let members = leaving
                .into_iter()
                .zip(per_member)
                .map(|((id, instance), e)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_error_code(code(e))
                })
                .collect();
            LeaveGroupResponse::default().with_members(members)
        }
        Ok(per_member) => {
            LeaveGroupResponse::default().with_error_code(code(per_member.into_iter().next().flatten()))
        }
    }
}
