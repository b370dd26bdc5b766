//! The partition manager: the one owner of every partition log of a shard.
//!
//! Partitions are opened, reconfigured, closed and deleted only here, and
//! only to match a published metadata snapshot ([`PartitionManager::apply_snapshot`],
//! which carries out a `reconcile::plan`), plus the node's internal topics
//! (the group coordinator's), which are ordinary partitions of this manager.
//! Other layers look partitions up here and learn from the returned
//! [`Reconciled`] which partitions this node now leads or no longer has.
//!
//! One manager per data shard, installed before the shard's first await and
//! reached with [`local`]. Reconciliations run one at a time (a permit);
//! snapshots older than the one applied are ignored.

use crate::isr::IsrCache;
use crate::metrics::{ManagerMetrics, PartitionSnapshot};
use crate::partition::Partition;
use crate::placement::Placement;
use crate::reconcile::{self, Desired};
use crate::repl_wire::PartitionKey;
use crate::replicated::{self, ReplNet, Replication};
use crate::waiters::Waiters;
use ferrolog_controlplane::metadata::{Broker, MetadataSnapshot};
use ferrolog_controlplane::peer_hints::PeerHints;
use ferrolog_controlplane::topic_configs::{self, ProducePolicy};
use ferrolog_controlplane::topics::{self, TopicDefaults};
use ferrolog_model::{NodeId, Ntp, ShardId};
use ferrolog_shard::Smp;
use ferrolog_storage::{Log, LogConfig, LogContext, StorageError};
use futures::StreamExt as _;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Partitions one shard opens (at start, or for a CreateTopics) or closes
/// at once.
/// Each open in flight holds a recovery read buffer (256 KiB), so this
/// bounds that memory to 8 MiB per shard; 32 keeps the blocking pool and the
/// disk busy while each open waits on one of them.
pub const OPEN_CONCURRENCY: usize = 32;

/// Sealed segment files each shard may keep open however many partitions
/// it holds, so that reads of older data never thrash a single file.
pub const SEALED_FILES_MIN_PER_SHARD: usize = 64;

/// Partition replicas a node with `fd_budget` and `shards` data shards
/// accepts: each keeps its active segment open, and every shard keeps room
/// for [`SEALED_FILES_MIN_PER_SHARD`] sealed files.
pub fn partitions_max(fd_budget: usize, shards: usize) -> usize {
    fd_budget.saturating_sub(shards * SEALED_FILES_MIN_PER_SHARD)
}

/// Sealed segment files one shard keeps open when it holds `open_partitions`
/// (each with its active segment open): its share of the budget left over,
/// at least [`SEALED_FILES_MIN_PER_SHARD`]. Since [`partitions_max`] bounds
/// the partitions, the node's segment files stay within the budget unless
/// the shards hold very unequal numbers of partitions (then by at most
/// `shards x SEALED_FILES_MIN_PER_SHARD`).
pub fn sealed_files_max(fd_budget: usize, shards: usize, open_partitions: usize) -> usize {
    (fd_budget / shards.max(1))
        .saturating_sub(open_partitions)
        .max(SEALED_FILES_MIN_PER_SHARD)
}

/// Where directories that no metadata names are moved, in the data dir.
pub const SET_ASIDE_DIR: &str = "set-aside";

/// A topic of the node's own (not in the topic table, not shown to
/// clients): fixed partition count and settings, led by this node.
#[derive(Clone, Debug)]
pub struct InternalTopic {
    pub name: String,
    pub partitions: i32,
    pub log: LogConfig,
}

/// How long a broker that left the live set stays in
/// [`PartitionManager::departed_brokers`].
pub const DEPARTED_BROKER_LISTED_FOR: Duration = Duration::from_secs(5);

/// How a shard asks the controller for a new election of a partition.
pub type ElectionRequests = Rc<dyn Fn(Ntp)>;

/// Settings of the partition layer, identical on every shard.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Per-shard cache of recently appended batches.
    pub batch_cache_bytes: usize,
    /// Segment files the node's logs may hold open (the profile's
    /// `storage.fd_budget`); see [`partitions_max`] and [`sealed_files_max`].
    pub fd_budget: usize,
    /// Long-poll fetches one partition remembers; more just wait out max_wait_ms.
    pub fetch_waiters_per_partition_max: usize,
    pub topic_defaults: TopicDefaults,
    pub internal_topics: Vec<InternalTopic>,
    /// The node's hints about its peers (one per process, shared with the
    /// controller): this shard's replication links report to it.
    pub peer_hints: Arc<PeerHints>,
}

impl ClusterConfig {
    /// A partition's directory: `<topic>-<n>` as Kafka names it, or
    /// `<topic>/<n>` for internal topics.
    pub fn partition_dir(&self, ntp: &Ntp) -> PathBuf {
        if self.internal(&ntp.topic).is_some() {
            self.data_dir.join(&ntp.topic).join(ntp.partition.0.to_string())
        } else {
            self.data_dir.join(ntp.dir_name())
        }
    }

    pub fn internal(&self, topic: &str) -> Option<&InternalTopic> {
        self.internal_topics.iter().find(|t| t.name == topic)
    }
}

thread_local! {
    static MANAGER: RefCell<Option<Rc<PartitionManager>>> = const { RefCell::new(None) };
}

/// This shard's partition manager. Panics off a data shard: a programmer error.
pub fn local() -> Rc<PartitionManager> {
    MANAGER.with(|m| {
        m.borrow()
            .clone()
            .expect("the partition manager is used off a data shard")
    })
}

/// Installs this shard's manager; must run before the shard's first await
/// so that calls from other shards always find it.
pub fn install(manager: Rc<PartitionManager>) {
    MANAGER.with(|m| *m.borrow_mut() = Some(manager));
}

/// What one reconciliation changed, for the layers above.
#[derive(Default)]
pub struct Reconciled {
    /// Partitions this node now leads (opened, or newly leader).
    pub led: Vec<Rc<Partition>>,
    /// Partitions closed and deleted.
    pub removed: Vec<Ntp>,
    /// Partitions the plan wanted open that failed to open (logged).
    pub failed: Vec<Ntp>,
}

pub struct PartitionManager {
    pub smp: Rc<Smp>,
    pub config: Arc<ClusterConfig>,
    pub log_ctx: Rc<LogContext>,
    placement: Arc<Placement>,
    metadata: RefCell<Arc<MetadataSnapshot>>,
    /// Brokers that left the live set, each with when this shard saw it
    /// happen; kept for [`DEPARTED_BROKER_LISTED_FOR`] (see
    /// [`PartitionManager::departed_brokers`]).
    departed: RefCell<Vec<(Broker, Instant)>>,
    partitions: RefCell<HashMap<Ntp, Rc<Partition>>>,
    /// The settings each open partition was opened or last reconfigured with.
    applied: RefCell<BTreeMap<Ntp, Desired>>,
    /// Long-poll fetches of this shard's connections.
    pub waiters: Waiters,
    pub metrics: ManagerMetrics,
    reconciling: Semaphore,
    /// Whether the start-up directory scan has run.
    scanned: Cell<bool>,
    /// Set by `close_all`: no partition opens after it.
    closed: Cell<bool>,
    /// Topic id -> name, from the applied metadata (replication frames name
    /// partitions by topic id).
    topic_ids: RefCell<HashMap<u128, String>>,
    /// This shard's replication links and frame counters.
    pub repl_net: ReplNet,
    /// The replication listener and ticker of this shard.
    pub repl_tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    /// Asks the controller for a new election of a partition (set by the
    /// node at start).
    pub election_requests: RefCell<Option<ElectionRequests>>,
    /// Set when the node stops: its replicas refuse election prepares, so
    /// leadership moves to the others.
    pub stopping: Cell<bool>,
    /// The in-sync replicas of the replicated partitions this node leads,
    /// whichever shard owns them (see `isr`).
    isr: RefCell<IsrCache>,
    /// This shard's next ISR message sequence number.
    pub(crate) isr_seq: Cell<u64>,
    /// A seam for crash tests: how many more directory-changing steps
    /// (open, remove, set aside) reconciliation may take before it stops as
    /// if the process had died there. `None`: no limit.
    steps_left: Cell<Option<usize>>,
}

impl PartitionManager {
    pub fn new(smp: Rc<Smp>, config: Arc<ClusterConfig>, placement: Arc<Placement>) -> Rc<PartitionManager> {
        assert_eq!(
            placement.nr_shards(),
            smp.nr_shards(),
            "the placement covers every data shard"
        );
        let log_ctx = LogContext::new(config.batch_cache_bytes);
        log_ctx.set_sealed_files_max(sealed_files_max(config.fd_budget, smp.nr_shards(), 0));
        Rc::new(PartitionManager {
            smp,
            config,
            log_ctx,
            placement,
            metadata: RefCell::new(Arc::new(MetadataSnapshot::default())),
            departed: RefCell::new(Vec::new()),
            partitions: RefCell::new(HashMap::new()),
            applied: RefCell::new(BTreeMap::new()),
            waiters: Waiters::default(),
            metrics: ManagerMetrics::default(),
            reconciling: Semaphore::new(1),
            scanned: Cell::new(false),
            closed: Cell::new(false),
            topic_ids: RefCell::new(HashMap::new()),
            repl_net: ReplNet::default(),
            repl_tasks: RefCell::new(Vec::new()),
            election_requests: RefCell::new(None),
            stopping: Cell::new(false),
            isr: RefCell::new(IsrCache::default()),
            isr_seq: Cell::new(0),
            steps_left: Cell::new(None),
        })
    }

    pub fn id(&self) -> ShardId {
        self.smp.shard_id()
    }

    /// Crash tests: reconciliation stops for good after `steps` more
    /// directory-changing steps, leaving the data directory as a process
    /// killed at that point would.
    pub fn crash_after_steps(&self, steps: usize) {
        self.steps_left.set(Some(steps));
    }

    /// Whether a step limit set with `crash_after_steps` was reached.
    pub fn crashed(&self) -> bool {
        self.steps_left.get() == Some(0)
    }

    /// Takes one directory-changing step, or refuses if the limit is spent.
    fn step(&self) -> bool {
        match self.steps_left.get() {
            None => true,
            Some(0) => false,
            Some(n) => {
                self.steps_left.set(Some(n - 1));
                true
            }
        }
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The shard that owns `ntp`.
    pub fn owner(&self, ntp: &Ntp) -> ShardId {
        self.placement.owner(ntp)
    }

    /// Brokers that were live in an earlier snapshot of this shard and are
    /// not in the current one, for at most [`DEPARTED_BROKER_LISTED_FOR`]
    /// after they left. The Kafka layer keeps listing them in Metadata's
    /// brokers (not as leaders): librdkafka decommissions a broker that
    /// drops out of that list, and when the same answer also moves a
    /// partition off it, the broker's thread can take the partition back
    /// from the new leader ("delegate to broker (none)") and leave it
    /// leaderless until the next one-second topic scan.
    pub fn departed_brokers(&self) -> Vec<Broker> {
        let now = Instant::now();
        self.departed
            .borrow()
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) < DEPARTED_BROKER_LISTED_FOR)
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// Records the brokers `next` drops from the current snapshot's live
    /// set, and forgets those live again or departed long ago.
    fn note_departures(&self, next: &MetadataSnapshot) {
        let now = Instant::now();
        let current = self.metadata.borrow().clone();
        let mut departed = self.departed.borrow_mut();
        departed.retain(|(b, at)| {
            !next.is_live(b.id) && now.saturating_duration_since(*at) < DEPARTED_BROKER_LISTED_FOR
        });
        for b in &current.brokers {
            if !next.is_live(b.id) && !departed.iter().any(|(d, _)| d.id == b.id) {
                departed.push((b.clone(), now));
            }
        }
    }

    /// The metadata snapshot this shard last applied.
    pub fn metadata(&self) -> Arc<MetadataSnapshot> {
        self.metadata.borrow().clone()
    }

    pub fn partition(&self, ntp: &Ntp) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(ntp).cloned()
    }

    /// Every open partition, sorted by name.
    pub fn partitions(&self) -> Vec<Rc<Partition>> {
        let mut parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        parts.sort_by(|a, b| a.ntp.cmp(&b.ntp));
        parts
    }

    pub fn logs(&self) -> Vec<Rc<Log>> {
        self.partitions.borrow().values().map(|p| p.log.clone()).collect()
    }

    /// Copies of every partition's offsets and counters, sorted by name.
    pub fn partition_snapshots(&self) -> Vec<PartitionSnapshot> {
        self.partitions()
            .iter()
            .map(|p| PartitionSnapshot {
                start_offset: p.start_offset().0,
                high_watermark: p.high_watermark().0,
                log_end_offset: p.log_end().0,
                size_bytes: p.log.size_bytes(),
                segments: p.log.segment_bases().len(),
                producers: p.producer_count(),
                ..PartitionSnapshot::new(&p.ntp, &p.metrics)
            })
            .collect()
    }

    /// The partitions this shard should hold under `snap`: every partition
    /// of the table that it owns and of which this node is a replica (the
    /// internal topics' too, once the controller has created them).
    fn desired(&self, snap: &MetadataSnapshot) -> BTreeMap<Ntp, Desired> {
        let me = self.config.node_id;
        let defaults = &self.config.topic_defaults;
        let mut out = BTreeMap::new();
        for (name, meta) in &snap.topics.topics {
            // An internal topic (the group coordinator's) is placed and led
            // by the table like any other, with the node's own settings.
            let (log, count) = match self.config.internal(name) {
                Some(t) => (t.log.clone(), t.partitions as usize),
                None => (topics::log_config(&meta.config, defaults), meta.assignments.len()),
            };
            let min_insync = topics::min_insync_replicas(&meta.config);
            let produce = match self.config.internal(name) {
                Some(_) => ProducePolicy::default(),
                None => topic_configs::produce_policy(&meta.config),
            };
            for (p, a) in meta.assignments.iter().enumerate().take(count) {
                let ntp = Ntp::new(name.clone(), p as i32);
                if self.owner(&ntp) != self.id() || !a.replicas.contains(&me) {
                    continue;
                }
                let leader_epoch = a.leader_epoch;
                out.insert(
                    ntp,
                    Desired {
                        log: log.clone(),
                        leader_epoch,
                        leads: a.leader == me,
                        leader: a.leader,
                        replicas: a.replicas.to_vec(),
                        topic_id: meta.id,
                        min_insync,
                        produce,
                    },
                );
            }
        }
        out
    }

    /// Makes this shard's partitions match `snap` (see `reconcile`), then
    /// publishes it to this shard's readers. A snapshot older than the one
    /// applied is ignored. Partitions that fail to open are logged and
    /// reported; the next snapshot or restart tries again.
    pub async fn apply_snapshot(self: &Rc<Self>, snap: Arc<MetadataSnapshot>) -> Reconciled {
        let Ok(_permit) = self.reconciling.acquire_permit(1).await else {
            return Reconciled::default();
        };
        if self.closed.get() || snap.revision() < self.metadata().revision() {
            return Reconciled::default();
        }
        let desired = self.desired(&snap);
        let on_disk = if self.scanned.replace(true) {
            BTreeSet::new()
        } else {
            self.scan_dirs().await
        };
        let plan = reconcile::plan(&desired, &self.applied.borrow(), &on_disk);
        let mut done = Reconciled::default();
        for ntp in &plan.set_aside {
            if !self.step() {
                return done;
            }
            self.set_aside(ntp).await;
        }
        // Opened several at a time: an open is a chain of small waits (the
        // blocking pool, io_uring reads, a directory sync), so with
        // thousands of partitions the waits, not the work, would add up.
        let allowed = plan.open.iter().take_while(|_| self.step()).count();
        let started = Instant::now();
        let wanted = &desired;
        let mut opened: Vec<(&Ntp, Result<Rc<Partition>, StorageError>)> =
            futures::stream::iter(&plan.open[..allowed])
                .map(|ntp| async move { (ntp, self.open(ntp, &wanted[ntp]).await) })
                .buffer_unordered(OPEN_CONCURRENCY)
                .collect()
                .await;
        opened.sort_by(|a, b| a.0.cmp(b.0));
        for (ntp, result) in opened {
            match result {
                Ok(p) if desired[ntp].leads => done.led.push(p),
                Ok(_) => {}
                Err(e) => {
                    warn!(partition = %ntp, shard = %self.id(), "cannot open partition: {e}");
                    done.failed.push(ntp.clone());
                }
            }
        }
        if allowed > 0 {
            info!(
                shard = %self.id(),
                partitions = allowed,
                failed = done.failed.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "opened partitions"
            );
        }
        if allowed < plan.open.len() {
            return done;
        }
        for ntp in &plan.reconfigure {
            let want = &desired[ntp];
            if let Some(p) = self.partition(ntp) {
                p.log.set_config(want.log.clone());
                let moved = want.leader_epoch != p.leader_epoch() || want.leads != p.leads();
                p.set_leader_epoch(want.leader_epoch);
                p.set_leads(want.leads);
                p.set_min_insync(want.min_insync);
                p.set_produce_policy(want.produce);
                if p.replication().is_some() {
                    self.assign_replica(&p, want);
                } else if want.replicas.len() > 1 {
                    warn!(partition = %ntp, replicas = ?want.replicas, "a single-replica partition cannot become replicated in place (reassignment is not supported yet)");
                }
                if moved && want.leads {
                    done.led.push(p);
                }
                self.applied.borrow_mut().insert(ntp.clone(), want.clone());
            }
        }
        self.fit_sealed_files();
        // Readers see the new metadata once what it names is open, and
        // before what it dropped is closed.
        *self.topic_ids.borrow_mut() = snap
            .topics
            .topics
            .iter()
            .map(|(name, meta)| (meta.id, name.clone()))
            .collect();
        self.isr.borrow_mut().retain(|ntp| snap.topics.contains(ntp));
        self.note_departures(&snap);
        *self.metadata.borrow_mut() = snap;
        for ntp in &plan.remove {
            if !self.step() {
                return done;
            }
            match self.remove(ntp).await {
                Ok(()) => done.removed.push(ntp.clone()),
                Err(e) => warn!(partition = %ntp, "deleting a removed partition failed: {e}"),
            }
        }
        self.fit_sealed_files();
        done
    }

    /// Gives this shard's sealed segment files what the fd budget leaves
    /// beside its partitions' active segments.
    fn fit_sealed_files(&self) {
        let open = self.partitions.borrow().len();
        self.log_ctx.set_sealed_files_max(sealed_files_max(
            self.config.fd_budget,
            self.smp.nr_shards(),
            open,
        ));
    }

    /// Opens (creating it if missing: `Log::open` creates the directory)
    /// one partition.
    async fn open(&self, ntp: &Ntp, want: &Desired) -> Result<Rc<Partition>, StorageError> {
        let dir = self.config.partition_dir(ntp);
        let started = Instant::now();
        let (log, report) = Log::open(&dir, want.log.clone(), self.log_ctx.clone()).await?;
        let (partition, producer_state) = Partition::recover(ntp.clone(), log.clone()).await?;
        partition.set_leader_epoch(want.leader_epoch);
        partition.set_leads(want.leads);
        if want.replicas.len() > 1 {
            let key = PartitionKey {
                topic_id: want.topic_id,
                partition: ntp.partition.0,
            };
            let r = Replication::load(key, self.config.node_id, &partition).await?;
            partition.set_replication(r);
        }
        partition.set_min_insync(want.min_insync);
        partition.set_produce_policy(want.produce);
        info!(
            partition = %ntp,
            shard = %self.id(),
            segments = report.segments,
            start = %partition.start_offset(),
            end = %partition.high_watermark(),
            truncated = report.truncated.len(),
            rebuilt_indexes = report.rebuilt_indexes.len(),
            corrupt = report.corrupt.len(),
            producers = partition.producer_count(),
            producer_state = ?producer_state,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened partition"
        );
        let partition = Rc::new(partition);
        self.partitions
            .borrow_mut()
            .insert(ntp.clone(), partition.clone());
        self.applied.borrow_mut().insert(ntp.clone(), want.clone());
        if partition.replication().is_some() {
            self.assign_replica(&partition, want);
        }
        Ok(partition)
    }

    /// Tells a replicated partition's replica what the metadata assigns.
    fn assign_replica(&self, p: &Rc<Partition>, want: &Desired) {
        let p = p.clone();
        let (leader, epoch, replicas) = (want.leader, want.leader_epoch, want.replicas.clone());
        glommio::spawn_local(replicated::assign(p, leader, epoch, replicas)).detach();
    }

    /// The in-sync replicas of a replicated partition this node leads, as
    /// its owner shard last published them (None: not published, or not
    /// leading).
    pub fn isr(&self, ntp: &Ntp) -> Option<Vec<NodeId>> {
        self.isr.borrow().get(ntp).map(<[NodeId]>::to_vec)
    }

    /// An owner shard's ISR message (`seq` from that shard; an empty ISR:
    /// not leading).
    pub(crate) fn set_isr(&self, ntp: Ntp, seq: u64, isr: Vec<NodeId>) {
        self.isr.borrow_mut().set(ntp, seq, isr);
    }

    /// Every open replicated partition.
    pub fn replicated(&self) -> Vec<Rc<Partition>> {
        self.partitions
            .borrow()
            .values()
            .filter(|p| p.replication().is_some())
            .cloned()
            .collect()
    }

    /// The partition a replication message names, if the metadata knows its
    /// topic.
    pub fn ntp_of(&self, key: PartitionKey) -> Option<Ntp> {
        let name = self.topic_ids.borrow().get(&key.topic_id).cloned()?;
        Some(Ntp::new(name, key.partition))
    }

    /// Closes and deletes a partition the metadata no longer names.
    async fn remove(&self, ntp: &Ntp) -> Result<(), std::io::Error> {
        let removed = self.partitions.borrow_mut().remove(ntp);
        self.applied.borrow_mut().remove(ntp);
        if let Some(p) = removed {
            if let Err(e) = p.log.close().await {
                warn!(partition = %ntp, "close before delete failed: {e}");
            }
            p.wake_waiters();
        }
        let dir = self.config.partition_dir(ntp);
        ferrolog_shard::blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await?;
        info!(partition = %ntp, "deleted partition");
        Ok(())
    }

    /// Moves a directory no metadata names out of the way, keeping its data.
    async fn set_aside(&self, ntp: &Ntp) {
        let from = self.config.partition_dir(ntp);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let aside = self.config.data_dir.join(SET_ASIDE_DIR);
        let to = aside.join(format!("{}.{stamp}", ntp.dir_name()));
        let (f, t) = (from.clone(), to.clone());
        let moved = ferrolog_shard::blocking(move || {
            std::fs::create_dir_all(&aside)?;
            std::fs::rename(&f, &t)?;
            std::fs::File::open(&aside)?.sync_all()?;
            std::fs::File::open(f.parent().unwrap_or(&aside))?.sync_all()
        })
        .await;
        match moved {
            Ok(()) => warn!(
                partition = %ntp,
                from = %from.display(),
                to = %to.display(),
                "set aside a partition directory that no topic names (an interrupted delete, or copied in by hand)"
            ),
            Err(e) => {
                warn!(partition = %ntp, from = %from.display(), "cannot set aside a directory no topic names: {e}")
            }
        }
    }

    /// Partition directories in the data dir that this shard owns.
    async fn scan_dirs(&self) -> BTreeSet<Ntp> {
        let data_dir = self.config.data_dir.clone();
        let found = ferrolog_shard::blocking(move || partition_dirs(&data_dir)).await;
        match found {
            Ok(dirs) => dirs
                .into_iter()
                .filter(|n| self.owner(n) == self.id() && self.config.internal(&n.topic).is_none())
                .collect(),
            Err(e) => {
                warn!(dir = %self.config.data_dir.display(), "cannot scan for partition directories: {e}");
                BTreeSet::new()
            }
        }
    }

    /// Closes every log (shutdown). Returns how many failed.
    pub async fn close_all(&self) -> usize {
        // Waits for a reconciliation in progress; none starts afterwards.
        let _permit = self.reconciling.acquire_permit(1).await;
        self.closed.set(true);
        let parts: Vec<Rc<Partition>> = self.partitions.borrow_mut().drain().map(|(_, p)| p).collect();
        self.applied.borrow_mut().clear();
        // Several at a time, as they are opened: a close is a chain of small
        // waits (flush, index files, the producer snapshot).
        futures::stream::iter(parts)
            .map(|p| async move {
                let closed = p.close().await;
                p.wake_waiters();
                closed.map_err(|e| warn!(partition = %p.ntp, "close failed: {e}"))
            })
            .buffer_unordered(OPEN_CONCURRENCY)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await
    }
}

/// `<topic>-<partition>` directory names back to an Ntp.
pub fn parse_partition_dir(name: &str) -> Option<Ntp> {
    let (topic, digits) = name.rsplit_once('-')?;
    if topic.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let partition: i32 = digits.parse().ok()?;
    Some(Ntp::new(topic, partition))
}

/// Every `<topic>-<n>` directory in `data_dir` (blocking).
fn partition_dirs(data_dir: &Path) -> std::io::Result<Vec<Ntp>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let Some(ntp) = entry.file_name().to_str().and_then(parse_partition_dir) {
            if is_dir {
                out.push(ntp);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dir_names() {
        assert_eq!(parse_partition_dir("orders-3"), Some(Ntp::new("orders", 3)));
        assert_eq!(parse_partition_dir("my-topic-12"), Some(Ntp::new("my-topic", 12)));
        assert_eq!(parse_partition_dir("orders"), None);
        assert_eq!(parse_partition_dir("-1"), None);
        assert_eq!(parse_partition_dir("x-1a"), None);
        assert_eq!(parse_partition_dir("x-+1"), None);
        assert_eq!(parse_partition_dir("x--1"), Some(Ntp::new("x-", 1)));
    }
}
