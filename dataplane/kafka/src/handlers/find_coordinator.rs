use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::groups::coordinator;
use crate::registry::Versions;
use ferrolog_controlplane::topics;
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

pub const VERSIONS: Versions = Versions::new(0, 4);

/// Key types: consumer groups, and transactional ids (answered so clients
/// get a coordinator; transactions themselves are not served yet).
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// A group (or transactional id) is coordinated by the leader of its
/// partition of the coordinator topic (hash of the key), as the metadata
/// names it; COORDINATOR_NOT_AVAILABLE while that topic is not created yet
/// or the partition's leader is down. Kafka clients retry both.
pub fn handle(ctx: &Ctx, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    if ctx.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|key| {
                let (node, host, port, code, message) = answer(ctx, req.key_type, key);
                Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(node))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_error_code(code)
                    .with_error_message(message)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (node, host, port, code, message) = answer(ctx, req.key_type, &req.key);
    let mut r = FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(node))
        .with_host(str_bytes(host))
        .with_port(port);
    if ctx.version >= 1 {
        r = r.with_error_message(message);
    }
    r
}

type Answer = (i32, String, i32, i16, Option<kafka_protocol::protocol::StrBytes>);

fn answer(ctx: &Ctx, key_type: i8, key: &str) -> Answer {
    let snap = ctx.shard.metadata();
    let ntp = Ntp::new(topics::OFFSETS_TOPIC, coordinator::partition_of(key));
    let leader = snap.leader(&ntp).and_then(|(leader, _)| snap.broker(leader));
    let (node, host, port) = match leader {
        Some(b) => (b.id.0, b.host.clone(), b.port),
        None => (-1, String::new(), -1),
    };
    let error = if !matches!(key_type, KEY_GROUP | KEY_TRANSACTION) {
        Some((
            ResponseError::InvalidRequest,
            format!("unknown coordinator key type {key_type}"),
        ))
    } else if key_type == KEY_GROUP && !ctx.group_allowed(op::DESCRIBE, key) {
        Some((
            ResponseError::GroupAuthorizationFailed,
            crate::authz::denied("DESCRIBE", &format!("group {key}")),
        ))
    } else if key_type == KEY_TRANSACTION && !ctx.transactional_id_allowed(op::DESCRIBE, key) {
        Some((
            ResponseError::TransactionalIdAuthorizationFailed,
            crate::authz::denied("DESCRIBE", &format!("transactional id {key}")),
        ))
    } else if node < 0 {
        Some((
            ResponseError::CoordinatorNotAvailable,
            "no live leader of the key's coordinator partition yet".to_string(),
        ))
    } else {
        None
    };
    let code = error.as_ref().map_or(0, |(e, _)| e.code());
    // A refused key is not told its coordinator.
    let (node, host, port) = if error.is_some() && code != ResponseError::CoordinatorNotAvailable.code() {
        (-1, String::new(), -1)
    } else {
        (node, host, port)
    };
    let message = error.map(|(_, m)| str_bytes(m));
    (node, host, port, code, message)
}
