use super::{str_bytes, Ctx};
use crate::groups::coordinator::{self, Fetched};
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

pub const VERSIONS: Versions = Versions::new(1, 8);

/// Committed offsets of a group (v8: of several groups). Partitions with no
/// commit answer offset -1; no topic list means every committed partition.
pub async fn handle(ctx: &Ctx, req: OffsetFetchRequest) -> OffsetFetchResponse {
    if ctx.version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let (error, fetched) = fetch(ctx, g.group_id.0.to_string(), topics).await;
            let topics = fetched
                .into_iter()
                .map(|(name, parts)| {
                    let partitions = parts
                        .into_iter()
                        .map(|(p, c)| {
                            let (offset, epoch, meta) = committed(c);
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(str_bytes(meta)))
                        })
                        .collect();
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions)
                })
                .collect();
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
                    .with_error_code(error.map_or(0, |e| e.code())),
            );
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let (error, fetched) = fetch(ctx, req.group_id.0.to_string(), topics).await;
    let topics = fetched
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(p, c)| {
                    let (offset, epoch, meta) = committed(c);
                    let mut r = OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_metadata(Some(str_bytes(meta)));
                    if ctx.version >= 5 {
                        r = r.with_committed_leader_epoch(epoch);
                    }
                    // Before v2 there is no top-level error: each partition carries it.
                    if ctx.version < 2 {
                        r = r.with_error_code(error.map_or(0, |e| e.code()));
                    }
                    r
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    let mut out = OffsetFetchResponse::default().with_topics(topics);
    if ctx.version >= 2 {
        out = out.with_error_code(error.map_or(0, |e| e.code()));
    }
    out
}

fn committed(c: Option<crate::groups::group::Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata),
        None => (-1, -1, String::new()),
    }
}

async fn fetch(
    ctx: &Ctx,
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> (Option<ResponseError>, Vec<Fetched>) {
    let asked = topics.clone();
    let outcome = if group.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else {
        let g = group.clone();
        coordinator::on_owner(&ctx.shard.smp, &group, move || {
            coordinator::fetch_offsets(g, topics)
        })
        .await
        .unwrap_or(Err(ResponseError::NotCoordinator))
    };
    match outcome {
        Ok(f) => (None, f),
        // The partitions asked for, each with offset -1, beside the error.
        Err(e) => (
            Some(e),
            asked
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()))
                .collect(),
        ),
    }
}
