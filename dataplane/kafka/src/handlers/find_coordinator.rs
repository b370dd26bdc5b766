use super::{str_bytes, Ctx};
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

pub const VERSIONS: Versions = Versions::new(0, 4);

/// Key types: consumer groups, and transactional ids (answered so clients
/// get a coordinator; transactions themselves are not served yet).
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// Every group and transactional id is coordinated by this node, which
/// leads the coordinator partitions (its shards share the work out
/// internally); its address comes from the metadata snapshot.
pub fn handle(ctx: &Ctx, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let snap = ctx.shard.metadata();
    let me = ctx.shard.cluster.config.node_id;
    let (node, host, port) = match snap.broker(me) {
        Some(b) => (b.id.0, b.host.clone(), b.port),
        None => (-1, String::new(), -1),
    };
    let error = if !matches!(req.key_type, KEY_GROUP | KEY_TRANSACTION) {
        Some(ResponseError::InvalidRequest)
    } else if node < 0 {
        Some(ResponseError::CoordinatorNotAvailable)
    } else {
        None
    };
    let code = error.map_or(0, |e| e.code());
    let message = error.map(|e| match e {
        ResponseError::InvalidRequest => str_bytes(format!("unknown coordinator key type {}", req.key_type)),
        _ => str_bytes("the node is starting"),
    });
    if ctx.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node))
                    .with_host(str_bytes(host.clone()))
                    .with_port(port)
                    .with_error_code(code)
                    .with_error_message(message.clone())
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
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
