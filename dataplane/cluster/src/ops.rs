//! Operations other shards run on a partition's owner shard, and
//! [`scatter`], which sends each item of a request to its owner.
//!
//! Each `*_local` function runs on the owner shard, takes the items of one
//! request that this shard owns, and returns one answer per item, in order.

use crate::batch_policy;
use crate::error::PartitionError;
use crate::manager::{self, PartitionManager};
use crate::partition::Partition;
use crate::replicated;
use crate::turns::Turn;
use crate::waiters::WaiterRef;
use bytes::{Bytes, BytesMut};
use ferrolog_controlplane::topic_configs::ProducePolicy;
use ferrolog_model::{Epoch, Ntp, Offset, ShardId, TimestampMs};
use ferrolog_replication::InsyncCheck;
use ferrolog_shard::ShardError;
use ferrolog_storage::{ReadRequest, StorageError};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::warn;

/// Runs `run` on the owner shard of each item, items of one shard together,
/// and returns one answer per item in the order of `items`. `run` must return
/// exactly one answer per item it is given, in order.
pub async fn scatter<T, R, Fut>(
    items: Vec<T>,
    ntp_of: impl Fn(&T) -> &Ntp,
    run: fn(Vec<T>) -> Fut,
) -> Vec<Result<R, ShardError>>
where
    T: Send + 'static,
    R: Send + 'static,
    Fut: Future<Output = Vec<R>> + 'static,
{
    let m = manager::local();
    let n = items.len();
    let mut groups: Vec<(ShardId, Vec<usize>, Vec<T>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let owner = m.owner(ntp_of(&item));
        match groups.iter_mut().find(|(s, _, _)| *s == owner) {
            Some((_, idx, its)) => {
                idx.push(i);
                its.push(item);
            }
            None => groups.push((owner, vec![i], vec![item])),
        }
    }
    if groups.len() == 1 {
        // One owner (the usual case): no task of its own to spawn and
        // schedule, and none when the owner is this shard (submit_to then
        // runs `run` in place).
        let (owner, idx, its) = groups.pop().expect("one group");
        return match m.smp.submit_to(owner, move || run(its)).await {
            Ok(answers) => {
                assert_eq!(answers.len(), idx.len(), "scatter: one answer per item");
                answers.into_iter().map(Ok).collect()
            }
            Err(e) => idx.iter().map(|_| Err(e.clone())).collect(),
        };
    }
    // Start every group before awaiting any, so shards work in parallel.
    let mut tasks = Vec::with_capacity(groups.len());
    for (owner, idx, its) in groups {
        let smp = m.smp.clone();
        tasks.push((
            idx,
            glommio::spawn_local(async move { smp.submit_to(owner, move || run(its)).await }),
        ));
    }
    let mut out: Vec<Option<Result<R, ShardError>>> = (0..n).map(|_| None).collect();
    for (idx, task) in tasks {
        match task.await {
            Ok(answers) => {
                assert_eq!(answers.len(), idx.len(), "scatter: one answer per item");
                for (i, a) in idx.into_iter().zip(answers) {
                    out[i] = Some(Ok(a));
                }
            }
            Err(e) => {
                for i in idx {
                    out[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    out.into_iter()
        .map(|a| a.expect("scatter: every item answered"))
        .collect()
}

/// How many replicas must have a produced batch before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: no answer is sent; the batch is still appended.
    None,
    /// acks=1: the leader has it (durable on its disk per the topic).
    Leader,
    /// acks=-1: the high watermark covers it (a majority of the replicas
    /// has it durable), within the request's timeout.
    All,
}

/// One partition's share of a Produce request.
pub struct ProduceItem {
    pub ntp: Ntp,
    pub records: Bytes,
    pub acks: Acks,
    /// Kafka's timeout_ms: how long acks=all may wait.
    pub timeout: Duration,
    /// Told (or dropped) once the item has its place in the partition's
    /// order of appends (`turns`): a pipelined connection starts its next
    /// request only then. `None`: nobody waits for it.
    pub queued: Option<futures_channel::oneshot::Sender<()>>,
}

pub struct ProduceAnswer {
    pub result: Result<Offset, PartitionError>,
    pub log_start: Offset,
    /// The broker's append time on a LogAppendTime topic, else -1.
    pub log_append_time_ms: i64,
}

/// What one produce entry's appends gave: the first batch's base offset,
/// the last batch's last offset and the LogAppendTime stamped, or -1.
struct Appended {
    base: Offset,
    last: Offset,
    log_append_time_ms: i64,
}

/// The broker's wall clock in ms since the epoch, for LogAppendTime and the
/// CreateTime bounds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Splits a produce payload into RecordBatch v2 byte strings. Only the length
/// field is read here; the log validates magic and CRC.
pub fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, PartitionError> {
    use ferrolog_model::batch::LOG_OVERHEAD_BYTES;
    let corrupt = PartitionError::CorruptBatch;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < LOG_OVERHEAD_BYTES {
            return Err(corrupt(format!(
                "{} trailing bytes are not a record batch",
                rest.len()
            )));
        }
        let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD_BYTES))
            .filter(|&t| t <= rest.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "batch length {len} at byte {at} runs past the {} bytes sent",
                    records.len()
                ))
            })?;
        out.push(records.slice(at..at + total));
        at += total;
    }
    if out.is_empty() {
        return Err(corrupt("no record batch".into()));
    }
    Ok(out)
}

/// Header checks Kafka makes on a producer's batch beyond the log's own
/// (magic, length, CRC): at least one record, and offsets that cover exactly
/// the records (a lying lastOffsetDelta would make the log skip offsets).
pub fn check_producer_batch(batch: &[u8]) -> Result<(), PartitionError> {
    let invalid = PartitionError::InvalidRecord;
    let h = ferrolog_model::BatchHeader::parse(batch).map_err(|e| invalid(e.to_string()))?;
    if h.record_count < 1 {
        return Err(invalid(format!("record batch claims {} records", h.record_count)));
    }
    if i64::from(h.last_offset_delta) != i64::from(h.record_count) - 1 {
        return Err(invalid(format!(
            "lastOffsetDelta {} does not match {} records",
            h.last_offset_delta, h.record_count
        )));
    }
    Ok(())
}

/// Appends every batch of one produce entry in order; returns the first
/// one's base offset. One batch per partition is what clients send. Wakes
/// the partition's long polls whatever the outcome: some batches may be in.
/// `min.insync.replicas` is checked for acks=all only, as in Kafka. The
/// topic's produce policy (`batch_policy`) applies to each batch first.
async fn append_all(
    p: Rc<Partition>,
    records: Bytes,
    acks: Acks,
    turn: Turn,
    deadline: Option<(Instant, Duration)>,
) -> Result<Appended, PartitionError> {
    let insync = match acks {
        Acks::All => InsyncCheck::Enforce,
        Acks::Leader | Acks::None => InsyncCheck::Skip,
    };
    let appended = async {
        let batches = split_batches(&records)?;
        let count = batches.len();
        let mut first = None;
        let mut last = Offset(-1);
        let mut log_append_time_ms = -1;
        let policy: ProducePolicy = p.produce_policy();
        for (i, batch) in batches.into_iter().enumerate() {
            check_producer_batch(&batch)?;
            if !policy.is_passthrough() {
                // Bound what a recompression may read; the log checks the
                // batch as stored again.
                let max = p.log.config().max_batch_bytes;
                if batch.len() > max {
                    return Err(StorageError::BatchTooLarge {
                        size: batch.len(),
                        max,
                    }
                    .into());
                }
            }
            let applied = batch_policy::apply(&policy, batch, now_ms())?;
            let batch = applied.batch;
            if let Some(t) = applied.log_append_time_ms {
                log_append_time_ms = t;
            }
            let delta =
                ferrolog_model::BatchHeader::parse(&batch).map_or(0, |h| i64::from(h.last_offset_delta));
            let appended = p
                .append_producer_batch_in_turn(batch, insync, &turn, i + 1 == count, deadline)
                .await;
            if p.replication().is_some() {
                // Durable here: followers may count it, the HW may move.
                replicated::report_durable(&p);
            }
            let base = appended?;
            first.get_or_insert(base);
            last = base.plus(delta);
        }
        Ok(Appended {
            base: first.expect("split_batches returns at least one batch"),
            last,
            log_append_time_ms,
        })
    }
    .await;
    p.wake_waiters();
    appended
}

/// Appends, then waits as `acks` asks. For acks=all the wait is bounded by
/// the timeout; an append under way is never cancelled (it runs on in its
/// own task, may still become durable and then wakes long polls, as in
/// Kafka), but a replicated batch that has not reached its append when the
/// client is answered "timed out" is not appended later (see
/// `Partition::append_producer_batch_held`).
async fn produce_one(
    p: Rc<Partition>,
    item: ProduceItem,
    turn: Turn,
) -> Result<(Offset, i64), PartitionError> {
    if item.acks != Acks::All {
        return append_all(p, item.records, item.acks, turn, None)
            .await
            .map(|a| (a.base, a.log_append_time_ms));
    }
    let timeout = item.timeout;
    let deadline = Some((Instant::now() + timeout, timeout));
    let hwm_of = p.clone();
    let task = glommio::spawn_local(async move {
        let Appended {
            base,
            last,
            log_append_time_ms,
        } = append_all(p, item.records, Acks::All, turn, deadline).await?;
        if hwm_of.replication().is_some() {
            // A majority of the replica set must hold it durably.
            replicated::wait_committed(&hwm_of, last.plus(1), timeout).await?;
        }
        // On a single replica the high watermark is the durable end, which
        // the append waited for.
        debug_assert!(hwm_of.high_watermark() > base);
        Ok((base, log_append_time_ms))
    })
    .detach();
    futures_lite::future::or(
        async move {
            task.await
                .unwrap_or(Err(PartitionError::Storage(StorageError::Closed)))
        },
        async move {
            glommio::timer::sleep(timeout).await;
            Err(PartitionError::TimedOut(timeout))
        },
    )
    .await
}

/// Appends one batch the broker itself wrote (the group coordinator's
/// records) and waits until it is committed: on a replicated partition,
/// until the high watermark covers it, within `timeout`. Returns its base
/// offset.
pub async fn append_committed(
    p: &Rc<Partition>,
    batch: Bytes,
    timeout: Duration,
) -> Result<Offset, PartitionError> {
    let delta = ferrolog_model::BatchHeader::parse(&batch).map_or(0, |h| i64::from(h.last_offset_delta));
    let appended = p.append_producer_batch(batch, InsyncCheck::Enforce).await;
    if p.replication().is_some() {
        replicated::report_durable(p);
    }
    let base = appended?;
    p.wake_waiters();
    if p.replication().is_some() {
        replicated::wait_committed(p, base.plus(delta + 1), timeout).await?;
    }
    Ok(base)
}

/// The partition, if this node leads it: a replica that does not lead
/// answers NotLeader, and so does a partition the metadata names that is not
/// on this node, so the client asks the leader; one nobody names is NotHere.
pub(crate) fn led(m: &PartitionManager, ntp: &Ntp) -> Result<Rc<Partition>, PartitionError> {
    match m.partition(ntp) {
        Some(p) if p.leads() => Ok(p),
        Some(_) => Err(PartitionError::NotLeader(ntp.clone())),
        None if m.metadata().topics.contains(ntp) => Err(PartitionError::NotLeader(ntp.clone())),
        None => Err(PartitionError::NotHere(ntp.clone())),
    }
}

/// `led`, for a produce: also a replicated partition the metadata names
/// this node the leader of while its replica is still taking the lead (the
/// append waits for it, see `Partition::append_producer_batch`).
fn led_for_produce(m: &PartitionManager, ntp: &Ntp) -> Result<Rc<Partition>, PartitionError> {
    match m.partition(ntp) {
        Some(p) if p.replication().is_some() && p.named_leader() => Ok(p),
        _ => led(m, ntp),
    }
}

/// Appends each item on its partition. Every item first takes its turn on
/// its partition, in order and before anything awaits, and then says so
/// (`ProduceItem::queued`); the items then run at once, each appended in its
/// turn.
pub async fn produce_local(items: Vec<ProduceItem>) -> Vec<ProduceAnswer> {
    let m = manager::local();
    let mut placed = Vec::with_capacity(items.len());
    for mut item in items {
        let queued = item.queued.take();
        let slot = match led_for_produce(&m, &item.ntp) {
            Ok(p) => {
                let turn = p.append_turn();
                Ok((p, item, turn))
            }
            Err(e) => {
                if let (PartitionError::NotLeader(_), Some(p)) = (&e, m.partition(&item.ntp)) {
                    p.note_refused(&item.records);
                }
                Err(e)
            }
        };
        placed.push((slot, queued));
    }
    let runs = placed.into_iter().map(|(slot, queued)| {
        if let Some(q) = queued {
            let _ = q.send(());
        }
        async move {
            let (p, item, turn) = match slot {
                Ok(x) => x,
                Err(e) => {
                    return ProduceAnswer {
                        result: Err(e),
                        log_start: Offset(-1),
                        log_append_time_ms: -1,
                    }
                }
            };
            let started = Instant::now();
            p.metrics.produce_requests.inc();
            p.metrics.produce_bytes.add(item.records.len() as u64);
            let result = produce_one(p.clone(), item, turn).await;
            if result.is_err() {
                p.metrics.produce_errors.inc();
            } else {
                p.metrics.append_latency.record(started.elapsed());
            }
            let log_append_time_ms = result.as_ref().map_or(-1, |(_, t)| *t);
            ProduceAnswer {
                result: result.map(|(base, _)| base),
                log_start: p.start_offset(),
                log_append_time_ms,
            }
        }
    });
    // Collected first: every item's `queued` is told before any append
    // awaits.
    let runs: Vec<_> = runs.collect();
    futures::future::join_all(runs).await
}

/// The offsets a fetch answer reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub start: Offset,
    pub high_watermark: Offset,
}

impl PartitionOffsets {
    fn of(p: &Partition) -> PartitionOffsets {
        PartitionOffsets {
            start: p.start_offset(),
            high_watermark: p.high_watermark(),
        }
    }
}

/// One partition's share of a Fetch.
pub struct ReadItem {
    pub ntp: Ntp,
    pub offset: Offset,
    pub max_bytes: usize,
    /// Record bytes the whole fetch may still carry; the same in every item
    /// of a fetch. Partitions read after it is used up return no records.
    pub response_budget: usize,
    /// A long poll's waiter: registered on the partition, in this same
    /// call, when the read finds nothing new, and woken by the next append.
    pub waiter: Option<WaiterRef>,
    /// KIP-320: the leader epoch the client believes current (None: no
    /// check).
    pub current_leader_epoch: Option<Epoch>,
}

pub struct ReadAnswer {
    pub error: Option<PartitionError>,
    pub offsets: Option<PartitionOffsets>,
    pub records: Option<Bytes>,
}

/// Partitions of one fetch read at once on a shard: each read from disk
/// holds a window of up to `read_chunk_bytes`, so this bounds a fetch of
/// many partitions to a few MiB of read buffers.
const READ_CONCURRENCY: usize = 8;

pub async fn read_local(items: Vec<ReadItem>) -> Vec<ReadAnswer> {
    let m = manager::local();
    let budget = items.first().map_or(0, |i| i.response_budget);
    let found: Vec<Result<Rc<Partition>, PartitionError>> = items
        .iter()
        .map(|item| {
            led(&m, &item.ntp).and_then(|p| p.check_leader_epoch(item.current_leader_epoch).map(|()| p))
        })
        .collect();
    // Where every partition's limit fits the response budget, none can
    // take another's share: the reads run at once, so the disk reads of a
    // consumer that fell out of the batch cache overlap instead of queueing
    // one behind the other. Otherwise in order, each within what the ones
    // before left.
    let wanted: usize = items.iter().map(|i| i.max_bytes).fold(0, usize::saturating_add);
    let answers: Vec<Option<ReadAnswer>> = if wanted <= budget {
        use futures::StreamExt;
        futures::stream::iter(items.iter().zip(&found))
            .map(|(item, p)| async {
                match p {
                    Ok(p) => Some(read_one(&m, p, item, budget).await),
                    Err(_) => None,
                }
            })
            .buffered(READ_CONCURRENCY)
            .collect()
            .await
    } else {
        let mut left = budget;
        let mut out = Vec::with_capacity(items.len());
        for (item, p) in items.iter().zip(&found) {
            out.push(match p {
                Ok(p) => {
                    let answer = read_one(&m, p, item, left).await;
                    left = left.saturating_sub(answer.records.as_ref().map_or(0, Bytes::len));
                    Some(answer)
                }
                Err(_) => None,
            });
        }
        out
    };
    items
        .iter()
        .zip(found)
        .zip(answers)
        .map(|((item, p), answer)| match (p, answer) {
            (Ok(p), Some(answer)) => {
                let len = answer.records.as_ref().map_or(0, Bytes::len);
                if let (Some(w), None, 0) = (item.waiter, &answer.error, len) {
                    let seen = answer.offsets.map_or(item.offset, |o| o.high_watermark);
                    p.add_waiter(seen.max(item.offset), w, m.config.fetch_waiters_per_partition_max);
                }
                answer
            }
            (Err(e), _) => {
                if let Some(w) = item.waiter {
                    // Deleted or moved meanwhile: let the fetch re-read and see the error.
                    w.wake();
                }
                ReadAnswer {
                    error: Some(e),
                    offsets: None,
                    records: None,
                }
            }
            (Ok(_), None) => unreachable!("a found partition is read"),
        })
        .collect()
}

async fn read_one(m: &PartitionManager, p: &Partition, item: &ReadItem, budget: usize) -> ReadAnswer {
    p.metrics.fetch_requests.inc();
    let o = PartitionOffsets::of(p);
    // Past the high watermark but within the log (a new leader's high
    // watermark catching up, records not yet on a majority): nothing to
    // read yet, as Kafka answers; out of range only past the log end.
    let end = o.high_watermark.max(p.log_end());
    if item.offset < o.start || item.offset > end {
        p.metrics.fetch_errors.inc();
        return ReadAnswer {
            error: Some(PartitionError::Storage(StorageError::OffsetOutOfRange {
                requested: item.offset,
                start: o.start,
                end: o.high_watermark,
            })),
            offsets: Some(o),
            records: None,
        };
    }
    if item.offset >= o.high_watermark || budget == 0 || item.max_bytes == 0 {
        return ReadAnswer {
            error: None,
            offsets: Some(o),
            records: None,
        };
    }
    let req = ReadRequest {
        offset: item.offset,
        max_bytes: item.max_bytes.min(budget),
        end: Some(o.high_watermark),
    };
    match p.log.read(req).await {
        Ok(r) => {
            match (r.batches.is_empty(), r.from_cache) {
                (true, _) => {}
                (false, true) => m.metrics.batch_cache_hits.inc(),
                (false, false) => m.metrics.batch_cache_misses.inc(),
            }
            let records = match r.batches.len() {
                0 => None,
                1 => r.batches.into_iter().next(),
                _ => {
                    let mut all = BytesMut::with_capacity(r.batches.iter().map(|b| b.len()).sum());
                    for b in &r.batches {
                        all.extend_from_slice(b);
                    }
                    Some(all.freeze())
                }
            };
            p.metrics
                .fetch_bytes
                .add(records.as_ref().map_or(0, Bytes::len) as u64);
            ReadAnswer {
                error: None,
                offsets: Some(PartitionOffsets::of(p)),
                records,
            }
        }
        Err(e) => {
            p.metrics.fetch_errors.inc();
            if !matches!(e, StorageError::OffsetOutOfRange { .. }) {
                warn!(partition = %item.ntp, offset = %item.offset, "read failed: {e}");
            }
            ReadAnswer {
                error: Some(PartitionError::Storage(e)),
                offsets: Some(PartitionOffsets::of(p)),
                records: None,
            }
        }
    }
}

pub struct OffsetQuery {
    pub ntp: Ntp,
    /// -1 latest, -2 earliest, otherwise a timestamp in ms.
    pub timestamp: i64,
    /// KIP-320: the leader epoch the client believes current (None: no
    /// check).
    pub current_leader_epoch: Option<Epoch>,
}

/// The offset found for a query; `None` if no record has a timestamp at
/// or past the one asked for.
pub type OffsetAnswer = Result<Option<(Offset, i64)>, PartitionError>;

pub async fn list_offsets_local(items: Vec<OffsetQuery>) -> Vec<OffsetAnswer> {
    let m = manager::local();
    let mut out = Vec::with_capacity(items.len());
    for q in items {
        let p = match led(&m, &q.ntp).and_then(|p| p.check_leader_epoch(q.current_leader_epoch).map(|()| p)) {
            Ok(p) => p,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        out.push(match q.timestamp {
            -1 => Ok(Some((p.high_watermark(), -1))),
            -2 => Ok(Some((p.start_offset(), -1))),
            ts if ts >= 0 => match p.log.offset_for_timestamp(TimestampMs(ts)).await {
                // Only what readers may see: not past the high watermark.
                Ok(Some(off)) if off < p.high_watermark() => Ok(Some((off, ts))),
                Ok(_) => Ok(None),
                Err(e) => Err(PartitionError::Storage(e)),
            },
            other => Err(PartitionError::BadTimestampQuery(other)),
        });
    }
    out
}

/// One partition's share of an OffsetForLeaderEpoch.
pub struct EpochQuery {
    pub ntp: Ntp,
    /// KIP-320: the leader epoch the client believes current (None: no
    /// check).
    pub current_leader_epoch: Option<Epoch>,
    /// The epoch whose end is asked for.
    pub leader_epoch: Epoch,
}

/// The epoch found and where it ends; None is Kafka's UNDEFINED_EPOCH and
/// UNDEFINED_EPOCH_OFFSET (-1, -1).
pub type EpochAnswer = Result<Option<(Epoch, Offset)>, PartitionError>;

/// OffsetForLeaderEpoch on the leader. A replicated partition answers from
/// its replica's epoch runs (`EpochMap::offset_for_leader_epoch`, Kafka's
/// rules; its last epoch ends at the log end). A single-replica partition
/// keeps no epoch runs: its batches carry the metadata's epoch at the time
/// they were appended, and finding where an older epoch ended would mean
/// reading every batch header. So it answers exactly only for its current
/// epoch (that epoch and the high watermark) and (-1, -1) for any other:
/// for an older epoch that is a limitation (Kafka would give the older
/// epoch's end), for a newer one it is Kafka's answer.
pub async fn offset_for_leader_epoch_local(items: Vec<EpochQuery>) -> Vec<EpochAnswer> {
    let m = manager::local();
    items
        .into_iter()
        .map(|q| {
            let p = led(&m, &q.ntp)?;
            p.check_leader_epoch(q.current_leader_epoch)?;
            Ok(match p.replication() {
                Some(r) => r
                    .log()
                    .offset_for_leader_epoch(q.leader_epoch)
                    .map(|e| (e.epoch, e.end)),
                None if q.leader_epoch == p.leader_epoch() => Some((p.leader_epoch(), p.high_watermark())),
                None => None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_model::BatchBuilder;

    #[test]
    fn splits_concatenated_batches() {
        let a = BatchBuilder::new(ferrolog_model::TimestampMs(1))
            .record(ferrolog_model::TimestampMs(1), None, b"a")
            .build();
        let b = BatchBuilder::new(ferrolog_model::TimestampMs(2))
            .record(ferrolog_model::TimestampMs(2), None, b"bb")
            .build();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let split = split_batches(&Bytes::from(all.clone())).expect("valid");
        assert_eq!(split, vec![Bytes::from(a.clone()), Bytes::from(b)]);
        assert!(split_batches(&Bytes::new()).is_err());
        assert!(split_batches(&Bytes::from(all[..all.len() - 1].to_vec())).is_err());
        let mut neg = a;
        neg[8..12].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(split_batches(&Bytes::from(neg)).is_err());
    }

    #[test]
    fn producer_batches_must_cover_their_records() {
        let ts = ferrolog_model::TimestampMs(1);
        let good = BatchBuilder::new(ts)
            .record(ts, None, b"a")
            .record(ts, None, b"b")
            .build();
        assert!(check_producer_batch(&good).is_ok());
        // lastOffsetDelta at bytes 23..27, recordCount at 57..61 (the CRC is
        // not checked here; the log checks it).
        let mut skip = good.clone();
        skip[23..27].copy_from_slice(&1_000_000i32.to_be_bytes());
        assert!(check_producer_batch(&skip).is_err());
        let mut empty = good;
        empty[57..61].copy_from_slice(&0i32.to_be_bytes());
        assert!(check_producer_batch(&empty).is_err());
    }
}
