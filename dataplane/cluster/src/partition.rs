//! One partition on its owner shard: its log, its idempotent producers'
//! state, its leader epoch and the long-poll fetches waiting on it.
//!
//! The offsets a reader sees go through [`Partition::high_watermark`] and
//! [`Partition::log_end`]. On a single replica the high watermark is the
//! log's durable end; replication will make it the end durable on a majority
//! of the replica set, and every reader (fetch, list offsets, groups) already
//! asks the partition, not the log.
//!
//! Lives on one shard (`Rc`/`RefCell`); no borrow is held across an await.

use crate::error::PartitionError;
use crate::metrics::PartitionMetrics;
use crate::producer_state::{
    decode_snapshot, BatchMeta, ProducerBatch, ProducerStateTable, Verdict, PRODUCERS_PER_PARTITION_MAX,
};
use crate::replicated::Replication;
use crate::turns::{Turn, TurnQueue};
use crate::waiters::WaiterRef;
use bytes::Bytes;
use ferrolog_controlplane::topic_configs::ProducePolicy;
use ferrolog_model::{BatchHeader, Epoch, Ntp, Offset};
use ferrolog_replication::{AppendError, InsyncCheck};
use ferrolog_storage::Appended;
use ferrolog_storage::{Log, ReadRequest, StorageError};
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long a client batch waits for this node's replica to take the lead
/// the metadata already gives it, before it is refused as not the leader.
pub const LEADERSHIP_SETTLE_MAX: Duration = Duration::from_secs(1);
/// How often such a batch looks again.
const LEADERSHIP_SETTLE_POLL: Duration = Duration::from_millis(2);

/// Refused idempotent batches a partition remembers, and for how long.
const REFUSED_REMEMBERED: usize = 64;
const REFUSED_MEMORY: Duration = Duration::from_secs(10);
/// The largest sequence gap a new leader explains as batches lost with the
/// old one (a client holds at most a few requests in flight per partition).
const SEQUENCE_GAP_EXPLAINED_MAX: i64 = 1 << 20;

/// Bytes the producer-state rebuild reads from the log at a time.
pub const PRODUCER_REBUILD_READ_BYTES: usize = 4 << 20;
/// In a partition's directory: the producer state as of the log end at the
/// last clean close, so that an open replays only the batches after it
/// instead of scanning the whole log. It describes the log's batches below
/// that end, which only a truncation below it changes: `Partition::truncate`
/// empties the file (durably) before it truncates.
pub const PRODUCER_SNAPSHOT_FILE: &str = "producer_state.snapshot";

/// Where a recovered partition's producer state came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerStateSource {
    /// The snapshot its last clean close left, taken at the log's end.
    Snapshot,
    /// That snapshot, taken at an earlier end, and the batches appended
    /// after it (a crash came after the appends, before the next close).
    SnapshotAndTail,
    /// A scan of every batch header in the log.
    Scan,
}

/// One partition on its owner shard.
pub struct Partition {
    pub ntp: Ntp,
    pub log: Rc<Log>,
    /// The leader epoch this replica appends in, from the metadata
    /// snapshot; stamped into every batch it appends.
    leader_epoch: Cell<Epoch>,
    /// Whether this node leads the partition (else it is a replica that
    /// serves no client produce, fetch or list offsets).
    leads: Cell<bool>,
    /// Idempotent batches refused here as "not the leader" lately: (producer
    /// id, epoch, first sequence, when), newest last, at most
    /// [`REFUSED_REMEMBERED`]. See [`Partition::refusal_explains`].
    refused: RefCell<std::collections::VecDeque<(i64, i16, i32, Instant)>>,
    /// When this node's replica last took the lead (replicated partitions).
    /// See [`Partition::refusal_explains`].
    led_since: Cell<Option<Instant>>,
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
    /// Set once, at open, for a partition with more than one replica.
    replication: OnceCell<Replication>,
    /// The topic's `min.insync.replicas`. A single replica is the only one
    /// in sync, so above 1 it refuses every acks=all append, as Kafka does.
    min_insync: Cell<usize>,
    /// The topic's produce-time configs, applied by the leader to client
    /// batches before they are appended (`batch_policy`).
    produce_policy: Cell<ProducePolicy>,
    /// The order of client appends (`turns`): a pipelined connection's
    /// produce requests reach the log in the order they arrived.
    turns: TurnQueue,
}

impl Partition {
    /// A partition with no producer state (a new, empty log).
    pub fn new(ntp: Ntp, log: Rc<Log>) -> Partition {
        Self::with_producers(ntp, log, ProducerStateTable::new(PRODUCERS_PER_PARTITION_MAX))
    }

    /// A partition over a recovered log, with the producer state the log
    /// implies, so retries sent before a restart (or a kill -9) are still
    /// recognised: the snapshot of the last clean close (with the batches
    /// appended after it replayed, if any), else rebuilt from every batch
    /// header in the log.
    pub async fn recover(ntp: Ntp, log: Rc<Log>) -> Result<(Partition, ProducerStateSource), StorageError> {
        let start = log.offsets().start;
        let (producers, source) = match read_producer_snapshot(&ntp, &log).await? {
            Some((table, at)) if at == log.offsets().durable_next => (table, ProducerStateSource::Snapshot),
            Some((table, at)) => (
                replay_producer_state(&ntp, &log, table, at).await?,
                ProducerStateSource::SnapshotAndTail,
            ),
            None => (
                replay_producer_state(
                    &ntp,
                    &log,
                    ProducerStateTable::new(PRODUCERS_PER_PARTITION_MAX),
                    start,
                )
                .await?,
                ProducerStateSource::Scan,
            ),
        };
        Ok((Self::with_producers(ntp, log, producers), source))
    }

    /// Removes every batch of the log at or after `to` (a divergent suffix).
    /// The producer snapshot is emptied first, durably: it may describe
    /// batches this removes, and a crash after the log refills past its end
    /// would otherwise find it matching.
    pub async fn truncate(&self, to: Offset) -> Result<(), StorageError> {
        if !self.log.is_unborn() {
            empty_producer_snapshot(&self.log).await?;
        }
        self.log.truncate(to).await
    }

    /// Closes the log and, if that worked, leaves a snapshot of the producer
    /// state for the next open. A snapshot that cannot be written only costs
    /// the next open a scan.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.log.close().await?;
        if let Some(r) = self.replication() {
            r.fail_waiting(&self.ntp);
            if let Err(e) = r.checkpoint().await {
                warn!(partition = %self.ntp, "cannot checkpoint the replica state: {e}");
            }
        }
        if self.log.is_unborn() {
            // Never written: no directory to put a snapshot in, and no
            // producer to remember.
            return Ok(());
        }
        let end = self.log.offsets().durable_next;
        // An append that queued while the close flushed is neither written
        // nor reported discarded; it must not be in the snapshot.
        self.producers.borrow_mut().discard_from(end);
        let bytes = self.producers.borrow().encode_snapshot(end);
        let path = self.log.dir().join(PRODUCER_SNAPSHOT_FILE);
        let file = path.clone();
        if let Err(e) = ferrolog_shard::blocking(move || write_producer_snapshot(&file, &bytes)).await {
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
            leader_epoch: Cell::new(Epoch(0)),
            leads: Cell::new(true),
            refused: RefCell::new(std::collections::VecDeque::new()),
            led_since: Cell::new(None),
            waiters: RefCell::new(Vec::new()),
            producers,
            discards,
            metrics,
            replication: OnceCell::new(),
            min_insync: Cell::new(1),
            produce_policy: Cell::new(ProducePolicy::default()),
            turns: TurnQueue::default(),
        }
    }

    /// The replication adapter, for a partition with more than one replica.
    pub fn replication(&self) -> Option<&Replication> {
        self.replication.get()
    }

    /// Makes this a replicated partition (once, at open).
    pub fn set_replication(&self, r: Replication) {
        assert!(
            self.replication.set(r).is_ok(),
            "{}: replication set twice",
            self.ntp
        );
    }

    /// The topic's `min.insync.replicas` (at open and on every
    /// reconfiguration); a replicated partition hands it to its replica.
    pub fn set_min_insync(&self, min_insync: usize) {
        assert!(
            min_insync >= 1,
            "{}: min.insync.replicas of {min_insync}",
            self.ntp
        );
        self.min_insync.set(min_insync);
        if let Some(r) = self.replication() {
            r.set_min_insync(min_insync);
        }
    }

    /// The topic's produce-time configs (at open and on every
    /// reconfiguration).
    pub fn set_produce_policy(&self, policy: ProducePolicy) {
        self.produce_policy.set(policy);
    }

    pub fn produce_policy(&self) -> ProducePolicy {
        self.produce_policy.get()
    }

    /// The producers this partition holds state for.
    pub fn producers(&self) -> Vec<crate::producer_state::ProducerView> {
        self.producers.borrow().describe()
    }

    /// Producers whose sequence state this partition holds.
    pub fn producer_count(&self) -> usize {
        self.producers.borrow().len()
    }

    /// Appends one batch from a client; returns its base offset. Batches of
    /// an idempotent producer (producer id >= 0) are checked against its
    /// sequence state: a retry of a batch the log holds is answered with
    /// that batch's base offset and not appended again. The batch must have
    /// passed `check_producer_batch`. On a replicated partition `insync`
    /// says whether `min.insync.replicas` must hold (acks=all) or not.
    pub async fn append_producer_batch(
        &self,
        batch: Bytes,
        insync: InsyncCheck,
    ) -> Result<Offset, PartitionError> {
        let turn = self.append_turn();
        self.append_producer_batch_in_turn(batch, insync, &turn, true, None)
            .await
    }

    /// A place in this partition's order of client appends, taken now
    /// (module `turns`).
    pub fn append_turn(&self) -> Turn {
        self.turns.take()
    }

    /// [`Partition::append_producer_batch`] in `turn`: waits for it, and
    /// when `last` (the last batch of the entry the turn was taken for)
    /// passes it on as soon as the batch's fate is decided, before the batch
    /// is durable. With a `deadline` (when the request was answered "timed
    /// out", and its timeout), a replicated batch not appended by then never
    /// is (see `append_producer_batch_held`).
    pub async fn append_producer_batch_in_turn(
        &self,
        batch: Bytes,
        insync: InsyncCheck,
        turn: &Turn,
        last: bool,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<Offset, PartitionError> {
        turn.ready().await;
        let result = self
            .append_producer_batch_held(batch, insync, turn, last, deadline)
            .await;
        if last {
            turn.release();
        }
        result
    }

    async fn append_producer_batch_held(
        &self,
        batch: Bytes,
        insync: InsyncCheck,
        turn: &Turn,
        last: bool,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<Offset, PartitionError> {
        // Passes the turn on from inside the log's append section, once the
        // batch has its offsets.
        let appended_in_turn = || {
            if last {
                turn.release();
            }
        };
        let header = BatchHeader::parse(&batch).map_err(|e| PartitionError::CorruptBatch(e.to_string()))?;
        let n = u64::try_from(header.offset_count()).unwrap_or(1).max(1);
        let Some(repl) = self.replication() else {
            let min = self.min_insync.get();
            if insync == InsyncCheck::Enforce && min > 1 {
                return Err(PartitionError::NotEnoughReplicas { insync: 1, min });
            }
            return self.append_unreplicated(batch, &header, appended_in_turn).await;
        };
        // Replicated: the replica takes the offsets in the same append
        // section as the log, in its own epoch, or the batch is refused.
        let producer = ProducerBatch::from_header(&header);
        if let Some(pb) = &producer {
            if pb.first_seq < 0 {
                return Err(PartitionError::InvalidRecord(format!(
                    "batch of producer {} has no sequence number ({})",
                    pb.producer_id, pb.first_seq
                )));
            }
        }
        let settle_until = Instant::now() + LEADERSHIP_SETTLE_MAX;
        let mut verdict = None;
        let appended = loop {
            let epoch = repl.epoch();
            let refused: Cell<Option<AppendError>> = Cell::new(None);
            let late = Cell::new(false);
            let appended = self
                .log
                .append_guarded(batch.clone(), Some(epoch), |at| {
                    // The client was answered "timed out" (possibly
                    // persisted) and may send the producer's next batch at
                    // once. Appended later, this batch would land after
                    // that one was refused as out of order, which librdkafka
                    // answers with an epoch bump that renumbers, and so
                    // writes twice, every batch it holds that a leader kept
                    // (seen in the chaos test). Not appended, and noted as
                    // refused, the next batch is answered "not the leader"
                    // and the client resends both in order.
                    if deadline.is_some_and(|(d, _)| Instant::now() >= d) {
                        late.set(true);
                        return false;
                    }
                    if let Err(e) = repl.check_client_append(epoch, at.base_offset, insync) {
                        refused.set(Some(e));
                        return false;
                    }
                    if let Some(pb) = &producer {
                        let v =
                            self.producers
                                .borrow_mut()
                                .check_and_record(pb, at.base_offset, at.last_offset);
                        let go = v == Ok(Verdict::Append);
                        verdict = Some((v, self.discards.get()));
                        if !go {
                            return false;
                        }
                    }
                    repl.take_client_append(n, insync);
                    // Runs once this section ends and the batch is in the
                    // cache: followers need not wait for this write.
                    crate::replicated::kick_taken(&self.ntp);
                    appended_in_turn();
                    true
                })
                .await
                .map_err(|e| self.storage_error(e))?;
            if late.get() {
                debug!(partition = %self.ntp, "a batch whose request timed out before its append is not appended");
                self.note_refused(&batch);
                return Err(PartitionError::TimedOut(
                    deadline.map_or(Duration::ZERO, |(_, t)| t),
                ));
            }
            match refused.take() {
                None => break appended,
                // The metadata names this node the leader, but its replica
                // has not taken the lead yet (the assignment or its epoch
                // marker is on its way). Refusing would let the client's next
                // in-flight batch of the same producer land first and be
                // refused as out of order, which librdkafka answers with an
                // epoch bump that renumbers, and may duplicate, batches
                // another leader holds. So the batch waits for the replica.
                Some(AppendError::NotLeader)
                    if (self.leads() || self.named_leader()) && Instant::now() < settle_until =>
                {
                    glommio::timer::sleep(LEADERSHIP_SETTLE_POLL).await;
                }
                Some(AppendError::NotLeader) => {
                    self.note_refused(&batch);
                    return Err(PartitionError::NotLeader(self.ntp.clone()));
                }
                Some(AppendError::NotEnoughReplicas { insync, min }) => {
                    return Err(PartitionError::NotEnoughReplicas { insync, min })
                }
            }
        };
        if let Some(a) = appended {
            return Ok(a.base_offset);
        }
        let pb = producer.expect("only a producer's batch is refused by its sequence check");
        match verdict.expect("a refused append ran its guard") {
            (Ok(Verdict::Duplicate(original)), discards) => {
                self.settle_duplicate(&pb, original, discards).await
            }
            (Ok(Verdict::Append), _) => unreachable!("the guard refused an append it agreed to"),
            (Err(e), _) if self.refusal_explains(&e) => {
                debug!(partition = %self.ntp, "{e}: the batch before it was refused here (not the leader, or its request timed out before the append); answering not the leader");
                self.note_refused(&batch);
                Err(PartitionError::NotLeader(self.ntp.clone()))
            }
            (Err(e), _) => Err(PartitionError::Sequence(e)),
        }
    }

    /// A follower takes a batch of its leader's log into its own, as the
    /// leader stored it (offsets and leader epoch kept), recording its
    /// producer's sequence state so a failover keeps idempotence. Returns the
    /// batch's last offset once the batch is queued, not written: the caller
    /// flushes (the log's `append_queued`).
    pub async fn queue_replicated_batch(&self, batch: Bytes) -> Result<Offset, StorageError> {
        let header = BatchHeader::parse(&batch)?;
        let producer = ProducerBatch::from_header(&header);
        let appended = self
            .log
            .append_queued(batch, None, |at: Appended| {
                if let Some(pb) = &producer {
                    self.producers
                        .borrow_mut()
                        .record(pb, at.base_offset, at.last_offset);
                }
                true
            })
            .await?;
        Ok(appended.expect("an append whose guard agrees").last_offset)
    }

    /// Appends a new leader's epoch marker: a control batch of one record
    /// (key: control record version 0, type 2, Kafka's leader change; value:
    /// version 0 and the leader id), which consumers skip. Returns its
    /// offset.
    pub async fn append_marker(
        &self,
        epoch: Epoch,
        leader: ferrolog_model::NodeId,
    ) -> Result<Offset, StorageError> {
        let now = ferrolog_model::TimestampMs(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        );
        let mut value = vec![0u8, 0];
        value.extend_from_slice(&leader.0.to_be_bytes());
        let batch = ferrolog_model::BatchBuilder::new(now)
            .control()
            .record(now, Some(&[0, 0, 0, 2]), &value)
            .build();
        let a = self
            .log
            .append_with_epoch(Bytes::from(batch), Some(epoch))
            .await?;
        Ok(a.base_offset)
    }

    /// The single-replica path: the log is the whole truth.
    async fn append_unreplicated(
        &self,
        batch: Bytes,
        header: &BatchHeader,
        appended_in_turn: impl Fn(),
    ) -> Result<Offset, PartitionError> {
        let epoch = Some(self.leader_epoch());
        let Some(pb) = ProducerBatch::from_header(header) else {
            return self
                .log
                .append_guarded(batch, epoch, |_| {
                    appended_in_turn();
                    true
                })
                .await
                .map(|a| a.expect("an append whose guard agrees").base_offset)
                .map_err(|e| self.storage_error(e));
        };
        if pb.first_seq < 0 {
            return Err(PartitionError::InvalidRecord(format!(
                "batch of producer {} has no sequence number ({})",
                pb.producer_id, pb.first_seq
            )));
        }
        // The guard's verdict, and the discard count when it was reached.
        let mut verdict = None;
        let appended = self
            .log
            .append_guarded(batch, epoch, |at| {
                let v = self
                    .producers
                    .borrow_mut()
                    .check_and_record(&pb, at.base_offset, at.last_offset);
                let go = v == Ok(Verdict::Append);
                verdict = Some((v, self.discards.get()));
                if go {
                    appended_in_turn();
                }
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
            (Err(e), _) => Err(PartitionError::Sequence(e)),
        }
    }

    /// Answers a retry once its original is durable: the original may still
    /// wait for its flush, and that flush may fail.
    async fn settle_duplicate(
        &self,
        pb: &ProducerBatch,
        original: BatchMeta,
        discards_before: u64,
    ) -> Result<Offset, PartitionError> {
        // The original was in the log when the retry was checked; it is
        // still there unless a discard since then took it.
        let durable = || {
            let kept = self.discards.get() == discards_before
                || self
                    .producers
                    .borrow()
                    .contains(pb.producer_id, pb.epoch, &original);
            kept && self.log.offsets().durable_next > original.last_offset
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
            Ok(()) => PartitionError::LostToFailedWrite {
                base: original.base_offset,
                last: original.last_offset,
            },
        })
    }

    fn storage_error(&self, e: StorageError) -> PartitionError {
        let e = PartitionError::Storage(e);
        if !e.is_client_error() {
            warn!(partition = %self.ntp, "append failed: {e}");
        }
        e
    }

    /// Next offset past what readers may see: on a single replica, what is
    /// durable on this disk per the topic's durability; on a replicated one,
    /// what a majority of the replica set holds durably.
    pub fn high_watermark(&self) -> Offset {
        match self.replication() {
            Some(r) => r.high_watermark(),
            None => self.log.offsets().durable_next,
        }
    }

    /// Next offset to assign: everything appended, durable or not.
    pub fn log_end(&self) -> Offset {
        self.log.offsets().dirty_next
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> Offset {
        self.log.offsets().start
    }

    pub fn leader_epoch(&self) -> Epoch {
        self.leader_epoch.get()
    }

    /// The epoch clients' leader epochs are checked against (KIP-320): the
    /// replica's on a replicated partition (it moves with elections before
    /// the metadata does), else the metadata's.
    pub fn current_epoch(&self) -> Epoch {
        match self.replication() {
            Some(r) => r.epoch(),
            None => self.leader_epoch(),
        }
    }

    /// KIP-320: a request's current leader epoch (None: not checked, the
    /// client sent -1 or a version without the field) must be this
    /// partition's. An older one means the client's metadata is stale, a
    /// newer one that this node has not caught up yet; both are retriable.
    pub fn check_leader_epoch(&self, asked: Option<Epoch>) -> Result<(), PartitionError> {
        let Some(asked) = asked else {
            return Ok(());
        };
        let current = self.current_epoch();
        if asked < current {
            return Err(PartitionError::FencedLeaderEpoch { asked, current });
        }
        if asked > current {
            return Err(PartitionError::UnknownLeaderEpoch { asked, current });
        }
        Ok(())
    }

    /// Whether this node leads the partition (from the metadata snapshot).
    pub fn leads(&self) -> bool {
        match self.replication() {
            Some(r) => r.role() == ferrolog_replication::Role::Leader,
            None => self.leads.get(),
        }
    }

    /// Whether the metadata names this node the leader. On a replicated
    /// partition the replica may not have taken the lead yet (see
    /// [`Partition::leads`]).
    pub fn named_leader(&self) -> bool {
        self.leads.get()
    }

    /// Notes that the idempotent batches of `records` were refused as "not
    /// the leader", or not appended because their request timed out first
    /// (never appended either way).
    pub fn note_refused(&self, records: &Bytes) {
        let Ok(batches) = crate::ops::split_batches(records) else {
            return;
        };
        let mut refused = self.refused.borrow_mut();
        for b in batches {
            if let Some(pb) = BatchHeader::parse(&b)
                .ok()
                .as_ref()
                .and_then(ProducerBatch::from_header)
            {
                if refused.len() == REFUSED_REMEMBERED {
                    refused.pop_front();
                }
                refused.push_back((pb.producer_id, pb.epoch, pb.first_seq, Instant::now()));
            }
        }
    }

    /// This node's replica took the lead now.
    pub fn note_took_lead(&self) {
        self.led_since.set(Some(Instant::now()));
    }

    /// Whether an out-of-order batch of `producer_id`/`epoch` is explained
    /// by a batch this node refused as "not the leader" lately: the one at
    /// the sequence it expects. That happens when a client learns of this
    /// node's leadership before the node does: the first batch is refused,
    /// the next one (already in flight) arrives once it leads. Answering
    /// that one "out of order" makes librdkafka bump its epoch and renumber
    /// every batch it holds, which writes twice any batch another leader
    /// kept; "not the leader" makes it retry both, in order.
    ///
    /// Also explained: any gap within [`REFUSED_MEMORY`] of this replica
    /// taking the lead. The missing batch was then most likely sent to the
    /// old leader and lost with it (a 5-node chaos run saw it: the request
    /// timed out in the client while the old leader was cut off, the next
    /// batch reached the new leader, came back out of order, and the epoch
    /// bump that followed wrote a batch of another partition twice). The
    /// client still holds the missing batch and retries it; told "not the
    /// leader", it resends both in order. A gap that is really a client's
    /// (the batch is gone for good) is answered out of order once the window
    /// has passed.
    fn refusal_explains(&self, e: &crate::producer_state::SequenceError) -> bool {
        let crate::producer_state::SequenceError::OutOfOrder {
            producer_id,
            epoch,
            first_seq,
            expected,
        } = *e
        else {
            return false;
        };
        // Sequences wrap from i32::MAX to 0: how far the batch is ahead.
        let ahead = (i64::from(first_seq) - i64::from(expected)).rem_euclid(1 << 31);
        let gap_at_new_leader = (1..SEQUENCE_GAP_EXPLAINED_MAX).contains(&ahead)
            && self.led_since.get().is_some_and(|t| t.elapsed() < REFUSED_MEMORY);
        gap_at_new_leader
            || self.refused.borrow().iter().any(|&(pid, ep, seq, at)| {
                pid == producer_id && ep == epoch && seq == expected && at.elapsed() < REFUSED_MEMORY
            })
    }

    pub fn set_leads(&self, leads: bool) {
        self.leads.set(leads);
    }

    /// Set from the metadata snapshot. Epochs never go back: an older
    /// snapshot arriving late is a programmer error upstream.
    pub fn set_leader_epoch(&self, epoch: Epoch) {
        assert!(
            epoch >= self.leader_epoch.get(),
            "{}: leader epoch would go back from {} to {epoch}",
            self.ntp,
            self.leader_epoch.get()
        );
        self.leader_epoch.set(epoch);
    }

    /// Registers a long-poll fetch waiting for data past `offset`, or wakes
    /// it at once if there is some already. At most `max` are kept; over
    /// that the fetch simply waits out its max_wait_ms.
    pub fn add_waiter(&self, offset: Offset, waiter: WaiterRef, max: usize) {
        if self.high_watermark() > offset {
            waiter.wake();
            return;
        }
        let mut w = self.waiters.borrow_mut();
        if w.len() >= max {
            let now = Instant::now();
            w.retain(|r| r.deadline > now);
        }
        if w.len() < max {
            w.push(waiter);
        }
    }

    pub fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

/// Reads the producer snapshot of `log`'s directory: the table and the log
/// end it was taken at, if the file is whole (CRC) and that end is within
/// the log (at or after its start, at or before its end). Kept as it is:
/// it stays true of the batches below its end, which only a truncation
/// changes (`Partition::truncate` empties it first), so a crash after more
/// appends costs the next open only a replay of those. An empty or missing
/// file is no snapshot.
async fn read_producer_snapshot(
    ntp: &Ntp,
    log: &Log,
) -> Result<Option<(ProducerStateTable, Offset)>, StorageError> {
    if log.is_unborn() {
        return Ok(None);
    }
    let path = log.dir().join(PRODUCER_SNAPSHOT_FILE);
    let Some(bytes) = read_if_present(&path).await?.filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let o = log.offsets();
    match decode_snapshot(&bytes, PRODUCERS_PER_PARTITION_MAX) {
        Ok((table, at)) if o.start <= at && at <= o.durable_next => Ok(Some((table, at))),
        Ok((_, at)) => {
            warn!(partition = %ntp, snapshot_end = %at, log_start = %o.start, log_end = %o.durable_next, "producer snapshot outside the log; scanning");
            Ok(None)
        }
        Err(e) => {
            warn!(partition = %ntp, "{e}; scanning the log");
            Ok(None)
        }
    }
}

/// The bytes of the file at `path`, or `None` if there is none; read on
/// the shard's blocking pool, off the reactor.
pub(crate) async fn read_if_present(path: &std::path::Path) -> Result<Option<Vec<u8>>, StorageError> {
    let file = path.to_path_buf();
    ferrolog_shard::blocking(move || match std::fs::read(&file) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .await
    .map_err(|source| StorageError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Empties the producer snapshot of `log`'s directory, durably (before a
/// truncation: the snapshot may describe batches the truncation removes).
async fn empty_producer_snapshot(log: &Log) -> Result<(), StorageError> {
    let path = log.dir().join(PRODUCER_SNAPSHOT_FILE);
    let file = path.clone();
    let emptied =
        ferrolog_shard::blocking(
            move || match std::fs::OpenOptions::new().write(true).open(&file) {
                Ok(f) if f.metadata()?.len() == 0 => Ok(false),
                Ok(f) => f.set_len(0).map(|()| true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
        )
        .await
        .map_err(|source| StorageError::Io {
            op: "empty",
            path: path.clone(),
            source,
        })?;
    if emptied {
        // Through io_uring, not the blocking pool's one thread.
        sync_file(&path).await.map_err(|source| StorageError::Io {
            op: "sync",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// fdatasync of a file (its new length) through io_uring.
async fn sync_file(path: &std::path::Path) -> std::io::Result<()> {
    let f = glommio::io::BufferedFile::open(path).await?;
    f.fdatasync().await?;
    f.close().await?;
    Ok(())
}

/// Writes the snapshot over the one in the file (or into a new one), in
/// place: a new file per partition at every clean stop made the file system
/// allocate (and, ext4 without a journal, search for) 10,000 inodes per stop
/// of a 10,000-partition node. Not fsynced, and not through a temporary
/// file: a snapshot cut short by a kill or a power failure fails its CRC or
/// is empty, and the next open scans the log instead; one lost whole leaves
/// the previous one, still true of the batches below its end (a truncation
/// since would have emptied it durably).
fn write_producer_snapshot(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// `table` (the producer state of the log below `from`, a batch boundary)
/// brought to the log's end by recording every batch header from `from` on,
/// read [`PRODUCER_REBUILD_READ_BYTES`] at a time; from the log start with an
/// empty table, the state the whole log implies. A damaged stretch (which
/// reads report as corrupt) is skipped to the next segment, with a warning:
/// retries of batches in it are not recognised.
async fn replay_producer_state(
    ntp: &Ntp,
    log: &Log,
    mut table: ProducerStateTable,
    from: Offset,
) -> Result<ProducerStateTable, StorageError> {
    let mut at = from;
    let end = log.offsets().durable_next;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer_state::SequenceError;
    use ferrolog_storage::{LogConfig, LogContext};

    fn out_of_order(first_seq: i32, expected: i32) -> SequenceError {
        SequenceError::OutOfOrder {
            producer_id: 7,
            epoch: 0,
            first_seq,
            expected,
        }
    }

    /// A sequence gap is explained (answered "not the leader", so the client
    /// resends the missing batch and the gap closes in order) within the
    /// window after this replica took the lead, where the missing batch most
    /// likely went to the old leader; an overlap never is, nor a gap with
    /// no new leadership; the gap is measured across the wrap at i32::MAX.
    #[test]
    fn a_gap_right_after_taking_the_lead_is_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("executor")
            .run(async move {
                let (log, _) = Log::open(path.join("t-0"), LogConfig::default(), LogContext::new(1 << 20))
                    .await
                    .expect("open");
                let p = Partition::new(Ntp::new("t", 0), log);
                assert!(!p.refusal_explains(&out_of_order(3, 1)), "no leadership taken");
                p.note_took_lead();
                assert!(p.refusal_explains(&out_of_order(3, 1)), "a gap at a new leader");
                assert!(
                    p.refusal_explains(&out_of_order(2, i32::MAX)),
                    "a gap across the wrap"
                );
                assert!(!p.refusal_explains(&out_of_order(1, 3)), "an overlap");
                assert!(!p.refusal_explains(&out_of_order(1 << 21, 0)), "a gap too large");
                p.led_since.set(Some(Instant::now() - REFUSED_MEMORY));
                assert!(!p.refusal_explains(&out_of_order(3, 1)), "after the window");
                p.log.close().await.expect("close");
            });
    }
}
