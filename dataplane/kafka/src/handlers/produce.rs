use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use ferrolog_cluster::ops::{produce_local, scatter, Acks, ProduceAnswer, ProduceItem};
use ferrolog_cluster::PartitionError;
use ferrolog_model::{Ntp, Offset};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use std::time::Duration;

pub const VERSIONS: Versions = Versions::new(3, 9);

/// Per topic of the request: its partitions, each with the index of its item
/// sent to an owner shard, or the answer it already has.
type Layout = Vec<(String, Vec<(i32, Result<usize, Answer>)>)>;

/// One partition's answer, as the response carries it.
struct Answer {
    error: Option<(ResponseError, String)>,
    base_offset: Offset,
    log_start: Offset,
    log_append_time_ms: i64,
}

impl From<ProduceAnswer> for Answer {
    fn from(a: ProduceAnswer) -> Answer {
        match a.result {
            Ok(base_offset) => Answer {
                error: None,
                base_offset,
                log_start: a.log_start,
                log_append_time_ms: a.log_append_time_ms,
            },
            Err(e) => Answer {
                error: Some((crate::errors::partition(&e), e.to_string())),
                base_offset: Offset(-1),
                log_start: a.log_start,
                log_append_time_ms: -1,
            },
        }
    }
}

fn partition_response(index: i32, a: &Answer) -> PartitionProduceResponse {
    let mut r = PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(a.base_offset.0)
        .with_log_append_time_ms(a.log_append_time_ms)
        .with_log_start_offset(a.log_start.0);
    if let Some((code, msg)) = &a.error {
        r = r
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(msg.clone())));
    }
    r
}

fn failed(error: ResponseError, msg: &str) -> Answer {
    Answer {
        error: Some((error, msg.to_string())),
        base_offset: Offset(-1),
        log_start: Offset(-1),
        log_append_time_ms: -1,
    }
}

/// Appends each partition's batches on its owner shard. Returns `None` for
/// acks=0: the client expects no response.
pub async fn handle(ctx: &Ctx, req: ProduceRequest) -> Option<ProduceResponse> {
    let table = ctx.shard.topics();
    let acks = match req.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    // How long acks=all may take, from the append to the answer; a
    // negative timeout counts as 0.
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let mut layout: Layout = Vec::new();
    let mut items = Vec::new();
    let mut places = Vec::new();
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let writable = ctx.topic_allowed(op::WRITE, &name);
        let mut parts = Vec::new();
        for p in topic.partition_data {
            let ntp = Ntp::new(name.clone(), p.index);
            let slot = if acks.is_none() {
                Err(failed(
                    ResponseError::InvalidRequiredAcks,
                    "acks must be -1, 0 or 1",
                ))
            } else if !writable {
                Err(failed(
                    ResponseError::TopicAuthorizationFailed,
                    &crate::authz::denied("WRITE", &format!("topic {name}")),
                ))
            } else if !table.contains(&ntp) {
                Err(failed(
                    ResponseError::UnknownTopicOrPartition,
                    "unknown topic or partition",
                ))
            } else if let (Some(records), Some(acks)) = (p.records, acks) {
                let (queued, placed) = futures_channel::oneshot::channel();
                places.push(placed);
                items.push(ProduceItem {
                    ntp,
                    records,
                    acks,
                    timeout,
                    queued: Some(queued),
                });
                Ok(items.len() - 1)
            } else {
                Err(failed(ResponseError::CorruptMessage, "null records"))
            };
            parts.push((p.index, slot));
        }
        layout.push((name, parts));
    }
    // Once every partition's owner has queued its share (or dropped it),
    // the connection may start its next request.
    let queued = async {
        for placed in places {
            let _ = placed.await;
        }
        ctx.mark_queued();
    };
    let (answers, ()) =
        futures_lite::future::zip(scatter(items, |i: &ProduceItem| &i.ntp, produce_local), queued).await;
    let mut answers: Vec<Option<_>> = answers.into_iter().map(Some).collect();
    if req.acks == 0 {
        return None;
    }
    let responses = layout
        .into_iter()
        .map(|(name, parts)| {
            let partition_responses = parts
                .into_iter()
                .map(|(index, slot)| match slot {
                    Ok(i) => match answers[i].take().expect("each answer is used once") {
                        Ok(a) => partition_response(index, &Answer::from(a)),
                        Err(e) => partition_response(index, &Answer::from(shard_failed(e))),
                    },
                    Err(a) => partition_response(index, &a),
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(kafka_protocol::messages::TopicName(str_bytes(name)))
                .with_partition_responses(partition_responses)
        })
        .collect();
    Some(ProduceResponse::default().with_responses(responses))
}

fn shard_failed(e: ferrolog_shard::ShardError) -> ProduceAnswer {
    ProduceAnswer {
        result: Err(PartitionError::Shard(e)),
        log_start: Offset(-1),
        log_append_time_ms: -1,
    }
}
