use super::Ctx;
use crate::authz::op;
use crate::groups::coordinator;
use crate::registry::Versions;
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, TopicName};

pub const VERSIONS: Versions = Versions::new(0, 0);

/// Deletes committed offsets of partitions the group does not consume
/// (GROUP_SUBSCRIBED_TO_TOPIC for those it does).
pub async fn handle(ctx: &Ctx, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let table = ctx.shard.topics();
    // Partitions answered before the group is asked: unknown ones, and
    // those of topics the client may not READ.
    let mut unknown: Vec<(String, i32, ResponseError)> = Vec::new();
    let mut asked: Vec<(String, Vec<i32>)> = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let readable = ctx.topic_allowed(op::READ, &name);
        let mut ps = Vec::new();
        for p in &t.partitions {
            if !readable {
                unknown.push((
                    name.clone(),
                    p.partition_index,
                    ResponseError::TopicAuthorizationFailed,
                ));
            } else if table.contains(&Ntp::new(name.clone(), p.partition_index)) {
                ps.push(p.partition_index);
            } else {
                unknown.push((
                    name.clone(),
                    p.partition_index,
                    ResponseError::UnknownTopicOrPartition,
                ));
            }
        }
        asked.push((name, ps));
    }
    let outcome = if group.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else if !ctx.group_allowed(op::DELETE, &group) {
        Err(ResponseError::GroupAuthorizationFailed)
    } else {
        let g = group.clone();
        coordinator::on_owner(&ctx.shard.smp, &group, move || {
            coordinator::delete_offsets(g, asked)
        })
        .await
        .unwrap_or(Err(ResponseError::NotCoordinator))
    };
    let answers = match outcome {
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.code()),
        Ok(a) => a,
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let known = answers.iter().find(|(n, _)| *n == name);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let i = p.partition_index;
                    let early = unknown.iter().find(|(n, q, _)| *n == name && *q == i);
                    let error = if let Some((_, _, e)) = early {
                        Some(*e)
                    } else {
                        known
                            .and_then(|(_, ps)| ps.iter().find(|(q, _)| *q == i))
                            .and_then(|(_, e)| *e)
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(i)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(TopicName(t.name.0.clone()))
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
