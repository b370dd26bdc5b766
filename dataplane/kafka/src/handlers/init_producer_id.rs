//! InitProducerId for idempotent producers (KIP-98), without transactions.
//!
//! Without a transactional id the answer is always a fresh producer id with
//! epoch 0, as Kafka does, also when v3+ names an existing id and epoch
//! (KIP-360 epoch bumps only apply to transactional producers). Ids come
//! from the node's controller: blocks of ids taken from the cluster through
//! the Raft group (`AllocateProducerIds`), so no id is handed out twice in
//! the cluster.
//!
//! With a transactional id the answer is TRANSACTIONAL_ID_AUTHORIZATION_FAILED
//! (53): transactions are not implemented, and that is the code real clients
//! fail on at once with a clear message. librdkafka (2.12,
//! `rd_kafka_idemp_check_error`) and the Java client
//! (`TransactionManager.InitProducerIdHandler`) both make it a fatal
//! "Transactional Id authorization failed". The alternatives are worse:
//! COORDINATOR_NOT_AVAILABLE and NOT_COORDINATOR are retried by both until
//! `init_transactions()` times out with no hint of the cause; librdkafka
//! retries UNSUPPORTED_VERSION the same way and Java reports it as an
//! "Unexpected error in InitProducerIdResponse". Both clients ask
//! FindCoordinator (key type 1, transaction) before this; answering that with
//! the same code fails them the same way (both treat it as fatal there too).
//! An empty transactional id is INVALID_REQUEST, as in Kafka.

use super::{Ctx, RESOURCE_TOPIC};
use crate::authz::op;
use crate::controller;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use tracing::warn;

pub const VERSIONS: Versions = Versions::new(0, 4);

fn failed(error: ResponseError) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(error.code())
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub async fn handle(ctx: &Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    match &req.transactional_id {
        Some(t) if t.0.is_empty() => return failed(ResponseError::InvalidRequest),
        Some(_) => return failed(ResponseError::TransactionalIdAuthorizationFailed),
        None => {}
    }
    // An idempotent producer needs IDEMPOTENT_WRITE on the cluster, or
    // (Kafka 2.8+, KIP-679) WRITE on some topic.
    if !ctx.cluster_allowed(op::IDEMPOTENT_WRITE) && !ctx.allowed_on_any(op::WRITE, RESOURCE_TOPIC) {
        return failed(ResponseError::ClusterAuthorizationFailed);
    }
    let answer = controller::next_producer_id(&ctx.shard).await;
    if let Err((_, e)) = &answer {
        warn!("cannot allocate a producer id: {e}");
    }
    match answer {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        // KAFKA_STORAGE_ERROR is retriable in both clients; the shard error
        // (the node is stopping) is NOT_LEADER_OR_FOLLOWER, also retriable.
        Err((code, _)) => failed(code),
    }
}
