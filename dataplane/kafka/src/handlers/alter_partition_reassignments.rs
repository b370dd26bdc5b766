use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use ferrolog_controlplane::controller::{self as control, ControllerError};
use ferrolog_controlplane::state::StateError;
use ferrolog_controlplane::topics::is_internal;
use ferrolog_model::{NodeId, PartitionId};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse};

pub const VERSIONS: Versions = Versions::new(0, 1);

/// AlterPartitionReassignments (API 45): per partition, a replica list
/// starts a reassignment to it (or replaces the target of the one in
/// progress), a null list cancels the one in progress. The partition's
/// replica set becomes the union of the target and the original set at
/// once; the controller leader completes the change to the target when
/// every target replica is in sync with the leader (moving leadership into
/// the target first if needed). Only replicated partitions move, between
/// sets of at least 2 replicas. The group coordinator's topic is not
/// visible: refused as unknown. Any node serves it (the change goes to the
/// controller leader).
pub async fn handle(
    ctx: &Ctx,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let table = ctx.shard.topics();
    let altered = ctx.cluster_allowed(op::ALTER);
    let mut responses = Vec::new();
    for t in req.topics {
        let topic = t.name.0.to_string();
        let mut out = Vec::new();
        for p in t.partitions {
            let current = table
                .get(&topic)
                .filter(|_| !is_internal(&topic))
                .and_then(|m| m.assignment(PartitionId(p.partition_index)))
                .map(|a| a.replicas.len());
            let target: Option<Vec<NodeId>> =
                p.replicas.map(|r| r.into_iter().map(|b| NodeId(b.0)).collect());
            let failed = match current {
                _ if !altered => Some((
                    ResponseError::ClusterAuthorizationFailed,
                    crate::authz::denied("ALTER", "the cluster (AlterPartitionReassignments)"),
                )),
                None => Some((
                    ResponseError::UnknownTopicOrPartition,
                    format!("{topic}/{} does not exist", p.partition_index),
                )),
                Some(n)
                    if !req.allow_replication_factor_change
                        && target.as_ref().is_some_and(|t| t.len() != n) =>
                {
                    Some((
                        ResponseError::InvalidReplicationFactor,
                        format!("the target changes the replication factor from {n}, which the request does not allow"),
                    ))
                }
                Some(_) => alter(ctx, topic.clone(), p.partition_index, target).await,
            };
            let r = ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
            out.push(match failed {
                None => r,
                Some((error, message)) => r
                    .with_error_code(error.code())
                    .with_error_message(Some(str_bytes(message))),
            });
        }
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(kafka_protocol::messages::TopicName(str_bytes(topic)))
                .with_partitions(out),
        );
    }
    let response = AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(req.allow_replication_factor_change)
        .with_responses(responses);
    if altered {
        response
    } else {
        response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes(crate::authz::denied("ALTER", "the cluster"))))
    }
}

/// None: applied; else the error and why.
async fn alter(
    ctx: &Ctx,
    topic: String,
    partition: i32,
    target: Option<Vec<NodeId>>,
) -> Option<(ResponseError, String)> {
    let Some(control) = ctx.shard.smp.control_shard() else {
        return Some((
            ResponseError::NotController,
            "this node runs no controller".into(),
        ));
    };
    let outcome = ctx
        .shard
        .smp
        .submit_to(control, move || async move {
            control::local()
                .alter_reassignment(topic, partition, target)
                .await
                .map_err(|e| (error_code(&e), e.to_string()))
        })
        .await;
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(failed)) => Some(failed),
        Err(e) => Some((crate::errors::shard(&e), e.to_string())),
    }
}

fn error_code(e: &ControllerError) -> ResponseError {
    match e {
        ControllerError::Rejected(StateError::UnknownPartition { .. }) => {
            ResponseError::UnknownTopicOrPartition
        }
        ControllerError::Rejected(StateError::NoReassignment { .. }) => {
            ResponseError::NoReassignmentInProgress
        }
        ControllerError::Rejected(
            StateError::BadReplicaSet { .. }
            | StateError::BadReassignment { .. }
            | StateError::NotServing(_)
            | StateError::UnknownMember(_),
        ) => ResponseError::InvalidReplicaAssignment,
        other => crate::errors::controller(other),
    }
}
