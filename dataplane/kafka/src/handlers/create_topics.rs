use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::controller::{self, NewTopic};
use crate::registry::Versions;
use crate::topics;
use ferrolog_controlplane::topic_configs;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
use uuid::Uuid;

pub const VERSIONS: Versions = Versions::new(2, 7);

/// DescribeConfigs/CreateTopics config sources.
pub const SOURCE_TOPIC: i8 = 1;
pub const SOURCE_DEFAULT: i8 = 5;

pub async fn handle(ctx: &Ctx, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let new: Vec<NewTopic> = req
        .topics
        .iter()
        .map(|t| NewTopic {
            name: t.name.0.to_string(),
            partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .iter()
                .map(|a| (a.partition_index, a.broker_ids.iter().map(|b| b.0).collect()))
                .collect(),
            configs: t
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect(),
        })
        .collect();
    let names: Vec<String> = new.iter().map(|t| t.name.clone()).collect();
    // CREATE on the cluster allows every topic; else CREATE on the topic.
    let on_cluster = ctx.cluster_allowed(op::CREATE);
    let permitted: Vec<bool> = names
        .iter()
        .map(|n| on_cluster || ctx.topic_allowed(op::CREATE, n))
        .collect();
    let new: Vec<NewTopic> = new
        .into_iter()
        .zip(&permitted)
        .filter_map(|(t, ok)| ok.then_some(t))
        .collect();
    let validate_only = req.validate_only;
    let mut created = controller::create_topics(&ctx.shard, new, validate_only)
        .await
        .into_iter();
    let answers: Vec<_> = permitted
        .iter()
        .zip(&names)
        .map(|(ok, name)| {
            if *ok {
                created.next().expect("one answer per permitted topic")
            } else {
                Err((
                    ResponseError::TopicAuthorizationFailed,
                    crate::authz::denied("CREATE", &format!("topic {name}")),
                ))
            }
        })
        .collect();
    let defaults = &ctx.shard.config.topic_defaults;
    let topics = names
        .into_iter()
        .zip(answers)
        .map(|(name, a)| {
            let r = CreatableTopicResult::default().with_name(TopicName(str_bytes(name)));
            match a {
                Ok((_, meta)) => {
                    let configs = topic_configs::all_names()
                        .filter_map(|k| {
                            let (v, set) = topics::effective(&meta.config, defaults, k)?;
                            Some(
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(v)))
                                    .with_config_source(if set { SOURCE_TOPIC } else { SOURCE_DEFAULT }),
                            )
                        })
                        .collect();
                    r.with_topic_id(Uuid::from_u128(meta.id))
                        .with_num_partitions(meta.partitions())
                        .with_replication_factor(i16::try_from(meta.replication_factor()).unwrap_or(-1))
                        .with_configs(Some(configs))
                }
                Err((code, msg)) => r
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(msg)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}
