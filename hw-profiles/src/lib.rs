//! Hardware profiles: the TOML files under `hw-profiles/` that say how a node's cores, io_uring
//! memory, network polling and log storage are used, and the code that loads and validates them.
//!
//! Ownership and concurrency: a [`Profile`] is plain data, read once at startup on the main thread
//! and then copied to whoever needs it. I/O happens only in [`Profile::load`] (reads one file),
//! [`online_cpus`] and [`nic_rx_queues`] (read `/sys`), [`detect`] (hwloc), [`check_direct_io`]
//! (writes a scratch file), [`pin_current_thread`] (sched_setaffinity) and the validations that
//! call them ([`Profile::validate`], [`Profile::validate_on_host`]); the other checks are pure functions of the profile and a
//! [`Machine`], so tests can give them a made-up machine.
//!
//! The built-in default is `hw-profiles/dev.toml`, embedded at compile time, so the file documents
//! exactly what runs when no `--profile` is given. Any section or field may be left out of a
//! profile file and then takes the dev value; an unknown field is an error, so typos fail loudly.
//! Parsing only checks types; validation checks values against the limits of the machine and of
//! the storage engine.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub mod blockpoll;
pub mod cpuidle;
mod detect;
mod direct_io;
pub mod irq;

pub use detect::{detect, Cache, Core, DetectError, Machine, NumaNode};
pub use direct_io::{check_direct_io, AlignedBuffer, DIRECT_IO_ALIGN_BYTES};

/// The text of `hw-profiles/dev.toml`; [`Profile::default`] parses it.
pub const DEV_PROFILE_TOML: &str = include_str!("../dev.toml");

/// The largest CPU number a cpuset may name; bounds the list a range can expand to.
pub const CPU_NUMBER_MAX: usize = 4095;

/// Where Linux lists the online CPUs, in cpuset syntax.
const ONLINE_CPUS_PATH: &str = "/sys/devices/system/cpu/online";
/// Where Linux lists network interfaces; `<name>/queues/rx-N` are an interface's receive queues.
const SYS_CLASS_NET: &str = "/sys/class/net";
/// Longest network interface name (IFNAMSIZ is 16 with the terminating NUL).
const INTERFACE_NAME_BYTES_MAX: usize = 15;

/// Alignment of DMA (O_DIRECT) buffers and writes: the largest common logical block size.
const DMA_ALIGN_BYTES: usize = DIRECT_IO_ALIGN_BYTES;
/// Smallest io_memory_bytes a profile may set (`ferrolog tune` uses it too).
pub const IO_MEMORY_BYTES_MIN: usize = 64 * 1024;
const RING_DEPTH_MIN: usize = 8;
const RING_DEPTH_MAX: usize = 4096;
const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
const INDEX_INTERVAL_BYTES_MIN: u32 = 512;
/// The kernel caps a listen backlog at net.core.somaxconn, whose largest value is 65535 on most
/// kernels; a larger number would be silently cut.
pub const LISTEN_BACKLOG_MAX: u32 = 65535;
/// The longest AF_XDP poll period (100 ms): beyond it a replication frame would wait longer
/// than the replicas' resend timeout.
pub const XDP_POLL_US_MAX: u64 = 100_000;
/// `network.pipeline_depth` by default: a librdkafka or Java producer keeps at most 5 requests
/// in flight per connection, a consumer 1.
pub const PIPELINE_DEPTH_DEFAULT: u32 = 16;
/// `shards.nice` by default: a shard thread's weight is then about nine times a normal
/// process's, so it preempts a process spinning on its CPU when it wakes (a busy-polling
/// client's 1-4 ms wake-up stalls, docs/benchmarks.md) without starving that process.
pub const SHARD_NICE_DEFAULT: i32 = -10;

/// The largest `network.pipeline_depth`.
pub const PIPELINE_DEPTH_MAX: u32 = 1024;
/// Longest group-commit window: every fsync-durable append may wait this long, so beyond 10 ms it
/// costs more latency than the slowest fdatasync it could save.
pub const GROUP_COMMIT_WINDOW_US_MAX: u64 = 10_000;
/// `storage.direct_sync_bytes` by default: halves what the sync at a roll of a 128 MiB
/// segment has to flush without paying a sync every few MiB (docs/benchmarks.md, run 5).
pub const DIRECT_SYNC_BYTES_DEFAULT: u64 = 32 * MIB as u64;
/// Below this a background sync would follow nearly every flush: use `fsync` durability.
pub const DIRECT_SYNC_BYTES_MIN: u64 = MIB as u64;
/// `storage.fd_budget` by default: 10,000 partitions (one open active segment each) with room
/// for lazily opened sealed segments, and with [`FD_RESERVE`] within this project's VMs'
/// RLIMIT_NOFILE of 20000.
pub const FD_BUDGET_DEFAULT: u64 = 16384;
/// The smallest `storage.fd_budget`: the internal topics' partitions and a few sealed files.
pub const FD_BUDGET_MIN: u64 = 256;
/// The largest `storage.fd_budget`: a bound on what one node opens (and on its
/// partitions), far below what a kernel allows (`fs.nr_open` is 2^20 by default).
pub const FD_BUDGET_MAX: u64 = 1 << 20;
/// Open files a node needs besides its partition logs' segments: listeners and client
/// connections, the controller's files, io_uring rings and eventfds, directories being
/// synced. RLIMIT_NOFILE should allow `storage.fd_budget` plus this; start lowers the budget
/// where the hard limit does not.
pub const FD_RESERVE: u64 = 1024;

const MIB: usize = 1024 * 1024;
const KIB_U64: u64 = 1024;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Errors from loading or validating a profile. Validation errors name the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse profile {origin}: {source}")]
    Parse { origin: String, source: toml::de::Error },
    #[error("invalid cpuset {spec:?}: {reason}")]
    Cpuset { spec: String, reason: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("cannot detect the machine: {0}")]
    Detect(#[from] DetectError),
    #[error("file system of {} does not support O_DIRECT ({hint})", dir.display())]
    NoDirectIo { dir: PathBuf, hint: String },
    #[error("cannot check O_DIRECT support in {}: {source}", dir.display())]
    DirectIoCheck { dir: PathBuf, source: io::Error },
}

/// A whole profile. Every section is optional in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub shards: Shards,
    #[serde(default)]
    pub io: Io,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub control: Control,
}

/// `[control]`: timing of the control plane (Raft group and failure detection).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    /// One Raft tick, in ms.
    pub raft_tick_ms: u64,
    /// Ticks without a leader before a voter campaigns (raft randomizes up to twice this).
    pub election_ticks: u32,
    /// How often a node heartbeats the controller leader, in ms.
    pub heartbeat_interval_ms: u64,
    /// A node not heard for this long is marked down and its partitions get new leaders, in ms.
    pub session_timeout_ms: u64,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            raft_tick_ms: 100,
            election_ticks: 10,
            heartbeat_interval_ms: 500,
            session_timeout_ms: 3000,
        }
    }
}

/// `[shards]`: which cores run a shard, which run everything else, and each shard's memory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shards {
    /// One pinned shard per listed CPU ("0-3,6"); `None` means one per online CPU.
    pub cpuset: Option<String>,
    /// CPUs for the control plane and the node's other non-shard threads (the main thread and
    /// whatever it starts); disjoint from the shards' CPUs. `None`: not pinned.
    pub control_cpuset: Option<String>,
    /// CPUs that take the data disk's and the NICs' interrupts: at start the broker moves them
    /// there (`/proc/irq/N/smp_affinity_list`) when permitted. Disjoint from the shards' CPUs.
    /// `None`: interrupts are left where they are (start warns when they share shard CPUs).
    pub irq_cpuset: Option<String>,
    /// Memory budget of one shard; must cover its consumers (batch cache, io memory), and all
    /// shards' budgets must fit in the machine's memory.
    pub memory_bytes: u64,
    /// Nice value of the shard threads and the control executor's thread (-20..=19): below 0
    /// a shard woken by a completion or a packet takes its CPU from a busy process of normal
    /// priority at once instead of waiting for that process's time slice. Applied at start
    /// when permitted (root or CAP_SYS_NICE), else one warning.
    pub nice: i32,
    /// Heap memory each shard allocates, touches and frees at start, before it serves, so
    /// that the allocations of its first minutes reuse pages already mapped instead of
    /// taking a page fault in a request's path (the start also stops the allocator from
    /// returning freed memory to the kernel, so a shard keeps what it once used, as a
    /// Seastar shard keeps its memory). At most `memory_bytes`; 0 = off; `None`:
    /// `storage.batch_cache_bytes`, what a shard's heap grows to as its batch cache fills
    /// (see [`Profile::prefault_bytes`]).
    pub prefault_bytes: Option<u64>,
}

impl Default for Shards {
    fn default() -> Self {
        Self {
            cpuset: None,
            control_cpuset: None,
            irq_cpuset: None,
            memory_bytes: 512 * MIB as u64,
            nice: SHARD_NICE_DEFAULT,
            prefault_bytes: None,
        }
    }
}

/// `[io]`: io_uring and DMA buffer sizing, per shard.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Io {
    /// DMA memory glommio registers with each of its three rings (counted three times against
    /// RLIMIT_MEMLOCK, which may be 8 MiB).
    pub io_memory_bytes: usize,
    /// io_uring submission queue depth.
    pub ring_depth: usize,
    /// Size of one O_DIRECT write of the appender; a flush issues several.
    pub write_chunk_bytes: usize,
    /// O_DIRECT writes of one flush in flight at once.
    pub write_depth: usize,
    /// Size of one DMA read serving a fetch from disk.
    pub read_chunk_bytes: usize,
    /// `[io.device]`: what `ferrolog tune` measured on the data directory's device. Informational
    /// (logged at start); absent in hand-written profiles.
    pub device: Option<Device>,
}

/// `[io.device]`: measured properties of the data directory's device, written by `ferrolog tune`.
/// Every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Device {
    /// Sequential O_DIRECT write bandwidth with 1 MiB writes.
    pub seq_write_bytes_per_s: Option<u64>,
    /// Latency of one 4 KiB O_DIRECT write, median and 99th percentile.
    pub write_4k_p50_us: Option<u64>,
    pub write_4k_p99_us: Option<u64>,
    /// Latency of one 4 KiB O_DIRECT write followed by fdatasync, median and 99th percentile.
    pub fdatasync_4k_p50_us: Option<u64>,
    pub fdatasync_4k_p99_us: Option<u64>,
}

impl fmt::Display for Device {
    /// "seq write 1.2 GiB/s, 4 KiB write p50 40 us p99 90 us, ..." with the fields present.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(rate) = self.seq_write_bytes_per_s {
            parts.push(format!("seq write {}/s", format_bytes(rate)));
        }
        let pair = |name: &str, p50: Option<u64>, p99: Option<u64>| match (p50, p99) {
            (None, None) => None,
            (p50, p99) => {
                let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v} us"));
                Some(format!("{name} p50 {} p99 {}", show(p50), show(p99)))
            }
        };
        parts.extend(pair("4 KiB write", self.write_4k_p50_us, self.write_4k_p99_us));
        parts.extend(pair(
            "4 KiB write+fdatasync",
            self.fdatasync_4k_p50_us,
            self.fdatasync_4k_p99_us,
        ));
        if parts.is_empty() {
            f.write_str("nothing measured")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl Default for Io {
    fn default() -> Self {
        Self {
            io_memory_bytes: MIB,
            ring_depth: 128,
            write_chunk_bytes: MIB,
            write_depth: 2,
            read_chunk_bytes: 64 * 1024,
            device: None,
        }
    }
}

/// `[network]`: polling behaviour of idle shards, listener sizing, and the AF_XDP path of
/// replication frames.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// How long an idle shard spins before parking; 0 parks at once.
    pub spin_before_park_us: u64,
    /// SO_BUSY_POLL on client sockets, in µs: the kernel polls the NIC queue
    /// for this long on a blocking read before sleeping. 0 = off.
    pub busy_poll_us: u32,
    /// listen() backlog of the Kafka listeners: connections the kernel queues before accept.
    pub listen_backlog: u32,
    /// Requests of one client connection handled at once (answered in the order received, as
    /// Kafka clients require); 1 handles them one at a time.
    pub pipeline_depth: u32,
    /// A client connection whose Produce or Fetch request names only partitions another shard
    /// owns moves to that shard (once per connection), so its requests run without a
    /// cross-shard hop each way. Plain TCP without SASL only.
    pub move_connections: bool,
    /// NIC for AF_XDP replication traffic (UDP to the node's replication port, see
    /// docs/replication.md). Where AF_XDP cannot be set up, start logs why and uses TCP.
    pub xdp_interface: Option<String>,
    /// Receive queue of `xdp_interface` used by shard 0; shard `s` uses `xdp_queue + s` where the
    /// interface has it (the other shards send over TCP).
    pub xdp_queue: u32,
    /// Where the XDP program runs on `xdp_interface`.
    pub xdp_mode: XdpMode,
    /// How often a shard polls its AF_XDP socket while it is not spinning (no recent traffic,
    /// or `spin_before_park_us` 0): the most a frame waits, against the CPU the polls cost.
    pub xdp_poll_us: u64,
}

/// `network.xdp_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): the fast path, and the only one with zero-copy; the
    /// driver must support it.
    #[default]
    Native,
    /// Generic (SKB) mode: any interface, after the kernel built an skb; copy mode only.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

impl Default for Network {
    fn default() -> Self {
        Self {
            spin_before_park_us: 0,
            busy_poll_us: 0,
            listen_backlog: 1024,
            pipeline_depth: PIPELINE_DEPTH_DEFAULT,
            move_connections: true,
            xdp_interface: None,
            xdp_queue: 0,
            xdp_mode: XdpMode::Native,
            xdp_poll_us: 200,
        }
    }
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once on stable storage (fdatasync, shared by concurrent appends).
    #[default]
    Fsync,
    /// Once the O_DIRECT write completed: survives a process crash; the newest appends can be
    /// lost on a kernel crash or power loss (see docs/storage.md).
    Direct,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::Direct => "direct",
        })
    }
}

/// `[storage]`: segment rolling, indexing, durability, caching and retention defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Roll the active segment at this size.
    pub segment_bytes: u64,
    /// Roll the active segment once its first batch is this old.
    pub segment_ms: u64,
    /// Log bytes between two sparse offset-index entries.
    pub index_interval_bytes: u32,
    pub durability: Durability,
    /// Per-shard cache of recent batches serving tail fetches.
    pub batch_cache_bytes: usize,
    /// Size limit per partition; `None` (written -1) means no limit.
    #[serde(deserialize_with = "limit_or_unlimited")]
    pub retention_bytes: Option<u64>,
    /// Age limit of segments; `None` (written -1) means keep forever.
    #[serde(deserialize_with = "limit_or_unlimited")]
    pub retention_ms: Option<u64>,
    /// How long a flush waits for more appends to join it (group commit); 0 only lets the
    /// appends that are already runnable join.
    pub group_commit_window_us: u64,
    /// `direct` durability: fdatasync the active segment in the background after every this
    /// many bytes written; 0 syncs only at rolls and close.
    pub direct_sync_bytes: u64,
    /// Segment files the node's partition logs may hold open: every partition keeps its
    /// active segment open, sealed segments are opened on first read and closed least
    /// recently used first. Bounds the partitions a node accepts.
    pub fd_budget: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            segment_bytes: 128 * MIB as u64,
            segment_ms: 7 * DAY_MS,
            index_interval_bytes: 4096,
            durability: Durability::Fsync,
            batch_cache_bytes: 64 * MIB,
            retention_bytes: None,
            retention_ms: Some(7 * DAY_MS),
            group_commit_window_us: 0,
            direct_sync_bytes: DIRECT_SYNC_BYTES_DEFAULT,
            fd_budget: FD_BUDGET_DEFAULT,
        }
    }
}

/// TOML has no null, so "no limit" is written -1, as in Kafka's topic configs.
fn limit_or_unlimited<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = i64::deserialize(deserializer)?;
    match value {
        -1 => Ok(None),
        v if v >= 0 => Ok(Some(v.unsigned_abs())),
        v => Err(serde::de::Error::custom(format!(
            "{v} is not a limit (use a value >= 0, or -1 for no limit)"
        ))),
    }
}

impl Default for Profile {
    /// The dev profile, parsed from the embedded `hw-profiles/dev.toml`.
    fn default() -> Self {
        Self::from_toml_str(DEV_PROFILE_TOML).expect("the embedded hw-profiles/dev.toml must parse")
    }
}

impl Profile {
    /// Parses a profile from TOML text. Checks types and field names only; see [`Self::validate`].
    pub fn from_toml_str(text: &str) -> Result<Profile, ProfileError> {
        parse(text, "<string>")
    }

    /// Reads and parses the profile file at `path`. Checks types and field names only.
    pub fn load(path: impl AsRef<Path>) -> Result<Profile, ProfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, &path.display().to_string())
    }

    /// The heap each shard faults in at start: `shards.prefault_bytes`, or where it is unset
    /// `storage.batch_cache_bytes` (the batch cache keeps the read buffers produce requests
    /// arrive in, so a shard's heap grows by about that much in its first minutes).
    pub fn prefault_bytes(&self) -> u64 {
        self.shards
            .prefault_bytes
            .unwrap_or(self.storage.batch_cache_bytes as u64)
    }

    /// Checks every value against this machine (detected with hwloc) and the engine's limits.
    pub fn validate(&self) -> Result<(), ProfileError> {
        self.validate_on_host(&detect()?)
    }

    /// [`Self::validate_for`] `machine`, plus the checks that look at this host's devices
    /// (`network.xdp_interface` in `/sys/class/net`).
    pub fn validate_on_host(&self, machine: &Machine) -> Result<(), ProfileError> {
        self.validate_for(machine)?;
        self.validate_interfaces_with(nic_rx_queues)
    }

    /// Checks every value against a described machine: its CPUs (see [`Self::validate_against`])
    /// and its memory. Pure, so tests can pass a made-up [`Machine`].
    pub fn validate_for(&self, machine: &Machine) -> Result<(), ProfileError> {
        self.validate_against(&machine.cpus)?;
        let shards = self.shard_cpus(&machine.cpus)?.len() as u64;
        let memory = self.shards.memory_bytes;
        let total = memory.saturating_mul(shards);
        if total > machine.memory_bytes {
            return Err(invalid(
                "shards.memory_bytes",
                format!(
                    "{memory} ({}) x {shards} shards = {} is more than the machine's memory, {} ({})",
                    format_bytes(memory),
                    format_bytes(total),
                    machine.memory_bytes,
                    format_bytes(machine.memory_bytes),
                ),
            ));
        }
        Ok(())
    }

    /// The checks of [`Self::validate_for`] that need only the online CPUs (sorted), and every
    /// machine-independent rule.
    pub fn validate_against(&self, online: &[usize]) -> Result<(), ProfileError> {
        self.shard_cpus(online)?;
        self.control_cpus(online)?;
        self.irq_cpus(online)?;

        let c = &self.control;
        if !(10..=10_000).contains(&c.raft_tick_ms) {
            return Err(invalid(
                "control.raft_tick_ms",
                format!("{} outside 10..=10000", c.raft_tick_ms),
            ));
        }
        if !(3..=100).contains(&c.election_ticks) {
            return Err(invalid(
                "control.election_ticks",
                format!("{} outside 3..=100", c.election_ticks),
            ));
        }
        if !(10..=60_000).contains(&c.heartbeat_interval_ms) {
            return Err(invalid(
                "control.heartbeat_interval_ms",
                format!("{} outside 10..=60000", c.heartbeat_interval_ms),
            ));
        }
        if c.session_timeout_ms < 2 * c.heartbeat_interval_ms || c.session_timeout_ms > 600_000 {
            return Err(invalid(
                "control.session_timeout_ms",
                format!(
                    "{} must be at least twice control.heartbeat_interval_ms ({}) and at most 600000",
                    c.session_timeout_ms, c.heartbeat_interval_ms
                ),
            ));
        }

        let io = &self.io;
        if io.io_memory_bytes < IO_MEMORY_BYTES_MIN || io.io_memory_bytes % DMA_ALIGN_BYTES != 0 {
            return Err(invalid(
                "io.io_memory_bytes",
                format!(
                    "{} must be at least {IO_MEMORY_BYTES_MIN} and a multiple of {DMA_ALIGN_BYTES}",
                    io.io_memory_bytes
                ),
            ));
        }
        if !io.ring_depth.is_power_of_two() || !(RING_DEPTH_MIN..=RING_DEPTH_MAX).contains(&io.ring_depth) {
            return Err(invalid(
                "io.ring_depth",
                format!(
                    "{} must be a power of two between {RING_DEPTH_MIN} and {RING_DEPTH_MAX}",
                    io.ring_depth
                ),
            ));
        }
        check_dma_multiple("io.write_chunk_bytes", io.write_chunk_bytes)?;
        if !(1..=64).contains(&io.write_depth) {
            return Err(ProfileError::Invalid {
                field: "io.write_depth",
                message: format!("{} must be between 1 and 64", io.write_depth),
            });
        }
        check_dma_multiple("io.read_chunk_bytes", io.read_chunk_bytes)?;
        if let Some(device) = &io.device {
            check_percentiles(
                "io.device.write_4k_p50_us",
                device.write_4k_p50_us,
                device.write_4k_p99_us,
            )?;
            check_percentiles(
                "io.device.fdatasync_4k_p50_us",
                device.fdatasync_4k_p50_us,
                device.fdatasync_4k_p99_us,
            )?;
        }

        // The budget covers the memory a shard is known to hold for its whole life.
        let consumers = self.storage.batch_cache_bytes as u64 + io.io_memory_bytes as u64;
        if consumers > self.shards.memory_bytes {
            return Err(invalid(
                "shards.memory_bytes",
                format!(
                    "{} ({}) does not cover storage.batch_cache_bytes {} + io.io_memory_bytes {} \
                     = {consumers} ({})",
                    self.shards.memory_bytes,
                    format_bytes(self.shards.memory_bytes),
                    self.storage.batch_cache_bytes,
                    io.io_memory_bytes,
                    format_bytes(consumers),
                ),
            ));
        }

        let network = &self.network;
        if !(1..=LISTEN_BACKLOG_MAX).contains(&network.listen_backlog) {
            return Err(invalid(
                "network.listen_backlog",
                format!(
                    "{} must be between 1 and {LISTEN_BACKLOG_MAX}",
                    network.listen_backlog
                ),
            ));
        }
        if !(1..=XDP_POLL_US_MAX).contains(&network.xdp_poll_us) {
            return Err(invalid(
                "network.xdp_poll_us",
                format!("{} must be between 1 and {XDP_POLL_US_MAX}", network.xdp_poll_us),
            ));
        }
        if let Some(bytes) = self
            .shards
            .prefault_bytes
            .filter(|b| *b > self.shards.memory_bytes)
        {
            return Err(invalid(
                "shards.prefault_bytes",
                format!(
                    "{bytes} is more than shards.memory_bytes {}",
                    self.shards.memory_bytes
                ),
            ));
        }
        if !(-20..=19).contains(&self.shards.nice) {
            return Err(invalid(
                "shards.nice",
                format!("{} must be between -20 and 19", self.shards.nice),
            ));
        }
        if !(1..=PIPELINE_DEPTH_MAX).contains(&network.pipeline_depth) {
            return Err(invalid(
                "network.pipeline_depth",
                format!(
                    "{} must be between 1 and {PIPELINE_DEPTH_MAX}",
                    network.pipeline_depth
                ),
            ));
        }
        match &network.xdp_interface {
            Some(name) => check_interface_name(name)?,
            None if network.xdp_queue != 0 => {
                return Err(invalid(
                    "network.xdp_queue",
                    format!("{} is set but network.xdp_interface is not", network.xdp_queue),
                ));
            }
            None => {}
        }

        let storage = &self.storage;
        if storage.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(invalid(
                "storage.segment_bytes",
                format!(
                    "{} is below the minimum of {SEGMENT_BYTES_MIN}",
                    storage.segment_bytes
                ),
            ));
        }
        if storage.index_interval_bytes < INDEX_INTERVAL_BYTES_MIN {
            return Err(invalid(
                "storage.index_interval_bytes",
                format!(
                    "{} is below the minimum of {INDEX_INTERVAL_BYTES_MIN}",
                    storage.index_interval_bytes
                ),
            ));
        }
        if storage.direct_sync_bytes != 0 && storage.direct_sync_bytes < DIRECT_SYNC_BYTES_MIN {
            return Err(invalid(
                "storage.direct_sync_bytes",
                format!(
                    "{} is below the minimum of {DIRECT_SYNC_BYTES_MIN} (0 turns it off)",
                    storage.direct_sync_bytes
                ),
            ));
        }
        if !(FD_BUDGET_MIN..=FD_BUDGET_MAX).contains(&storage.fd_budget) {
            return Err(invalid(
                "storage.fd_budget",
                format!(
                    "{} is outside {FD_BUDGET_MIN}..={FD_BUDGET_MAX}",
                    storage.fd_budget
                ),
            ));
        }
        if storage.group_commit_window_us > GROUP_COMMIT_WINDOW_US_MAX {
            return Err(invalid(
                "storage.group_commit_window_us",
                format!(
                    "{} is above the maximum of {GROUP_COMMIT_WINDOW_US_MAX}",
                    storage.group_commit_window_us
                ),
            ));
        }
        Ok(())
    }

    /// Makes RLIMIT_NOFILE allow `storage.fd_budget` plus [`FD_RESERVE`] open files: raises
    /// the soft limit (up to the hard one) when it is lower. Where the hard limit is too low for
    /// the budget, the budget is lowered to what it allows ([`OpenFiles::lowered_from`] says so;
    /// the caller warns) rather than refusing to start. Fails only when the limit cannot be read
    /// or set.
    pub fn fit_open_files_limit(&self) -> Result<OpenFiles, ProfileError> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: limit is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(invalid(
                "storage.fd_budget",
                format!("cannot read RLIMIT_NOFILE: {}", io::Error::last_os_error()),
            ));
        }
        let plan = open_files_plan(self.storage.fd_budget, limit.rlim_max);
        if limit.rlim_cur >= plan.limit {
            return Ok(OpenFiles {
                limit: limit.rlim_cur,
                ..plan
            });
        }
        let raised = libc::rlimit {
            rlim_cur: plan.limit,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: raised is a valid rlimit; a soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(invalid(
                "storage.fd_budget",
                format!(
                    "cannot raise RLIMIT_NOFILE from {} to {}: {}",
                    limit.rlim_cur,
                    plan.limit,
                    io::Error::last_os_error()
                ),
            ));
        }
        Ok(plan)
    }

    /// Checks `network.xdp_interface` and `network.xdp_queue` against the host's interfaces;
    /// `rx_queues(name)` is the number of receive queues of interface `name`, or `None` if there
    /// is no such interface ([`nic_rx_queues`] reads them from `/sys`).
    pub fn validate_interfaces_with(
        &self,
        rx_queues: impl Fn(&str) -> Option<u32>,
    ) -> Result<(), ProfileError> {
        let Some(name) = &self.network.xdp_interface else {
            return Ok(());
        };
        check_interface_name(name)?;
        let Some(queues) = rx_queues(name) else {
            return Err(invalid(
                "network.xdp_interface",
                format!("{name:?}: no such network interface (see {SYS_CLASS_NET})"),
            ));
        };
        let queue = self.network.xdp_queue;
        if queue >= queues {
            return Err(invalid(
                "network.xdp_queue",
                format!(
                    "{queue} does not exist: {name} has {queues} receive queue{} (0..{queues})",
                    if queues == 1 { "" } else { "s" }
                ),
            ));
        }
        Ok(())
    }

    /// The CPUs of `shards.control_cpuset`, or `None` when it is unset. Fails if it does not
    /// parse, names a CPU that is not in `online`, or overlaps the shards' CPUs (an unset
    /// `shards.cpuset` takes every online CPU, so any control CPU overlaps it).
    pub fn control_cpus(&self, online: &[usize]) -> Result<Option<Vec<usize>>, ProfileError> {
        let Some(spec) = &self.shards.control_cpuset else {
            return Ok(None);
        };
        let control = cpus_of_field("shards.control_cpuset", spec, online)?;
        let shards = self.shard_cpus(online)?;
        let overlap: Vec<usize> = control
            .iter()
            .copied()
            .filter(|cpu| shards.binary_search(cpu).is_ok())
            .collect();
        if overlap.is_empty() {
            return Ok(Some(control));
        }
        let message = match &self.shards.cpuset {
            Some(cpuset) => format!(
                "{spec:?} overlaps shards.cpuset {cpuset:?} on CPUs {}; control and shard CPUs \
                 must be disjoint",
                format_cpuset(&overlap)
            ),
            None => {
                let rest: Vec<usize> = online
                    .iter()
                    .copied()
                    .filter(|cpu| control.binary_search(cpu).is_err())
                    .collect();
                let hint = if rest.is_empty() {
                    "leave a CPU for the shards".to_owned()
                } else {
                    format!(
                        "set shards.cpuset to the other CPUs, e.g. {:?}",
                        format_cpuset(&rest)
                    )
                };
                format!(
                    "{spec:?} overlaps shards.cpuset on CPUs {}: shards.cpuset is unset, so \
                     every online CPU ({}) runs a shard; {hint}",
                    format_cpuset(&overlap),
                    format_cpuset(online)
                )
            }
        };
        Err(invalid("shards.control_cpuset", message))
    }

    /// The CPUs of `shards.irq_cpuset`, or `None` when it is unset. Fails if it does not parse,
    /// names a CPU that is not online, or overlaps the shards' CPUs (keeping interrupts off the
    /// shards is its point).
    pub fn irq_cpus(&self, online: &[usize]) -> Result<Option<Vec<usize>>, ProfileError> {
        let Some(spec) = &self.shards.irq_cpuset else {
            return Ok(None);
        };
        let irq = cpus_of_field("shards.irq_cpuset", spec, online)?;
        let shards = self.shard_cpus(online)?;
        let overlap: Vec<usize> = irq
            .iter()
            .copied()
            .filter(|c| shards.binary_search(c).is_ok())
            .collect();
        if overlap.is_empty() {
            return Ok(Some(irq));
        }
        Err(invalid(
            "shards.irq_cpuset",
            format!(
                "{spec:?} overlaps the shards' CPUs ({}) on CPUs {}: interrupts belong on CPUs \
                 without a shard (set shards.cpuset to leave some)",
                format_cpuset(&shards),
                format_cpuset(&overlap)
            ),
        ))
    }

    /// The CPUs that get a shard: the profile's cpuset, or every online CPU when it has none.
    /// Fails if the cpuset does not parse or names a CPU that is not in `online`.
    pub fn shard_cpus(&self, online: &[usize]) -> Result<Vec<usize>, ProfileError> {
        let Some(spec) = &self.shards.cpuset else {
            return Ok(online.to_vec());
        };
        cpus_of_field("shards.cpuset", spec, online)
    }
}

/// Parses the cpuset `spec` of profile field `field` and checks that every CPU is online.
fn cpus_of_field(field: &'static str, spec: &str, online: &[usize]) -> Result<Vec<usize>, ProfileError> {
    let cpus = parse_cpuset(spec).map_err(|err| match err {
        ProfileError::Cpuset { spec, reason } => invalid(field, format!("{reason} in {spec:?}")),
        other => other,
    })?;
    if let Some(missing) = cpus.iter().find(|cpu| online.binary_search(cpu).is_err()) {
        return Err(invalid(
            field,
            format!(
                "CPU {missing} does not exist in {spec:?} (online: {})",
                format_cpuset(online)
            ),
        ));
    }
    Ok(cpus)
}

fn check_percentiles(field: &'static str, p50: Option<u64>, p99: Option<u64>) -> Result<(), ProfileError> {
    match (p50, p99) {
        (Some(p50), Some(p99)) if p50 > p99 => {
            Err(invalid(field, format!("{p50} is above the p99 of {p99}")))
        }
        _ => Ok(()),
    }
}

/// A Linux interface name: 1 to 15 bytes, no '/', whitespace or ':', not "." or "..". Checked
/// before the name is used in a `/sys` path.
fn check_interface_name(name: &str) -> Result<(), ProfileError> {
    let bad = name.is_empty()
        || name.len() > INTERFACE_NAME_BYTES_MAX
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(invalid(
            "network.xdp_interface",
            format!("{name:?} is not an interface name (1 to {INTERFACE_NAME_BYTES_MAX} bytes, no '/', ':' or spaces)"),
        ));
    }
    Ok(())
}

/// The number of receive queues of network interface `name` (its `queues/rx-N` entries in
/// `/sys/class/net`), or `None` if there is no such interface.
pub fn nic_rx_queues(name: &str) -> Option<u32> {
    if check_interface_name(name).is_err() {
        return None;
    }
    let dir = Path::new(SYS_CLASS_NET).join(name);
    if !dir.exists() {
        return None;
    }
    let count = std::fs::read_dir(dir.join("queues"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(0);
    Some(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Formats a byte count with binary units: exact multiples as integers ("32 MiB"), others with
/// one decimal ("23.4 GiB").
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while unit + 1 < UNITS.len() && bytes >= scale * KIB_U64 {
        scale *= KIB_U64;
        unit += 1;
    }
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
    toml::from_str(text).map_err(|source| ProfileError::Parse {
        origin: origin.to_owned(),
        source,
    })
}

fn invalid(field: &'static str, message: String) -> ProfileError {
    ProfileError::Invalid { field, message }
}

fn check_dma_multiple(field: &'static str, value: usize) -> Result<(), ProfileError> {
    if value < DMA_ALIGN_BYTES || value % DMA_ALIGN_BYTES != 0 {
        return Err(invalid(
            field,
            format!("{value} must be a non-zero multiple of {DMA_ALIGN_BYTES}"),
        ));
    }
    Ok(())
}

/// Parses a Linux cpuset list ("0-3,6") into sorted, distinct CPU numbers. Whitespace around
/// elements is ignored; empty lists and elements, reversed ranges and CPUs above
/// [`CPU_NUMBER_MAX`] are errors.
pub fn parse_cpuset(spec: &str) -> Result<Vec<usize>, ProfileError> {
    let fail = |reason: String| ProfileError::Cpuset {
        spec: spec.to_owned(),
        reason,
    };
    if spec.trim().is_empty() {
        return Err(fail("the cpuset is empty".to_owned()));
    }
    let mut cpus = Vec::new();
    for element in spec.split(',').map(str::trim) {
        if element.is_empty() {
            return Err(fail("empty element".to_owned()));
        }
        let (start, end) = match element.split_once('-') {
            Some((start, end)) => (parse_cpu(start, &fail)?, parse_cpu(end, &fail)?),
            None => {
                let cpu = parse_cpu(element, &fail)?;
                (cpu, cpu)
            }
        };
        if start > end {
            return Err(fail(format!("range {start}-{end} starts after it ends")));
        }
        cpus.extend(start..=end);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn parse_cpu(text: &str, fail: &impl Fn(String) -> ProfileError) -> Result<usize, ProfileError> {
    let text = text.trim();
    let cpu: usize = text
        .parse()
        .map_err(|_| fail(format!("{text:?} is not a CPU number")))?;
    if cpu > CPU_NUMBER_MAX {
        return Err(fail(format!("CPU {cpu} is above the limit of {CPU_NUMBER_MAX}")));
    }
    Ok(cpu)
}

/// Formats sorted, distinct CPU numbers as a compact cpuset list: `[0, 1, 2, 5]` -> "0-2,5".
pub fn format_cpuset(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut rest = cpus;
    while let Some((&start, _)) = rest.split_first() {
        let run = rest
            .iter()
            .enumerate()
            .take_while(|&(i, &cpu)| cpu == start + i)
            .count();
        let end = rest[run - 1];
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        rest = &rest[run..];
    }
    parts.join(",")
}

/// This machine's online CPUs, from `/sys/devices/system/cpu/online`; if that cannot be read or
/// parsed, CPUs `0..available_parallelism()`.
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string(ONLINE_CPUS_PATH)
        .ok()
        .and_then(|text| parse_cpuset(text.trim()).ok())
        .unwrap_or_else(|| {
            let count = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..count).collect()
        })
}

/// Pins the calling thread to `cpus` (sched_setaffinity); threads it starts afterwards inherit
/// the mask. Fails for an empty list, a CPU beyond what `cpu_set_t` holds, or a CPU the kernel
/// refuses (offline, or outside this process's cgroup).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes (the empty set) is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if cpus.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no CPU to pin to"));
    }
    for &cpu in cpus {
        if cpu >= capacity {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the {capacity} CPUs of a cpu_set_t"),
            ));
        }
        // SAFETY: cpu is below the bit capacity of set (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a node's open files come to: the partitions' budget in force and the RLIMIT_NOFILE
/// soft limit that allows it plus [`FD_RESERVE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The `storage.fd_budget` in force.
    pub fd_budget: u64,
    /// The RLIMIT_NOFILE soft limit (at least `fd_budget + FD_RESERVE` unless the hard limit
    /// is below that, then the hard limit).
    pub limit: u64,
    /// The profile's budget when the hard limit made it lower; `None` when it is in force.
    pub lowered_from: Option<u64>,
}

/// The budget and soft limit for a profile's `fd_budget` under an RLIMIT_NOFILE hard limit of
/// `hard`: the budget as asked when `hard` allows it plus [`FD_RESERVE`], else what `hard`
/// leaves after the reserve (at least half of `hard`, so a tiny limit still runs a few
/// partitions).
fn open_files_plan(fd_budget: u64, hard: u64) -> OpenFiles {
    let need = fd_budget.saturating_add(FD_RESERVE);
    if hard >= need {
        return OpenFiles {
            fd_budget,
            limit: need,
            lowered_from: None,
        };
    }
    OpenFiles {
        fd_budget: hard.saturating_sub(FD_RESERVE).max(hard / 2),
        limit: hard,
        lowered_from: Some(fd_budget),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_budget_is_lowered_to_what_the_open_files_limit_allows() {
        let fits = open_files_plan(16384, 20000);
        assert_eq!(
            fits,
            OpenFiles {
                fd_budget: 16384,
                limit: 16384 + FD_RESERVE,
                lowered_from: None
            }
        );
        assert_eq!(open_files_plan(16384, 17408).lowered_from, None);
        let low = open_files_plan(16384, 4096);
        assert_eq!(
            low,
            OpenFiles {
                fd_budget: 4096 - FD_RESERVE,
                limit: 4096,
                lowered_from: Some(16384)
            }
        );
        let tiny = open_files_plan(16384, 1024);
        assert_eq!((tiny.fd_budget, tiny.limit), (512, 1024));
        assert_eq!(open_files_plan(16384, 0).fd_budget, 0);
    }

    const TWO_CPUS: &[usize] = &[0, 1];
    const GIB: u64 = 1 << 30;

    /// A made-up machine: `cpus` CPUs 0.., one core each, one NUMA node holding `memory_bytes`.
    fn machine(cpus: usize, memory_bytes: u64) -> Machine {
        let list: Vec<usize> = (0..cpus).collect();
        Machine {
            cores: list.iter().map(|&cpu| Core { cpus: vec![cpu] }).collect(),
            numa_nodes: vec![NumaNode {
                os_index: 0,
                cpus: list.clone(),
                memory_bytes,
            }],
            caches: Vec::new(),
            cpus: list,
            memory_bytes,
        }
    }

    /// The message of the `Invalid` error `profile` fails `validate_for(machine)` with.
    fn invalid_on(profile: &Profile, machine: &Machine) -> String {
        let err = profile
            .validate_for(machine)
            .expect_err("the profile should not validate");
        assert!(matches!(err, ProfileError::Invalid { .. }), "{err:?}");
        err.to_string()
    }

    fn invalid_message(profile: &Profile) -> String {
        let err = profile
            .validate_against(TWO_CPUS)
            .expect_err("the profile should not validate");
        assert!(matches!(err, ProfileError::Invalid { .. }), "{err:?}");
        err.to_string()
    }

    #[test]
    fn default_is_dev_toml_and_matches_the_section_defaults() {
        let dev = Profile::default();
        assert_eq!(
            dev,
            Profile {
                shards: Shards::default(),
                io: Io::default(),
                network: Network::default(),
                storage: Storage::default(),
                control: Control::default(),
            },
            "dev.toml and the code's section defaults must agree"
        );
        assert_eq!(dev.shards.cpuset, None);
        assert_eq!(dev.shards.control_cpuset, None);
        assert_eq!(dev.shards.memory_bytes, 536_870_912);
        assert_eq!(dev.io.device, None);
        assert_eq!(dev.network.listen_backlog, 1024);
        assert_eq!(dev.network.xdp_interface, None);
        assert_eq!(dev.network.xdp_queue, 0);
        assert_eq!(dev.storage.group_commit_window_us, 0);
        assert_eq!(dev.io.io_memory_bytes, 1_048_576);
        assert_eq!(dev.io.ring_depth, 128);
        assert_eq!(dev.io.write_chunk_bytes, 1_048_576);
        assert_eq!(dev.io.read_chunk_bytes, 65_536);
        assert_eq!(dev.network.spin_before_park_us, 0);
        assert_eq!(dev.storage.segment_bytes, 134_217_728);
        assert_eq!(dev.storage.segment_ms, 604_800_000);
        assert_eq!(dev.storage.index_interval_bytes, 4096);
        assert_eq!(dev.storage.durability, Durability::Fsync);
        assert_eq!(dev.storage.batch_cache_bytes, 67_108_864);
        assert_eq!(dev.storage.retention_bytes, None);
        assert_eq!(dev.storage.retention_ms, Some(604_800_000));
    }

    #[test]
    fn empty_profile_and_missing_fields_take_the_defaults() {
        assert_eq!(Profile::from_toml_str("").expect("parse"), Profile::default());
        let profile = Profile::from_toml_str("[io]\nring_depth = 64\n").expect("parse");
        assert_eq!(profile.io.ring_depth, 64);
        assert_eq!(profile.io.io_memory_bytes, Io::default().io_memory_bytes);
        assert_eq!(profile.storage, Storage::default());
    }

    #[test]
    fn dev_profile_validates() {
        Profile::default()
            .validate_against(TWO_CPUS)
            .expect("dev profile");
        Profile::default()
            .validate()
            .expect("dev profile on this machine");
        // A small laptop or VM: 2 CPUs and 4 GiB.
        Profile::default()
            .validate_for(&machine(2, 4 * GIB))
            .expect("dev profile on a small machine");
    }

    #[test]
    fn profile_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            Profile::load(dir.join("dev.toml")).expect("dev.toml"),
            Profile::default()
        );
        let metal = Profile::load(dir.join("bare-metal-nvme.toml")).expect("bare-metal-nvme.toml");
        assert_eq!(metal.shards.cpuset.as_deref(), Some("1-7"));
        assert_eq!(metal.shards.control_cpuset.as_deref(), Some("0"));
        assert_eq!(metal.shards.memory_bytes, 4 * GIB);
        assert_eq!(metal.network.spin_before_park_us, 200);
        assert_eq!(metal.network.listen_backlog, 4096);
        assert_eq!(metal.network.pipeline_depth, 16);
        assert_eq!(metal.storage.durability, Durability::Fsync);
        let eight = machine(8, 32 * GIB);
        metal
            .validate_for(&eight)
            .expect("bare-metal-nvme on an 8-core, 32 GiB machine");
        assert_eq!(metal.control_cpus(&eight.cpus).expect("control"), Some(vec![0]));
        assert_eq!(metal.irq_cpus(&eight.cpus).expect("irq"), Some(vec![0]));
        let message = invalid_on(&metal, &machine(8, 16 * GIB));
        assert!(
            message.starts_with("shards.memory_bytes: 4294967296 "),
            "{message}"
        );
    }

    #[test]
    fn new_fields_parse() {
        let profile = Profile::from_toml_str(
            r#"
[shards]
cpuset = "1-3"
control_cpuset = "0"
memory_bytes = 1073741824

[io.device]
seq_write_bytes_per_s = 1500000000
write_4k_p50_us = 12
write_4k_p99_us = 40
fdatasync_4k_p50_us = 30
fdatasync_4k_p99_us = 90

[network]
listen_backlog = 4096
xdp_interface = "eth0"
xdp_queue = 2
xdp_mode = "generic"

[storage]
group_commit_window_us = 250
"#,
        )
        .expect("parse");
        assert_eq!(profile.shards.control_cpuset.as_deref(), Some("0"));
        assert_eq!(profile.shards.memory_bytes, GIB);
        assert_eq!(
            profile.io.device,
            Some(Device {
                seq_write_bytes_per_s: Some(1_500_000_000),
                write_4k_p50_us: Some(12),
                write_4k_p99_us: Some(40),
                fdatasync_4k_p50_us: Some(30),
                fdatasync_4k_p99_us: Some(90),
            })
        );
        assert_eq!(
            profile.io.ring_depth,
            Io::default().ring_depth,
            "[io] keeps its defaults"
        );
        assert_eq!(profile.network.listen_backlog, 4096);
        assert_eq!(profile.network.xdp_interface.as_deref(), Some("eth0"));
        assert_eq!(profile.network.xdp_queue, 2);
        assert_eq!(profile.network.xdp_mode, XdpMode::Generic);
        assert_eq!(profile.network.xdp_poll_us, 200, "the default");
        assert_eq!(profile.storage.group_commit_window_us, 250);
        profile
            .validate_for(&machine(4, 8 * GIB))
            .expect("valid on 4 CPUs and 8 GiB");

        let partial = Profile::from_toml_str(
            "[io.device]
write_4k_p50_us = 9
",
        )
        .expect("partial");
        let device = partial.io.device.expect("device table");
        assert_eq!(device.write_4k_p50_us, Some(9));
        assert_eq!(device.seq_write_bytes_per_s, None);
        assert_eq!(device.to_string(), "4 KiB write p50 9 us p99 ?");
        let err = Profile::from_toml_str(
            "[io.device]
write_4k_p51_us = 9
",
        )
        .expect_err("typo");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn device_display_lists_the_measurements() {
        let device = Device {
            seq_write_bytes_per_s: Some(512 << 20),
            write_4k_p50_us: Some(20),
            write_4k_p99_us: Some(60),
            fdatasync_4k_p50_us: Some(400),
            fdatasync_4k_p99_us: Some(900),
        };
        assert_eq!(
            device.to_string(),
            "seq write 512 MiB/s, 4 KiB write p50 20 us p99 60 us, \
             4 KiB write+fdatasync p50 400 us p99 900 us"
        );
        assert_eq!(Device::default().to_string(), "nothing measured");
    }

    #[test]
    fn irq_cpuset_must_exist_and_keep_off_the_shards() {
        let online: Vec<usize> = (0..4).collect();
        let mut profile = Profile::default();
        assert_eq!(profile.irq_cpus(&online).expect("unset"), None);
        profile.shards.irq_cpuset = Some("0".to_owned());
        let err = profile
            .validate_against(&online)
            .expect_err("every CPU is a shard");
        assert!(
            err.to_string()
                .starts_with("shards.irq_cpuset: \"0\" overlaps the shards' CPUs (0-3) on CPUs 0"),
            "{err}"
        );
        profile.shards.cpuset = Some("1-3".to_owned());
        assert_eq!(profile.irq_cpus(&online).expect("disjoint"), Some(vec![0]));
        profile.validate_against(&online).expect("disjoint sets");
        profile.shards.irq_cpuset = Some("7".to_owned());
        let err = profile.validate_against(&online).expect_err("offline CPU");
        assert!(err.to_string().contains("CPU 7 does not exist"), "{err}");
    }

    #[test]
    fn control_cpuset_must_exist_and_not_overlap_the_shards() {
        let online: Vec<usize> = (0..4).collect();
        let mut profile = Profile::default();
        profile.shards.cpuset = Some("1-3".to_owned());
        profile.shards.control_cpuset = Some("0".to_owned());
        assert_eq!(profile.control_cpus(&online).expect("disjoint"), Some(vec![0]));
        profile.validate_against(&online).expect("disjoint sets");

        profile.shards.control_cpuset = Some("0-1".to_owned());
        let err = profile.validate_against(&online).expect_err("overlap");
        assert_eq!(
            err.to_string(),
            "shards.control_cpuset: \"0-1\" overlaps shards.cpuset \"1-3\" on CPUs 1; \
             control and shard CPUs must be disjoint"
        );

        profile.shards.control_cpuset = Some("0,9".to_owned());
        let err = profile.validate_against(&online).expect_err("missing CPU");
        assert_eq!(
            err.to_string(),
            "shards.control_cpuset: CPU 9 does not exist in \"0,9\" (online: 0-3)"
        );

        profile.shards.control_cpuset = Some("2-0".to_owned());
        let err = profile.validate_against(&online).expect_err("malformed");
        assert!(
            err.to_string()
                .starts_with("shards.control_cpuset: range 2-0 starts after it ends"),
            "{err}"
        );

        // An unset cpuset runs a shard on every online CPU, so any control CPU overlaps it.
        profile.shards.cpuset = None;
        profile.shards.control_cpuset = Some("0".to_owned());
        let err = profile.validate_against(&online).expect_err("unset cpuset");
        assert_eq!(
            err.to_string(),
            "shards.control_cpuset: \"0\" overlaps shards.cpuset on CPUs 0: shards.cpuset is \
             unset, so every online CPU (0-3) runs a shard; set shards.cpuset to the other CPUs, \
             e.g. \"1-3\""
        );
        profile.shards.control_cpuset = Some("0-3".to_owned());
        let err = profile.validate_against(&online).expect_err("all CPUs");
        assert!(err.to_string().ends_with("leave a CPU for the shards"), "{err}");
    }

    #[test]
    fn shard_memory_must_fit_the_machine() {
        let mut profile = Profile::default();
        profile.shards.memory_bytes = 8 * GIB;
        profile
            .validate_for(&machine(2, 16 * GIB))
            .expect("2 x 8 GiB in 16 GiB");
        assert_eq!(
            invalid_on(&profile, &machine(2, 15 * GIB)),
            "shards.memory_bytes: 8589934592 (8 GiB) x 2 shards = 16 GiB is more than the \
             machine's memory, 16106127360 (15 GiB)"
        );
        // Only the shards of the cpuset count.
        profile.shards.cpuset = Some("1".to_owned());
        profile
            .validate_for(&machine(2, 15 * GIB))
            .expect("one shard of 8 GiB");
        // An absurd budget does not overflow.
        profile.shards.memory_bytes = u64::MAX;
        let message = invalid_on(&profile, &machine(2, 15 * GIB));
        assert!(
            message.starts_with("shards.memory_bytes: 18446744073709551615 "),
            "{message}"
        );
    }

    #[test]
    fn shard_memory_must_cover_its_consumers() {
        let mut profile = Profile::default();
        profile.shards.memory_bytes = 65 * MIB as u64;
        profile
            .validate_against(TWO_CPUS)
            .expect("64 MiB + 1 MiB fits exactly");
        profile.shards.memory_bytes = 64 * MIB as u64;
        assert_eq!(
            invalid_message(&profile),
            "shards.memory_bytes: 67108864 (64 MiB) does not cover storage.batch_cache_bytes \
             67108864 + io.io_memory_bytes 1048576 = 68157440 (65 MiB)"
        );
    }

    #[test]
    fn xdp_interface_must_exist_with_the_queue() {
        let queues = |name: &str| (name == "eth0").then_some(2);
        let mut profile = Profile::default();
        profile.validate_interfaces_with(queues).expect("unset");

        profile.network.xdp_interface = Some("eth0".to_owned());
        profile.network.xdp_queue = 1;
        profile.validate_interfaces_with(queues).expect("queue 1 of 2");

        profile.network.xdp_queue = 2;
        let err = profile
            .validate_interfaces_with(queues)
            .expect_err("queue 2 of 2");
        assert_eq!(
            err.to_string(),
            "network.xdp_queue: 2 does not exist: eth0 has 2 receive queues (0..2)"
        );

        profile.network.xdp_interface = Some("eth9".to_owned());
        let err = profile.validate_interfaces_with(queues).expect_err("no eth9");
        assert_eq!(
            err.to_string(),
            "network.xdp_interface: \"eth9\": no such network interface (see /sys/class/net)"
        );

        for name in ["", "../../etc", "a-very-long-interface-name", "eth0:1"] {
            profile.network.xdp_interface = Some(name.to_owned());
            let message = invalid_message(&profile);
            assert!(
                message.starts_with(&format!(
                    "network.xdp_interface: {name:?} is not an interface name"
                )),
                "{message}"
            );
        }

        profile.network.xdp_interface = None;
        profile.network.xdp_queue = 3;
        assert_eq!(
            invalid_message(&profile),
            "network.xdp_queue: 3 is set but network.xdp_interface is not"
        );
    }

    #[test]
    fn this_hosts_loopback_interface_has_a_receive_queue() {
        // Every Linux host has lo; a name that cannot exist has no queues.
        assert!(nic_rx_queues("lo").is_some_and(|queues| queues >= 1));
        assert_eq!(nic_rx_queues("ferrolog-none0"), None);
        assert_eq!(nic_rx_queues("../lo"), None);
        let mut profile = Profile::default();
        profile.network.xdp_interface = Some("ferrolog-none".to_owned());
        let err = profile
            .validate_on_host(&machine(2, 4 * GIB))
            .expect_err("no such interface");
        assert!(
            err.to_string()
                .starts_with("network.xdp_interface: \"ferrolog-none\""),
            "{err}"
        );
    }

    #[test]
    fn pin_current_thread_sets_the_affinity_of_this_thread_only() {
        // A thread of its own, so the test harness's threads keep their affinity.
        std::thread::spawn(|| {
            let last = *online_cpus().last().expect("a CPU");
            pin_current_thread(&[last]).expect("pin to an online CPU");
            // SAFETY: as in pin_current_thread.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: pid 0 is this thread; set is a valid, writable cpu_set_t.
            let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
            assert_eq!(rc, 0);
            // SAFETY: last is an online CPU number, below the capacity of set.
            assert!(unsafe { libc::CPU_ISSET(last, &set) });
            // SAFETY: set is a valid cpu_set_t.
            assert_eq!(unsafe { libc::CPU_COUNT(&set) }, 1);
            assert!(pin_current_thread(&[]).is_err());
            assert!(pin_current_thread(&[CPU_NUMBER_MAX]).is_err());
        })
        .join()
        .expect("pinning thread");
    }

    #[test]
    fn format_bytes_uses_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1000), "1000 B");
        assert_eq!(format_bytes(1024), "1 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(32 << 20), "32 MiB");
        assert_eq!(format_bytes(25_125_558_272), "23.4 GiB");
        assert_eq!(format_bytes(3 << 40), "3 TiB");
        assert_eq!(format_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn load_reports_missing_file_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.toml");
        let err = Profile::load(&path).expect_err("missing file");
        assert!(matches!(err, ProfileError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[storage]\ndurability = \"direct\"\nretention_ms = -1\n").expect("write");
        let profile = Profile::load(&path).expect("load");
        assert_eq!(profile.storage.durability, Durability::Direct);
        assert_eq!(profile.storage.retention_ms, None);
    }

    #[test]
    fn unknown_fields_and_sections_are_rejected() {
        for text in ["[io]\nring_depht = 128\n", "[disk]\nx = 1\n", "top_level = 1\n"] {
            let err = Profile::from_toml_str(text).expect_err(text);
            assert!(matches!(err, ProfileError::Parse { .. }), "{err:?}");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn bad_types_and_values_fail_to_parse() {
        for text in [
            "[storage]\ndurability = \"sometimes\"\n",
            "[storage]\nretention_bytes = -2\n",
            "[io]\nring_depth = \"deep\"\n",
        ] {
            let err = Profile::from_toml_str(text).expect_err(text);
            assert!(matches!(err, ProfileError::Parse { .. }), "{err:?}");
        }
    }

    #[test]
    fn cpuset_parses_ranges_and_lists() {
        assert_eq!(parse_cpuset("0").expect("single"), vec![0]);
        assert_eq!(parse_cpuset("0-3,6").expect("list"), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpuset(" 6, 2-3 ,3").expect("messy"), vec![2, 3, 6]);
        assert_eq!(parse_cpuset("5-5").expect("one-wide"), vec![5]);
    }

    #[test]
    fn bad_cpusets_say_what_is_wrong() {
        for (spec, expected) in [
            ("", "empty"),
            ("0,,1", "empty element"),
            ("0,", "empty element"),
            ("3-1", "range 3-1 starts after it ends"),
            ("a", "\"a\" is not a CPU number"),
            ("0-", "\"\" is not a CPU number"),
            ("-1", "\"\" is not a CPU number"),
            ("1-2-3", "\"2-3\" is not a CPU number"),
            ("0-99999", "above the limit"),
        ] {
            let err = parse_cpuset(spec).expect_err(spec);
            assert!(matches!(err, ProfileError::Cpuset { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(expected), "{spec:?}: {message}");
        }
    }

    #[test]
    fn format_cpuset_compacts_runs() {
        assert_eq!(format_cpuset(&[]), "");
        assert_eq!(format_cpuset(&[0, 1]), "0-1");
        assert_eq!(format_cpuset(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        for spec in ["0", "0-3,6", "1-7", "0,2,4"] {
            let cpus = parse_cpuset(spec).expect(spec);
            assert_eq!(format_cpuset(&cpus), spec);
        }
    }

    #[test]
    fn online_cpus_is_sorted_and_not_empty() {
        let online = online_cpus();
        assert!(!online.is_empty());
        assert!(online.windows(2).all(|pair| pair[0] < pair[1]), "{online:?}");
    }

    #[test]
    fn shard_cpus_defaults_to_all_online() {
        let mut profile = Profile::default();
        assert_eq!(profile.shard_cpus(TWO_CPUS).expect("all"), vec![0, 1]);
        profile.shards.cpuset = Some("1".to_owned());
        assert_eq!(profile.shard_cpus(TWO_CPUS).expect("one"), vec![1]);
    }

    #[test]
    fn cpuset_naming_a_missing_cpu_is_invalid() {
        let mut profile = Profile::default();
        profile.shards.cpuset = Some("0,9".to_owned());
        assert_eq!(
            invalid_message(&profile),
            "shards.cpuset: CPU 9 does not exist in \"0,9\" (online: 0-1)"
        );
    }

    #[test]
    fn malformed_cpuset_is_invalid_with_field_name() {
        let mut profile = Profile::default();
        profile.shards.cpuset = Some("1-0".to_owned());
        assert_eq!(
            invalid_message(&profile),
            "shards.cpuset: range 1-0 starts after it ends in \"1-0\""
        );
    }

    #[test]
    fn each_numeric_rule_names_its_field_and_value() {
        type Edit = fn(&mut Profile);
        let cases: [(Edit, &str, &str); 25] = [
            (|p| p.shards.nice = -21, "shards.nice", "-21"),
            (
                |p| p.shards.prefault_bytes = Some(p.shards.memory_bytes + 1),
                "shards.prefault_bytes",
                "536870913",
            ),
            (|p| p.shards.nice = 20, "shards.nice", "20"),
            (|p| p.network.listen_backlog = 0, "network.listen_backlog", "0"),
            (|p| p.network.pipeline_depth = 0, "network.pipeline_depth", "0"),
            (
                |p| p.network.pipeline_depth = 1025,
                "network.pipeline_depth",
                "1025",
            ),
            (|p| p.storage.fd_budget = 255, "storage.fd_budget", "255"),
            (
                |p| p.storage.fd_budget = (1 << 20) + 1,
                "storage.fd_budget",
                "1048577",
            ),
            (|p| p.network.xdp_poll_us = 0, "network.xdp_poll_us", "0"),
            (
                |p| p.network.xdp_poll_us = 100_001,
                "network.xdp_poll_us",
                "100001",
            ),
            (
                |p| p.storage.direct_sync_bytes = 4096,
                "storage.direct_sync_bytes",
                "4096",
            ),
            (
                |p| p.network.listen_backlog = 65536,
                "network.listen_backlog",
                "65536",
            ),
            (
                |p| p.storage.group_commit_window_us = 10_001,
                "storage.group_commit_window_us",
                "10001",
            ),
            (
                |p| {
                    p.io.device = Some(Device {
                        write_4k_p50_us: Some(50),
                        write_4k_p99_us: Some(40),
                        ..Device::default()
                    })
                },
                "io.device.write_4k_p50_us",
                "50",
            ),
            (
                |p| {
                    p.io.device = Some(Device {
                        fdatasync_4k_p50_us: Some(900),
                        fdatasync_4k_p99_us: Some(800),
                        ..Device::default()
                    })
                },
                "io.device.fdatasync_4k_p50_us",
                "900",
            ),
            (|p| p.io.io_memory_bytes = 32768, "io.io_memory_bytes", "32768"),
            (|p| p.io.io_memory_bytes = 65537, "io.io_memory_bytes", "65537"),
            (|p| p.io.ring_depth = 100, "io.ring_depth", "100"),
            (|p| p.io.ring_depth = 4, "io.ring_depth", "4"),
            (|p| p.io.ring_depth = 8192, "io.ring_depth", "8192"),
            (|p| p.io.write_chunk_bytes = 0, "io.write_chunk_bytes", "0"),
            (|p| p.io.write_chunk_bytes = 5000, "io.write_chunk_bytes", "5000"),
            (|p| p.io.read_chunk_bytes = 100, "io.read_chunk_bytes", "100"),
            (
                |p| p.storage.segment_bytes = 1000,
                "storage.segment_bytes",
                "1000",
            ),
            (
                |p| p.storage.index_interval_bytes = 511,
                "storage.index_interval_bytes",
                "511",
            ),
        ];
        for (edit, field, value) in cases {
            let mut profile = Profile::default();
            edit(&mut profile);
            let message = invalid_message(&profile);
            assert!(message.starts_with(&format!("{field}: {value} ")), "{message}");
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let mut profile = Profile::default();
        profile.io.io_memory_bytes = 65536;
        profile.io.ring_depth = 8;
        profile.io.write_chunk_bytes = 4096;
        profile.io.read_chunk_bytes = 4096;
        profile.storage.segment_bytes = 1024 * 1024;
        profile.storage.index_interval_bytes = 512;
        profile.network.listen_backlog = 1;
        profile.validate_against(TWO_CPUS).expect("minimums");
        profile.io.ring_depth = 4096;
        profile.network.listen_backlog = 65535;
        profile.storage.group_commit_window_us = 10_000;
        profile.validate_against(TWO_CPUS).expect("maximums");
    }
}
