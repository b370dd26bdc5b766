use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::groups::coordinator;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

pub const VERSIONS: Versions = Versions::new(0, 5);

/// Kafka's "operations not requested" marker.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

/// State, protocol and members of each group; member metadata and
/// assignments only while Stable. An unknown group is reported Dead.
pub async fn handle(ctx: &Ctx, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(req.groups.len());
    for id in req.groups {
        let group = id.0.to_string();
        let g = group.clone();
        let summary = if ctx.group_allowed(op::DESCRIBE, &group) {
            coordinator::on_owner(&ctx.shard.smp, &group, move || coordinator::describe(g))
                .await
                .unwrap_or(Err(ResponseError::NotCoordinator))
        } else {
            Err(ResponseError::GroupAuthorizationFailed)
        };
        let mut d = DescribedGroup::default()
            .with_group_id(id)
            .with_authorized_operations(OPERATIONS_NOT_REQUESTED);
        match summary {
            Err(e) => d = d.with_error_code(e.code()),
            Ok(s) => {
                let members = s
                    .members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_group_instance_id(if ctx.version >= 4 {
                                m.instance_id.map(str_bytes)
                            } else {
                                None
                            })
                            .with_client_id(str_bytes(m.client_id))
                            .with_client_host(str_bytes(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
                d = d
                    .with_group_state(str_bytes(s.state))
                    .with_protocol_type(str_bytes(s.protocol_type))
                    .with_protocol_data(str_bytes(s.protocol))
                    .with_members(members);
            }
        }
        groups.push(d);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}
