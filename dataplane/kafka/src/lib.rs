//! ferrolog-kafka: the Kafka wire server.
//!
//! Owns framing and decoding (`frame`, pure), the registry of supported APIs
//! (`registry`), one handler per API (`handlers`), the mapping of internal
//! errors to Kafka codes (`errors`, the only place codes are made), the
//! group coordinator (`groups`), the proposer side of topic changes
//! (`controller`), connections (`server`) and the admin HTTP listener
//! (`admin`). Partitions belong to ferrolog-cluster's partition manager,
//! topic metadata to ferrolog-controlplane.
//!
//! Threading: every data shard runs [`run_shard`] on its own glommio
//! executor; the control executor runs [`run_control`], which owns the
//! controller and drives start-up. A connection lives on the shard that
//! accepted it; partition work runs on the partition's owner shard
//! (`ferrolog_cluster::ops::scatter`); topic changes are proposed to the
//! controller on the control executor. Record batches travel as `Bytes` from
//! the socket to the log and back; records are never decoded.

pub mod admin;
pub mod alloc_guard;
pub mod authz;
pub mod config;
pub mod controller;
pub mod errors;
pub mod frame;
pub mod groups;
pub mod handlers;
pub mod harness;
pub mod metrics;
pub mod registry;
pub mod sasl;
pub mod security;
pub mod server;
pub mod session;
pub mod shard;
pub use ferrolog_controlplane::topics;

pub use config::ServerConfig;

use ferrolog_cluster::{PartitionManager, Placement};
use ferrolog_controlplane::controller::{Controller, ControllerConfig, Publish};
use ferrolog_controlplane::metadata::MetadataSnapshot;
use ferrolog_controlplane::state::Registration;
use ferrolog_controlplane::LocalReplicas;
use ferrolog_model::{Epoch, NodeId, Ntp, ShardId};
use ferrolog_replication::ElectionInfo;
use ferrolog_shard::Smp;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often an executor looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often a shard applies retention to its partitions.
const RETENTION_INTERVAL: Duration = Duration::from_secs(300);
/// Period of the reactor stall probe's timer.
pub const STALL_PROBE_PERIOD: Duration = Duration::from_millis(10);
/// The shard that serves the admin HTTP listener.
const ADMIN_SHARD: ShardId = ShardId(0);

/// Builds and installs this data shard's partition manager, Kafka state and
/// group coordinator. Must run before the shard's first await, so that calls
/// from other executors always find them.
pub fn install_shard(smp: Rc<Smp>, config: Arc<ServerConfig>) -> Rc<shard::Shard> {
    let placement = Arc::new(Placement::hashed(smp.nr_shards()));
    let cluster = PartitionManager::new(smp.clone(), Arc::new(config.cluster_config()), placement);
    ferrolog_cluster::install(cluster.clone());
    install_election_requests(&smp, &cluster);
    let shard = shard::Shard::new(smp, config.clone(), cluster);
    shard::install(shard.clone());
    groups::coordinator::start_local(&config.groups);
    shard
}

/// Applies a metadata snapshot on this data shard: the partition manager
/// reconciles, then the group coordinator attaches to the coordinator
/// partitions this node now leads and lets go of removed ones.
pub async fn apply_snapshot(snap: Arc<MetadataSnapshot>) {
    let done = ferrolog_cluster::local().apply_snapshot(snap).await;
    for p in &done.led {
        if let Err(e) = groups::coordinator::attach(p).await {
            warn!(partition = %p.ntp, "cannot load the group coordinator partition: {e}");
        }
    }
    groups::coordinator::detach(&done.removed);
}

/// Starts the controller on the control executor; its snapshots are
/// applied on every data shard before a change is answered.
pub async fn start_controller(smp: Rc<Smp>, config: &ServerConfig) -> Result<Rc<Controller>, String> {
    let smp_shards = smp.nr_shards();
    let smp_for_replicas = smp.clone();
    let publish: Publish = Rc::new(move |snap: Arc<MetadataSnapshot>| {
        let smp = smp.clone();
        Box::pin(async move {
            let results = smp
                .invoke_on_all(move || {
                    let snap = snap.clone();
                    async move { apply_snapshot(snap).await }
                })
                .await;
            for (s, r) in results.into_iter().enumerate() {
                if let Err(e) = r {
                    warn!(shard = s, "cannot publish metadata: {e}");
                }
            }
        })
    });
    let controller = ControllerConfig {
        data_dir: config.data_dir.clone(),
        local_cluster_id: config.cluster_id.clone(),
        me: Registration {
            id: config.node_id,
            kafka_host: config.advertised_host.clone(),
            kafka_port: u16::try_from(config.advertised_port)
                .map_err(|_| format!("advertised port {} out of range", config.advertised_port))?,
            rpc_addr: config.rpc_advertised.clone(),
            rack: config.rack.clone(),
            shards: u32::try_from(smp_shards).unwrap_or(u32::MAX),
            data_addr: config.data_advertised.clone(),
            xdp_addr: config.xdp.as_ref().map(|x| x.local.to_string()),
        },
        seeds: config.seeds.clone(),
        rpc_listen: config.rpc_listen,
        timing: config.control_timing.clone(),
        offsets_topic: true,
        auto_leader_rebalance: config.auto_leader_rebalance,
        tls: config.node_tls.clone(),
        peer_hints: config.peer_hints.clone(),
    };
    let controller = Controller::bootstrap(controller, publish)
        .await
        .map_err(|e| e.to_string())?;
    controller.set_local_replicas(Rc::new(ShardReplicas {
        smp: smp_for_replicas,
    }));
    Ok(controller)
}

/// The controller's way to this node's replicas: each prepare runs on the
/// partition's owner shard.
struct ShardReplicas {
    smp: Rc<Smp>,
}

impl LocalReplicas for ShardReplicas {
    fn prepare(
        &self,
        topic: String,
        partition: i32,
        epoch: Epoch,
    ) -> futures::future::LocalBoxFuture<'static, Result<ElectionInfo, String>> {
        let smp = self.smp.clone();
        Box::pin(async move {
            let ntp = Ntp::new(topic, partition);
            let owner = Placement::hashed(smp.nr_shards()).owner(&ntp);
            smp.submit_to(owner, move || async move {
                let Some(p) = ferrolog_cluster::local().partition(&ntp) else {
                    return Err(format!("{ntp} is not open here"));
                };
                if p.replication().is_none() {
                    return Err(format!("{ntp} is not replicated here"));
                }
                ferrolog_cluster::replicated::prepare(p, epoch).await
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }

    fn insync(
        &self,
        topic: String,
        partition: i32,
    ) -> futures::future::LocalBoxFuture<'static, Result<(Epoch, Vec<NodeId>), String>> {
        let smp = self.smp.clone();
        Box::pin(async move {
            let ntp = Ntp::new(topic, partition);
            let owner = Placement::hashed(smp.nr_shards()).owner(&ntp);
            smp.submit_to(owner, move || async move {
                let Some(p) = ferrolog_cluster::local().partition(&ntp) else {
                    return Err(format!("{ntp} is not open here"));
                };
                let Some(r) = p.replication() else {
                    return Err(format!("{ntp} is not replicated here"));
                };
                r.insync_replicas()
                    .ok_or_else(|| format!("{ntp} is not led here"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// Sets this shard's way to ask the controller (on the control executor)
/// for a partition's election.
fn install_election_requests(smp: &Rc<Smp>, cluster: &PartitionManager) {
    let Some(control) = smp.control_shard() else {
        return;
    };
    let smp = smp.clone();
    let hook: ferrolog_cluster::manager::ElectionRequests = Rc::new(move |ntp: Ntp| {
        let smp = smp.clone();
        glommio::spawn_local(async move {
            let asked = smp
                .submit_to(control, move || async move {
                    ferrolog_controlplane::controller::local()
                        .request_election(ntp.topic.clone(), ntp.partition.0)
                        .await
                        .map_err(|e| format!("{ntp}: {e}"))
                })
                .await;
            match asked {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("election request not taken: {e}"),
                Err(e) => debug!("election request not sent: {e}"),
            }
        })
        .detach();
    });
    *cluster.election_requests.borrow_mut() = Some(hook);
}

/// One data shard's life: install, serve until `stop` is set (and start-up,
/// driven by the control executor, is over), then close every log.
pub async fn run_shard(smp: Rc<Smp>, config: Arc<ServerConfig>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let shard = install_shard(smp, config);
    let retention = glommio::spawn_local(retention_loop(shard.clone())).detach();
    let compaction_stop = Rc::new(Cell::new(false));
    let compaction = glommio::spawn_local(compaction_loop(shard.clone(), compaction_stop.clone()));
    let stall_probe = glommio::spawn_local(stall_probe(shard.clone())).detach();
    // A shard that ended while the control executor still drives start-up
    // would leave it waiting for an answer forever (glommio's shared
    // channels do not report a peer executor that ended), so no shard ends
    // before it hears that start-up is over, whether it worked or not.
    while !stop.load(Ordering::Relaxed)
        || !STARTUP_OVER.with(Cell::get)
        || !HANDOFF_OVER.load(Ordering::Acquire)
    {
        glommio::timer::sleep(STOP_POLL).await;
    }
    info!(shard = %shard.id(), "stopping");
    for task in [&ACCEPT, &ADMIN] {
        if let Some(t) = task.with(|t| t.borrow_mut().take()) {
            t.cancel();
        }
    }
    retention.cancel();
    stall_probe.cancel();
    // Not cancelled: a pass stopped inside a file operation could leave
    // glommio finishing it on a file descriptor already reused. It ends
    // after the partition it is on.
    compaction_stop.set(true);
    compaction.await;
    groups::coordinator::close_local();
    // The shard stays installed: connection tasks and calls from other
    // executors may still run until the executor ends; they find no
    // partitions and answer with errors instead of touching closed logs.
    let failed = shard.cluster.close_all().await;
    ferrolog_cluster::replicated::close_xdp(&shard.cluster);
    if failed > 0 {
        return Err(format!("{failed} logs failed to close cleanly"));
    }
    Ok(())
}

/// The control executor's life: start the controller (which publishes the
/// recovered metadata to every shard, opening their partitions), start the
/// listeners, then wait for `stop`. Sets `stop` itself if start-up fails, so
/// every executor ends.
pub async fn run_control(
    smp: Rc<Smp>,
    config: Arc<ServerConfig>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let started = start_node(&smp, &config).await;
    for r in smp
        .invoke_on_all(|| async { STARTUP_OVER.with(|f| f.set(true)) })
        .await
    {
        if let Err(e) = r {
            warn!("cannot end start-up on a shard: {e}");
        }
    }
    let controller = match started {
        Ok(c) => c,
        Err(e) => {
            HANDOFF_OVER.store(true, Ordering::Release);
            stop.store(true, Ordering::SeqCst);
            return Err(e);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if let Some(e) = controller.failure() {
            HANDOFF_OVER.store(true, Ordering::Release);
            stop.store(true, Ordering::SeqCst);
            controller.stop();
            return Err(format!("the controller failed: {e}"));
        }
        glommio::timer::sleep(STOP_POLL).await;
    }
    hand_off_leadership(&smp, &controller).await;
    HANDOFF_OVER.store(true, Ordering::Release);
    controller.stop();
    Ok(())
}

/// Set once the control executor has handed this node's partition
/// leaderships away at shutdown (or gave up): data shards close their logs
/// only then.
static HANDOFF_OVER: AtomicBool = AtomicBool::new(false);
/// How long a stopping node waits for its leaderships to move.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Before a clean exit: this node's replicas stop answering election
/// prepares, the controller is asked to elect new leaders for the
/// replicated partitions it leads, and the node waits (bounded) until it
/// leads none, so clients move over without waiting for its session to
/// expire.
async fn hand_off_leadership(smp: &Rc<Smp>, controller: &Rc<Controller>) {
    let led = |stopping: bool| {
        smp.invoke_on_all(move || async move {
            let m = ferrolog_cluster::local();
            if stopping {
                m.stopping.set(true);
            }
            m.replicated()
                .into_iter()
                .filter(|p| p.leads())
                .map(|p| p.ntp.clone())
                .collect::<Vec<Ntp>>()
        })
    };
    let first: Vec<Ntp> = led(true)
        .await
        .into_iter()
        .flat_map(Result::unwrap_or_default)
        .collect();
    if first.is_empty() {
        return;
    }
    info!(
        partitions = first.len(),
        "stopping: moving partition leadership to other replicas"
    );
    let started = std::time::Instant::now();
    // All requests at once, and bounded by the hand-off's own limit: with
    // no controller leader reachable each would retry for its full
    // request timeout.
    let requests = futures::future::join_all(first.iter().map(|ntp| async move {
        if let Err(e) = controller
            .request_election(ntp.topic.clone(), ntp.partition.0)
            .await
        {
            debug!(partition = %ntp, "leadership hand-off not requested: {e}");
        }
    }));
    let asked = glommio::timer::timeout(HANDOFF_TIMEOUT, async {
        requests.await;
        Ok(())
    })
    .await;
    if asked.is_err() {
        warn!("stopping: no controller leader took the hand-off requests within {HANDOFF_TIMEOUT:?}; exiting as leader");
        return;
    }
    loop {
        let left: usize = led(false)
            .await
            .into_iter()
            .map(|r| r.map_or(0, |v| v.len()))
            .sum();
        if left == 0 {
            info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "stopping: leads no replicated partition"
            );
            return;
        }
        if started.elapsed() > HANDOFF_TIMEOUT {
            warn!(
                partitions = left,
                "stopping: leadership not moved within {HANDOFF_TIMEOUT:?}; exiting as leader"
            );
            return;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// Recovers the node and starts serving it (control executor).
async fn start_node(smp: &Rc<Smp>, config: &Arc<ServerConfig>) -> Result<Rc<Controller>, String> {
    let controller = start_controller(smp.clone(), config).await?;
    for r in smp.invoke_on_all(start_on_this_shard).await {
        r.map_err(|e| e.to_string())??;
    }
    info!(addr = %config.listen, shards = smp.nr_shards(), "serving the Kafka API");
    if let Some(addr) = config.admin_addr {
        let bound = smp
            .submit_to(ADMIN_SHARD, move || async move {
                let (task, bound) = admin::start(addr)?;
                ADMIN.with(|a| *a.borrow_mut() = Some(task));
                Ok::<_, String>(bound)
            })
            .await
            .map_err(|e| e.to_string())??;
        info!(addr = %bound, "serving the admin API (/metrics, /v1/status, /v1/cluster)");
    }
    Ok(controller)
}

type Task = std::cell::RefCell<Option<glommio::task::JoinHandle<()>>>;

thread_local! {
    /// Set on every shard by the control executor once start-up is over.
    static STARTUP_OVER: Cell<bool> = const { Cell::new(false) };
    static ACCEPT: Task = const { std::cell::RefCell::new(None) };
    static ADMIN: Task = const { std::cell::RefCell::new(None) };
}

/// Measures how late the reactor runs a periodic timer. A task that runs
/// long without yielding delays it: lateness past the configured threshold
/// counts as a reactor stall (metrics) and is logged. A timer is used
/// rather than glommio's signal-based stall detector, which captures a
/// backtrace inside a signal handler.
async fn stall_probe(shard: Rc<shard::Shard>) {
    let threshold = shard.config.stall_threshold;
    loop {
        let before = std::time::Instant::now();
        glommio::timer::sleep(STALL_PROBE_PERIOD).await;
        let late = before.elapsed().saturating_sub(STALL_PROBE_PERIOD);
        shard.metrics.reactor_lag.record(late);
        if late > threshold {
            shard.metrics.reactor_stalls.inc();
            debug!(shard = %shard.id(), late_ms = late.as_millis() as u64, "reactor stall");
        }
    }
}

/// Starts this shard's Kafka listener.
async fn start_on_this_shard() -> Result<(), String> {
    let task = server::start_listening()?;
    ACCEPT.with(|a| *a.borrow_mut() = Some(task));
    let s = shard::local();
    if let Some(listen) = s.config.data_listen {
        let xdp = s.config.xdp.as_ref().and_then(|x| x.shard_config());
        ferrolog_cluster::replicated::start_shard(
            &s.cluster,
            listen,
            s.config.node_tls.clone(),
            xdp.as_ref(),
        )
        .map_err(|e| format!("cannot listen for replication on {listen}: {e}"))?;
    }
    Ok(())
}

/// Compacts this shard's partitions of compacted topics, one at a time, up
/// to each one's high watermark (a replica never compacts what it may still
/// have to truncate), every `compaction_interval`, until `stop` is set.
async fn compaction_loop(shard: Rc<shard::Shard>, stop: Rc<Cell<bool>>) {
    let interval = shard.config.compaction_interval;
    while !stop.get() {
        let mut slept = Duration::ZERO;
        while slept < interval && !stop.get() {
            let step = STOP_POLL.min(interval - slept);
            glommio::timer::sleep(step).await;
            slept += step;
        }
        for p in shard.cluster.partitions() {
            if stop.get() {
                return;
            }
            if !p.log.config().compaction.enabled {
                continue;
            }
            match p.log.compact(p.high_watermark()).await {
                Ok(out) if out.skipped.is_none() => {
                    debug!(log = %p.log.dir().display(), rewritten = out.rewritten.len(), "compaction pass");
                }
                Ok(_) => {}
                Err(e) => warn!(log = %p.log.dir().display(), "compaction failed: {e}"),
            }
        }
    }
}

async fn retention_loop(shard: Rc<shard::Shard>) {
    loop {
        glommio::timer::sleep(RETENTION_INTERVAL).await;
        for log in shard.cluster.logs() {
            match log.apply_retention().await {
                Ok(out) if !out.deleted_segments.is_empty() => {
                    info!(log = %log.dir().display(), deleted = out.deleted_segments.len(), start = %out.start, "retention");
                }
                Ok(_) => {}
                Err(e) => warn!(log = %log.dir().display(), "retention failed: {e}"),
            }
        }
    }
}
