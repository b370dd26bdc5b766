//! The group coordinator of one shard: the coordinator log partitions this
//! shard owns, the groups they hold, and the operations the group handlers
//! run here (through [`on_owner`]) for groups hashed to this shard.
//!
//! Each group lives in one of [`PARTITIONS`] coordinator partitions (hash of
//! the group id), a log at `<data dir>/__consumer_offsets/<n>`: an internal
//! topic ([`internal_topic`]) whose partitions the shard's partition manager
//! opens and closes like any other. The coordinator attaches to the ones the
//! manager says this node leads ([`attach`], which replays the log into
//! memory). Every committed offset and every group change is a record
//! there, written (fsync durability) before it is answered. Keeping the
//! count of partitions fixed keeps a group in the same log when the number
//! of shards changes.
//!
//! Borrows of the group table are never held across an await: the state
//! machine (`group.rs`) runs synchronously and hands back what must be
//! written or waited for.

use super::codec::{self, GroupValue, Key, OffsetValue};
use super::group::{
    Committed, Group, GroupLimits, GroupState, JoinArgs, JoinResult, Now, Reply, SyncArgs, SyncResult,
    SyncStep,
};
use bytes::Bytes;
use ferrolog_cluster::{ops, InternalTopic, Partition, PartitionError};
use ferrolog_model::{batch::records, BatchBuilder, BatchHeader, Epoch, Ntp, Offset, ShardId, TimestampMs};
use ferrolog_shard::{ShardError, Smp};
use ferrolog_storage::{Durability, Log, LogConfig, ReadRequest, StorageError};
use glommio::sync::Semaphore;
use kafka_protocol::error::ResponseError;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Name of the coordinator log (not a topic clients see).
pub const TOPIC: &str = ferrolog_controlplane::topics::OFFSETS_TOPIC;
/// Coordinator partitions. Fixed: a group's partition must not change.
pub const PARTITIONS: i32 = ferrolog_controlplane::topics::OFFSETS_PARTITIONS;
/// How long a coordinator write waits to be committed (on a majority of
/// the partition's replicas) before the request fails.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often group timers (sessions, rebalance phases) are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Writers hold one permit; compaction takes them all.
const WRITER_PERMITS: u64 = 1 << 20;
/// The coordinator log is compacted once it holds this many segments' worth
/// of bytes and this many times what is live.
const COMPACT_FACTOR: u64 = 4;
/// Records per batch when compaction rewrites the live state.
const COMPACT_BATCH_RECORDS: usize = 1000;

/// Coordinator settings (Kafka's group.* and offsets.* broker configs).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub limits: GroupLimits,
    /// Offsets of a group that has been Empty this long are deleted (for a
    /// group that never had members: offsets not committed for this long).
    pub offsets_retention: Duration,
    /// offset.metadata.max.bytes: longer commit metadata is refused.
    pub offset_metadata_max_bytes: usize,
    /// Segment size of the coordinator log; compaction starts at four
    /// segments' worth.
    pub log_segment_bytes: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            limits: GroupLimits::default(),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            offset_metadata_max_bytes: 4096,
            log_segment_bytes: 8 << 20,
        }
    }
}

pub fn partition_of(group: &str) -> i32 {
    (crc32c::crc32c(group.as_bytes()) % PARTITIONS as u32) as i32
}

/// The shard that coordinates `group`.
pub fn owner_shard(group: &str) -> ShardId {
    ferrolog_cluster::local().owner(&Ntp::new(TOPIC, partition_of(group)))
}

fn now() -> Now {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Now {
        at: Instant::now(),
        ms,
    }
}

/// Runs `op` on the shard that coordinates `group`.
pub async fn on_owner<R, F, Fut>(smp: &Smp, group: &str, op: F) -> Result<R, ShardError>
where
    R: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    smp.submit_to(owner_shard(group), op).await
}

/// One coordinator partition: its log and its groups.
struct CoordPartition {
    index: i32,
    /// The least size at which compaction is worth it (four segments).
    compact_min_bytes: u64,
    /// The size at which to look at compacting next: four times the live
    /// bytes last counted, so they are not counted on every write.
    compact_at_bytes: Cell<u64>,
    log: Rc<Log>,
    /// The partition of `log`: its high watermark bounds what is replayed.
    partition: Rc<Partition>,
    groups: RefCell<HashMap<String, Group>>,
    writers: Semaphore,
    compacting: Cell<bool>,
    /// The epoch the partition was led in when it was attached.
    epoch: Epoch,
}

pub struct Coordinator {
    config: GroupConfig,
    parts: RefCell<HashMap<i32, Rc<CoordPartition>>>,
    stopped: Cell<bool>,
}

thread_local! {
    static COORDINATOR: RefCell<Option<Rc<Coordinator>>> = const { RefCell::new(None) };
}

fn local() -> Option<Rc<Coordinator>> {
    COORDINATOR.with(|c| c.borrow().clone())
}

/// The coordinator's logs as an internal topic of the partition manager.
pub fn internal_topic(config: &GroupConfig) -> InternalTopic {
    InternalTopic {
        name: TOPIC.to_string(),
        partitions: PARTITIONS,
        log: LogConfig {
            segment_bytes: config.log_segment_bytes,
            retention_ms: None,
            retention_bytes: None,
            durability: Durability::Fsync,
            ..LogConfig::default()
        },
    }
}

/// Installs this shard's coordinator and starts its group timers. Runs
/// before the shard's partitions are opened; they attach as they open.
pub fn start_local(config: &GroupConfig) {
    let coord = Rc::new(Coordinator {
        config: config.clone(),
        parts: RefCell::new(HashMap::new()),
        stopped: Cell::new(false),
    });
    COORDINATOR.with(|c| *c.borrow_mut() = Some(coord.clone()));
    glommio::spawn_local(sweep_loop(coord)).detach();
}

/// Takes over a coordinator partition this node now leads: replays its log
/// into memory. Partitions of other topics are ignored.
pub async fn attach(partition: &Rc<Partition>) -> Result<(), StorageError> {
    let Some(coord) = local() else { return Ok(()) };
    if partition.ntp.topic != TOPIC || !ready_to_lead(partition) {
        // Not leading yet, or a new leader whose high watermark has not
        // caught up with its log: the sweep attaches it once it has.
        return Ok(());
    }
    if coord
        .parts
        .borrow()
        .get(&partition.ntp.partition.0)
        .is_some_and(|p| Rc::ptr_eq(&p.partition, partition) && p.epoch == epoch_of(partition))
    {
        return Ok(());
    }
    let index = partition.ntp.partition.0;
    let started = Instant::now();
    let segment_bytes = coord.config.log_segment_bytes;
    let part = Rc::new(CoordPartition {
        index,
        compact_min_bytes: COMPACT_FACTOR * segment_bytes,
        compact_at_bytes: Cell::new(COMPACT_FACTOR * segment_bytes),
        log: partition.log.clone(),
        partition: partition.clone(),
        groups: RefCell::new(HashMap::new()),
        writers: Semaphore::new(WRITER_PERMITS),
        compacting: Cell::new(false),
        epoch: epoch_of(partition),
    });
    let n = replay(&part).await?;
    info!(
        partition = index,
        records = n,
        groups = part.groups.borrow().len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded group coordinator partition"
    );
    coord.parts.borrow_mut().insert(index, part);
    Ok(())
}

/// The epoch this node leads a coordinator partition in.
fn epoch_of(p: &Partition) -> Epoch {
    p.replication().map_or(p.leader_epoch(), |r| r.epoch())
}

/// Whether this node leads `p` and everything in its log is committed, so
/// a replay sees every record a previous leader acknowledged.
fn ready_to_lead(p: &Partition) -> bool {
    p.leads() && p.high_watermark() >= p.log_end()
}

/// Attaches the coordinator partitions of this shard that this node now
/// leads (and re-attaches one led in a new epoch, whose log another leader
/// may have extended meanwhile); detaches those it no longer leads.
async fn follow_leadership(coord: &Coordinator) {
    let parts: Vec<Rc<Partition>> = ferrolog_cluster::local()
        .partitions()
        .into_iter()
        .filter(|p| p.ntp.topic == TOPIC)
        .collect();
    for p in parts {
        let index = p.ntp.partition.0;
        let attached = coord.parts.borrow().get(&index).cloned();
        match attached {
            Some(a) if Rc::ptr_eq(&a.partition, &p) && a.epoch == epoch_of(&p) && p.leads() => {}
            Some(_) if !p.leads() => {
                coord.parts.borrow_mut().remove(&index);
                info!(
                    partition = index,
                    "no longer leads this group coordinator partition"
                );
            }
            _ => {
                if let Err(e) = attach(&p).await {
                    warn!(partition = %p.ntp, "cannot load the group coordinator partition: {e}");
                }
            }
        }
    }
}

/// Coordinator partitions attached on this shard.
pub fn attached() -> usize {
    local().map_or(0, |c| c.parts.borrow().len())
}

/// Lets go of coordinator partitions this node no longer has.
pub fn detach(removed: &[Ntp]) {
    let Some(coord) = local() else { return };
    for ntp in removed.iter().filter(|n| n.topic == TOPIC) {
        coord.parts.borrow_mut().remove(&ntp.partition.0);
    }
}

/// Stops the timers and lets go of the coordinator partitions (shutdown;
/// the partition manager closes their logs).
pub fn close_local() {
    let Some(coord) = local() else { return };
    coord.stopped.set(true);
    coord.parts.borrow_mut().clear();
}

/// Replays the whole log: the newest record of each key wins.
async fn replay(part: &CoordPartition) -> Result<usize, StorageError> {
    let o = part.log.offsets();
    let mut at = o.start;
    let mut n = 0;
    let now = now();
    let end = part.partition.high_watermark();
    while at < end {
        let read = part
            .log
            .read(ReadRequest {
                offset: at,
                max_bytes: 4 << 20,
                end: None,
            })
            .await?;
        if read.batches.is_empty() {
            break;
        }
        for batch in &read.batches {
            let h = BatchHeader::parse(batch)?;
            at = h.last_offset().plus(1);
            // A leader's epoch marker (replicated partitions) is not a
            // coordinator record.
            if h.attributes & ferrolog_model::batch::ATTR_CONTROL != 0 {
                continue;
            }
            let Some(recs) = records(batch) else {
                warn!(partition = part.index, offset = %h.base_offset, "skipping an unreadable coordinator batch");
                continue;
            };
            for r in recs {
                n += 1;
                if let Err(e) = apply_record(part, r.key.unwrap_or_default(), r.value, r.offset.0, now) {
                    warn!(partition = part.index, offset = %r.offset, "skipping a coordinator record: {e}");
                }
            }
        }
    }
    // Groups whose every record was deleted are gone.
    part.groups
        .borrow_mut()
        .retain(|_, g| g.persisted.is_some() || !g.offsets.is_empty());
    Ok(n)
}

fn apply_record(
    part: &CoordPartition,
    key: &[u8],
    value: Option<&[u8]>,
    log_offset: i64,
    now: Now,
) -> Result<(), String> {
    let key = codec::decode_key(key)?;
    let mut groups = part.groups.borrow_mut();
    let group = key.group().to_string();
    let g = groups
        .entry(group.clone())
        .or_insert_with(|| Group::new(group, now));
    match (key, value) {
        (Key::Offset { topic, partition, .. }, Some(v)) => {
            let v = codec::decode_offset(v)?;
            g.apply_offset(topic, partition, committed(v, log_offset));
        }
        (Key::Offset { topic, partition, .. }, None) => {
            g.offsets.remove(&(topic, partition));
        }
        (Key::Group { .. }, Some(v)) => {
            g.restore(codec::decode_group(v)?, now);
            g.persisted = Some(Bytes::copy_from_slice(v));
        }
        (Key::Group { group }, None) => {
            let offsets = std::mem::take(&mut g.offsets);
            let mut fresh = Group::new(group, now);
            fresh.offsets = offsets;
            *g = fresh;
        }
    }
    Ok(())
}

fn committed(v: OffsetValue, log_offset: i64) -> Committed {
    Committed {
        offset: v.offset,
        leader_epoch: v.leader_epoch,
        metadata: v.metadata,
        commit_ms: v.commit_ms,
        log_offset,
    }
}

impl CoordPartition {
    /// Appends records in one batch; returns the first one's offset.
    async fn write(&self, recs: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<Offset, PartitionError> {
        let _permit = self
            .writers
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        self.write_locked(recs).await
    }

    /// Appends the records as one batch through the partition (replicated
    /// when it has replicas) and waits until they are committed.
    async fn write_locked(&self, recs: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<Offset, PartitionError> {
        let ts = TimestampMs(now().ms);
        let mut b = BatchBuilder::new(ts);
        for (k, v) in recs {
            b = b.record_or_tombstone(ts, Some(k), v.as_deref());
        }
        ops::append_committed(&self.partition, Bytes::from(b.build()), COMMIT_TIMEOUT).await
    }

    /// Persists the group's record if a change asked for it (it became
    /// Empty, or a static member was replaced), in the background.
    fn persist_if_dirty(self: &Rc<Self>, group: &str) {
        let value = self
            .groups
            .borrow_mut()
            .get_mut(group)
            .and_then(Group::take_dirty);
        if let Some(v) = value {
            let part = self.clone();
            let group = group.to_string();
            glommio::spawn_local(async move {
                if let Err(e) = part.write_group(&group, &v).await {
                    warn!(group = %group, "persisting the group failed: {e}");
                }
            })
            .detach();
        }
    }

    async fn write_group(self: &Rc<Self>, group: &str, v: &GroupValue) -> Result<(), PartitionError> {
        let bytes = codec::encode_group(v);
        let key = codec::encode_key(&Key::Group {
            group: group.to_string(),
        });
        self.write(&[(key, Some(bytes.clone()))]).await?;
        if let Some(g) = self.groups.borrow_mut().get_mut(group) {
            g.persisted = Some(Bytes::from(bytes));
        }
        self.maybe_compact();
        Ok(())
    }

    fn live_bytes(&self) -> u64 {
        self.groups
            .borrow()
            .iter()
            .map(|(id, g)| {
                let offsets: usize = g
                    .offsets
                    .iter()
                    .map(|((t, _), c)| 64 + id.len() + t.len() + c.metadata.len())
                    .sum();
                (offsets + g.persisted.as_ref().map_or(0, |p| p.len() + id.len() + 32)) as u64
            })
            .sum()
    }

    fn maybe_compact(self: &Rc<Self>) {
        let size = self.log.size_bytes();
        if self.compacting.get() || size < self.compact_at_bytes.get() {
            return;
        }
        let next = (COMPACT_FACTOR * self.live_bytes()).max(self.compact_min_bytes);
        self.compact_at_bytes.set(next);
        if size < next {
            return;
        }
        self.compacting.set(true);
        let part = self.clone();
        glommio::spawn_local(async move {
            if let Err(e) = part.compact().await {
                warn!(
                    partition = part.index,
                    "compacting the group coordinator log failed: {e}"
                );
            }
            part.compacting.set(false);
        })
        .detach();
    }

    /// Rewrites everything live at the tail, then deletes the segments
    /// wholly before it. Replaying the rest still yields the same state: each
    /// key's newest record is in the rewritten part or after it.
    async fn compact(&self) -> Result<(), PartitionError> {
        let _all = self
            .writers
            .acquire_permit(WRITER_PERMITS)
            .await
            .map_err(|_| StorageError::Closed)?;
        let recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = {
            let groups = self.groups.borrow();
            let mut out = Vec::new();
            for (id, g) in groups.iter() {
                if let Some(p) = &g.persisted {
                    out.push((
                        codec::encode_key(&Key::Group { group: id.clone() }),
                        Some(p.to_vec()),
                    ));
                }
                for ((topic, partition), c) in &g.offsets {
                    let key = Key::Offset {
                        group: id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    };
                    out.push((
                        codec::encode_key(&key),
                        Some(codec::encode_offset(&offset_value(c))),
                    ));
                }
            }
            out
        };
        let before = self.log.size_bytes();
        let mut first = None;
        for chunk in recs.chunks(COMPACT_BATCH_RECORDS) {
            let at = self.write_locked(chunk).await?;
            first.get_or_insert(at);
        }
        let first = first.unwrap_or(self.partition.high_watermark());
        let deleted = self.log.delete_before(first).await?;
        info!(
            partition = self.index,
            records = recs.len(),
            before_bytes = before,
            after_bytes = self.log.size_bytes(),
            deleted_segments = deleted,
            "compacted the group coordinator log"
        );
        Ok(())
    }
}

fn offset_value(c: &Committed) -> OffsetValue {
    OffsetValue {
        offset: c.offset,
        leader_epoch: c.leader_epoch,
        metadata: c.metadata.clone(),
        commit_ms: c.commit_ms,
    }
}

/// Runs group timers, and now and then offset retention, until shutdown.
async fn sweep_loop(coord: Rc<Coordinator>) {
    let retention = coord.config.offsets_retention;
    let retention_every = (retention / 4).clamp(SWEEP_INTERVAL, Duration::from_secs(60));
    let mut last_retention = Instant::now();
    while !coord.stopped.get() {
        glommio::timer::sleep(SWEEP_INTERVAL).await;
        follow_leadership(&coord).await;
        let parts: Vec<Rc<CoordPartition>> = coord.parts.borrow().values().cloned().collect();
        let now = now();
        for part in &parts {
            let ids: Vec<String> = {
                let mut groups = part.groups.borrow_mut();
                for g in groups.values_mut() {
                    g.tick(now, &coord.config.limits);
                }
                groups
                    .iter()
                    .filter(|(_, g)| g.state() != GroupState::Dead)
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            for id in ids {
                part.persist_if_dirty(&id);
            }
        }
        if last_retention.elapsed() >= retention_every {
            last_retention = Instant::now();
            for part in &parts {
                expire_offsets(part, now, retention).await;
            }
        }
    }
}

/// Deletes expired offsets (tombstones) and then groups left with nothing.
async fn expire_offsets(part: &Rc<CoordPartition>, now: Now, retention: Duration) {
    let retention_ms = retention.as_millis() as i64;
    // (group, expired offsets, whether the group goes too)
    type Doomed = (String, Vec<(String, i32)>, bool);
    let mut doomed: Vec<Doomed> = Vec::new();
    {
        let mut groups = part.groups.borrow_mut();
        groups.retain(|_, g| {
            !(g.state() == GroupState::Empty && g.is_empty() && g.offsets.is_empty() && g.persisted.is_none())
        });
        for (id, g) in groups.iter() {
            if g.state() != GroupState::Empty || !g.is_empty() {
                continue;
            }
            // A group that had members: all its offsets, once it has been
            // Empty long enough. One that never had any (commits with
            // generation -1): each offset by its commit time.
            let managed = g.protocol_type().is_some();
            let idle = now.ms - g.state_since_ms() >= retention_ms;
            let expired: Vec<(String, i32)> = g
                .offsets
                .iter()
                .filter(|(_, c)| {
                    if managed {
                        idle
                    } else {
                        now.ms - c.commit_ms >= retention_ms
                    }
                })
                .map(|(k, _)| k.clone())
                .collect();
            let drop_group = expired.len() == g.offsets.len();
            if !expired.is_empty() || drop_group {
                doomed.push((id.clone(), expired, drop_group));
            }
        }
    }
    for (id, keys, drop_group) in doomed {
        let mut recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = keys
            .iter()
            .map(|(t, p)| {
                let k = Key::Offset {
                    group: id.clone(),
                    topic: t.clone(),
                    partition: *p,
                };
                (codec::encode_key(&k), None)
            })
            .collect();
        let persisted = part
            .groups
            .borrow()
            .get(&id)
            .is_some_and(|g| g.persisted.is_some());
        if drop_group && persisted {
            recs.push((codec::encode_key(&Key::Group { group: id.clone() }), None));
        }
        if recs.is_empty() {
            part.groups.borrow_mut().remove(&id);
            continue;
        }
        match part.write(&recs).await {
            Ok(_) => {
                let mut groups = part.groups.borrow_mut();
                if let Some(g) = groups.get_mut(&id) {
                    for k in &keys {
                        g.offsets.remove(k);
                    }
                    // Only if nobody joined or committed meanwhile.
                    if drop_group && g.state() == GroupState::Empty && g.is_empty() && g.offsets.is_empty() {
                        groups.remove(&id);
                    } else if drop_group {
                        g.persisted = None;
                    }
                }
                info!(group = %id, offsets = keys.len(), removed = drop_group, "expired committed offsets");
            }
            Err(e) => warn!(group = %id, "expiring offsets failed: {e}"),
        }
    }
}

// ---- operations, run on the group's coordinator shard ----

fn partition_for(group: &str) -> Result<(Rc<Coordinator>, Rc<CoordPartition>), ResponseError> {
    let coord = local().ok_or(ResponseError::CoordinatorNotAvailable)?;
    let part = coord.parts.borrow().get(&partition_of(group)).cloned();
    // Only while the shard stops (or with a routing bug): clients look for
    // the coordinator again.
    let part = part.ok_or(ResponseError::NotCoordinator)?;
    Ok((coord, part))
}

/// Errors writing the coordinator log, as Kafka reports them to clients.
fn store_error(e: &PartitionError) -> ResponseError {
    match e {
        PartitionError::Storage(StorageError::BatchTooLarge { .. }) => ResponseError::InvalidCommitOffsetSize,
        PartitionError::Storage(StorageError::Closed)
        | PartitionError::NotLeader(_)
        | PartitionError::NotCommitted(_) => ResponseError::NotCoordinator,
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

pub async fn join(group: String, a: JoinArgs) -> JoinResult {
    let (coord, part) = match partition_for(&group) {
        Ok(x) => x,
        Err(e) => return JoinResult::failed(e, &a.member_id),
    };
    let now = now();
    let reply = {
        let mut groups = part.groups.borrow_mut();
        if !groups.contains_key(&group) && !a.member_id.is_empty() {
            return JoinResult::failed(ResponseError::UnknownMemberId, &a.member_id);
        }
        let member = a.member_id.clone();
        let g = groups
            .entry(group.clone())
            .or_insert_with(|| Group::new(group.clone(), now));
        (g.join(a, now, &coord.config.limits), member)
    };
    part.persist_if_dirty(&group);
    match reply {
        (Reply::Now(r), _) => r,
        (Reply::Later(rx), member) => rx
            .await
            .unwrap_or_else(|_| JoinResult::failed(ResponseError::RebalanceInProgress, &member)),
    }
}

pub async fn sync(group: String, a: SyncArgs) -> SyncResult {
    let (coord, part) = match partition_for(&group) {
        Ok(x) => x,
        Err(e) => return SyncResult::failed(e),
    };
    let step = {
        let mut groups = part.groups.borrow_mut();
        match groups.get_mut(&group) {
            None => return SyncResult::failed(ResponseError::UnknownMemberId),
            Some(g) => g.sync(a, now()),
        }
    };
    let rx = match step {
        SyncStep::Reply(Reply::Now(r)) => return r,
        SyncStep::Reply(Reply::Later(rx)) => rx,
        SyncStep::Persist {
            generation,
            value,
            rx,
        } => {
            let outcome = part.write_group(&group, &value).await.map_err(|e| {
                warn!(group = %group, "persisting the group's assignments failed: {e}");
                store_error(&e)
            });
            if let Some(g) = part.groups.borrow_mut().get_mut(&group) {
                g.finish_sync(generation, outcome, now(), &coord.config.limits);
            }
            part.persist_if_dirty(&group);
            rx
        }
    };
    rx.await
        .unwrap_or_else(|_| SyncResult::failed(ResponseError::RebalanceInProgress))
}

pub async fn heartbeat(
    group: String,
    member_id: String,
    instance_id: Option<String>,
    generation: i32,
) -> Option<ResponseError> {
    let (_, part) = match partition_for(&group) {
        Ok(x) => x,
        Err(e) => return Some(e),
    };
    let mut groups = part.groups.borrow_mut();
    match groups.get_mut(&group) {
        None => Some(ResponseError::UnknownMemberId),
        Some(g) => g.heartbeat(&member_id, instance_id.as_deref(), generation, now()),
    }
}

/// LeaveGroup: one answer per leaving member, or an error for all.
pub async fn leave(
    group: String,
    leaving: Vec<(String, Option<String>)>,
) -> Result<Vec<Option<ResponseError>>, ResponseError> {
    let (coord, part) = partition_for(&group)?;
    let answers = {
        let mut groups = part.groups.borrow_mut();
        match groups.get_mut(&group) {
            None => leaving
                .iter()
                .map(|_| Some(ResponseError::UnknownMemberId))
                .collect(),
            Some(g) => g.leave(&leaving, now(), &coord.config.limits),
        }
    };
    part.persist_if_dirty(&group);
    Ok(answers)
}

pub struct CommitItem {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

pub struct CommitArgs {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub items: Vec<CommitItem>,
}

/// OffsetCommit: the offsets are durable in the coordinator log before this
/// returns Ok. An error applies to every item.
pub async fn commit(group: String, a: CommitArgs) -> Result<(), ResponseError> {
    let (_, part) = partition_for(&group)?;
    let now = now();
    {
        let mut groups = part.groups.borrow_mut();
        let g = match groups.get_mut(&group) {
            Some(g) => g,
            // A client that assigns partitions itself commits with
            // generation -1; anything else names a group that is gone.
            None if a.generation < 0 => groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group.clone(), now)),
            None => return Err(ResponseError::IllegalGeneration),
        };
        g.check_commit(&a.member_id, a.instance_id.as_deref(), a.generation, now)?;
    }
    if a.items.is_empty() {
        return Ok(());
    }
    let recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = a
        .items
        .iter()
        .map(|i| {
            let key = Key::Offset {
                group: group.clone(),
                topic: i.topic.clone(),
                partition: i.partition,
            };
            let value = OffsetValue {
                offset: i.offset,
                leader_epoch: i.leader_epoch,
                metadata: i.metadata.clone(),
                commit_ms: now.ms,
            };
            (codec::encode_key(&key), Some(codec::encode_offset(&value)))
        })
        .collect();
    let base = part.write(&recs).await.map_err(|e| {
        warn!(group = %group, "writing committed offsets failed: {e}");
        store_error(&e)
    })?;
    {
        let mut groups = part.groups.borrow_mut();
        let g = groups
            .entry(group.clone())
            .or_insert_with(|| Group::new(group.clone(), now));
        for (n, i) in a.items.into_iter().enumerate() {
            let c = Committed {
                offset: i.offset,
                leader_epoch: i.leader_epoch,
                metadata: i.metadata,
                commit_ms: now.ms,
                log_offset: base.0 + n as i64,
            };
            g.apply_offset(i.topic, i.partition, c);
        }
    }
    part.maybe_compact();
    Ok(())
}

/// A committed offset as OffsetFetch reports it (`None`: nothing committed).
pub type Fetched = (String, Vec<(i32, Option<Committed>)>);

/// Per topic, each partition's error (`None`: done).
pub type PartitionErrors = Vec<(String, Vec<(i32, Option<ResponseError>)>)>;

/// OffsetFetch of the listed partitions, or of all the group has (`None`).
pub async fn fetch_offsets(
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<Fetched>, ResponseError> {
    let (_, part) = partition_for(&group)?;
    let groups = part.groups.borrow();
    let g = groups.get(&group);
    let get = |t: &str, p: i32| g.and_then(|g| g.offsets.get(&(t.to_string(), p)).cloned());
    Ok(match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(t, ps)| {
                let got = ps.into_iter().map(|p| (p, get(&t, p))).collect();
                (t, got)
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<(i32, Option<Committed>)>> =
                Default::default();
            if let Some(g) = g {
                for ((t, p), c) in &g.offsets {
                    by_topic.entry(t.clone()).or_default().push((*p, Some(c.clone())));
                }
            }
            by_topic
                .into_iter()
                .map(|(t, mut ps)| {
                    ps.sort_by_key(|(p, _)| *p);
                    (t, ps)
                })
                .collect()
        }
    })
}

/// ListGroups on this shard: (group id, protocol type, state name).
pub async fn list_local() -> Vec<(String, String, &'static str)> {
    let Some(coord) = local() else { return Vec::new() };
    let parts: Vec<Rc<CoordPartition>> = coord.parts.borrow().values().cloned().collect();
    let mut out = Vec::new();
    for part in parts {
        for (id, g) in part.groups.borrow().iter() {
            if g.state() != GroupState::Dead {
                out.push((
                    id.clone(),
                    g.protocol_type().unwrap_or("").to_string(),
                    g.state().name(),
                ));
            }
        }
    }
    out
}

pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

pub struct GroupSummary {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

pub async fn describe(group: String) -> Result<GroupSummary, ResponseError> {
    let (_, part) = partition_for(&group)?;
    let groups = part.groups.borrow();
    let Some(g) = groups.get(&group) else {
        return Ok(GroupSummary {
            state: GroupState::Dead.name(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: Vec::new(),
        });
    };
    let stable = g.state() == GroupState::Stable;
    Ok(GroupSummary {
        state: g.state().name(),
        protocol_type: g.protocol_type().unwrap_or("").to_string(),
        protocol: if stable {
            g.protocol().unwrap_or("").to_string()
        } else {
            String::new()
        },
        members: g
            .describe_members()
            .into_iter()
            .map(
                |(member_id, instance_id, client_id, client_host, metadata, assignment)| MemberSummary {
                    member_id,
                    instance_id,
                    client_id,
                    client_host,
                    metadata,
                    assignment,
                },
            )
            .collect(),
    })
}

/// DeleteGroups of one group: only an Empty group can be deleted.
pub async fn delete(group: String) -> Option<ResponseError> {
    let (_, part) = match partition_for(&group) {
        Ok(x) => x,
        Err(e) => return Some(e),
    };
    let recs = {
        let mut groups = part.groups.borrow_mut();
        let Some(g) = groups.get_mut(&group) else {
            return Some(ResponseError::GroupIdNotFound);
        };
        match g.state() {
            GroupState::Dead => return Some(ResponseError::GroupIdNotFound),
            GroupState::Empty if g.is_empty() => {}
            _ => return Some(ResponseError::NonEmptyGroup),
        }
        g.mark_dead(now());
        let mut recs: Vec<(Vec<u8>, Option<Vec<u8>>)> = g
            .offsets
            .keys()
            .map(|(t, p)| {
                let k = Key::Offset {
                    group: group.clone(),
                    topic: t.clone(),
                    partition: *p,
                };
                (codec::encode_key(&k), None)
            })
            .collect();
        if g.persisted.is_some() {
            recs.push((codec::encode_key(&Key::Group { group: group.clone() }), None));
        }
        recs
    };
    let outcome = if recs.is_empty() {
        Ok(Offset(0))
    } else {
        part.write(&recs).await
    };
    let mut groups = part.groups.borrow_mut();
    match outcome {
        Ok(_) => {
            groups.remove(&group);
            info!(group = %group, "deleted group");
            None
        }
        Err(e) => {
            warn!(group = %group, "deleting the group failed: {e}");
            if let Some(g) = groups.get_mut(&group) {
                g.revive(now());
            }
            Some(store_error(&e))
        }
    }
}

/// OffsetDelete: per partition, or an error for the whole request.
pub async fn delete_offsets(
    group: String,
    topics: Vec<(String, Vec<i32>)>,
) -> Result<PartitionErrors, ResponseError> {
    let (_, part) = partition_for(&group)?;
    let (answers, recs, keys) = {
        let groups = part.groups.borrow();
        let g = groups.get(&group).ok_or(ResponseError::GroupIdNotFound)?;
        let subscribed = match g.state() {
            GroupState::Dead => return Err(ResponseError::GroupIdNotFound),
            GroupState::Empty => Vec::new(),
            _ if g.protocol_type() == Some("consumer") => match g.subscribed_topics() {
                Some(t) => t,
                // Unreadable subscriptions: assume every topic is in use.
                None => topics.iter().map(|(t, _)| t.clone()).collect(),
            },
            _ => return Err(ResponseError::NonEmptyGroup),
        };
        let mut recs = Vec::new();
        let mut keys = Vec::new();
        let answers: PartitionErrors = topics
            .into_iter()
            .map(|(t, ps)| {
                let in_use = subscribed.contains(&t);
                let per = ps
                    .into_iter()
                    .map(|p| {
                        if in_use {
                            return (p, Some(ResponseError::GroupSubscribedToTopic));
                        }
                        if g.offsets.contains_key(&(t.clone(), p)) {
                            let k = Key::Offset {
                                group: group.clone(),
                                topic: t.clone(),
                                partition: p,
                            };
                            recs.push((codec::encode_key(&k), None));
                            keys.push((t.clone(), p));
                        }
                        (p, None)
                    })
                    .collect();
                (t, per)
            })
            .collect();
        (answers, recs, keys)
    };
    if !recs.is_empty() {
        part.write(&recs).await.map_err(|e| store_error(&e))?;
        if let Some(g) = part.groups.borrow_mut().get_mut(&group) {
            for k in &keys {
                g.offsets.remove(k);
            }
        }
    }
    Ok(answers)
}
