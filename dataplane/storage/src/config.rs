//! Per-log settings. Every bound is a named field.

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Once the data is on stable storage: O_DIRECT write completed and
    /// fdatasync returned. Concurrent appends share one fdatasync.
    Fsync,
    /// Once the O_DIRECT write completed. Survives a process crash. The newest
    /// appends can be lost on a kernel crash or power loss: the file-size update
    /// of an extending write is metadata, synced by the file system's journal
    /// or by the fdatasync at the next roll or close.
    Direct,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "direct" => Ok(Durability::Direct),
            other => Err(format!("unknown durability {other:?} (expected fsync or direct)")),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::Direct => "direct",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would grow past this.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one is older than this.
    pub segment_ms: u64,
    /// Add an offset and a time index entry every this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Delete the oldest segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    pub durability: Durability,
    /// Largest batch accepted by `append`.
    pub max_batch_bytes: usize,
    /// Appended but not yet written bytes above which `append` waits for a flush.
    pub max_pending_bytes: usize,
    /// Size of one O_DIRECT write; a flush issues several of these concurrently.
    pub write_chunk_bytes: usize,
    /// How many write chunks of one flush are in flight at once.
    pub write_depth: usize,
    /// Size of one O_DIRECT read when serving reads from disk.
    pub read_chunk_bytes: usize,
    /// Zeros written past the data by a small flush that extends the file, so
    /// the next small flushes overwrite written blocks instead of extending
    /// the file. ext4 cannot extend a file without a metadata update (it
    /// hands such a write to an io_uring worker and may wait for a journal
    /// commit); an overwrite goes straight through. Only flushes of at most
    /// `prezero_bytes / 8` do this, so bulk writing is not slowed. A multiple
    /// of 4096; 0 turns it off.
    pub prezero_bytes: usize,
    /// How long a flush waits for more appends to join it before writing
    /// (group commit). Zero only yields once, so the appends that are already
    /// runnable join; a window trades that much latency for fewer, larger
    /// writes and fdatasyncs under many concurrent producers.
    pub group_commit_window: std::time::Duration,
    /// `direct` mode only: fdatasync the active segment in the background
    /// after every this many bytes written, so no single sync has much to do
    /// (the one at a roll included) and a power loss can take at most about
    /// this much beyond what is being written. 0 syncs only at rolls and close.
    pub direct_sync_bytes: u64,
    /// Log compaction (`cleanup.policy` containing `compact`).
    pub compaction: CompactionConfig,
}

/// Settings of log compaction ([`crate::Log::compact`]); Kafka's topic
/// configs of the same names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionConfig {
    /// Whether the log is compacted at all (`cleanup.policy` has `compact`).
    pub enabled: bool,
    /// A tombstone (null value) whose record timestamp is older than this is
    /// removed by compaction; younger ones are kept so consumers see them.
    pub delete_retention_ms: u64,
    /// Compact only when the bytes not yet compacted are at least this share
    /// of the compactable bytes, in parts per million (Kafka's
    /// `min.cleanable.dirty.ratio` 0.5 is 500_000).
    pub min_cleanable_dirty_ppm: u32,
    /// A segment whose newest record is younger than this is not compacted.
    pub min_compaction_lag_ms: u64,
    /// A segment not yet compacted whose oldest record is older than this is
    /// compacted whatever the dirty ratio.
    pub max_compaction_lag_ms: u64,
    /// Bound on the key bytes the compactor holds in memory in one pass; a
    /// pass covers the oldest segments whose keys fit.
    pub map_key_bytes_max: usize,
    /// Segment bytes a pass reads and writes per second, at most (Kafka's
    /// `log.cleaner.io.max.bytes.per.second`); 0 is no limit. A pass at
    /// full disk speed queues its large I/Os ahead of the appends' writes.
    pub io_bytes_per_sec: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: false,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ppm: 500_000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX as u64,
            map_key_bytes_max: 64 << 20,
            io_bytes_per_sec: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            durability: Durability::Fsync,
            max_batch_bytes: 16 << 20,
            max_pending_bytes: 32 << 20,
            // ext4 serializes writes that extend a file: few large writes beat
            // many small ones in flight (docs/benchmarks.md).
            write_chunk_bytes: 1 << 20,
            write_depth: 2,
            read_chunk_bytes: 64 << 10,
            prezero_bytes: 256 << 10,
            group_commit_window: std::time::Duration::ZERO,
            direct_sync_bytes: 0,
            compaction: CompactionConfig::default(),
        }
    }
}
