use super::{str_bytes, Ctx, RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::authz::op;
use crate::controller::{self, ConfigChange, OpResult};
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

pub const VERSIONS: Versions = Versions::new(0, 2);

/// Applies topic config changes through the controller; other resource types
/// are refused. Shared by AlterConfigs and IncrementalAlterConfigs.
pub async fn change_topics(
    ctx: &Ctx,
    resources: Vec<(i8, String, ConfigChange)>,
    validate_only: bool,
) -> Vec<(i8, String, OpResult<()>)> {
    let mut out: Vec<(i8, String, Option<OpResult<()>>)> = Vec::new();
    let mut items = Vec::new();
    for (kind, name, change) in resources {
        if kind == RESOURCE_TOPIC && !ctx.topic_allowed(op::ALTER_CONFIGS, &name) {
            let msg = crate::authz::denied("ALTER_CONFIGS", &format!("topic {name}"));
            out.push((
                kind,
                name,
                Some(Err((ResponseError::TopicAuthorizationFailed, msg))),
            ));
        } else if kind == RESOURCE_BROKER && !ctx.cluster_allowed(op::ALTER_CONFIGS) {
            let msg = crate::authz::denied("ALTER_CONFIGS", "the cluster");
            out.push((
                kind,
                name,
                Some(Err((ResponseError::ClusterAuthorizationFailed, msg))),
            ));
        } else if kind == RESOURCE_TOPIC {
            items.push((name.clone(), change));
            out.push((kind, name, None));
        } else {
            let msg = format!("resource type {kind} cannot be altered (broker settings are static)");
            out.push((kind, name, Some(Err((ResponseError::InvalidRequest, msg)))));
        }
    }
    let mut answers = controller::alter_configs(&ctx.shard, items, validate_only)
        .await
        .into_iter();
    out.into_iter()
        .map(|(k, n, r)| {
            (
                k,
                n,
                r.unwrap_or_else(|| answers.next().expect("one answer per topic")),
            )
        })
        .collect()
}

pub fn response_of(kind: i8, name: String, r: OpResult<()>) -> AlterConfigsResourceResponse {
    let base = AlterConfigsResourceResponse::default()
        .with_resource_type(kind)
        .with_resource_name(str_bytes(name));
    match r {
        Ok(()) => base,
        Err((code, msg)) => base
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(msg))),
    }
}

pub async fn handle(ctx: &Ctx, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| {
            let set = r
                .configs
                .into_iter()
                .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
                .collect();
            (
                r.resource_type,
                r.resource_name.to_string(),
                ConfigChange::Replace(set),
            )
        })
        .collect();
    let responses = change_topics(ctx, resources, req.validate_only)
        .await
        .into_iter()
        .map(|(k, n, r)| response_of(k, n, r))
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}
