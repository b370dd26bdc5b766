use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::controller;
use crate::registry::Versions;
use crate::topics::{self, TopicMeta};
use ferrolog_cluster::PartitionManager;
use ferrolog_controlplane::metadata::MetadataSnapshot;
use ferrolog_controlplane::topics::PartitionAssignment;
use ferrolog_model::{NodeId, Ntp};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use std::time::{Duration, Instant};
use tracing::{debug, warn};
use uuid::Uuid;

pub const VERSIONS: Versions = Versions::new(0, 12);

/// The longest a Metadata answer waits for the controller's verdict on a
/// partition leader this node just lost its connection to (see
/// [`wait_out_lost_leaders`]), counted from the loss.
pub const LOST_LEADER_WAIT_MAX: Duration = Duration::from_secs(1);
/// How often a waiting Metadata answer looks at the shard's snapshot again.
const LOST_LEADER_POLL: Duration = Duration::from_millis(2);

/// "Authorized operations not requested".
const OPERATIONS_OMITTED: i32 = i32::MIN;

fn broker_ids<'a>(nodes: impl IntoIterator<Item = &'a NodeId>) -> Vec<BrokerId> {
    nodes.into_iter().map(|n| BrokerId(n.0)).collect()
}

/// A partition's in-sync replicas. For a replicated partition this node
/// leads: the leader and the followers its replica counts in sync, from
/// this shard's copy of what the owner shard's ticker last published (so up
/// to a tick late). For a partition led elsewhere (this node sees only the
/// metadata snapshot, which holds no ISR) and a single-replica one: the
/// leader alone, which is stale for a partition led elsewhere whose
/// followers are caught up. The leader stays listed while it is down: it
/// still has everything it acknowledged.
fn isr(cluster: &PartitionManager, me: NodeId, ntp: (&str, i32), a: &PartitionAssignment) -> Vec<BrokerId> {
    let published = (a.leader == me && a.replicas.len() > 1)
        .then(|| cluster.isr(&Ntp::new(ntp.0, ntp.1)))
        .flatten()
        .filter(|isr| isr.first() == Some(&a.leader));
    match published {
        Some(isr) => broker_ids(isr.iter().filter(|n| a.replicas.contains(n))),
        None => vec![BrokerId(a.leader.0)],
    }
}

/// One topic as the snapshot describes it: each partition's leader, leader
/// epoch, replicas and in-sync replicas (see [`isr`]). A partition whose
/// leader is not a live broker has no leader to offer: LEADER_NOT_AVAILABLE
/// with leader -1, and its replicas that are not live listed as offline.
fn topic_entry(
    cluster: &PartitionManager,
    snap: &MetadataSnapshot,
    name: &str,
    meta: &TopicMeta,
) -> MetadataResponseTopic {
    let me = cluster.config.node_id;
    let partitions = meta
        .assignments
        .iter()
        .enumerate()
        .map(|(p, a)| {
            let live = snap.is_live(a.leader);
            let r = MetadataResponsePartition::default()
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(if live { a.leader.0 } else { -1 }))
                .with_leader_epoch(a.leader_epoch.0)
                .with_replica_nodes(broker_ids(&a.replicas))
                .with_isr_nodes(isr(cluster, me, (name, p as i32), a))
                .with_offline_replicas(broker_ids(a.replicas.iter().filter(|n| !snap.is_live(**n))));
            if live {
                r
            } else {
                r.with_error_code(ResponseError::LeaderNotAvailable.code())
            }
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

/// Whether `name` is among the topics a request asks for (`None`: all).
fn asked_for(requested: Option<&[MetadataRequestTopic]>, name: &str, id: u128) -> bool {
    requested.is_none_or(|list| {
        list.iter().any(|t| match &t.name {
            Some(n) => n.0.as_str() == name,
            None => t.topic_id.as_u128() == id,
        })
    })
}

/// Waits while a partition this request asks about is led, in the shard's
/// snapshot, by a node this node lost a connection to less than
/// [`LOST_LEADER_WAIT_MAX`] ago and has not heard from since
/// (`PeerHints`), so that the answer names the leader the controller
/// elects instead of a dead one. A killed leader's clients ask a survivor
/// at once; librdkafka ends its fast leader query on any answer that names
/// a leader it knows, and re-asks only on its one-second topic scan. The
/// wait ends when no such partition is left (the controller moved them, or
/// heard from the node) or at the bound; then the answer is built as
/// always. Returns how long it waited.
async fn wait_out_lost_leaders(ctx: &Ctx, requested: Option<&[MetadataRequestTopic]>) -> Duration {
    let started = Instant::now();
    let me = ctx.shard.cluster.config.node_id;
    loop {
        let lost = ctx.shard.config.peer_hints.lost_within(LOST_LEADER_WAIT_MAX);
        if lost.is_empty() {
            return started.elapsed();
        }
        let table = ctx.shard.topics();
        let until = table
            .topics
            .iter()
            .filter(|(name, meta)| asked_for(requested, name, meta.id))
            .flat_map(|(_, meta)| meta.assignments.iter())
            .filter(|a| a.leader != me)
            .filter_map(|a| lost.iter().find(|(n, _)| *n == a.leader))
            .map(|(_, at)| *at + LOST_LEADER_WAIT_MAX)
            .max();
        match until {
            Some(t) if Instant::now() < t => glommio::timer::sleep(LOST_LEADER_POLL).await,
            _ => return started.elapsed(),
        }
    }
}

pub async fn handle(ctx: &Ctx, req: MetadataRequest) -> MetadataResponse {
    let waited = wait_out_lost_leaders(ctx, req.topics.as_deref()).await;
    if !waited.is_zero() {
        ctx.shard.metrics.metadata_waits_for_lost_leaders.inc();
        debug!(
            waited_us = waited.as_micros() as u64,
            "a Metadata answer waited for the controller's verdict on a lost leader"
        );
    }
    let cfg = &ctx.shard.config;
    let cluster = &ctx.shard.cluster;
    let snap = ctx.shard.metadata();
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
            // Topics the client may not DESCRIBE are left out (Kafka).
            for (name, meta) in &table.topics {
                if ctx.topic_allowed(op::DESCRIBE, name) {
                    topics_out.push(topic_entry(cluster, &snap, name, meta));
                }
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
                if !ctx.topic_allowed(op::DESCRIBE, &name) {
                    // Named by id: the name is not told.
                    let shown = t.name.is_some().then_some(name.as_str());
                    topics_out.push(error_entry(
                        shown,
                        Uuid::nil(),
                        ResponseError::TopicAuthorizationFailed,
                    ));
                    continue;
                }
                if let Some(meta) = table.get(&name) {
                    topics_out.push(topic_entry(cluster, &snap, &name, meta));
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
                if !ctx.cluster_allowed(op::CREATE) && !ctx.topic_allowed(op::CREATE, &name) {
                    topics_out.push(error_entry(
                        Some(&name),
                        Uuid::nil(),
                        ResponseError::TopicAuthorizationFailed,
                    ));
                    continue;
                }
                match controller::ensure_topic(&ctx.shard, name.clone()).await {
                    Ok(meta) => topics_out.push(topic_entry(cluster, &snap, &name, &meta)),
                    Err((code, msg)) => {
                        warn!(topic = %name, "auto-create failed: {msg}");
                        topics_out.push(error_entry(Some(&name), Uuid::nil(), code));
                    }
                }
            }
        }
    }
    // Brokers that just left the live set stay listed for a while (not as
    // leaders): see PartitionManager::departed_brokers.
    let departed = cluster.departed_brokers();
    let brokers = snap
        .brokers
        .iter()
        .chain(departed.iter().filter(|b| !snap.is_live(b.id)))
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id.0))
                .with_host(str_bytes(b.host.clone()))
                .with_port(b.port)
                .with_rack(b.rack.clone().map(str_bytes))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(snap.cluster_id.clone())))
        .with_controller_id(BrokerId(snap.controller.0))
        .with_topics(topics_out)
        .with_cluster_authorized_operations(OPERATIONS_OMITTED)
}
