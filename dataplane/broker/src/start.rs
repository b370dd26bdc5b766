//! `ferrolog start`: load and validate the profile, claim the data directory,
//! recover every partition log on the shard executor, listen on the Kafka
//! address, apply retention periodically, and shut down cleanly on SIGTERM or
//! SIGINT.
//!
//! Today the node runs one shard (the first CPU of the profile's cpuset) and
//! closes Kafka connections at once: the wire server and the shard-per-core
//! engine are the next issue. The flags here are already the contract.

use crate::node;
use ferrolog_hw_profiles::{online_cpus, Durability as ProfileDurability, Profile};
use ferrolog_model::Ntp;
use ferrolog_storage::{Durability, Log, LogConfig, LogContext};
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often the shard looks at the shutdown flag set by the signal handler.
const SIGNAL_POLL: Duration = Duration::from_millis(20);
/// How often retention runs over every log.
const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(300);

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Directory holding this node's logs (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the Kafka API listener, HOST:PORT.
    #[arg(long, value_parser = crate::parse_addr)]
    pub kafka_addr: SocketAddr,
    /// Hardware profile (TOML). Default: the embedded hw-profiles/dev.toml.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// This node's id; recorded in the data directory at first start.
    #[arg(long, default_value_t = 0)]
    pub node_id: i32,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The per-log settings a profile implies.
pub fn log_config(profile: &Profile) -> LogConfig {
    let s = &profile.storage;
    LogConfig {
        segment_bytes: s.segment_bytes,
        segment_ms: s.segment_ms,
        index_interval_bytes: s.index_interval_bytes,
        retention_bytes: s.retention_bytes,
        retention_ms: s.retention_ms,
        durability: match s.durability {
            ProfileDurability::Fsync => Durability::Fsync,
            ProfileDurability::Direct => Durability::Direct,
        },
        write_chunk_bytes: profile.io.write_chunk_bytes,
        write_depth: profile.io.write_depth,
        read_chunk_bytes: profile.io.read_chunk_bytes,
        ..LogConfig::default()
    }
}

pub fn run(args: StartArgs) -> ExitCode {
    init_logging();
    let profile = match &args.profile {
        Some(path) => Profile::load(path),
        None => Ok(Profile::default()),
    };
    let profile = match profile.and_then(|p| p.validate().map(|()| p)) {
        Ok(p) => p,
        Err(e) => {
            error!("invalid profile: {e}");
            return ExitCode::from(2);
        }
    };
    if profile.storage.segment_bytes > i32::MAX as u64 {
        error!(
            "invalid profile: storage.segment_bytes: {} exceeds {} (segment positions are 32-bit)",
            profile.storage.segment_bytes,
            i32::MAX
        );
        return ExitCode::from(2);
    }
    let _claim = match node::claim(&args.data_dir, args.node_id) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            error!("cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let cpus = match profile.shard_cpus(&online_cpus()) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            error!("invalid profile: shards.cpuset selects no CPU");
            return ExitCode::from(2);
        }
        Err(e) => {
            error!("invalid profile: {e}");
            return ExitCode::from(2);
        }
    };
    let executor = LocalExecutorBuilder::new(Placement::Fixed(cpus[0]))
        .name("shard-0")
        .io_memory(profile.io.io_memory_bytes)
        .ring_depth(profile.io.ring_depth)
        .spin_before_park(Duration::from_micros(profile.network.spin_before_park_us))
        .make();
    let executor = match executor {
        Ok(e) => e,
        Err(e) => {
            error!("cannot start shard executor on CPU {}: {e}", cpus[0]);
            return ExitCode::FAILURE;
        }
    };
    info!(
        node_id = args.node_id,
        data_dir = %args.data_dir.display(),
        cpu = cpus[0],
        durability = %profile.storage.durability,
        "starting ferrolog"
    );
    match executor.run(serve(args, profile, stop)) {
        Ok(()) => {
            info!("shutdown complete");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `<topic>-<partition>` directory names back to an Ntp.
fn parse_partition_dir(name: &str) -> Option<Ntp> {
    let (topic, partition) = name.rsplit_once('-')?;
    let partition: i32 = partition.parse().ok()?;
    (!topic.is_empty() && partition >= 0).then(|| Ntp::new(topic, partition))
}

fn partition_dirs(data_dir: &Path) -> Result<Vec<(Ntp, PathBuf)>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        match entry.file_name().to_str().and_then(parse_partition_dir) {
            Some(ntp) if is_dir => out.push((ntp, entry.path())),
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

async fn serve(args: StartArgs, profile: Profile, stop: Arc<AtomicBool>) -> Result<(), String> {
    let ctx = LogContext::new(profile.storage.batch_cache_bytes);
    let config = log_config(&profile);
    ferrolog_storage::probe_direct_io(&args.data_dir)
        .await
        .map_err(|e| format!("data directory does not support O_DIRECT: {e}"))?;

    let mut logs: Vec<(Ntp, Rc<Log>)> = Vec::new();
    for (ntp, dir) in partition_dirs(&args.data_dir)? {
        let started = Instant::now();
        let (log, report) = Log::open(&dir, config.clone(), ctx.clone())
            .await
            .map_err(|e| format!("cannot recover {ntp}: {e}"))?;
        let o = log.offsets();
        info!(
            partition = %ntp,
            segments = report.segments,
            start = %o.start,
            end = %o.committed_next,
            truncated = report.truncated.len(),
            rebuilt_indexes = report.rebuilt_indexes.len(),
            corrupt = report.corrupt.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered log"
        );
        logs.push((ntp, log));
    }

    let listener = glommio::net::TcpListener::bind(args.kafka_addr)
        .map_err(|e| format!("cannot listen on {}: {e}", args.kafka_addr))?;
    info!(addr = %args.kafka_addr, partitions = logs.len(), "listening (Kafka API not served yet: connections are closed)");
    let accept = glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    tracing::debug!(peer = ?stream.peer_addr().ok(), "closing connection: Kafka API not served yet");
                    drop(stream);
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    glommio::timer::sleep(SIGNAL_POLL).await;
                }
            }
        }
    });

    let retention_logs: Vec<Rc<Log>> = logs.iter().map(|(_, l)| l.clone()).collect();
    let retention = glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(RETENTION_CHECK_INTERVAL).await;
            for log in &retention_logs {
                match log.apply_retention().await {
                    Ok(out) if !out.deleted_segments.is_empty() => {
                        info!(log = %log.dir().display(), deleted = out.deleted_segments.len(), start = %out.start, "retention");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(log = %log.dir().display(), "retention failed: {e}"),
                }
            }
        }
    });

    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(SIGNAL_POLL).await;
    }
    info!("signal received; shutting down");
    drop(accept.cancel());
    drop(retention.cancel());
    let mut failed = 0;
    for (ntp, log) in &logs {
        if let Err(e) = log.close().await {
            error!(partition = %ntp, "close failed: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} logs failed to close cleanly"));
    }
    Ok(())
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
        assert_eq!(parse_partition_dir("x--1"), Some(Ntp::new("x-", 1)));
    }

    #[test]
    fn profile_maps_to_log_config() {
        let mut p = Profile::default();
        p.storage.durability = ProfileDurability::Direct;
        p.io.write_depth = 7;
        let c = log_config(&p);
        assert_eq!(c.durability, Durability::Direct);
        assert_eq!(c.write_depth, 7);
        assert_eq!(c.segment_bytes, p.storage.segment_bytes);
        assert_eq!(c.retention_ms, p.storage.retention_ms);
    }
}
