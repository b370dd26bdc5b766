use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use ferrolog_controlplane::controller::{self as control, PreferredOutcome};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
use std::time::Duration;

pub const VERSIONS: Versions = Versions::new(0, 2);

/// Election type 0: preferred. Type 1 (unclean) would elect a replica that
/// may lack acknowledged records; it is refused.
const PREFERRED: i8 = 0;
/// The longest a request waits for its elections, whatever it asks.
const TIMEOUT_MAX: Duration = Duration::from_secs(30);

/// ElectLeaders (API 43), preferred elections: for each partition the
/// controller runs an election in which the first replica of the set wins
/// if it is live and its log is as good as the best of a majority (the
/// same prepare-and-choose as a failover, so no acknowledged record is
/// lost). ELECTION_NOT_NEEDED when it leads already,
/// PREFERRED_LEADER_NOT_AVAILABLE when it is down, behind, or the election
/// did not finish within the request's timeout. A null partition list means
/// every partition of every topic. Any node serves it (the request goes to
/// the controller leader).
pub async fn handle(ctx: &Ctx, req: ElectLeadersRequest) -> ElectLeadersResponse {
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0)).min(TIMEOUT_MAX);
    let wanted: Vec<(String, Vec<i32>)> = match &req.topic_partitions {
        Some(list) => list
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect(),
        None => ctx
            .shard
            .topics()
            .topics
            .iter()
            .map(|(name, meta)| (name.clone(), (0..meta.partitions()).collect()))
            .collect(),
    };
    let table = ctx.shard.topics();
    let altered = ctx.cluster_allowed(op::ALTER);
    let mut results = Vec::new();
    for (topic, partitions) in wanted {
        let mut out = Vec::new();
        for p in partitions {
            let known = table.get(&topic).is_some_and(|m| p >= 0 && p < m.partitions());
            let failed = if !altered {
                Some((
                    ResponseError::ClusterAuthorizationFailed,
                    crate::authz::denied("ALTER", "the cluster (ElectLeaders)"),
                ))
            } else if req.election_type != PREFERRED {
                Some((
                    ResponseError::InvalidRequest,
                    "only preferred elections (type 0): an unclean election may lose acknowledged records"
                        .to_string(),
                ))
            } else if !known {
                Some((
                    ResponseError::UnknownTopicOrPartition,
                    format!("{topic}/{p} does not exist"),
                ))
            } else {
                elect(ctx, topic.clone(), p, timeout).await
            };
            let r = PartitionResult::default().with_partition_id(p);
            out.push(match failed {
                None => r,
                Some((error, message)) => r
                    .with_error_code(error.code())
                    .with_error_message(Some(str_bytes(message))),
            });
        }
        results.push(
            ReplicaElectionResult::default()
                .with_topic(kafka_protocol::messages::TopicName(str_bytes(topic)))
                .with_partition_result(out),
        );
    }
    let response = ElectLeadersResponse::default().with_replica_election_results(results);
    // v1+ has a top-level error; v0 carries it per partition only.
    if !altered && ctx.version >= 1 {
        response.with_error_code(ResponseError::ClusterAuthorizationFailed.code())
    } else {
        response
    }
}

/// None: the preferred replica leads now; else the error and why.
async fn elect(
    ctx: &Ctx,
    topic: String,
    partition: i32,
    timeout: Duration,
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
                .elect_preferred(topic, partition, timeout)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
    match outcome {
        Ok(Ok(PreferredOutcome::Elected)) => None,
        Ok(Ok(PreferredOutcome::NotNeeded)) => Some((
            ResponseError::ElectionNotNeeded,
            "the preferred replica leads already".into(),
        )),
        Ok(Ok(PreferredOutcome::NotAvailable)) => Some((
            ResponseError::PreferredLeaderNotAvailable,
            "the preferred replica is down, behind the others, or was not elected in time".into(),
        )),
        Ok(Err(e)) => Some((ResponseError::NotController, e)),
        Err(e) => Some((crate::errors::shard(&e), e.to_string())),
    }
}
