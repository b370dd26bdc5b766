use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use ferrolog_controlplane::controller as control;
use ferrolog_controlplane::topics::is_internal;
use ferrolog_model::NodeId;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use std::collections::BTreeMap;

pub const VERSIONS: Versions = Versions::new(0, 0);

/// ListPartitionReassignments (API 46): the reassignments in progress as
/// this node's controller applied them, each with the partition's current
/// replica set (the union), the replicas being added (target less
/// original) and removed (original less target); only the requested
/// partitions when the request names topics.
pub async fn handle(ctx: &Ctx, req: ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse {
    if !ctx.cluster_allowed(op::DESCRIBE) {
        return failed(
            ResponseError::ClusterAuthorizationFailed,
            crate::authz::denied("DESCRIBE", "the cluster (ListPartitionReassignments)"),
        );
    }
    let Some(control) = ctx.shard.smp.control_shard() else {
        return failed(
            ResponseError::NotController,
            "this node runs no controller".into(),
        );
    };
    let pending = match ctx
        .shard
        .smp
        .submit_to(control, || async { control::local().reassignments() })
        .await
    {
        Ok(p) => p,
        Err(e) => return failed(crate::errors::shard(&e), e.to_string()),
    };
    let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let ids = |nodes: &mut dyn Iterator<Item = &NodeId>| nodes.map(|n| BrokerId(n.0)).collect::<Vec<_>>();
    let mut topics: BTreeMap<String, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    for ((topic, partition), replicas, r) in pending {
        if is_internal(&topic) {
            continue;
        }
        if let Some(w) = &wanted {
            if !w.get(&topic).is_some_and(|ps| ps.contains(&partition)) {
                continue;
            }
        }
        let adding = ids(&mut r.target.iter().filter(|n| !r.original.contains(n)));
        let removing = ids(&mut r.original.iter().filter(|n| !r.target.contains(n)));
        topics.entry(topic).or_default().push(
            OngoingPartitionReassignment::default()
                .with_partition_index(partition)
                .with_replicas(ids(&mut replicas.iter()))
                .with_adding_replicas(adding)
                .with_removing_replicas(removing),
        );
    }
    ListPartitionReassignmentsResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(name, partitions)| {
                OngoingTopicReassignment::default()
                    .with_name(kafka_protocol::messages::TopicName(str_bytes(name)))
                    .with_partitions(partitions)
            })
            .collect(),
    )
}

fn failed(error: ResponseError, message: String) -> ListPartitionReassignmentsResponse {
    ListPartitionReassignmentsResponse::default()
        .with_error_code(error.code())
        .with_error_message(Some(str_bytes(message)))
}
