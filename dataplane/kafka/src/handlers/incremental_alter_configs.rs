use super::Ctx;
use crate::controller::ConfigChange;
use crate::handlers::alter_configs::{change_topics, response_of};
use crate::registry::Versions;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

pub const VERSIONS: Versions = Versions::new(0, 1);

pub async fn handle(ctx: &Ctx, req: IncrementalAlterConfigsRequest) -> IncrementalAlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| {
            let ops = r
                .configs
                .into_iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        c.value.map(|v| v.to_string()),
                    )
                })
                .collect();
            (
                r.resource_type,
                r.resource_name.to_string(),
                ConfigChange::Incremental(ops),
            )
        })
        .collect();
    let responses = change_topics(ctx, resources, req.validate_only)
        .await
        .into_iter()
        .map(|(k, n, r)| {
            let a = response_of(k, n, r);
            AlterConfigsResourceResponse::default()
                .with_resource_type(a.resource_type)
                .with_resource_name(a.resource_name)
                .with_error_code(a.error_code)
                .with_error_message(a.error_message)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
