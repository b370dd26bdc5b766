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

/// Every group and transactional id is coordinated by this node (its shards
/// share the work out internally).
pub fn handle(ctx: &Ctx, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let cfg = &ctx.shard.config;
    let error =
        (!matches!(req.key_type, KEY_GROUP | KEY_TRANSACTION)).then_some(ResponseError::InvalidRequest);
    let code = error.map_or(0, |e| e.code());
    let message = error.map(|_| str_bytes(format!("unknown coordinator key type {}", req.key_type)));
    if ctx.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(cfg.node_id.0))
                    .with_host(str_bytes(cfg.advertised_host.clone()))
                    .with_port(cfg.advertised_port)
                    .with_error_code(code)
                    .with_error_message(message.clone())
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let mut r = FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(cfg.node_id.0))
        .with_host(str_bytes(cfg.advertised_host.clone()))
        .with_port(cfg.advertised_port);
    if ctx.version >= 1 {
        r = r.with_error_message(message);
    }
    r
}
