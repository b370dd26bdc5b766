//! DeleteRecords (API 21): moves partitions' log start offsets up, on their
//! leaders. The answer per partition is the new low watermark (log start).

use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use crate::topics;
use ferrolog_cluster::admin_ops::{delete_records_local, DeleteRecordsItem};
use ferrolog_cluster::ops::scatter;
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, TopicName};

pub const VERSIONS: Versions = Versions::new(0, 2);

pub async fn handle(ctx: &Ctx, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let table = ctx.shard.topics();
    let mut layout = Vec::new();
    let mut items = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let deletable = ctx.topic_allowed(op::DELETE, &name);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let ntp = Ntp::new(name.clone(), p.partition_index);
            if !deletable {
                parts.push((p.partition_index, Err(ResponseError::TopicAuthorizationFailed)));
            } else if table.contains(&ntp) && !topics::is_internal(&name) {
                items.push(DeleteRecordsItem {
                    ntp,
                    offset: p.offset,
                });
                parts.push((p.partition_index, Ok(items.len() - 1)));
            } else {
                parts.push((p.partition_index, Err(ResponseError::UnknownTopicOrPartition)));
            }
        }
        layout.push((name, parts));
    }
    let answers = scatter(items, |i: &DeleteRecordsItem| &i.ntp, delete_records_local).await;
    let topics = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, slot)| {
                    let r = DeleteRecordsPartitionResult::default().with_partition_index(index);
                    let outcome = match slot {
                        Err(refused) => Err(refused),
                        Ok(i) => match &answers[i] {
                            Ok(Ok(low)) => Ok(low.0),
                            Ok(Err(e)) => Err(crate::errors::partition(e)),
                            Err(e) => Err(crate::errors::shard(e)),
                        },
                    };
                    match outcome {
                        Ok(low) => r.with_low_watermark(low),
                        Err(code) => r.with_low_watermark(-1).with_error_code(code.code()),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
