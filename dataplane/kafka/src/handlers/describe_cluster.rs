use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

pub const VERSIONS: Versions = Versions::new(0, 2);

/// Endpoint types of v1+ (KIP-919): a broker describes brokers; the
/// controllers' own endpoint is not served.
const ENDPOINT_BROKERS: i8 = 1;
const ENDPOINT_CONTROLLERS: i8 = 2;

/// "Authorized operations not computed": there is no authorizer, so the
/// answer is the same whether the request asks for them or not.
const OPERATIONS_OMITTED: i32 = i32::MIN;

/// The cluster as this shard's metadata snapshot has it: cluster id,
/// controller and the live brokers. v2's `include_fenced_brokers` changes
/// nothing: fenced brokers are not live, so they are never in the snapshot.
pub fn handle(ctx: &Ctx, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let refused = |error: ResponseError, message: String| {
        DescribeClusterResponse::default()
            .with_error_code(error.code())
            .with_error_message(Some(str_bytes(message)))
    };
    match req.endpoint_type {
        ENDPOINT_BROKERS => {}
        ENDPOINT_CONTROLLERS => {
            return refused(
                ResponseError::MismatchedEndpointType,
                "this is a broker endpoint; controllers are not reachable through it".into(),
            )
        }
        other => {
            return refused(
                ResponseError::UnsupportedEndpointType,
                format!("unknown endpoint type {other}"),
            )
        }
    }
    if !ctx.cluster_allowed(op::DESCRIBE) {
        return refused(
            ResponseError::ClusterAuthorizationFailed,
            crate::authz::denied("DESCRIBE", "the cluster"),
        );
    }
    let snap = ctx.shard.metadata();
    let brokers = snap
        .brokers
        .iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id.0))
                .with_host(str_bytes(b.host.clone()))
                .with_port(b.port)
                .with_rack(b.rack.clone().map(str_bytes))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_endpoint_type(ENDPOINT_BROKERS)
        .with_cluster_id(str_bytes(snap.cluster_id.clone()))
        .with_controller_id(BrokerId(snap.controller.0))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}
