//! ferrolog-kafka: the Kafka wire server.
//!
//! Owns framing and decoding (`frame`, pure), the registry of supported APIs
//! (`registry`), one handler per API (`handlers`), the mapping of internal
//! errors to Kafka codes (`errors`), topic metadata (`topics`, `controller`)
//! and the per-shard partition state (`shard`).
//!
//! Threading: every shard runs [`run_shard`] on its own glommio executor. A
//! connection lives on the shard that accepted it; partition work runs on the
//! partition's owner shard (`shard::scatter`); topic changes run on the
//! controller shard (shard 0). Record batches travel as `Bytes` from the
//! socket to the log and back; records are never decoded.

pub mod admin;
pub mod alloc_guard;
pub mod config;
pub mod controller;
pub mod errors;
pub mod frame;
pub mod groups;
pub mod handlers;
pub mod harness;
pub mod metrics;
pub mod producer_ids;
pub mod producer_state;
pub mod registry;
pub mod server;
pub mod shard;
pub use ferrolog_controlplane::topics;

pub use config::ServerConfig;

use ferrolog_shard::Smp;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often a shard looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often a shard applies retention to its partitions.
const RETENTION_INTERVAL: Duration = Duration::from_secs(300);
/// Period of the reactor stall probe's timer.
pub const STALL_PROBE_PERIOD: Duration = Duration::from_millis(10);

/// One shard's life: recover (shard 0 drives the topic table and opens every
/// partition on its owner), listen, serve until `stop` is set, then close
/// every log. Shard 0 sets `stop` itself if startup fails, so all shards end.
pub async fn run_shard(smp: Rc<Smp>, config: Arc<ServerConfig>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let shard = shard::Shard::new(smp.clone(), config.clone());
    // Before the first await: other shards' calls may arrive from then on.
    shard::install(shard.clone());
    let result = serve(&shard, &stop).await;
    if result.is_err() {
        stop.store(true, Ordering::SeqCst);
    }
    let failed = shard.close_all().await + groups::coordinator::close_local().await;
    // The shard stays installed: connection tasks and calls from other shards
    // may still run until the executor ends; they find no partitions and
    // answer with errors instead of touching closed logs.
    result?;
    if failed > 0 {
        return Err(format!("{failed} logs failed to close cleanly"));
    }
    Ok(())
}

async fn serve(shard: &Rc<shard::Shard>, stop: &Arc<AtomicBool>) -> Result<(), String> {
    if shard.id() == controller::CONTROLLER_SHARD {
        let started = start_node(shard).await;
        // Startup calls every shard (partition opens, coordinator loads,
        // listeners). A shard that ended meanwhile would leave shard 0
        // waiting for an answer forever (glommio's shared channels do not
        // report a peer executor that ended), so no shard ends before it
        // hears that startup is over, whether it worked or not.
        for s in shard.smp.shards() {
            let _ = shard
                .smp
                .submit_to(s, || async { STARTUP_OVER.with(|f| f.set(true)) })
                .await;
        }
        started?;
    }
    let retention = glommio::spawn_local(retention_loop(shard.clone())).detach();
    let stall_probe = glommio::spawn_local(stall_probe(shard.clone())).detach();
    while !stop.load(Ordering::Relaxed) || !STARTUP_OVER.with(Cell::get) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    info!(shard = %shard.id(), "stopping");
    // Set by shard 0 once startup is done; absent if it never got that far.
    for task in [&ACCEPT, &ADMIN] {
        if let Some(t) = task.with(|t| t.borrow_mut().take()) {
            t.cancel();
        }
    }
    retention.cancel();
    stall_probe.cancel();
    Ok(())
}

/// Recovers the node and starts serving it (controller shard only).
async fn start_node(shard: &Rc<shard::Shard>) -> Result<(), String> {
    controller::bootstrap().await?;
    for s in shard.smp.shards() {
        shard
            .smp
            .submit_to(s, start_on_this_shard)
            .await
            .map_err(|e| e.to_string())??;
    }
    info!(addr = %shard.config.listen, shards = shard.smp.nr_shards(), "serving the Kafka API");
    if let Some(addr) = shard.config.admin_addr {
        let (task, addr) = admin::start(addr)?;
        ADMIN.with(|a| *a.borrow_mut() = Some(task));
        info!(%addr, "serving the admin API (/metrics, /v1/status)");
    }
    Ok(())
}

type Task = std::cell::RefCell<Option<glommio::task::JoinHandle<()>>>;

thread_local! {
    /// Set on every shard by the controller shard once startup is over.
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

/// Loads the group coordinator partitions this shard owns, then listens.
async fn start_on_this_shard() -> Result<(), String> {
    let shard = shard::local();
    groups::coordinator::start_local(&shard.smp, &shard.config, shard.log_ctx.clone()).await?;
    let task = server::start_listening()?;
    ACCEPT.with(|a| *a.borrow_mut() = Some(task));
    Ok(())
}

async fn retention_loop(shard: Rc<shard::Shard>) {
    loop {
        glommio::timer::sleep(RETENTION_INTERVAL).await;
        for log in shard.logs() {
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
