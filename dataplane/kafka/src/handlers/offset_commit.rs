use super::Ctx;
use crate::authz::op;
use crate::groups::coordinator::{self, CommitArgs, CommitItem};
use crate::registry::Versions;
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

pub const VERSIONS: Versions = Versions::new(2, 8);

/// Commits offsets for a group; they are durable when this answers.
/// Partitions of unknown topics and metadata over offset.metadata.max.bytes
/// are refused one by one; membership errors refuse them all.
pub async fn handle(ctx: &Ctx, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let table = ctx.shard.topics();
    let max_metadata = ctx.shard.config.groups.offset_metadata_max_bytes;
    // Per partition: its answer now, or None while it is sent to the group.
    type Layout = Vec<(
        kafka_protocol::messages::TopicName,
        Vec<(i32, Option<ResponseError>)>,
    )>;
    let mut layout: Layout = Vec::new();
    let mut items = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let readable = ctx.topic_allowed(op::READ, &name);
        let mut parts = Vec::new();
        for p in t.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let early = if !readable {
                Some(ResponseError::TopicAuthorizationFailed)
            } else if !table.contains(&Ntp::new(name.clone(), p.partition_index)) {
                Some(ResponseError::UnknownTopicOrPartition)
            } else if metadata.len() > max_metadata {
                Some(ResponseError::OffsetMetadataTooLarge)
            } else {
                items.push(CommitItem {
                    topic: name.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if ctx.version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata,
                });
                None
            };
            parts.push((p.partition_index, early));
        }
        layout.push((t.name, parts));
    }
    let outcome = if group.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else if !ctx.group_allowed(op::READ, &group) {
        Err(ResponseError::GroupAuthorizationFailed)
    } else {
        let args = CommitArgs {
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            generation: req.generation_id_or_member_epoch,
            items,
        };
        let g = group.clone();
        coordinator::on_owner(&ctx.shard.smp, &group, move || coordinator::commit(g, args))
            .await
            .unwrap_or(Err(ResponseError::NotCoordinator))
    };
    let topics = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, early)| {
                    // A group the client may not READ is every partition's answer.
                    let error = match outcome {
                        Err(ResponseError::GroupAuthorizationFailed) => outcome.err(),
                        _ => early.or(outcome.err()),
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
