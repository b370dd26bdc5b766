//! `ferrolog start`: load and validate the profile, claim the data directory,
//! start one pinned shard per CPU of the cpuset, recover the topic table and
//! every partition log (each on its owner shard), serve the Kafka API on
//! every shard, apply retention periodically, and shut down cleanly on
//! SIGTERM or SIGINT (every log flushed, synced and closed; exit 0).

use crate::node;
use ferrolog_hw_profiles::{
    format_cpuset, online_cpus, parse_cpuset, Durability as ProfileDurability, Profile,
};
use ferrolog_kafka::groups::{group::GroupLimits, GroupConfig};
use ferrolog_kafka::topics::{TopicDefaults, DEFAULT_MAX_MESSAGE_BYTES};
use ferrolog_kafka::ServerConfig;
use ferrolog_model::NodeId;
use ferrolog_shard::RuntimeConfig;
use ferrolog_storage::{Durability, LogConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

/// Cross-shard calls queued per pair of shards before the caller waits.
const SHARD_CHANNEL_CAPACITY: usize = 1024;
/// Kafka's default fetch.max.bytes: the most record bytes in one fetch response.
const FETCH_RESPONSE_MAX_BYTES: usize = 55 << 20;

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Directory holding this node's logs and topic table (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the Kafka API listener, HOST:PORT.
    #[arg(long, value_parser = crate::parse_addr)]
    pub kafka_addr: SocketAddr,
    /// HOST:PORT clients are told to connect to. Default: --kafka-addr (which
    /// must then not be a wildcard address).
    #[arg(long)]
    pub advertised_kafka_addr: Option<String>,
    /// Hardware profile (TOML). Default: the embedded hw-profiles/dev.toml.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// CPUs to run shards on ("0-3,6"); overrides the profile's shards.cpuset.
    #[arg(long)]
    pub cpuset: Option<String>,
    /// This node's id; recorded in the data directory at first start.
    #[arg(long, default_value_t = 0)]
    pub node_id: i32,
    /// Create a topic when a client asks for its metadata.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics (and CreateTopics with -1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=4096))]
    pub default_partitions: i32,
    /// Largest request accepted, in bytes; a larger size field closes the connection.
    #[arg(long, default_value_t = 100 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1u64 << 30)))]
    pub max_request_bytes: u64,
    /// Seconds a connection may sit without sending a request.
    #[arg(long, default_value_t = 600)]
    pub idle_timeout_s: u64,
    /// Seconds the rest of a request may take to arrive once it started.
    #[arg(long, default_value_t = 30)]
    pub request_read_timeout_s: u64,
    /// How long the first rebalance of an empty group waits for more
    /// members (Kafka's group.initial.rebalance.delay.ms).
    #[arg(long, default_value_t = 3000)]
    pub group_initial_rebalance_delay_ms: u64,
    /// Shortest session timeout a group member may ask for.
    #[arg(long, default_value_t = 6000)]
    pub group_min_session_timeout_ms: u64,
    /// Longest session timeout a group member may ask for.
    #[arg(long, default_value_t = 1_800_000)]
    pub group_max_session_timeout_ms: u64,
    /// Committed offsets of a group that has been empty this long are
    /// deleted (Kafka's offsets.retention.minutes, default 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600 * 1000)]
    pub offsets_retention_ms: u64,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The per-log settings a profile implies (topic configs override some).
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

/// HOST:PORT split for Metadata answers.
fn advertised(args: &StartArgs) -> Result<(String, i32), String> {
    match &args.advertised_kafka_addr {
        Some(a) => {
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| format!("--advertised-kafka-addr {a}: expected HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("--advertised-kafka-addr {a}: bad port"))?;
            Ok((host.trim_matches(['[', ']']).to_string(), i32::from(port)))
        }
        None if args.kafka_addr.ip().is_unspecified() => Err(format!(
            "--kafka-addr {} is a wildcard address: give --advertised-kafka-addr",
            args.kafka_addr
        )),
        None => Ok((
            args.kafka_addr.ip().to_string(),
            i32::from(args.kafka_addr.port()),
        )),
    }
}

pub fn run(args: StartArgs) -> ExitCode {
    init_logging();
    let profile = match &args.profile {
        Some(path) => Profile::load(path),
        None => Ok(Profile::default()),
    };
    let mut profile = match profile.and_then(|p| p.validate().map(|()| p)) {
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
    if let Some(set) = &args.cpuset {
        match parse_cpuset(set) {
            Ok(cpus) => profile.shards.cpuset = Some(format_cpuset(&cpus)),
            Err(e) => {
                error!("invalid --cpuset {set:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (advertised_host, advertised_port) = match advertised(&args) {
        Ok(a) => a,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
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
    let claim = match node::claim(&args.data_dir, args.node_id) {
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

    let server = Arc::new(ServerConfig {
        node_id: NodeId(args.node_id),
        data_dir: args.data_dir.clone(),
        listen: args.kafka_addr,
        advertised_host,
        advertised_port,
        cluster_id: claim.cluster_id(),
        max_request_bytes: args.max_request_bytes as usize,
        auto_create_topics: args.auto_create_topics,
        default_partitions: args.default_partitions,
        topic_defaults: TopicDefaults {
            log: log_config(&profile),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        },
        batch_cache_bytes: profile.storage.batch_cache_bytes,
        request_read_timeout: Duration::from_secs(args.request_read_timeout_s),
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        connections_per_shard_max: 10_000,
        fetch_waiters_per_partition_max: 10_000,
        fetch_max_wait: Duration::from_secs(30),
        fetch_response_max_bytes: FETCH_RESPONSE_MAX_BYTES,
        busy_poll_us: profile.network.busy_poll_us,
        groups: GroupConfig {
            limits: GroupLimits {
                min_session: Duration::from_millis(args.group_min_session_timeout_ms),
                max_session: Duration::from_millis(args.group_max_session_timeout_ms),
                initial_rebalance_delay: Duration::from_millis(args.group_initial_rebalance_delay_ms),
                ..GroupLimits::default()
            },
            offsets_retention: Duration::from_millis(args.offsets_retention_ms),
            ..GroupConfig::default()
        },
    });
    let runtime = RuntimeConfig {
        cpus: cpus.clone(),
        io_memory_bytes: profile.io.io_memory_bytes,
        ring_depth: profile.io.ring_depth,
        spin_before_park: Duration::from_micros(profile.network.spin_before_park_us),
        channel_capacity: SHARD_CHANNEL_CAPACITY,
    };
    info!(
        node_id = args.node_id,
        data_dir = %args.data_dir.display(),
        cpus = %format_cpuset(&cpus),
        durability = %profile.storage.durability,
        "starting ferrolog"
    );
    let shard_stop = stop.clone();
    let results = ferrolog_shard::run(runtime, move |smp| {
        ferrolog_kafka::run_shard(smp, server.clone(), shard_stop.clone())
    });
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            stop.store(true, Ordering::SeqCst);
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for (shard, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            error!(shard, "{e}");
            ok = false;
        }
    }
    drop(claim);
    if ok {
        info!("shutdown complete");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
