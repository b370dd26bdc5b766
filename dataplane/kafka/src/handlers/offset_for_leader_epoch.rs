//! OffsetForLeaderEpoch (API 23): where a leader epoch ends in the leader's
//! log, which clients compare with their position to detect a truncated
//! log after a leader change (KIP-101, KIP-320).
//!
//! Each partition is answered on its owner shard, on its leader only
//! (NOT_LEADER_OR_FOLLOWER on a replica, UNKNOWN_TOPIC_OR_PARTITION for a
//! partition the metadata does not name), after the KIP-320 check of the
//! request's current_leader_epoch. The answer's rules and the limits of a
//! single-replica partition are those of `ops::offset_for_leader_epoch_local`:
//! a replicated partition answers from its epoch runs as Kafka does; a
//! single-replica one answers only for its current epoch (its high
//! watermark) and gives (-1, -1) for any other epoch. The request's
//! replica_id is not looked at: no Kafka follower fetches from this broker.

use super::{current_leader_epoch, str_bytes, Ctx, NO_LEADER_EPOCH};
use crate::authz::op;
use crate::registry::Versions;
use ferrolog_cluster::ops::{offset_for_leader_epoch_local, scatter, EpochAnswer, EpochQuery};
use ferrolog_model::{Epoch, Ntp};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName};

/// Every version kafka-protocol 0.18 encodes (v0 and v1 are not in it).
pub const VERSIONS: Versions = Versions::new(2, 4);

/// Kafka's UNDEFINED_EPOCH_OFFSET.
const NO_END_OFFSET: i64 = -1;

fn entry(partition: i32, answer: &EpochAnswer) -> EpochEndOffset {
    let (error, epoch, end) = match answer {
        Ok(Some((epoch, end))) => (0, epoch.0, end.0),
        Ok(None) => (0, NO_LEADER_EPOCH, NO_END_OFFSET),
        Err(e) => (crate::errors::partition(e).code(), NO_LEADER_EPOCH, NO_END_OFFSET),
    };
    EpochEndOffset::default()
        .with_error_code(error)
        .with_partition(partition)
        .with_leader_epoch(epoch)
        .with_end_offset(end)
}

pub async fn handle(ctx: &Ctx, req: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let table = ctx.shard.topics();
    let mut layout = Vec::new();
    let mut queries = Vec::new();
    for t in &req.topics {
        let name = t.topic.0.to_string();
        let described = ctx.topic_allowed(op::DESCRIBE, &name);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let ntp = Ntp::new(name.clone(), p.partition);
            if !described {
                parts.push((p.partition, Err(ResponseError::TopicAuthorizationFailed)));
            } else if table.contains(&ntp) {
                queries.push(EpochQuery {
                    ntp,
                    current_leader_epoch: current_leader_epoch(p.current_leader_epoch),
                    leader_epoch: Epoch(p.leader_epoch),
                });
                parts.push((p.partition, Ok(queries.len() - 1)));
            } else {
                parts.push((p.partition, Err(ResponseError::UnknownTopicOrPartition)));
            }
        }
        layout.push((name, parts));
    }
    let answers: Vec<EpochAnswer> = scatter(queries, |q: &EpochQuery| &q.ntp, offset_for_leader_epoch_local)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| Err(e.into())))
        .collect();
    let topics = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, slot)| match slot {
                    Ok(i) => entry(index, &answers[i]),
                    Err(e) => EpochEndOffset::default()
                        .with_error_code(e.code())
                        .with_partition(index)
                        .with_leader_epoch(NO_LEADER_EPOCH)
                        .with_end_offset(NO_END_OFFSET),
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
