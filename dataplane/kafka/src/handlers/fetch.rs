use super::{current_leader_epoch, str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use bytes::Bytes;
use ferrolog_cluster::ops::{read_local, scatter, ReadAnswer, ReadItem};
use ferrolog_cluster::waiters::WaiterRef;
use ferrolog_cluster::PartitionError;
use ferrolog_model::{Epoch, Ntp, Offset};
use futures_lite::StreamExt;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use std::time::{Duration, Instant};

/// From v9 a partition may carry the client's current leader epoch
/// (KIP-320), checked on the leader: FENCED_LEADER_EPOCH if older than the
/// partition's, UNKNOWN_LEADER_EPOCH if newer. v12's last_fetched_epoch
/// (KIP-595's divergence check) is not looked at: responses never carry a
/// diverging_epoch, and consumers find truncation with OffsetForLeaderEpoch.
pub const VERSIONS: Versions = Versions::new(4, 12);

/// Isolation level READ_COMMITTED.
const READ_COMMITTED: i8 = 1;

/// Per topic of the request: its partitions, each with the index of its
/// entry in `wanted`, or the error it is answered (an unknown partition, a
/// topic the client may not READ).
type Layout = Vec<(String, Vec<(i32, Result<usize, ResponseError>)>)>;

struct Wanted {
    ntp: Ntp,
    offset: Offset,
    max_bytes: usize,
    /// KIP-320 (v9+).
    current_leader_epoch: Option<Epoch>,
}

fn partition_data(index: i32, a: &ReadAnswer, read_committed: bool) -> PartitionData {
    let (hwm, start) = a.offsets.map_or((-1, -1), |o| (o.high_watermark.0, o.start.0));
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(a.error.as_ref().map_or(0, |e| crate::errors::partition(e).code()))
        .with_high_watermark(hwm)
        .with_last_stable_offset(hwm)
        .with_log_start_offset(start)
        .with_aborted_transactions(read_committed.then(Vec::new))
        .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
        .with_records(Some(a.records.clone().unwrap_or_default()))
}

fn refused(index: i32, error: ResponseError, read_committed: bool) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error.code())
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_aborted_transactions(read_committed.then(Vec::new))
        .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
        .with_records(Some(Bytes::new()))
}

/// Reads every wanted partition on its owner. With a waiter, an owner whose
/// partition has nothing new registers it in the same call, so a long poll
/// costs no extra hop to arm.
async fn read_all(wanted: &[Wanted], response_budget: usize, waiter: Option<WaiterRef>) -> Vec<ReadAnswer> {
    let items = wanted
        .iter()
        .map(|w| ReadItem {
            ntp: w.ntp.clone(),
            offset: w.offset,
            max_bytes: w.max_bytes,
            response_budget,
            waiter,
            current_leader_epoch: w.current_leader_epoch,
        })
        .collect();
    scatter(items, |i: &ReadItem| &i.ntp, read_local)
        .await
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|e| ReadAnswer {
                error: Some(PartitionError::Shard(e)),
                offsets: None,
                records: None,
            })
        })
        .collect()
}

fn record_bytes(answers: &[ReadAnswer]) -> usize {
    answers
        .iter()
        .map(|a| a.records.as_ref().map_or(0, Bytes::len))
        .sum()
}

pub async fn handle(ctx: &Ctx, req: FetchRequest) -> FetchResponse {
    if ctx.version >= 7 && req.session_id != 0 {
        // No fetch sessions are created (every response says session 0), so
        // an incremental fetch names a session this broker never had.
        return FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let table = ctx.shard.topics();
    let read_committed = req.isolation_level == READ_COMMITTED;
    let mut layout: Layout = Vec::new();
    let mut wanted = Vec::new();
    for topic in &req.topics {
        let name = topic.topic.0.to_string();
        let readable = ctx.topic_allowed(op::READ, &name);
        let mut parts = Vec::new();
        for p in &topic.partitions {
            let ntp = Ntp::new(name.clone(), p.partition);
            if !readable {
                parts.push((p.partition, Err(ResponseError::TopicAuthorizationFailed)));
            } else if table.contains(&ntp) {
                wanted.push(Wanted {
                    ntp,
                    offset: Offset(p.fetch_offset),
                    max_bytes: p.partition_max_bytes.max(0) as usize,
                    current_leader_epoch: current_leader_epoch(p.current_leader_epoch),
                });
                parts.push((p.partition, Ok(wanted.len() - 1)));
            } else {
                parts.push((p.partition, Err(ResponseError::UnknownTopicOrPartition)));
            }
        }
        layout.push((name, parts));
    }

    let max_wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(ctx.shard.config.fetch_max_wait);
    let deadline = Instant::now() + max_wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let cap = ctx.shard.config.fetch_response_max_bytes;
    let max_bytes = if req.max_bytes <= 0 {
        cap
    } else {
        (req.max_bytes as usize).min(cap)
    };
    let done = |answers: &[ReadAnswer]| {
        wanted.is_empty()
            || answers.iter().any(|a| a.error.is_some())
            || record_bytes(answers) >= min_bytes.max(1)
            || Instant::now() >= deadline
    };
    let mut answers = if Instant::now() >= deadline || wanted.is_empty() {
        read_all(&wanted, max_bytes, None).await
    } else {
        // One waiter for the whole long poll, armed by every read.
        let waiters = &ctx.shard.cluster.waiters;
        let (id, mut rx) = waiters.register();
        let waiter = WaiterRef {
            shard: ctx.shard.id(),
            id,
            deadline,
        };
        let mut answers = read_all(&wanted, max_bytes, Some(waiter)).await;
        while !done(&answers) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            futures_lite::future::or(
                async {
                    rx.next().await;
                },
                glommio::timer::sleep(remaining),
            )
            .await;
            answers = read_all(&wanted, max_bytes, Some(waiter)).await;
        }
        waiters.forget(id);
        answers
    };

    // The response limit: whole batches only, but the first non-empty
    // partition always gets its data so consumers make progress (KIP-74).
    let max_bytes = if req.max_bytes <= 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    };
    let mut total = 0usize;
    for a in answers.iter_mut() {
        if let Some(r) = &a.records {
            if total > 0 && total + r.len() > max_bytes {
                a.records = None;
            } else {
                total += r.len();
            }
        }
    }

    let responses = layout
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, slot)| match slot {
                    Ok(i) => partition_data(index, &answers[i], read_committed),
                    Err(e) => refused(index, e, read_committed),
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses)
}
