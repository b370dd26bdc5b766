use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::groups::coordinator;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

pub const VERSIONS: Versions = Versions::new(0, 4);

/// Every group of every shard (v4: only those in the listed states).
pub async fn handle(ctx: &Ctx, req: ListGroupsRequest) -> ListGroupsResponse {
    let answers = ctx.shard.smp.invoke_on_all(coordinator::list_local).await;
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
    // DESCRIBE on the cluster lists every group; else only the groups the
    // client may DESCRIBE (Kafka).
    let all = ctx.cluster_allowed(op::DESCRIBE);
    let mut error = None;
    let mut groups = Vec::new();
    for a in answers {
        match a {
            Ok(listed) => {
                for (id, protocol_type, state) in listed {
                    if ctx.version >= 4
                        && !states.is_empty()
                        && !states.iter().any(|s| s.eq_ignore_ascii_case(state))
                    {
                        continue;
                    }
                    if !all && !ctx.group_allowed(op::DESCRIBE, &id) {
                        continue;
                    }
                    let mut g = ListedGroup::default()
                        .with_group_id(GroupId(str_bytes(id)))
                        .with_protocol_type(str_bytes(protocol_type));
                    if ctx.version >= 4 {
                        g = g.with_group_state(str_bytes(state));
                    }
                    groups.push(g);
                }
            }
            Err(_) => error = Some(ResponseError::CoordinatorNotAvailable),
        }
    }
    groups.sort_by(|a, b| a.group_id.0.cmp(&b.group_id.0));
    ListGroupsResponse::default()
        .with_error_code(error.map_or(0, |e| e.code()))
        .with_groups(groups)
}
