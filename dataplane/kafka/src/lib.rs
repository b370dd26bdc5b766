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

pub mod alloc_guard;
pub mod config;
pub mod controller;
pub mod errors;
pub mod frame;
pub mod groups;
pub mod handlers;
pub mod harness;
pub mod producer_ids;
pub mod producer_state;
pub mod registry;
pub mod server;
pub mod shard;
pub mod topics;

pub use config::ServerConfig;

use ferrolog_shard::Smp;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often a shard looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often a shard applies retention to its partitions.
const RETENTION_INTERVAL: Duration = Duration::from_secs(300);

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
        controller::bootstrap().await?;
        for s in shard.smp.shards() {
            shard
                .smp
                .submit_to(s, start_on_this_shard)
                .await
                .map_err(|e| e.to_string())??;
        }
        info!(addr = %shard.config.listen, shards = shard.smp.nr_shards(), "serving the Kafka API");
    }
    let retention = glommio::spawn_local(retention_loop(shard.clone())).detach();
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    info!(shard = %shard.id(), "stopping");
    // Set by shard 0 once startup is done; absent if it never got that far.
    if let Some(a) = ACCEPT.with(|a| a.borrow_mut().take()) {
        a.cancel();
    }
    retention.cancel();
    Ok(())
}

thread_local! {
    static ACCEPT: std::cell::RefCell<Option<glommio::task::JoinHandle<()>>> = const { std::cell::RefCell::new(None) };
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
