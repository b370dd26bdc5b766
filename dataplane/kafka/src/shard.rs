//! Per-shard state: the partitions this shard owns, its snapshot of the topic
//! table, and the operations other shards call on it. A partition carries its
//! idempotent producers' state (`producer_state`), kept in step with its log
//! through `Log::append_guarded` and the log's discard listener; shard 0 also
//! holds the producer id allocator (`producer_ids`).
//!
//! Everything here lives on one shard's thread (`Rc`/`RefCell`) and is reached
//! through [`local`]. Work for partitions owned elsewhere goes through
//! [`scatter`], which groups items by owner shard, runs each group there with
//! `Smp::submit_to` and puts the answers back in request order. No borrow is
//! held across an await.

use crate::config::ServerConfig;
use crate::metrics::{PartitionMetrics, PartitionSnapshot, ShardMetrics, ShardSnapshot};
use crate::producer_ids::ProducerIdAllocator;
use crate::producer_state::{
    decode_snapshot, BatchMeta, ProducerBatch, ProducerStateTable, Verdict, PRODUCERS_PER_PARTITION_MAX,
};
use crate::topics::TopicTable;
use bytes::{Bytes, BytesMut};
use ferrolog_model::{BatchHeader, Ntp, Offset, ShardId};
use ferrolog_shard::{ShardError, Smp};
use ferrolog_storage::{Log, LogConfig, LogContext, LogOffsets, ReadRequest, StorageError};
use futures_channel::mpsc;
use kafka_protocol::error::ResponseError;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

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

/// A long-poll fetch waiting for data, on the shard of its connection.
#[derive(Clone, Copy, Debug)]
pub struct WaiterRef {
    pub shard: ShardId,
    pub id: u64,
    /// After this the fetch has answered anyway; the entry is stale.
    pub deadline: Instant,
}

impl WaiterRef {
    /// Wakes the fetch, on its own shard (a cross-shard call if elsewhere).
    fn wake(self) {
        let shard = local();
        if self.shard == shard.id() {
            shard.wake_waiter(self.id);
        } else {
            let smp = shard.smp.clone();
            glommio::spawn_local(async move {
                let id = self.id;
                // The waiting shard is gone if this fails: nobody waits.
                let _ = smp
                    .submit_to(self.shard, move || async move { local().wake_waiter(id) })
                    .await;
            })
            .detach();
        }
    }
}

/// Bytes the producer-state rebuild reads from the log at a time.
pub const PRODUCER_REBUILD_READ_BYTES: usize = 4 << 20;
/// In a partition's directory between a clean close and the next open: the
/// producer state as of the close, so that open can skip the scan.
pub const PRODUCER_SNAPSHOT_FILE: &str = "producer_state.snapshot";

/// Where a recovered partition's producer state came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerStateSource {
    /// The snapshot its last clean close left.
    Snapshot,
    /// A scan of every batch header in the log.
    Scan,
}

/// One partition on its owner shard.
pub struct Partition {
    pub ntp: Ntp,
    pub log: Rc<Log>,
    /// Fetches waiting for data past their offset; woken (and dropped) by the
    /// next append. They may be waiting on other shards.
    waiters: RefCell<Vec<WaiterRef>>,
    /// Idempotent producers' sequence state. Changed only inside the log's
    /// append section (the guard of `append_guarded`) and by the log's
    /// discard listener, so it always describes exactly the log's batches.
    producers: Rc<RefCell<ProducerStateTable>>,
    /// Times the log discarded appended batches (failed flush, truncation).
    discards: Rc<Cell<u64>>,
    pub metrics: Rc<PartitionMetrics>,
}

/// An error for one partition of a Produce: the Kafka code and a message.
pub type ProduceError = (ResponseError, String);

impl Partition {
    /// A partition with no producer state (a new, empty log).
    pub fn new(ntp: Ntp, log: Rc<Log>) -> Partition {
        Self::with_producers(ntp, log, ProducerStateTable::new(PRODUCERS_PER_PARTITION_MAX))
    }

    /// A partition over a recovered log, with the producer state the log
    /// implies, so retries sent before a restart (or a kill -9) are still
    /// recognised: the snapshot of the last clean close if it matches the
    /// log, else rebuilt from every batch header in the log.
    pub async fn recover(ntp: Ntp, log: Rc<Log>) -> Result<(Partition, ProducerStateSource), StorageError> {
        let (producers, source) = match take_producer_snapshot(&ntp, &log)? {
            Some(table) => (table, ProducerStateSource::Snapshot),
            None => (
                rebuild_producer_state(&ntp, &log).await?,
                ProducerStateSource::Scan,
            ),
        };
        Ok((Self::with_producers(ntp, log, producers), source))
    }

    /// Closes the log and, if that worked, leaves a snapshot of the producer
    /// state for the next open. A snapshot that cannot be written only costs
    /// the next open a scan.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.log.close().await?;
        let end = self.log.offsets().committed_next;
        // An append that queued while the close flushed is neither written
        // nor reported discarded; it must not be in the snapshot.
        self.producers.borrow_mut().discard_from(end);
        let bytes = self.producers.borrow().encode_snapshot(end);
        let path = self.log.dir().join(PRODUCER_SNAPSHOT_FILE);
        if let Err(e) = write_producer_snapshot(&path, &bytes) {
            warn!(partition = %self.ntp, "cannot write {}: {e}", path.display());
        }
        Ok(())
    }

    fn with_producers(ntp: Ntp, log: Rc<Log>, producers: ProducerStateTable) -> Partition {
        let producers = Rc::new(RefCell::new(producers));
        let discards = Rc::new(Cell::new(0));
        let (table, count) = (producers.clone(), discards.clone());
        log.set_discard_listener(move |from| {
            table.borrow_mut().discard_from(from);
            count.set(count.get() + 1);
        });
        let metrics = Rc::new(PartitionMetrics::default());
        let m = metrics.clone();
        log.set_flush_observer(move |f| {
            m.flush_bytes.add(f.bytes as u64);
            m.flush_batches.add(f.batches as u64);
            m.flush_latency.record(f.elapsed);
        });
        Partition {
            ntp,
            log,
            waiters: RefCell::new(Vec::new()),
            producers,
            discards,
            metrics,
        }
    }

    /// Producers whose sequence state this partition holds.
    pub fn producer_count(&self) -> usize {
        self.producers.borrow().len()
    }

    /// Appends one batch from a client; returns its base offset. Batches of
    /// an idempotent producer (producer id >= 0) are checked against its
    /// sequence state: a retry of a batch the log holds is answered with
    /// that batch's base offset and not appended again. The batch must have
    /// passed `check_producer_batch`.
    pub async fn append_producer_batch(&self, batch: Bytes) -> Result<Offset, ProduceError> {
        let header =
            BatchHeader::parse(&batch).map_err(|e| (ResponseError::CorruptMessage, e.to_string()))?;
        let Some(pb) = ProducerBatch::from_header(&header) else {
            return self
                .log
                .append(batch)
                .await
                .map(|a| a.base_offset)
                .map_err(|e| self.storage_error(e));
        };
        if pb.first_seq < 0 {
            return Err((
                ResponseError::InvalidRecord,
                format!(
                    "batch of producer {} has no sequence number ({})",
                    pb.producer_id, pb.first_seq
                ),
            ));
        }
        // The guard's verdict, and the discard count when it was reached.
        let mut verdict = None;
        let appended = self
            .log
            .append_guarded(batch, None, |at| {
                let v = self
                    .producers
                    .borrow_mut()
                    .check_and_record(&pb, at.base_offset, at.last_offset);
                let go = v == Ok(Verdict::Append);
                verdict = Some((v, self.discards.get()));
                go
            })
            .await
            .map_err(|e| self.storage_error(e))?;
        if let Some(a) = appended {
            return Ok(a.base_offset);
        }
        match verdict.expect("a refused append ran its guard") {
            (Ok(Verdict::Duplicate(original)), discards) => {
                debug!(
                    partition = %self.ntp,
                    producer_id = pb.producer_id,
                    first_seq = pb.first_seq,
                    base_offset = %original.base_offset,
                    "retried batch answered with its original offsets"
                );
                self.settle_duplicate(&pb, original, discards).await
            }
            (Ok(Verdict::Append), _) => unreachable!("the guard refused an append it agreed to"),
            (Err(e), _) => Err((crate::errors::producer(&e), e.to_string())),
        }
    }

    /// Answers a retry once its original is durable: the original may still
    /// wait for its flush, and that flush may fail.
    async fn settle_duplicate(
        &self,
        pb: &ProducerBatch,
        original: BatchMeta,
        discards_before: u64,
    ) -> Result<Offset, ProduceError> {
        // The original was in the log when the retry was checked; it is
        // still there unless a discard since then took it.
        let durable = || {
            let kept = self.discards.get() == discards_before
                || self
                    .producers
                    .borrow()
                    .contains(pb.producer_id, pb.epoch, &original);
            kept && self.log.offsets().committed_next > original.last_offset
        };
        if durable() {
            return Ok(original.base_offset);
        }
        // Everything appended before this flush is committed or discarded
        // when it returns.
        let flushed = self.log.flush().await;
        if durable() {
            return Ok(original.base_offset);
        }
        Err(match flushed {
            Err(e) => self.storage_error(e),
            Ok(()) => (
                ResponseError::KafkaStorageError,
                format!(
                    "the first copy of this batch (offsets {}..={}) was lost to a failed write; send it again",
                    original.base_offset, original.last_offset
                ),
            ),
        })
    }

    fn storage_error(&self, e: StorageError) -> ProduceError {
        if !matches!(
            e,
            StorageError::InvalidBatch(_) | StorageError::BatchTooLarge { .. }
        ) {
            warn!(partition = %self.ntp, "append failed: {e}");
        }
        (crate::errors::storage(&e), e.to_string())
    }

    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

pub struct Shard {
    pub smp: Rc<Smp>,
    pub config: Arc<ServerConfig>,
    pub log_ctx: Rc<LogContext>,
    topics: RefCell<Arc<TopicTable>>,
    partitions: RefCell<HashMap<Ntp, Rc<Partition>>>,
    /// Long-poll fetches of this shard's connections, by waiter id.
    waiters: RefCell<HashMap<u64, mpsc::Sender<()>>>,
    next_waiter: Cell<u64>,
    /// On the controller shard: InitProducerId's ids, opened at first use.
    producer_ids: RefCell<Option<ProducerIdAllocator>>,
    pub metrics: ShardMetrics,
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
            waiters: RefCell::new(HashMap::new()),
            next_waiter: Cell::new(0),
            producer_ids: RefCell::new(None),
            metrics: ShardMetrics::default(),
        })
    }

    /// This shard's metrics and its partitions' offsets and metrics, as
    /// plain data for the admin shard. Partitions are sorted by name.
    pub fn metrics_snapshot(&self) -> ShardSnapshot {
        let mut snap = ShardSnapshot::new(self.id().0, &self.metrics);
        snap.cpu = self.config.shard_cpus.get(self.id().0 as usize).copied();
        let hops = self.smp.hop_counts();
        snap.cross_shard_calls_sent = hops.sent;
        snap.cross_shard_calls_served = hops.served;
        snap.batch_cache_bytes = self.log_ctx.cache.borrow().bytes() as u64;
        let mut parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        parts.sort_by(|a, b| (&a.ntp.topic, a.ntp.partition.0).cmp(&(&b.ntp.topic, b.ntp.partition.0)));
        snap.partitions = parts
            .iter()
            .map(|p| {
                let o = p.log.offsets();
                PartitionSnapshot {
                    start_offset: o.start.0,
                    high_watermark: o.committed_next.0,
                    log_end_offset: o.dirty_next.0,
                    size_bytes: p.log.size_bytes(),
                    segments: p.log.segment_bases().len(),
                    producers: p.producer_count(),
                    ..PartitionSnapshot::new(&p.ntp, &p.metrics)
                }
            })
            .collect();
        snap
    }

    /// A producer id never handed out before from this data directory.
    /// Runs on the controller shard only (`controller::call`).
    pub fn next_producer_id(&self) -> Result<i64, String> {
        assert_eq!(
            self.id(),
            crate::controller::CONTROLLER_SHARD,
            "producer ids are allocated on the controller shard"
        );
        let mut ids = self.producer_ids.borrow_mut();
        if ids.is_none() {
            *ids = Some(ProducerIdAllocator::open(&self.config.data_dir)?);
        }
        ids.as_mut().expect("opened above").allocate()
    }

    pub fn id(&self) -> ShardId {
        self.smp.shard_id()
    }

    /// Registers a long-poll fetch of this shard; the receiver yields once
    /// per wake. `forget_waiter` when done.
    pub fn new_waiter(&self) -> (u64, mpsc::Receiver<()>) {
        let id = self.next_waiter.get();
        self.next_waiter.set(id + 1);
        let (tx, rx) = mpsc::channel(1);
        self.waiters.borrow_mut().insert(id, tx);
        (id, rx)
    }

    pub fn forget_waiter(&self, id: u64) {
        self.waiters.borrow_mut().remove(&id);
    }

    pub fn wake_waiter(&self, id: u64) {
        if let Some(tx) = self.waiters.borrow_mut().get_mut(&id) {
            // Full means already woken.
            let _ = tx.try_send(());
        }
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
            let (partition, producer_state) = Partition::recover(ntp.clone(), log.clone())
                .await
                .map_err(|e| format!("recover the producer state of {ntp}: {e}"))?;
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
                producers = partition.producer_count(),
                producer_state = ?producer_state,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "opened partition"
            );
            self.partitions.borrow_mut().insert(ntp, Rc::new(partition));
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
            if let Err(e) = p.close().await {
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
                    out[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    out.into_iter()
        .map(|a| a.expect("scatter: every item answered"))
        .collect()
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

/// Header checks Kafka makes on a producer's batch beyond the log's own
/// (magic, length, CRC): at least one record, and offsets that cover exactly
/// the records (a lying lastOffsetDelta would make the log skip offsets).
pub fn check_producer_batch(batch: &[u8]) -> Result<(), String> {
    let h = ferrolog_model::BatchHeader::parse(batch).map_err(|e| e.to_string())?;
    if h.record_count < 1 {
        return Err(format!("record batch claims {} records", h.record_count));
    }
    if i64::from(h.last_offset_delta) != i64::from(h.record_count) - 1 {
        return Err(format!(
            "lastOffsetDelta {} does not match {} records",
            h.last_offset_delta, h.record_count
        ));
    }
    Ok(())
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
        let started = Instant::now();
        p.metrics.produce_requests.inc();
        p.metrics.produce_bytes.add(item.records.len() as u64);
        match split_batches(&item.records) {
            Err(reason) => answer.error = Some((ResponseError::CorruptMessage, reason)),
            Ok(batches) => {
                // One batch per partition is what clients send; several are
                // appended in order and the first one's offset is returned.
                for (i, batch) in batches.into_iter().enumerate() {
                    if let Err(reason) = check_producer_batch(&batch) {
                        answer.error = Some((ResponseError::InvalidRecord, reason));
                        break;
                    }
                    match p.append_producer_batch(batch).await {
                        Ok(base) => {
                            if i == 0 {
                                answer.base_offset = base;
                            }
                        }
                        Err(e) => {
                            answer.error = Some(e);
                            break;
                        }
                    }
                }
                p.wake_waiters();
            }
        }
        if answer.error.is_some() {
            p.metrics.produce_errors.inc();
        } else {
            p.metrics.append_latency.record(started.elapsed());
        }
        out.push(answer);
    }
    out
}

/// Reads and removes the producer snapshot of `log`'s directory. Returns
/// the table if the snapshot is valid and was taken at the log's current
/// end. It is removed (durably) before anything is appended: it describes
/// the log only until the log changes, and a stale one left behind by a
/// crash could otherwise match a log that was truncated and refilled to the
/// same end.
fn take_producer_snapshot(ntp: &Ntp, log: &Log) -> Result<Option<ProducerStateTable>, StorageError> {
    let path = log.dir().join(PRODUCER_SNAPSHOT_FILE);
    let io = |op, source| StorageError::Io {
        op,
        path: path.clone(),
        source,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", e)),
    };
    std::fs::remove_file(&path).map_err(|e| io("remove", e))?;
    std::fs::File::open(log.dir())
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync dir of", e))?;
    let end = log.offsets().committed_next;
    match decode_snapshot(&bytes, PRODUCERS_PER_PARTITION_MAX) {
        Ok((table, at)) if at == end => Ok(Some(table)),
        Ok((_, at)) => {
            warn!(partition = %ntp, snapshot_end = %at, log_end = %end, "producer snapshot does not match the log; scanning");
            Ok(None)
        }
        Err(e) => {
            warn!(partition = %ntp, "{e}; scanning the log");
            Ok(None)
        }
    }
}

/// Writes the snapshot through a temporary file and a rename, so the file
/// is whole or absent. Not fsynced: a snapshot lost or torn by a power
/// failure fails its CRC or is missing, and the next open scans.
fn write_producer_snapshot(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The producer state a log implies: every batch header from the log start,
/// read [`PRODUCER_REBUILD_READ_BYTES`] at a time. A damaged stretch (which
/// reads report as corrupt) is skipped to the next segment, with a warning:
/// retries of batches in it are not recognised.
async fn rebuild_producer_state(ntp: &Ntp, log: &Log) -> Result<ProducerStateTable, StorageError> {
    let mut table = ProducerStateTable::new(PRODUCERS_PER_PARTITION_MAX);
    let mut at = log.offsets().start;
    let end = log.offsets().committed_next;
    while at < end {
        let req = ReadRequest {
            offset: at,
            max_bytes: PRODUCER_REBUILD_READ_BYTES,
            end: None,
        };
        let batches = match log.read(req).await {
            Ok(r) => r.batches,
            Err(e @ StorageError::Corrupt { .. }) => {
                let next = log.segment_bases().into_iter().find(|b| *b > at);
                warn!(partition = %ntp, offset = %at, skip_to = ?next, "producer state rebuild skips damage: {e}");
                match next {
                    Some(n) => {
                        at = n;
                        continue;
                    }
                    None => break,
                }
            }
            Err(e) => return Err(e),
        };
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            // Reads return only batches that verified.
            let h = BatchHeader::parse(b).expect("the log returned a batch whose header does not parse");
            if let Some(pb) = ProducerBatch::from_header(&h) {
                table.record(&pb, h.base_offset, h.last_offset());
            }
            at = h.last_offset().plus(1);
        }
    }
    Ok(table)
}

/// One partition's share of a Fetch.
pub struct ReadItem {
    pub ntp: Ntp,
    pub offset: Offset,
    pub max_bytes: usize,
    /// Record bytes the whole fetch may still carry; the same in every item
    /// of a fetch. Partitions read after it is used up return no records.
    pub response_budget: usize,
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
    let mut budget = items.first().map_or(0, |i| i.response_budget);
    for item in items {
        let Some(p) = shard.partition(&item.ntp) else {
            out.push(ReadAnswer {
                error: Some(ResponseError::UnknownTopicOrPartition),
                offsets: None,
                records: None,
            });
            continue;
        };
        p.metrics.fetch_requests.inc();
        let o = p.log.offsets();
        if item.offset < o.start || item.offset > o.committed_next {
            p.metrics.fetch_errors.inc();
            out.push(ReadAnswer {
                error: Some(ResponseError::OffsetOutOfRange),
                offsets: Some(o),
                records: None,
            });
            continue;
        }
        if item.offset == o.committed_next || budget == 0 || item.max_bytes == 0 {
            out.push(ReadAnswer {
                error: None,
                offsets: Some(o),
                records: None,
            });
            continue;
        }
        let req = ferrolog_storage::ReadRequest {
            offset: item.offset,
            max_bytes: item.max_bytes.min(budget),
            end: None,
        };
        match p.log.read(req).await {
            Ok(r) => {
                let m = &shard.metrics;
                match (r.batches.is_empty(), r.from_cache) {
                    (true, _) => {}
                    (false, true) => m.batch_cache_hits.inc(),
                    (false, false) => m.batch_cache_misses.inc(),
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
                let len = records.as_ref().map_or(0, Bytes::len);
                p.metrics.fetch_bytes.add(len as u64);
                budget = budget.saturating_sub(len);
                out.push(ReadAnswer {
                    error: None,
                    offsets: Some(p.log.offsets()),
                    records,
                });
            }
            Err(e) => {
                p.metrics.fetch_errors.inc();
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

/// Registers `waiter` on each partition whose committed end is still at or
/// below the fetch offset; wakes it at once if one already has data.
pub struct WaitItem {
    pub ntp: Ntp,
    pub offset: Offset,
    pub waiter: WaiterRef,
}

pub async fn wait_local(items: Vec<WaitItem>) -> Vec<()> {
    let shard = local();
    let max = shard.config.fetch_waiters_per_partition_max;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(());
        let Some(p) = shard.partition(&item.ntp) else {
            // Deleted meanwhile: let the fetch re-read and see the error.
            item.waiter.wake();
            continue;
        };
        if p.log.offsets().committed_next > item.offset {
            item.waiter.wake();
            continue;
        }
        let mut w = p.waiters.borrow_mut();
        if w.len() >= max {
            let now = Instant::now();
            w.retain(|r| r.deadline > now);
        }
        if w.len() < max {
            w.push(item.waiter);
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

    #[test]
    fn producer_batches_must_cover_their_records() {
        let ts = ferrolog_model::TimestampMs(1);
        let good = BatchBuilder::new(ts)
            .record(ts, None, b"a")
            .record(ts, None, b"b")
            .build();
        assert_eq!(check_producer_batch(&good), Ok(()));
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
