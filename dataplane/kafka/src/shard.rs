//! Per-shard state: the partitions this shard owns, its snapshot of the topic
//! table, and the operations other shards call on it.
//!
//! Everything here lives on one shard's thread (`Rc`/`RefCell`) and is reached
//! through [`local`]. Work for partitions owned elsewhere goes through
//! [`scatter`], which groups items by owner shard, runs each group there with
//! `Smp::submit_to` and puts the answers back in request order. No borrow is
//! held across an await.

use crate::config::ServerConfig;
use crate::topics::TopicTable;
use bytes::{Bytes, BytesMut};
use ferrolog_model::{Ntp, Offset, ShardId};
use ferrolog_shard::{ShardError, Smp};
use ferrolog_storage::{Log, LogConfig, LogContext, LogOffsets, StorageError};
use futures_channel::mpsc;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use tracing::{info, warn};

thread_local! {
    static SHARD: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// This thread's shard. Panics off a shard thread: a programmer error.
pub fn local() -> Rc<Shard> {
    SHARD.with(|s| {
        s.borrow()
            .clone()
            .expect("ferrolog-kafka used off a shard thread")
    })
}

/// Installs this thread's shard; must run before the shard's first await so
/// that calls from other shards always find it.
pub fn install(shard: Rc<Shard>) {
    SHARD.with(|s| *s.borrow_mut() = Some(shard));
}

/// Stable owner of a partition: partitions of one topic go round-robin over
/// the shards, starting at a shard picked by the topic name.
pub fn owner_of(ntp: &Ntp, nr_shards: usize) -> ShardId {
    let h = u64::from(crc32c::crc32c(ntp.topic.as_bytes()));
    ShardId(((h + ntp.partition.0 as u64) % nr_shards as u64) as u32)
}

/// One partition on its owner shard.
pub struct Partition {
    pub ntp: Ntp,
    pub log: Rc<Log>,
    /// Fetches waiting for data past their offset; woken (and dropped) by the
    /// next append. Senders may belong to other shards' fetches.
    waiters: RefCell<Vec<mpsc::Sender<()>>>,
}

impl Partition {
    pub fn new(ntp: Ntp, log: Rc<Log>) -> Partition {
        Partition {
            ntp,
            log,
            waiters: RefCell::new(Vec::new()),
        }
    }

    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for mut w in waiters {
            // Full means already woken; closed means the fetch is gone.
            let _ = w.try_send(());
        }
    }
}

pub struct Shard {
    pub smp: Rc<Smp>,
    pub config: Arc<ServerConfig>,
    pub log_ctx: Rc<LogContext>,
    topics: RefCell<Arc<TopicTable>>,
    partitions: RefCell<HashMap<Ntp, Rc<Partition>>>,
}

impl Shard {
    pub fn new(smp: Rc<Smp>, config: Arc<ServerConfig>) -> Rc<Shard> {
        let log_ctx = LogContext::new(config.batch_cache_bytes);
        Rc::new(Shard {
            smp,
            config,
            log_ctx,
            topics: RefCell::new(Arc::new(TopicTable::default())),
            partitions: RefCell::new(HashMap::new()),
        })
    }

    pub fn id(&self) -> ShardId {
        self.smp.shard_id()
    }

    pub fn topics(&self) -> Arc<TopicTable> {
        self.topics.borrow().clone()
    }

    pub fn set_topics(&self, table: Arc<TopicTable>) {
        *self.topics.borrow_mut() = table;
    }

    pub fn owner(&self, ntp: &Ntp) -> ShardId {
        owner_of(ntp, self.smp.nr_shards())
    }

    pub fn partition(&self, ntp: &Ntp) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(ntp).cloned()
    }

    pub fn partition_dir(&self, ntp: &Ntp) -> PathBuf {
        self.config.data_dir.join(ntp.dir_name())
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.borrow().len()
    }

    /// Opens (creating if needed) partitions this shard owns, or updates the
    /// settings of ones already open.
    pub async fn open_partitions(&self, items: Vec<(Ntp, LogConfig)>) -> Result<(), String> {
        for (ntp, config) in items {
            debug_assert_eq!(self.owner(&ntp), self.id());
            if let Some(p) = self.partition(&ntp) {
                p.log.set_config(config);
                continue;
            }
            let dir = self.partition_dir(&ntp);
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let started = std::time::Instant::now();
            let (log, report) = Log::open(&dir, config, self.log_ctx.clone())
                .await
                .map_err(|e| format!("open {ntp}: {e}"))?;
            let o = log.offsets();
            info!(
                partition = %ntp,
                shard = %self.id(),
                segments = report.segments,
                start = %o.start,
                end = %o.committed_next,
                truncated = report.truncated.len(),
                rebuilt_indexes = report.rebuilt_indexes.len(),
                corrupt = report.corrupt.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "opened partition"
            );
            self.partitions
                .borrow_mut()
                .insert(ntp.clone(), Rc::new(Partition::new(ntp, log)));
        }
        Ok(())
    }

    /// Closes and deletes partitions (topic deletion).
    pub async fn remove_partitions(&self, ntps: Vec<Ntp>) -> Result<(), String> {
        for ntp in ntps {
            let removed = self.partitions.borrow_mut().remove(&ntp);
            if let Some(p) = removed {
                if let Err(e) = p.log.close().await {
                    warn!(partition = %ntp, "close before delete failed: {e}");
                }
                p.wake_waiters();
            }
            let dir = self.partition_dir(&ntp);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("delete {}: {e}", dir.display())),
            }
            info!(partition = %ntp, "deleted partition");
        }
        Ok(())
    }

    /// Closes every log (shutdown). Returns how many failed.
    pub async fn close_all(&self) -> usize {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow_mut().drain().map(|(_, p)| p).collect();
        let mut failed = 0;
        for p in parts {
            if let Err(e) = p.log.close().await {
                warn!(partition = %p.ntp, "close failed: {e}");
                failed += 1;
            }
            p.wake_waiters();
        }
        failed
    }

    pub fn logs(&self) -> Vec<Rc<Log>> {
        self.partitions.borrow().values().map(|p| p.log.clone()).collect()
    }
}

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
    let shard = local();
    let n = items.len();
    let mut groups: Vec<(ShardId, Vec<usize>, Vec<T>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let owner = shard.owner(ntp_of(&item));
        match groups.iter_mut().find(|(s, _, _)| *s == owner) {
            Some((_, idx, its)) => {
                idx.push(i);
                its.push(item);
            }
            None => groups.push((owner, vec![i], vec![item])),
        }
    }
    // Start every group before awaiting any, so shards work in parallel.
    let mut tasks = Vec::with_capacity(groups.len());
    for (owner, idx, its) in groups {
        let smp = shard.smp.clone();
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
                    out[i] = Some(Err(ShardError::Gone(e_shard(&e))));
                }
            }
        }
    }
    out.into_iter()
        .map(|a| a.expect("scatter: every item answered"))
        .collect()
}

fn e_shard(e: &ShardError) -> ShardId {
    match e {
        ShardError::Gone(s) | ShardError::NoSuchShard(s, _) | ShardError::Start { shard: s, .. } => *s,
    }
}

// ---- operations run on a partition's owner shard ----

/// One partition's share of a Produce request.
pub struct ProduceItem {
    pub ntp: Ntp,
    pub records: Bytes,
}

pub struct ProduceAnswer {
    pub error: Option<(kafka_protocol::error::ResponseError, String)>,
    pub base_offset: Offset,
    pub log_start: Offset,
}

/// Splits a produce payload into RecordBatch v2 byte strings. Only the length
/// field is read here; the log validates magic and CRC.
pub fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, String> {
    use ferrolog_model::batch::LOG_OVERHEAD_BYTES;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < records.len() {
        let rest = &records[at..];
        if rest.len() < LOG_OVERHEAD_BYTES {
            return Err(format!("{} trailing bytes are not a record batch", rest.len()));
        }
        let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD_BYTES))
            .filter(|&t| t <= rest.len())
            .ok_or_else(|| {
                format!(
                    "batch length {len} at byte {at} runs past the {} bytes sent",
                    records.len()
                )
            })?;
        out.push(records.slice(at..at + total));
        at += total;
    }
    if out.is_empty() {
        return Err("no record batch".into());
    }
    Ok(out)
}

pub async fn produce_local(items: Vec<ProduceItem>) -> Vec<ProduceAnswer> {
    use kafka_protocol::error::ResponseError;
    let shard = local();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(p) = shard.partition(&item.ntp) else {
            out.push(ProduceAnswer {
                error: Some((
                    ResponseError::UnknownTopicOrPartition,
                    format!("{} is not here", item.ntp),
                )),
                base_offset: Offset(-1),
                log_start: Offset(-1),
            });
            continue;
        };
        let mut answer = ProduceAnswer {
            error: None,
            base_offset: Offset(-1),
            log_start: p.log.offsets().start,
        };
        match split_batches(&item.records) {
            Err(reason) => answer.error = Some((ResponseError::CorruptMessage, reason)),
            Ok(batches) => {
                // One batch per partition is what clients send; several are
                // appended in order and the first one's offset is returned.
                for (i, batch) in batches.into_iter().enumerate() {
                    match p.log.append(batch).await {
                        Ok(a) => {
                            if i == 0 {
                                answer.base_offset = a.base_offset;
                            }
                        }
                        Err(e) => {
                            if !matches!(
                                e,
                                StorageError::InvalidBatch(_) | StorageError::BatchTooLarge { .. }
                            ) {
                                warn!(partition = %item.ntp, "append failed: {e}");
                            }
                            answer.error = Some((crate::errors::storage(&e), e.to_string()));
                            break;
                        }
                    }
                }
                p.wake_waiters();
            }
        }
        out.push(answer);
    }
    out
}

/// One partition's share of a Fetch.
pub struct ReadItem {
    pub ntp: Ntp,
    pub offset: Offset,
    pub max_bytes: usize,
}

pub struct ReadAnswer {
    pub error: Option<kafka_protocol::error::ResponseError>,
    pub offsets: Option<LogOffsets>,
    pub records: Option<Bytes>,
}

pub async fn read_local(items: Vec<ReadItem>) -> Vec<ReadAnswer> {
    use kafka_protocol::error::ResponseError;
    let shard = local();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(p) = shard.partition(&item.ntp) else {
            out.push(ReadAnswer {
                error: Some(ResponseError::UnknownTopicOrPartition),
                offsets: None,
                records: None,
            });
            continue;
        };
        let o = p.log.offsets();
        if item.offset < o.start || item.offset > o.committed_next {
            out.push(ReadAnswer {
                error: Some(ResponseError::OffsetOutOfRange),
                offsets: Some(o),
                records: None,
            });
            continue;
        }
        if item.offset == o.committed_next {
            out.push(ReadAnswer {
                error: None,
                offsets: Some(o),
                records: None,
            });
            continue;
        }
        let req = ferrolog_storage::ReadRequest {
            offset: item.offset,
            max_bytes: item.max_bytes,
            end: None,
        };
        match p.log.read(req).await {
            Ok(r) => {
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
                out.push(ReadAnswer {
                    error: None,
                    offsets: Some(p.log.offsets()),
                    records,
                });
            }
            Err(e) => {
                if !matches!(e, StorageError::OffsetOutOfRange { .. }) {
                    warn!(partition = %item.ntp, offset = %item.offset, "read failed: {e}");
                }
                out.push(ReadAnswer {
                    error: Some(crate::errors::storage(&e)),
                    offsets: Some(p.log.offsets()),
                    records: None,
                });
            }
        }
    }
    out
}

/// Registers `waker` on each partition whose committed end is still at or
/// below the fetch offset; wakes it at once if one already has data.
pub struct WaitItem {
    pub ntp: Ntp,
    pub offset: Offset,
    pub waker: mpsc::Sender<()>,
}

pub async fn wait_local(items: Vec<WaitItem>) -> Vec<()> {
    let shard = local();
    let max = shard.config.fetch_waiters_per_partition_max;
    let mut out = Vec::with_capacity(items.len());
    for mut item in items {
        out.push(());
        let Some(p) = shard.partition(&item.ntp) else {
            // Deleted meanwhile: let the fetch re-read and see the error.
            let _ = item.waker.try_send(());
            continue;
        };
        if p.log.offsets().committed_next > item.offset {
            let _ = item.waker.try_send(());
            continue;
        }
        let mut w = p.waiters.borrow_mut();
        if w.len() >= max {
            w.retain(|s| !s.is_closed());
        }
        if w.len() < max {
            w.push(item.waker);
        }
        // Over the bound the fetch simply waits out its max_wait_ms.
    }
    out
}

pub struct OffsetQuery {
    pub ntp: Ntp,
    /// -1 latest, -2 earliest, otherwise a timestamp in ms.
    pub timestamp: i64,
}

pub struct OffsetAnswer {
    pub error: Option<kafka_protocol::error::ResponseError>,
    pub offset: i64,
    pub timestamp: i64,
}

pub async fn list_offsets_local(items: Vec<OffsetQuery>) -> Vec<OffsetAnswer> {
    use kafka_protocol::error::ResponseError;
    let shard = local();
    let mut out = Vec::with_capacity(items.len());
    for q in items {
        let Some(p) = shard.partition(&q.ntp) else {
            out.push(OffsetAnswer {
                error: Some(ResponseError::UnknownTopicOrPartition),
                offset: -1,
                timestamp: -1,
            });
            continue;
        };
        let o = p.log.offsets();
        let answer = match q.timestamp {
            -1 => OffsetAnswer {
                error: None,
                offset: o.committed_next.0,
                timestamp: -1,
            },
            -2 => OffsetAnswer {
                error: None,
                offset: o.start.0,
                timestamp: -1,
            },
            ts if ts >= 0 => match p.log.offset_for_timestamp(ferrolog_model::TimestampMs(ts)).await {
                Ok(Some(off)) => OffsetAnswer {
                    error: None,
                    offset: off.0,
                    timestamp: ts,
                },
                Ok(None) => OffsetAnswer {
                    error: None,
                    offset: -1,
                    timestamp: -1,
                },
                Err(e) => OffsetAnswer {
                    error: Some(crate::errors::storage(&e)),
                    offset: -1,
                    timestamp: -1,
                },
            },
            _ => OffsetAnswer {
                error: Some(ResponseError::InvalidRequest),
                offset: -1,
                timestamp: -1,
            },
        };
        out.push(answer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_model::BatchBuilder;

    #[test]
    fn owners_spread_a_topics_partitions() {
        let owners: Vec<u32> = (0..8).map(|p| owner_of(&Ntp::new("t", p), 4).0).collect();
        for w in owners.windows(2) {
            assert_eq!((w[0] + 1) % 4, w[1]);
        }
        assert_eq!(owner_of(&Ntp::new("t", 3), 1), ShardId(0));
    }

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
}
