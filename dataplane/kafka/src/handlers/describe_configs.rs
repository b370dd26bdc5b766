use super::{str_bytes, Ctx, RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::authz::op;
use crate::handlers::create_topics::{SOURCE_DEFAULT, SOURCE_TOPIC};
use crate::registry::Versions;
use crate::topics::{self, CONFIG_KEYS};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

pub const VERSIONS: Versions = Versions::new(1, 4);

/// Kafka's config source for settings from the broker's static configuration.
const SOURCE_STATIC_BROKER: i8 = 4;

/// Kafka ConfigType codes.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

fn topic_config_doc(key: &str) -> (i8, &'static str) {
    match key {
        topics::RETENTION_MS => (
            TYPE_LONG,
            "Delete segments whose newest record is older than this; -1 keeps them.",
        ),
        topics::RETENTION_BYTES => (
            TYPE_LONG,
            "Delete the oldest segments while a partition is larger; -1 = no limit.",
        ),
        topics::SEGMENT_BYTES => (TYPE_INT, "Roll to a new segment file at this size."),
        topics::SEGMENT_MS => (
            TYPE_LONG,
            "Roll to a new segment file once the active one is this old.",
        ),
        topics::MAX_MESSAGE_BYTES => (TYPE_INT, "Largest record batch accepted."),
        topics::CLEANUP_POLICY => (TYPE_LIST, "Only delete is supported."),
        topics::DURABILITY => (
            TYPE_STRING,
            "fsync: acknowledge once on stable storage; direct: once the O_DIRECT write completed.",
        ),
        _ => (0, ""),
    }
}

fn wanted(keys: &Option<Vec<kafka_protocol::protocol::StrBytes>>, key: &str) -> bool {
    keys.as_ref()
        .is_none_or(|ks| ks.is_empty() || ks.iter().any(|k| k.as_str() == key))
}

pub fn handle(ctx: &Ctx, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let table = ctx.shard.topics();
    let cfg = &ctx.shard.config;
    let results = req
        .resources
        .iter()
        .map(|res| {
            let name = res.resource_name.to_string();
            let base = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            match res.resource_type {
                RESOURCE_TOPIC if !ctx.topic_allowed(op::DESCRIBE_CONFIGS, &name) => base
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes(crate::authz::denied(
                        "DESCRIBE_CONFIGS",
                        &format!("topic {name}"),
                    )))),
                RESOURCE_BROKER if !ctx.cluster_allowed(op::DESCRIBE_CONFIGS) => base
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes(crate::authz::denied(
                        "DESCRIBE_CONFIGS",
                        "the cluster",
                    )))),
                RESOURCE_TOPIC => {
                    let Some(meta) = table.get(&name) else {
                        return base
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(format!("topic {name} does not exist"))));
                    };
                    let configs = CONFIG_KEYS
                        .iter()
                        .filter(|k| wanted(&res.configuration_keys, k))
                        .filter_map(|k| {
                            let (value, set) = topics::effective(&meta.config, &cfg.topic_defaults, k)?;
                            let (kind, doc) = topic_config_doc(k);
                            Some(
                                DescribeConfigsResourceResult::default()
                                    .with_name(str_bytes(*k))
                                    .with_value(Some(str_bytes(value)))
                                    .with_config_source(if set { SOURCE_TOPIC } else { SOURCE_DEFAULT })
                                    .with_config_type(kind)
                                    .with_documentation(req.include_documentation.then(|| str_bytes(doc))),
                            )
                        })
                        .collect();
                    base.with_configs(configs)
                }
                RESOURCE_BROKER => {
                    if !name.is_empty() && name != cfg.node_id.0.to_string() {
                        return base
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(str_bytes(format!("no broker {name} here"))));
                    }
                    let entries = [
                        (
                            "auto.create.topics.enable",
                            cfg.auto_create_topics.to_string(),
                            TYPE_BOOLEAN,
                        ),
                        ("num.partitions", cfg.default_partitions.to_string(), TYPE_INT),
                        (
                            "socket.request.max.bytes",
                            cfg.max_request_bytes.to_string(),
                            TYPE_INT,
                        ),
                        ("broker.id", cfg.node_id.0.to_string(), TYPE_INT),
                    ];
                    let configs = entries
                        .into_iter()
                        .filter(|(k, _, _)| wanted(&res.configuration_keys, k))
                        .map(|(k, v, kind)| {
                            DescribeConfigsResourceResult::default()
                                .with_name(str_bytes(k))
                                .with_value(Some(str_bytes(v)))
                                .with_read_only(true)
                                .with_config_source(SOURCE_STATIC_BROKER)
                                .with_config_type(kind)
                        })
                        .collect();
                    base.with_configs(configs)
                }
                other => base
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(format!("resource type {other} is not supported")))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
