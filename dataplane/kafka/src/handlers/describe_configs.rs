use super::{str_bytes, Ctx, RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::authz::op;
use crate::handlers::create_topics::{SOURCE_DEFAULT, SOURCE_TOPIC};
use crate::registry::Versions;
use crate::topics;
use ferrolog_controlplane::topic_configs::{self, Kind};
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
const TYPE_DOUBLE: i8 = 6;
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
        topics::CLEANUP_POLICY => (
            TYPE_LIST,
            "delete: drop old segments by retention; compact: keep the latest record per key; or both.",
        ),
        topics::DELETE_RETENTION_MS => (
            TYPE_LONG,
            "Compaction removes a tombstone once its timestamp is this much older than now.",
        ),
        topics::MIN_CLEANABLE_DIRTY_RATIO => (
            TYPE_DOUBLE,
            "Compact when bytes not yet compacted are at least this share of the compactable bytes.",
        ),
        topics::MIN_COMPACTION_LAG_MS => (
            TYPE_LONG,
            "Segments with records younger than this are not compacted.",
        ),
        topics::MAX_COMPACTION_LAG_MS => (
            TYPE_LONG,
            "Compact a segment whose oldest record is older than this, whatever the dirty ratio.",
        ),
        topics::MIN_INSYNC_REPLICAS => (
            TYPE_INT,
            "Replicas in sync, the leader included, that an acks=all produce needs.",
        ),
        topics::DURABILITY => (
            TYPE_STRING,
            "fsync: acknowledge once on stable storage; direct: once the O_DIRECT write completed.",
        ),
        other => match topic_configs::find(other) {
            Some(d) => (
                match d.kind {
                    Kind::Int(..) | Kind::IntOrMinusOne(..) => TYPE_INT,
                    Kind::Long(..) => TYPE_LONG,
                    Kind::Boolean => TYPE_BOOLEAN,
                    Kind::ThrottledReplicas => TYPE_LIST,
                    Kind::Choice(_) | Kind::Text => TYPE_STRING,
                },
                d.doc,
            ),
            None => (0, ""),
        },
    }
}

/// The node's settings under the names Kafka gives their equivalents.
/// All are read-only here: they come from the command line and the
/// profile, and AlterConfigs on a broker is not served.
fn broker_entries(cfg: &crate::config::ServerConfig) -> Vec<(&'static str, String, i8)> {
    let d = &cfg.topic_defaults;
    let limit = |v: Option<u64>| v.map_or(-1, |v| v as i64).to_string();
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    let listener = format!("PLAINTEXT://{}", cfg.listen);
    let advertised = format!("PLAINTEXT://{}:{}", cfg.advertised_host, cfg.advertised_port);
    let data_dir = cfg.data_dir.display().to_string();
    let g = &cfg.groups;
    vec![
        ("advertised.listeners", advertised, TYPE_LIST),
        (
            "auto.create.topics.enable",
            cfg.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        ("broker.id", cfg.node_id.0.to_string(), TYPE_INT),
        ("broker.rack", cfg.rack.clone().unwrap_or_default(), TYPE_STRING),
        ("compression.type", "producer".into(), TYPE_STRING),
        ("connections.max.idle.ms", ms(cfg.idle_timeout), TYPE_LONG),
        ("default.replication.factor", "1".into(), TYPE_INT),
        (
            "group.initial.rebalance.delay.ms",
            ms(g.limits.initial_rebalance_delay),
            TYPE_INT,
        ),
        ("group.max.session.timeout.ms", ms(g.limits.max_session), TYPE_INT),
        ("group.min.session.timeout.ms", ms(g.limits.min_session), TYPE_INT),
        ("listeners", listener, TYPE_LIST),
        ("log.cleaner.backoff.ms", ms(cfg.compaction_interval), TYPE_LONG),
        (
            "log.cleaner.io.max.bytes.per.second",
            // 0 = no limit here; Kafka's default (no limit) is Double.MAX_VALUE.
            d.log.compaction.io_bytes_per_sec.to_string(),
            TYPE_DOUBLE,
        ),
        ("log.dir", data_dir.clone(), TYPE_STRING),
        ("log.dirs", data_dir, TYPE_STRING),
        (
            "log.index.interval.bytes",
            d.log.index_interval_bytes.to_string(),
            TYPE_INT,
        ),
        ("log.message.timestamp.type", "CreateTime".into(), TYPE_STRING),
        ("log.retention.bytes", limit(d.log.retention_bytes), TYPE_LONG),
        ("log.retention.ms", limit(d.log.retention_ms), TYPE_LONG),
        ("log.roll.ms", d.log.segment_ms.to_string(), TYPE_LONG),
        ("log.segment.bytes", d.log.segment_bytes.to_string(), TYPE_INT),
        ("message.max.bytes", d.max_message_bytes.to_string(), TYPE_INT),
        ("min.insync.replicas", "1".into(), TYPE_INT),
        ("node.id", cfg.node_id.0.to_string(), TYPE_INT),
        ("num.partitions", cfg.default_partitions.to_string(), TYPE_INT),
        (
            "offset.metadata.max.bytes",
            g.offset_metadata_max_bytes.to_string(),
            TYPE_INT,
        ),
        (
            "offsets.retention.minutes",
            (g.offsets_retention.as_secs() / 60).to_string(),
            TYPE_INT,
        ),
        (
            "socket.request.max.bytes",
            cfg.max_request_bytes.to_string(),
            TYPE_INT,
        ),
    ]
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
                    let configs = topic_configs::all_names()
                        .filter(|k| wanted(&res.configuration_keys, k))
                        .filter_map(|k| {
                            let (value, set) = topics::effective(&meta.config, &cfg.topic_defaults, k)?;
                            let (kind, doc) = topic_config_doc(k);
                            Some(
                                DescribeConfigsResourceResult::default()
                                    .with_name(str_bytes(k))
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
                    let configs = broker_entries(cfg)
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
