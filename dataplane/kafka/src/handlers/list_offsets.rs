use super::{current_leader_epoch, str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use ferrolog_cluster::ops::{list_offsets_local, scatter, OffsetQuery};
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, TopicName};

/// From v4 a partition may carry the client's current leader epoch
/// (KIP-320), checked on the leader as Fetch does.
pub const VERSIONS: Versions = Versions::new(1, 6);

/// One partition's answer, as the response carries it.
#[derive(Clone, Copy)]
struct OffsetAnswer {
    error: Option<ResponseError>,
    offset: i64,
    timestamp: i64,
    leader_epoch: i32,
}

fn response(version: i16, index: i32, a: &OffsetAnswer) -> ListOffsetsPartitionResponse {
    let r = ListOffsetsPartitionResponse::default()
        .with_partition_index(index)
        .with_error_code(a.error.map_or(0, |e| e.code()))
        .with_offset(a.offset)
        .with_timestamp(a.timestamp);
    // The field exists from v4; the codec refuses a non-default value before.
    if version >= 4 {
        r.with_leader_epoch(a.leader_epoch)
    } else {
        r
    }
}

pub async fn handle(ctx: &Ctx, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let meta = ctx.shard.metadata();
    let table = ctx.shard.topics();
    let mut layout = Vec::new();
    let mut queries = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let described = ctx.topic_allowed(op::DESCRIBE, &name);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let ntp = Ntp::new(name.clone(), p.partition_index);
            if !described {
                parts.push((p.partition_index, Err(ResponseError::TopicAuthorizationFailed)));
            } else if table.contains(&ntp) {
                queries.push(OffsetQuery {
                    ntp,
                    timestamp: p.timestamp,
                    current_leader_epoch: current_leader_epoch(p.current_leader_epoch),
                });
                parts.push((p.partition_index, Ok(queries.len() - 1)));
            } else {
                parts.push((p.partition_index, Err(ResponseError::UnknownTopicOrPartition)));
            }
        }
        layout.push((name, parts));
    }
    let epochs: Vec<i32> = queries
        .iter()
        .map(|q| meta.leader(&q.ntp).map_or(-1, |(_, epoch)| epoch.0))
        .collect();
    let failed = |error| OffsetAnswer {
        error: Some(error),
        offset: -1,
        timestamp: -1,
        leader_epoch: -1,
    };
    let answers: Vec<OffsetAnswer> = scatter(queries, |q: &OffsetQuery| &q.ntp, list_offsets_local)
        .await
        .into_iter()
        .zip(epochs)
        .map(|(r, leader_epoch)| match r {
            Ok(Ok(Some((offset, timestamp)))) => OffsetAnswer {
                error: None,
                offset: offset.0,
                timestamp,
                leader_epoch,
            },
            Ok(Ok(None)) => OffsetAnswer {
                error: None,
                offset: -1,
                timestamp: -1,
                leader_epoch,
            },
            Ok(Err(e)) => failed(crate::errors::partition(&e)),
            Err(e) => failed(crate::errors::shard(&e)),
        })
        .collect();
    let topics = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, slot)| response(ctx.version, index, &slot.map_or_else(failed, |i| answers[i])))
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
