//! DescribeProducers (API 61): the idempotent producers a partition's
//! leader holds sequence state for. The broker keeps no per-producer
//! timestamp and serves no transactions: `last_timestamp` is -1,
//! `coordinator_epoch` -1 and `current_txn_start_offset` -1.

use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use crate::topics;
use ferrolog_cluster::admin_ops::describe_producers_local;
use ferrolog_cluster::ops::scatter;
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId, TopicName};

pub const VERSIONS: Versions = Versions::new(0, 0);

pub async fn handle(ctx: &Ctx, req: DescribeProducersRequest) -> DescribeProducersResponse {
    let table = ctx.shard.topics();
    let mut layout = Vec::new();
    let mut items = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let readable = ctx.topic_allowed(op::READ, &name);
        let mut parts = Vec::new();
        for &index in &t.partition_indexes {
            let ntp = Ntp::new(name.clone(), index);
            if !readable {
                parts.push((
                    index,
                    Err((
                        ResponseError::TopicAuthorizationFailed,
                        crate::authz::denied("READ", &format!("topic {name}")),
                    )),
                ));
            } else if table.contains(&ntp) && !topics::is_internal(&name) {
                items.push(ntp);
                parts.push((index, Ok(items.len() - 1)));
            } else {
                parts.push((
                    index,
                    Err((
                        ResponseError::UnknownTopicOrPartition,
                        "unknown topic or partition".to_string(),
                    )),
                ));
            }
        }
        layout.push((name, parts));
    }
    let answers = scatter(items, |n: &Ntp| n, describe_producers_local).await;
    let topics = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, slot)| {
                    let r = PartitionResponse::default().with_partition_index(index);
                    let outcome = match slot {
                        Err(refused) => Err(refused),
                        Ok(i) => match &answers[i] {
                            Ok(Ok(producers)) => Ok(producers),
                            Ok(Err(e)) => Err((crate::errors::partition(e), e.to_string())),
                            Err(e) => Err((crate::errors::shard(e), e.to_string())),
                        },
                    };
                    match outcome {
                        Ok(producers) => r.with_active_producers(
                            producers
                                .iter()
                                .map(|p| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(p.producer_id))
                                        .with_producer_epoch(i32::from(p.epoch))
                                        .with_last_sequence(p.last_seq)
                                        .with_last_timestamp(-1)
                                        .with_coordinator_epoch(-1)
                                        .with_current_txn_start_offset(-1)
                                })
                                .collect(),
                        ),
                        Err((code, msg)) => r
                            .with_error_code(code.code())
                            .with_error_message(Some(str_bytes(msg))),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
