use super::{str_bytes, Ctx};
use crate::controller::{self, CONTROLLER_SHARD};
use crate::registry::Versions;
use crate::topics::{self, TopicMeta};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use tracing::warn;
use uuid::Uuid;

pub const VERSIONS: Versions = Versions::new(0, 12);

/// "Authorized operations not requested".
const OPERATIONS_OMITTED: i32 = i32::MIN;

fn topic_entry(ctx: &Ctx, name: &str, meta: &TopicMeta) -> MetadataResponseTopic {
    let node = BrokerId(ctx.shard.config.node_id.0);
    let partitions = (0..meta.partitions)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(node)
                .with_leader_epoch(0)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_topic_id(Uuid::from_u128(meta.id))
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

fn error_entry(name: Option<&str>, id: Uuid, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(name.map(|n| TopicName(str_bytes(n))))
        .with_topic_id(id)
        .with_topic_authorized_operations(OPERATIONS_OMITTED)
}

pub async fn handle(ctx: &Ctx, req: MetadataRequest) -> MetadataResponse {
    let cfg = &ctx.shard.config;
    let table = ctx.shard.topics();
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let requested = match req.topics {
        None => None,
        Some(t) if t.is_empty() && ctx.version == 0 => None,
        Some(t) => Some(t),
    };
    let auto_create = cfg.auto_create_topics && (ctx.version < 4 || req.allow_auto_topic_creation);
    let mut topics_out = Vec::new();
    match requested {
        None => {
            for (name, meta) in &table.topics {
                topics_out.push(topic_entry(ctx, name, meta));
            }
        }
        Some(list) => {
            for t in list {
                let name = match (&t.name, t.topic_id.is_nil()) {
                    (Some(n), _) => n.0.to_string(),
                    (None, false) => match table.by_id(t.topic_id.as_u128()) {
                        Some((n, _)) => n.clone(),
                        None => {
                            topics_out.push(error_entry(None, t.topic_id, ResponseError::UnknownTopicId));
                            continue;
                        }
                    },
                    (None, true) => {
                        topics_out.push(error_entry(None, t.topic_id, ResponseError::InvalidRequest));
                        continue;
                    }
                };
                if let Some(meta) = table.get(&name) {
                    topics_out.push(topic_entry(ctx, &name, meta));
                    continue;
                }
                if let Err(e) = topics::validate_name(&name) {
                    topics_out.push(error_entry(Some(&name), Uuid::nil(), crate::errors::topic(&e)));
                    continue;
                }
                if !auto_create {
                    topics_out.push(error_entry(
                        Some(&name),
                        Uuid::nil(),
                        ResponseError::UnknownTopicOrPartition,
                    ));
                    continue;
                }
                let n = name.clone();
                let created = ctx
                    .shard
                    .smp
                    .submit_to(CONTROLLER_SHARD, move || controller::ensure_topic(n))
                    .await;
                match created {
                    Ok(Ok(meta)) => topics_out.push(topic_entry(ctx, &name, &meta)),
                    Ok(Err((code, msg))) => {
                        warn!(topic = %name, "auto-create failed: {msg}");
                        topics_out.push(error_entry(Some(&name), Uuid::nil(), code));
                    }
                    Err(e) => {
                        topics_out.push(error_entry(Some(&name), Uuid::nil(), crate::errors::shard(&e)))
                    }
                }
            }
        }
    }
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(cfg.node_id.0))
        .with_host(str_bytes(cfg.advertised_host.clone()))
        .with_port(cfg.advertised_port);
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(str_bytes(cfg.cluster_id.clone())))
        .with_controller_id(BrokerId(cfg.node_id.0))
        .with_topics(topics_out)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}
