use super::{str_bytes, Ctx};
use crate::registry::Versions;
use crate::shard::{list_offsets_local, scatter, OffsetAnswer, OffsetQuery};
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, TopicName};

pub const VERSIONS: Versions = Versions::new(1, 6);

fn response(version: i16, index: i32, a: &OffsetAnswer) -> ListOffsetsPartitionResponse {
    let r = ListOffsetsPartitionResponse::default()
        .with_partition_index(index)
        .with_error_code(a.error.map_or(0, |e| e.code()))
        .with_offset(a.offset)
        .with_timestamp(a.timestamp);
    // The field exists from v4; the codec refuses a non-default value before.
    if version >= 4 {
        r.with_leader_epoch(0)
    } else {
        r
    }
}

pub async fn handle(ctx: &Ctx, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let table = ctx.shard.topics();
    let mut layout = Vec::new();
    let mut queries = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let mut parts = Vec::new();
        for p in &t.partitions {
            let ntp = Ntp::new(name.clone(), p.partition_index);
            if table.contains(&ntp) {
                queries.push(OffsetQuery {
                    ntp,
                    timestamp: p.timestamp,
                });
                parts.push((p.partition_index, Some(queries.len() - 1)));
            } else {
                parts.push((p.partition_index, None));
            }
        }
        layout.push((name, parts));
    }
    let answers: Vec<OffsetAnswer> = scatter(queries, |q: &OffsetQuery| &q.ntp, list_offsets_local)
        .await
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|e| OffsetAnswer {
                error: Some(crate::errors::shard(&e)),
                offset: -1,
                timestamp: -1,
            })
        })
        .collect();
    let unknown = OffsetAnswer {
        error: Some(ResponseError::UnknownTopicOrPartition),
        offset: -1,
        timestamp: -1,
    };
    let topics = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, slot)| response(ctx.version, index, slot.map_or(&unknown, |i| &answers[i])))
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
