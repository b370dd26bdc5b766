//! `ferrolog start`: load and validate the profile, claim the data directory,
//! start one pinned shard per CPU of the cpuset, recover the topic table and
//! every partition log (each on its owner shard), serve the Kafka API on
//! every shard, apply retention periodically, and shut down cleanly on
//! SIGTERM or SIGINT (every log flushed, synced and closed; exit 0).

use crate::node;
use ferrolog_cluster::repl_xdp::{self, TestFaults, XdpNode, XdpNodeConfig};
use ferrolog_controlplane::acls::AuthorizerConfig;
use ferrolog_hw_profiles::{blockpoll, cpuidle, irq};
use ferrolog_hw_profiles::{
    check_direct_io, detect, format_bytes, format_cpuset, parse_cpuset, pin_current_thread,
    Durability as ProfileDurability, Profile, XdpMode,
};
use ferrolog_kafka::groups::{group::GroupLimits, GroupConfig};
use ferrolog_kafka::sasl::{FileUsers, Mechanism};
use ferrolog_kafka::security::{server_tls, ClientAuth, SecurityConfig, TlsFiles};
use ferrolog_kafka::topics::{TopicDefaults, DEFAULT_MAX_MESSAGE_BYTES};
use ferrolog_kafka::ServerConfig;
use ferrolog_model::NodeId;
use ferrolog_shard::{ControlConfig, RuntimeConfig};
use ferrolog_storage::{CompactionConfig, Durability, LogConfig};
use ferrolog_transport::{NodeTls, NodeTlsFiles};
use ferrolog_xdp::{AttachMode, ProgramConfig, XdpError, XdpProgram, XskSocket};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Cross-shard calls queued per pair of shards before the caller waits.
const SHARD_CHANNEL_CAPACITY: usize = 1024;
/// Kafka's default fetch.max.bytes: the most record bytes in one fetch response.
const FETCH_RESPONSE_MAX_BYTES: usize = 55 << 20;
/// The admin listener when `--admin-addr` is not given: Redpanda's admin
/// port, on loopback only (metrics and status are not for the world).
const DEFAULT_ADMIN_ADDR: Option<SocketAddr> = Some(SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    9644,
));

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
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub node_id: i32,
    /// Create a topic when a client asks for its metadata.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics (and CreateTopics with -1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100_000))]
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
    /// Move leaderships back to each partition's preferred replica (the
    /// first of its set) when it has caught up, as Kafka's
    /// auto.leader.rebalance.enable; ElectLeaders works either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_leader_rebalance: bool,
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
    /// How long each shard's log compactor sleeps between passes over its
    /// partitions of compacted topics (Kafka's log.cleaner.backoff.ms).
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub log_cleaner_backoff_ms: u64,
    /// Segment bytes per second each compaction pass may read and write
    /// (Kafka's log.cleaner.io.max.bytes.per.second); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// Address of the admin HTTP listener (GET /metrics in the Prometheus
    /// text format, GET /v1/status as JSON), HOST:PORT, or `none`.
    /// Default: 127.0.0.1:9644.
    #[arg(long, value_parser = parse_admin_addr)]
    pub admin_addr: Option<AdminAddr>,
    /// A shard whose reactor runs a timer this much late counts a reactor
    /// stall (ferrolog_reactor_stalls_total).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub reactor_stall_threshold_ms: u64,
    /// Address of the control-plane RPC listener (Cap'n Proto), HOST:PORT.
    /// Required with --seeds; without it a one-voter node serves no RPC.
    #[arg(long, value_parser = crate::parse_addr)]
    pub rpc_addr: Option<SocketAddr>,
    /// HOST:PORT other nodes reach this node's RPC at. Default: --rpc-addr
    /// (which must then not be a wildcard address).
    #[arg(long)]
    pub advertised_rpc_addr: Option<String>,
    /// Address of shard 0's replication listener, HOST:PORT (shard s listens
    /// on PORT + s). Default: the --rpc-addr host with the RPC port + 1;
    /// without --rpc-addr, none.
    #[arg(long, value_parser = crate::parse_addr)]
    pub data_addr: Option<SocketAddr>,
    /// HOST:PORT other nodes reach shard 0's replication listener at.
    /// Default: the advertised RPC host with the --data-addr port.
    #[arg(long)]
    pub advertised_data_addr: Option<String>,
    /// The initial voters of the controller group, `ID@HOST:PORT,...` (their
    /// RPC addresses). Without it this node is a one-voter group. A node
    /// whose id is not listed joins the cluster as a broker, not a voter.
    #[arg(long, value_parser = parse_seeds)]
    pub seeds: Option<Seeds>,
    /// This node's rack (rack-aware replica placement; Metadata).
    #[arg(long)]
    pub rack: Option<String>,
    /// Log lines as human-readable text or as JSON objects (one per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TLS on the Kafka listener: the PEM certificate chain (server
    /// certificate first). Needs --kafka-tls-key.
    #[arg(long, requires = "kafka_tls_key")]
    pub kafka_tls_cert: Option<PathBuf>,
    /// The PEM private key of --kafka-tls-cert.
    #[arg(long, requires = "kafka_tls_cert")]
    pub kafka_tls_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates are verified against.
    #[arg(long, requires = "kafka_tls_cert")]
    pub kafka_tls_client_ca: Option<PathBuf>,
    /// Whether a TLS client must present a certificate: none, requested or
    /// required. Default: required with --kafka-tls-client-ca, else none.
    #[arg(long, value_enum, requires = "kafka_tls_client_ca")]
    pub kafka_tls_client_auth: Option<ClientAuthArg>,
    /// Mutual TLS between nodes (the control-plane RPC and the replication
    /// data links): this node's PEM certificate chain. Its certificate must
    /// name (IP address or DNS SAN) the hosts of --rpc-advertised-addr and
    /// --data-advertised-addr, and allow TLS server and client use. Needs
    /// --node-tls-key and --node-tls-ca; every node of the cluster needs
    /// them too.
    #[arg(long, requires_all = ["node_tls_key", "node_tls_ca"])]
    pub node_tls_cert: Option<PathBuf>,
    /// The PEM private key of --node-tls-cert.
    #[arg(long, requires = "node_tls_cert")]
    pub node_tls_key: Option<PathBuf>,
    /// PEM certificates of the CA that signs every node's certificate.
    #[arg(long, requires = "node_tls_cert")]
    pub node_tls_ca: Option<PathBuf>,
    /// SASL mechanisms offered by SaslHandshake, comma-separated, from
    /// PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; `none` turns SASL off.
    #[arg(long, default_value = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512", value_parser = parse_mechanisms)]
    pub sasl_mechanisms: Mechanisms,
    /// Serve only ApiVersions, SaslHandshake and SaslAuthenticate until a
    /// connection authenticated with SASL; close it on anything else.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub require_auth: bool,
    /// Bootstrap users: a file of `NAME:PASSWORD` lines, accepted by PLAIN
    /// and SCRAM on this node next to the cluster's SCRAM credentials.
    #[arg(long)]
    pub sasl_users_file: Option<PathBuf>,
    /// Check every request against the cluster's ACLs (CreateAcls). Off:
    /// every client may do everything and ACLs are only stored.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub authorization: bool,
    /// Principals allowed everything when authorization is on, separated
    /// by `;` as in Kafka's super.users: `User:admin;User:ops`.
    #[arg(long, value_parser = parse_super_users)]
    pub super_users: Option<SuperUsers>,
    /// Kafka's allow.everyone.if.no.acl.found: with authorization on, a
    /// resource that no ACL names is open to every client (default: only
    /// superusers may use it).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_everyone_if_no_acl_found: bool,
    /// TEST ONLY: requests run as the principal `User:<client.id>`, so a
    /// test can act as several principals without SASL. Any client can
    /// then claim any principal: never use it outside tests.
    #[arg(long, hide = true)]
    pub test_only_principal_from_client_id: bool,
    /// TEST ONLY: every Nth replication frame a shard would send over
    /// AF_XDP is dropped instead, to show the replicas' resend recovers it.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(2..))]
    pub test_only_xdp_drop_every: Option<u64>,
    /// TEST ONLY: every Nth such frame is sent twice.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(2..))]
    pub test_only_xdp_duplicate_every: Option<u64>,
    /// TEST ONLY: every Nth such frame is held back and sent after the next.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(2..))]
    pub test_only_xdp_reorder_every: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuthArg {
    None,
    Requested,
    Required,
}

/// `--sasl-mechanisms`.
#[derive(Clone, Debug)]
pub struct Mechanisms(pub Vec<Mechanism>);

fn parse_mechanisms(s: &str) -> Result<Mechanisms, String> {
    if s == "none" {
        return Ok(Mechanisms(Vec::new()));
    }
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let m = Mechanism::from_name(name).ok_or_else(|| {
            format!("unknown SASL mechanism {name:?} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
        })?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err("no SASL mechanism given (use `none` to turn SASL off)".into());
    }
    Ok(Mechanisms(out))
}

/// The listener's TLS and SASL settings, with the files read and checked.
fn security(args: &StartArgs) -> Result<SecurityConfig, String> {
    let tls = match (&args.kafka_tls_cert, &args.kafka_tls_key) {
        (Some(cert), Some(key)) => {
            let client_auth = match (args.kafka_tls_client_auth, &args.kafka_tls_client_ca) {
                (Some(ClientAuthArg::None), _) | (None, None) => ClientAuth::None,
                (Some(ClientAuthArg::Requested), _) => ClientAuth::Requested,
                (Some(ClientAuthArg::Required), _) | (None, Some(_)) => ClientAuth::Required,
            };
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.kafka_tls_client_ca.clone(),
                client_auth,
            };
            Some(server_tls(&files).map_err(|e| format!("invalid TLS settings: {e}"))?)
        }
        _ => None,
    };
    let users = match &args.sasl_users_file {
        Some(path) => FileUsers::load(path).map_err(|e| format!("invalid --sasl-users-file: {e}"))?,
        None => FileUsers::default(),
    };
    if args.require_auth && args.sasl_mechanisms.0.is_empty() {
        return Err("--require-auth needs at least one SASL mechanism".into());
    }
    Ok(SecurityConfig {
        tls,
        sasl_mechanisms: args.sasl_mechanisms.0.clone(),
        require_auth: args.require_auth,
        users,
    })
}

/// The --super-users list.
#[derive(Clone, Debug)]
pub struct SuperUsers(pub Vec<String>);

fn parse_super_users(s: &str) -> Result<SuperUsers, String> {
    let mut out = Vec::new();
    for p in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        match p.split_once(':') {
            Some((t, n)) if !t.is_empty() && !n.is_empty() => out.push(p.to_string()),
            _ => {
                return Err(format!(
                    "super user {p:?} is not a principal of the form Type:name (User:admin)"
                ))
            }
        }
    }
    Ok(SuperUsers(out))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--seeds`: node id and RPC address of each initial voter.
#[derive(Clone, Debug)]
pub struct Seeds(pub Vec<(i32, String)>);

pub fn parse_seeds(s: &str) -> Result<Seeds, String> {
    let mut out: Vec<(i32, String)> = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("{item:?}: expected ID@HOST:PORT"))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| format!("{item:?}: the node id must be a number >= 0"))?;
        let (_, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{item:?}: expected ID@HOST:PORT"))?;
        port.parse::<u16>().map_err(|_| format!("{item:?}: bad port"))?;
        if out.iter().any(|(n, _)| *n == id) {
            return Err(format!("node id {id} is listed twice"));
        }
        if out.iter().any(|(_, a)| a == addr) {
            return Err(format!("address {addr} is listed twice"));
        }
        out.push((id, addr.to_string()));
    }
    if out.is_empty() {
        return Err("no seeds given".into());
    }
    Ok(Seeds(out))
}

/// The control plane's RPC settings: (listen, advertised, seeds).
type ControlPlane = (Option<SocketAddr>, String, Vec<(NodeId, String)>);

fn control_plane(args: &StartArgs) -> Result<ControlPlane, String> {
    let seeds: Vec<(NodeId, String)> = args
        .seeds
        .as_ref()
        .map(|s| s.0.iter().map(|(n, a)| (NodeId(*n), a.clone())).collect())
        .unwrap_or_default();
    let Some(listen) = args.rpc_addr else {
        if !seeds.is_empty() {
            return Err("--seeds needs --rpc-addr".into());
        }
        return Ok((None, String::new(), seeds));
    };
    let advertised = match &args.advertised_rpc_addr {
        Some(a) => a.clone(),
        None if listen.ip().is_unspecified() => {
            return Err(format!(
                "--rpc-addr {listen} is a wildcard address: give --advertised-rpc-addr"
            ))
        }
        None => listen.to_string(),
    };
    if let Some((_, addr)) = seeds.iter().find(|(n, _)| n.0 == args.node_id) {
        if *addr != advertised {
            return Err(format!(
                "--seeds says node {} is at {addr}, but its RPC address is {advertised}",
                args.node_id
            ));
        }
    }
    Ok((Some(listen), advertised, seeds))
}

/// The replication listener of shard 0: (listen, advertised), both `None`
/// when neither --data-addr nor --rpc-addr is given.
fn data_plane(
    args: &StartArgs,
    rpc_listen: Option<SocketAddr>,
    rpc_advertised: &str,
) -> Result<(Option<SocketAddr>, Option<String>), String> {
    let listen = match (args.data_addr, rpc_listen) {
        (Some(listen), _) => listen,
        (None, Some(rpc)) if rpc.port() == 0 => SocketAddr::new(rpc.ip(), 0),
        (None, Some(rpc)) => {
            let port = rpc.port().checked_add(1).ok_or_else(|| {
                format!(
                    "--rpc-addr {rpc}: the default --data-addr would be past port 65535; give --data-addr"
                )
            })?;
            SocketAddr::new(rpc.ip(), port)
        }
        (None, None) if args.advertised_data_addr.is_some() => {
            return Err("--advertised-data-addr needs --data-addr or --rpc-addr".into())
        }
        (None, None) => return Ok((None, None)),
    };
    // Shard s listens on PORT + s and only shard 0's address is advertised,
    // so an ephemeral port cannot work (and 0 + s would be a privileged port).
    if listen.port() == 0 {
        return Err(format!(
            "the replication listeners need a fixed port (shard s listens on PORT + s), not {listen}: \
             give --data-addr, or an --rpc-addr with a port other than 0"
        ));
    }
    let advertised = match &args.advertised_data_addr {
        Some(a) => a.clone(),
        None => match rpc_advertised.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{}", listen.port()),
            None if listen.ip().is_unspecified() => {
                return Err(format!(
                    "--data-addr {listen} is a wildcard address: give --advertised-data-addr"
                ))
            }
            None => listen.to_string(),
        },
    };
    Ok((Some(listen), Some(advertised)))
}

/// `--admin-addr`: an address, or `none` for no admin listener.
#[derive(Clone, Copy, Debug)]
pub struct AdminAddr(Option<SocketAddr>);

fn parse_admin_addr(s: &str) -> Result<AdminAddr, String> {
    if s == "none" {
        return Ok(AdminAddr(None));
    }
    crate::parse_addr(s).map(|a| AdminAddr(Some(a)))
}

/// Logs go to stderr through `tracing`, filtered by RUST_LOG (default
/// `info`); every event carries its fields (shard, partition, ...), as
/// `key=value` text or as one JSON object per line.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
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
        group_commit_window: Duration::from_micros(s.group_commit_window_us),
        direct_sync_bytes: s.direct_sync_bytes,
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

pub fn run(mut args: StartArgs) -> ExitCode {
    init_logging(args.log_format);
    // glommio opens directories relative to nothing (openat with no base
    // fd): a relative --data-dir must become absolute first.
    args.data_dir = match std::path::absolute(&args.data_dir) {
        Ok(dir) => dir,
        Err(e) => {
            error!("invalid --data-dir {}: {e}", args.data_dir.display());
            return ExitCode::from(2);
        }
    };
    let profile = match &args.profile {
        Some(path) => Profile::load(path),
        None => Ok(Profile::default()),
    };
    let mut profile = match profile {
        Ok(p) => p,
        Err(e) => {
            error!("invalid profile: {e}");
            return ExitCode::from(2);
        }
    };
    // --cpuset replaces shards.cpuset before validation, so the overlap and memory checks see
    // the shards that will run.
    if let Some(set) = &args.cpuset {
        match parse_cpuset(set) {
            Ok(cpus) => profile.shards.cpuset = Some(format_cpuset(&cpus)),
            Err(e) => {
                error!("invalid --cpuset {set:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let machine = match detect() {
        Ok(m) => m,
        Err(e) => {
            error!("cannot detect the machine: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Not validate_on_host: a missing `network.xdp_interface` or queue is a reason to use TCP
    // (logged by the AF_XDP setup below), not to refuse to start.
    if let Err(e) = profile.validate_for(&machine) {
        let origin = if args.cpuset.is_some() {
            " (shards.cpuset from --cpuset)"
        } else {
            ""
        };
        error!("invalid profile{origin}: {e}");
        return ExitCode::from(2);
    }
    if profile.storage.segment_bytes > i32::MAX as u64 {
        error!(
            "invalid profile: storage.segment_bytes: {} exceeds {} (segment positions are 32-bit)",
            profile.storage.segment_bytes,
            i32::MAX
        );
        return ExitCode::from(2);
    }
    let fd_budget = match profile.fit_open_files_limit() {
        Ok(files) => {
            if let Some(asked) = files.lowered_from {
                warn!(
                    "storage.fd_budget lowered from {asked} to {} open partition files: RLIMIT_NOFILE's hard limit of {} leaves no room for {asked} + {} for the node's other files; the node accepts fewer partitions (raise the limit with ulimit -Hn or systemd LimitNOFILE=, or set a lower budget in the profile)",
                    files.fd_budget,
                    files.limit,
                    ferrolog_hw_profiles::FD_RESERVE
                );
            }
            info!(
                fd_budget = files.fd_budget,
                rlimit_nofile = files.limit,
                "open files"
            );
            files.fd_budget
        }
        Err(e) => {
            warn!("{e}; keeping the budget of the profile");
            profile.storage.fd_budget
        }
    };
    let (advertised_host, advertised_port) = match advertised(&args) {
        Ok(a) => a,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let cpus = match profile.shard_cpus(&machine.cpus) {
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
    let control_cpus = match profile.control_cpus(&machine.cpus) {
        Ok(c) => c,
        Err(e) => {
            error!("invalid profile: {e}");
            return ExitCode::from(2);
        }
    };
    let irq_cpus = match profile.irq_cpus(&machine.cpus) {
        Ok(c) => c,
        Err(e) => {
            error!("invalid profile: {e}");
            return ExitCode::from(2);
        }
    };
    // The storage engine writes only with O_DIRECT; find out here, naming the directory, rather
    // than deep inside the first partition open.
    if let Err(e) = check_direct_io(&args.data_dir) {
        error!("invalid --data-dir: {e}");
        return ExitCode::from(2);
    }
    info!(machine = %machine.summary(), "detected hardware");
    if machine.numa_nodes.len() > 1 {
        let mut nodes: Vec<usize> = cpus
            .iter()
            .filter_map(|&cpu| machine.numa_node_of(cpu).map(|node| node.os_index))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        info!(numa_nodes = ?nodes, "shard CPUs span these NUMA nodes");
    }
    info!(
        per_shard = %format_bytes(profile.shards.memory_bytes),
        shards = cpus.len(),
        machine = %format_bytes(machine.memory_bytes),
        "shard memory budget"
    );
    if let Some(device) = &profile.io.device {
        info!(%device, "device measured by ferrolog tune");
    }
    place_interrupts(irq_cpus.as_deref(), &cpus, &args.data_dir);
    check_idle_wait(profile.network.spin_before_park_us);
    // The main thread only waits for the shards; pinning it (and the threads it starts later,
    // which inherit its affinity) keeps it off the shards' cores.
    if let Some(control) = &control_cpus {
        if let Err(e) = pin_current_thread(control) {
            error!(
                "cannot pin the main thread to shards.control_cpuset {}: {e}",
                format_cpuset(control)
            );
            return ExitCode::FAILURE;
        }
        info!(cpus = %format_cpuset(control), "main thread pinned to the control CPUs");
    }
    let (rpc_listen, rpc_advertised, seeds) = match control_plane(&args) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let (data_listen, data_advertised) = match data_plane(&args, rpc_listen, &rpc_advertised) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let security = match security(&args) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let node_tls = match (&args.node_tls_cert, &args.node_tls_key, &args.node_tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let files = NodeTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            };
            match NodeTls::from_files(&files) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    error!("invalid node TLS settings: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    info!(tls = node_tls.is_some(), "node-to-node security");
    let xdp = xdp_setup(
        &profile,
        data_listen,
        node_tls.is_some(),
        TestFaults {
            drop_every: args.test_only_xdp_drop_every,
            duplicate_every: args.test_only_xdp_duplicate_every,
            reorder_every: args.test_only_xdp_reorder_every,
        },
    );
    info!(
        tls = security.tls.is_some(),
        require_auth = security.require_auth,
        sasl_mechanisms = ?security.sasl_mechanisms.iter().map(|m| m.name()).collect::<Vec<_>>(),
        bootstrap_users = security.users.len(),
        "Kafka listener security"
    );
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
        rack: args.rack.clone(),
        seeds,
        rpc_listen,
        rpc_advertised,
        data_listen,
        data_advertised,
        xdp: xdp.clone(),
        node_tls,
        peer_hints: Arc::default(),
        control_timing: control_timing(&profile),
        max_request_bytes: args.max_request_bytes as usize,
        auto_create_topics: args.auto_create_topics,
        auto_leader_rebalance: args.auto_leader_rebalance,
        default_partitions: args.default_partitions,
        topic_defaults: TopicDefaults {
            log: LogConfig {
                compaction: CompactionConfig {
                    io_bytes_per_sec: args.log_cleaner_io_max_bytes_per_second,
                    ..CompactionConfig::default()
                },
                ..log_config(&profile)
            },
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        },
        batch_cache_bytes: profile.storage.batch_cache_bytes,
        fd_budget: fd_budget as usize,
        request_read_timeout: Duration::from_secs(args.request_read_timeout_s),
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        connections_per_shard_max: 10_000,
        fetch_waiters_per_partition_max: 10_000,
        fetch_max_wait: Duration::from_secs(30),
        fetch_response_max_bytes: FETCH_RESPONSE_MAX_BYTES,
        compaction_interval: Duration::from_millis(args.log_cleaner_backoff_ms),
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
        listen_backlog: profile.network.listen_backlog,
        pipeline_depth: profile.network.pipeline_depth as usize,
        move_connections: profile.network.move_connections,
        admin_addr: args.admin_addr.map_or(DEFAULT_ADMIN_ADDR, |a| a.0),
        shard_cpus: cpus.clone(),
        stall_threshold: Duration::from_millis(args.reactor_stall_threshold_ms),
        security,
        authorizer: AuthorizerConfig {
            enabled: args.authorization,
            super_users: args.super_users.clone().map(|s| s.0).unwrap_or_default(),
            allow_everyone_if_no_acl_found: args.allow_everyone_if_no_acl_found,
        },
        principal_from_client_id_test_only: args.test_only_principal_from_client_id,
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
    let (control_server, control_stop) = (server.clone(), stop.clone());
    let nice = profile.shards.nice;
    let prefault = usize::try_from(profile.prefault_bytes()).unwrap_or(usize::MAX);
    if prefault > 0 && !ferrolog_shard::memory::keep_freed_memory() {
        warn!("malloc refused its thresholds: shards may return freed memory and fault it in again");
    }
    let results = ferrolog_shard::run_with_control(
        runtime,
        ControlConfig {
            cpus: control_cpus.clone(),
        },
        move |smp| {
            set_thread_nice(nice);
            if prefault > 0 {
                let took = ferrolog_shard::memory::prefault_heap(prefault);
                info!(
                    shard = smp.shard_id().0,
                    bytes = prefault,
                    ms = took.as_millis() as u64,
                    "shard heap faulted in"
                );
            }
            ferrolog_kafka::run_shard(smp, server.clone(), shard_stop.clone())
        },
        move |smp| {
            set_thread_nice(nice);
            ferrolog_kafka::run_control(smp, control_server, control_stop)
        },
    );
    // Every shard closed its socket: dropping the node's handle detaches the
    // XDP program (a crash leaves it attached; the next start clears it).
    if let Some(x) = &xdp {
        x.release();
    }
    let outcome = match results {
        Ok(r) => r,
        Err(e) => {
            error!("{e}");
            stop.store(true, Ordering::SeqCst);
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for (shard, r) in outcome.shards.into_iter().enumerate() {
        if let Err(e) = r {
            error!(shard, "{e}");
            ok = false;
        }
    }
    if let Err(e) = outcome.control {
        error!("control executor: {e}");
        ok = false;
    }
    drop(claim);
    if ok {
        info!("shutdown complete");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Sets the calling thread's nice value (`shards.nice`; Linux's nice is per
/// thread): a shard or the control executor, as it starts. 0 leaves it. A
/// refusal (no CAP_SYS_NICE) is one warning for the whole node.
fn set_thread_nice(nice: i32) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if nice == 0 {
        return;
    }
    // SAFETY: plain system calls on this thread's own id.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 && !WARNED.swap(true, Ordering::SeqCst) {
        warn!(
            nice,
            "cannot set the shards' nice value ({}): they run at the default priority, and a busy \
             process sharing a shard's CPU delays its wake-ups; run as root or with CAP_SYS_NICE, or \
             set shards.nice = 0",
            std::io::Error::last_os_error()
        );
    }
}

/// The AF_XDP path of replication frames, when the profile names an
/// interface: the XDP program attached (clearing one a crashed ferrolog
/// left), and a socket opened and closed on shard 0's queue to prove the
/// path works before the node advertises it. Any failure is one warning
/// naming the reason, and TCP: start never fails for AF_XDP. With node TLS
/// on, AF_XDP is not used: its datagrams are neither encrypted nor
/// authenticated, and must not bypass the TLS the operator asked for.
fn xdp_setup(
    profile: &Profile,
    data_listen: Option<SocketAddr>,
    node_tls: bool,
    test_faults: TestFaults,
) -> Option<Arc<XdpNode>> {
    let interface = profile.network.xdp_interface.as_deref()?;
    let queue = profile.network.xdp_queue;
    if node_tls {
        warn!(
            interface,
            "AF_XDP is not available (node-to-node TLS is on, and AF_XDP datagrams are not \
             encrypted): replication frames use TCP"
        );
        return None;
    }
    let Some(listen) = data_listen else {
        warn!(
            interface,
            "network.xdp_interface is set, but this node has no replication listener \
             (--rpc-addr or --data-addr): AF_XDP is not used"
        );
        return None;
    };
    let mode = match profile.network.xdp_mode {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
    };
    // The node's UDP replication port is its TCP replication port's number.
    let port = listen.port();
    let setup = || -> Result<Arc<XdpNode>, XdpError> {
        let ip = ferrolog_xdp::interface_ipv4(interface)?;
        let program = XdpProgram::attach(&ProgramConfig::new(interface, port, mode))?;
        drop(XskSocket::open(&program, repl_xdp::socket_config(queue, ip, 0))?);
        let config = XdpNodeConfig {
            local: SocketAddrV4::new(ip, port),
            first_queue: queue,
            spin: Duration::from_micros(profile.network.spin_before_park_us),
            poll: Duration::from_micros(profile.network.xdp_poll_us),
            test_faults,
        };
        Ok(Arc::new(XdpNode::new(program, config)))
    };
    match setup() {
        Ok(node) => {
            info!(
                interface, queue, mode = %profile.network.xdp_mode, endpoint = %node.local,
                "AF_XDP replication path ready: peers that advertise AF_XDP get replication frames over it"
            );
            Some(node)
        }
        Err(e) => {
            warn!(
                interface, queue, mode = %profile.network.xdp_mode,
                "AF_XDP is not available ({e}): replication frames use TCP"
            );
            None
        }
    }
}

fn control_timing(p: &Profile) -> ferrolog_controlplane::controller::ControlTiming {
    let c = &p.control;
    ferrolog_controlplane::controller::ControlTiming {
        tick: Duration::from_millis(c.raft_tick_ms),
        election_ticks: c.election_ticks as usize,
        heartbeat_ticks: 2.min(c.election_ticks as usize - 1),
        heartbeat_interval: Duration::from_millis(c.heartbeat_interval_ms),
        session_timeout: Duration::from_millis(c.session_timeout_ms),
        ..Default::default()
    }
}

/// One warning when the shards park at once (`spin_before_park_us` 0) on a KVM guest whose idle
/// CPUs halt without polling first: every wake-up of a parked shard (a cross-shard call, a
/// completion) then pays a halted vCPU's wake-up through the host. Changing it is the
/// operator's call (it makes idle vCPUs poll up to 200 us), as `rpk tune`'s system tuners are.
fn check_idle_wait(spin_before_park_us: u64) {
    if spin_before_park_us > 0 {
        return;
    }
    let idle = cpuidle::survey(Path::new("/sys"));
    if let Some(fix) = idle.proposal() {
        warn!(
            "idle CPUs halt without polling first ({}): every wake-up of a parked shard pays a \
             halted vCPU's wake-up (docs/tuning.md); `{fix}` lets the guest poll first (ferrolog \
             tune proposes it)",
            idle.describe()
        );
    }
}

/// The data disk's and the NICs' interrupts: moved to `shards.irq_cpuset` when the profile sets
/// it (a broker that may not write `/proc/irq` says so and goes on), else one warning per device
/// whose interrupts land on a shard's CPU. A move outlives the broker, as `rpk tune`'s does.
fn place_interrupts(irq_cpus: Option<&[usize]>, shard_cpus: &[usize], data_dir: &Path) {
    let devices = irq::survey(Path::new("/sys"), Path::new("/proc"), data_dir);
    match irq_cpus {
        Some(target) => {
            let total: usize = devices.iter().map(|d| d.irqs.len()).sum();
            let failed = irq::apply_affinity(Path::new("/proc"), &devices, target);
            if failed.is_empty() {
                info!(
                    cpus = %format_cpuset(target),
                    interrupts = total,
                    "moved the data disk's and the NICs' interrupts to shards.irq_cpuset"
                );
            } else {
                let irqs: Vec<String> = failed.iter().map(|(irq, _)| irq.to_string()).collect();
                warn!(
                    cpus = %format_cpuset(target),
                    "cannot move interrupts {} of {total} to shards.irq_cpuset: {} (needs root and \
                     a controller that allows it); they stay where they are",
                    irqs.join(","),
                    failed[0].1
                );
            }
        }
        None => {
            // The interrupts stay where they are, on the shards' CPUs or beside them.
            if let Some(fix) =
                blockpoll::survey(Path::new("/sys"), data_dir).and_then(|d| d.rq_affinity_proposal(false))
            {
                warn!(
                    "the data disk completes requests on the interrupt's CPU (rq_affinity is not 2): \
                     the kernel worker that finishes each write waits there behind whatever runs \
                     on it; `{fix}` completes them on the issuing shard's CPU (ferrolog tune \
                     proposes it; docs/tuning.md)"
                );
            }
            for (what, cpus) in irq::shared_with_shards(&devices, shard_cpus) {
                let detail: Vec<String> = devices
                    .iter()
                    .filter(|d| d.what == what)
                    .flat_map(|d| d.describe())
                    .collect();
                warn!(
                    shard_cpus = %format_cpuset(&cpus),
                    "the {what}'s interrupts land on CPUs that run shards ({}); set shards.irq_cpuset \
                     to CPUs without a shard (ferrolog tune proposes one where the machine allows)",
                    detail.join("; ")
                );
            }
        }
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
        p.storage.group_commit_window_us = 250;
        let c = log_config(&p);
        assert_eq!(c.durability, Durability::Direct);
        assert_eq!(c.write_depth, 7);
        assert_eq!(c.group_commit_window, Duration::from_micros(250));
        assert_eq!(c.segment_bytes, p.storage.segment_bytes);
        assert_eq!(c.retention_ms, p.storage.retention_ms);
    }

    #[test]
    fn af_xdp_is_not_tried_without_a_replication_listener_or_with_node_tls() {
        let mut p = Profile::default();
        assert!(
            xdp_setup(&p, None, false, TestFaults::default()).is_none(),
            "no interface named"
        );
        // An interface that cannot exist: the checks below return before touching it.
        p.network.xdp_interface = Some("ferrolog-none0".to_owned());
        assert!(
            xdp_setup(&p, None, false, TestFaults::default()).is_none(),
            "no listener"
        );
        let listen: SocketAddr = "127.0.0.1:9094".parse().expect("addr");
        assert!(
            xdp_setup(&p, Some(listen), true, TestFaults::default()).is_none(),
            "node TLS"
        );
        assert!(
            xdp_setup(&p, Some(listen), false, TestFaults::default()).is_none(),
            "no such interface"
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        start: StartArgs,
    }

    fn data_plane_of(extra: &[&str]) -> Result<(Option<SocketAddr>, Option<String>), String> {
        use clap::Parser;
        let base = [
            "ferrolog",
            "--data-dir",
            "/tmp/d",
            "--kafka-addr",
            "127.0.0.1:9092",
        ];
        let args = Cli::try_parse_from(base.iter().chain(extra))
            .expect("arguments")
            .start;
        let (rpc_listen, rpc_advertised, _) = control_plane(&args)?;
        data_plane(&args, rpc_listen, &rpc_advertised)
    }

    #[test]
    fn the_data_address_defaults_to_the_rpc_port_plus_one() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert_eq!(data_plane_of(&[]), Ok((None, None)));
        assert_eq!(
            data_plane_of(&["--rpc-addr", "127.0.0.1:9100"]),
            Ok((Some(addr("127.0.0.1:9101")), Some("127.0.0.1:9101".into())))
        );
        assert_eq!(
            data_plane_of(&[
                "--rpc-addr",
                "0.0.0.0:9100",
                "--advertised-rpc-addr",
                "node-1:9100"
            ]),
            Ok((Some(addr("0.0.0.0:9101")), Some("node-1:9101".into())))
        );
        assert_eq!(
            data_plane_of(&[
                "--rpc-addr",
                "0.0.0.0:9100",
                "--advertised-rpc-addr",
                "node-1:9100",
                "--data-addr",
                "0.0.0.0:9200",
                "--advertised-data-addr",
                "10.0.0.1:9300",
            ]),
            Ok((Some(addr("0.0.0.0:9200")), Some("10.0.0.1:9300".into())))
        );
        assert_eq!(
            data_plane_of(&["--data-addr", "127.0.0.1:9200"]),
            Ok((Some(addr("127.0.0.1:9200")), Some("127.0.0.1:9200".into())))
        );
        assert!(data_plane_of(&["--data-addr", "0.0.0.0:9200"]).is_err());
        assert!(data_plane_of(&["--advertised-data-addr", "h:1"]).is_err());
        assert!(data_plane_of(&["--rpc-addr", "127.0.0.1:65535"]).is_err());
        let ephemeral = data_plane_of(&["--rpc-addr", "127.0.0.1:0"]).expect_err("port 0");
        assert!(ephemeral.contains("fixed port"), "{ephemeral}");
        assert!(data_plane_of(&["--rpc-addr", "127.0.0.1:0", "--data-addr", "127.0.0.1:9200"]).is_ok());
        assert!(data_plane_of(&["--data-addr", "127.0.0.1:0"]).is_err());
    }
}
