use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::groups::coordinator;
use crate::groups::group::{JoinArgs, JoinResult};
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use std::time::Duration;

pub const VERSIONS: Versions = Versions::new(0, 9);

/// Joins (or rejoins) a member; answers once the group's rebalance reaches
/// the sync phase, which may take up to the rebalance timeout.
pub async fn handle(ctx: &Ctx, req: JoinGroupRequest) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let result = if group.is_empty() {
        JoinResult::failed(ResponseError::InvalidGroupId, &req.member_id)
    } else if !ctx.group_allowed(op::READ, &group) {
        JoinResult::failed(ResponseError::GroupAuthorizationFailed, &req.member_id)
    } else {
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        // v0 has no rebalance timeout: the session timeout serves as both.
        let rebalance = if ctx.version >= 1 {
            Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64)
        } else {
            session
        };
        let args = JoinArgs {
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: ctx.client_id.clone(),
            client_host: ctx.peer.to_string(),
            session_timeout: session,
            rebalance_timeout: rebalance,
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            require_known_member_id: ctx.version >= 4,
        };
        let member = args.member_id.clone();
        let g = group.clone();
        coordinator::on_owner(&ctx.shard.smp, &group, move || coordinator::join(g, args))
            .await
            .unwrap_or_else(|_| JoinResult::failed(ResponseError::NotCoordinator, &member))
    };
    response(ctx.version, result)
}

fn response(version: i16, r: JoinResult) -> JoinGroupResponse {
    let members = r
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.id))
                .with_group_instance_id(if version >= 5 {
                    m.instance_id.map(str_bytes)
                } else {
                    None
                })
                .with_metadata(m.metadata)
        })
        .collect();
    // protocol_name is nullable from v7 on; before, an empty string.
    let protocol = match r.protocol {
        Some(p) => Some(str_bytes(p)),
        None if version < 7 => Some(str_bytes("")),
        None => None,
    };
    let mut out = JoinGroupResponse::default()
        .with_error_code(r.error.map_or(0, |e| e.code()))
        .with_generation_id(r.generation)
        .with_protocol_name(protocol)
        .with_leader(str_bytes(r.leader))
        .with_member_id(str_bytes(r.member_id))
        .with_members(members);
    if version >= 7 {
        out = out.with_protocol_type(r.protocol_type.map(str_bytes));
    }
    if version >= 9 {
        out = out.with_skip_assignment(r.skip_assignment);
    }
    out
}
