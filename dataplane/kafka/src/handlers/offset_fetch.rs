use super::{str_bytes, Ctx};
use crate::authz::op;
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
                            let (offset, epoch, meta, part_error) = committed(c);
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(str_bytes(meta)))
                                .with_error_code(part_error)
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
                    let (offset, epoch, meta, part_error) = committed(c);
                    let mut r = OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_metadata(Some(str_bytes(meta)))
                        .with_error_code(part_error);
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

/// One partition's answer: a committed offset, none, or an error of its
/// own (a topic the client may not DESCRIBE).
enum Part {
    Committed(Option<crate::groups::group::Committed>),
    Refused(ResponseError),
}

fn committed(c: Part) -> (i64, i32, String, i16) {
    match c {
        Part::Committed(Some(c)) => (c.offset, c.leader_epoch, c.metadata, 0),
        Part::Committed(None) => (-1, -1, String::new(), 0),
        Part::Refused(e) => (-1, -1, String::new(), e.code()),
    }
}

type Answered = Vec<(String, Vec<(i32, Part)>)>;

/// The group's committed offsets: DESCRIBE on the group, and on each
/// topic (asked-for topics the client may not DESCRIBE are answered
/// TOPIC_AUTHORIZATION_FAILED per partition, after the others; with no
/// topic list they are left out).
async fn fetch(
    ctx: &Ctx,
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> (Option<ResponseError>, Answered) {
    let (topics, denied): (Option<Vec<_>>, Vec<_>) = match topics {
        None => (None, Vec::new()),
        Some(ts) => {
            let (ok, denied) = ts
                .into_iter()
                .partition(|(t, _)| ctx.topic_allowed(op::DESCRIBE, t));
            (Some(ok), denied)
        }
    };
    let (error, fetched) = fetch_allowed(ctx, group, topics).await;
    let mut out: Answered = fetched
        .into_iter()
        .filter(|(t, _)| ctx.topic_allowed(op::DESCRIBE, t))
        .map(|(t, ps)| (t, ps.into_iter().map(|(p, c)| (p, Part::Committed(c))).collect()))
        .collect();
    out.extend(denied.into_iter().map(|(t, ps)| {
        let refused = ps
            .into_iter()
            .map(|p| (p, Part::Refused(ResponseError::TopicAuthorizationFailed)))
            .collect();
        (t, refused)
    }));
    (error, out)
}

async fn fetch_allowed(
    ctx: &Ctx,
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> (Option<ResponseError>, Vec<Fetched>) {
    let asked = topics.clone();
    let outcome = if group.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else if !ctx.group_allowed(op::DESCRIBE, &group) {
        Err(ResponseError::GroupAuthorizationFailed)
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
