//! The Kafka layer's state on one shard: the node's settings, the shard's
//! partition manager (from ferrolog-cluster, which owns every partition) and
//! the per-API and connection counters of this shard's connections.
//!
//! Lives on one shard's thread (`Rc`), reached through [`local`].

use crate::config::ServerConfig;
use crate::metrics::{ShardMetrics, ShardSnapshot};
use ferrolog_cluster::PartitionManager;
use ferrolog_controlplane::metadata::MetadataSnapshot;
use ferrolog_controlplane::topics::{self, TopicTable};
use ferrolog_model::ShardId;
use ferrolog_shard::Smp;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

thread_local! {
    static SHARD: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// This thread's shard. Panics off a data shard: a programmer error.
pub fn local() -> Rc<Shard> {
    SHARD.with(|s| s.borrow().clone().expect("ferrolog-kafka used off a data shard"))
}

/// Installs this thread's shard; must run before the shard's first await so
/// that calls from other shards always find it.
pub fn install(shard: Rc<Shard>) {
    SHARD.with(|s| *s.borrow_mut() = Some(shard));
}

pub struct Shard {
    pub smp: Rc<Smp>,
    pub config: Arc<ServerConfig>,
    pub cluster: Rc<PartitionManager>,
    pub metrics: ShardMetrics,
    client_topics: RefCell<Option<Arc<TopicTable>>>,
}

impl Shard {
    pub fn new(smp: Rc<Smp>, config: Arc<ServerConfig>, cluster: Rc<PartitionManager>) -> Rc<Shard> {
        Rc::new(Shard {
            smp,
            config,
            cluster,
            metrics: ShardMetrics::default(),
            client_topics: RefCell::new(None),
        })
    }

    pub fn id(&self) -> ShardId {
        self.smp.shard_id()
    }

    /// The metadata snapshot this shard last applied.
    pub fn metadata(&self) -> Arc<MetadataSnapshot> {
        self.cluster.metadata()
    }

    /// The topic table as clients see it: without the broker's internal
    /// topics (the group coordinator's), which no client may produce to,
    /// read, alter or delete. Rebuilt once per table revision.
    pub fn topics(&self) -> Arc<TopicTable> {
        let table = self.cluster.metadata().topics.clone();
        if !table.topics.keys().any(|n| topics::is_internal(n)) {
            return table;
        }
        let mut cached = self.client_topics.borrow_mut();
        if let Some(t) = cached.as_ref().filter(|t| t.revision == table.revision) {
            return t.clone();
        }
        let mut visible = (*table).clone();
        visible.topics.retain(|n, _| !topics::is_internal(n));
        let visible = Arc::new(visible);
        *cached = Some(visible.clone());
        visible
    }

    /// This shard's metrics and its partitions' offsets and metrics, as
    /// plain data for the admin shard. Partitions are sorted by name.
    pub fn metrics_snapshot(&self) -> ShardSnapshot {
        let mut snap = ShardSnapshot::new(self.id().0, &self.metrics);
        snap.cpu = self.config.shard_cpus.get(self.id().0 as usize).copied();
        let hops = self.smp.hop_counts();
        snap.cross_shard_calls_sent = hops.sent;
        snap.cross_shard_calls_served = hops.served;
        snap.batch_cache_bytes = self.cluster.log_ctx.cache.borrow().bytes() as u64;
        snap.batch_cache_hits = self.cluster.metrics.batch_cache_hits.get();
        snap.batch_cache_misses = self.cluster.metrics.batch_cache_misses.get();
        snap.partitions = self.cluster.partition_snapshots();
        snap.replication = self.cluster.repl_net.snapshot();
        snap
    }
}
