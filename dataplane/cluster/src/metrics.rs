//! Counters of the partition layer: per partition, and the batch cache's
//! hits and misses per shard. Plain `Cell`s on the owner shard (primitives
//! from `ferrolog_shard::metrics`); the admin endpoint gathers copies.

use ferrolog_model::Ntp;
use ferrolog_shard::metrics::{Counter, Histogram, HistogramSnapshot};
use serde::Serialize;

/// One partition's counters, on its owner shard.
#[derive(Debug, Default)]
pub struct PartitionMetrics {
    /// Partition entries of Produce requests (one per partition per request).
    pub produce_requests: Counter,
    pub produce_bytes: Counter,
    pub produce_errors: Counter,
    /// From the first append of a produce entry to its acknowledgement
    /// (durable per the topic's durability mode).
    pub append_latency: Histogram,
    /// Partition entries of Fetch reads (a long poll reads more than once).
    pub fetch_requests: Counter,
    pub fetch_bytes: Counter,
    pub fetch_errors: Counter,
    /// Batch bytes made durable, and the time of each flush: a flush is one
    /// group commit of the log (writes, plus fdatasync in fsync mode).
    pub flush_bytes: Counter,
    pub flush_batches: Counter,
    pub flush_latency: Histogram,
}

/// The partition manager's own counters.
#[derive(Debug, Default)]
pub struct ManagerMetrics {
    /// Partition reads served by the batch cache, and by the disk.
    pub batch_cache_hits: Counter,
    pub batch_cache_misses: Counter,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionSnapshot {
    pub topic: String,
    pub partition: i32,
    pub start_offset: i64,
    /// Next offset past the committed (acknowledgeable) records.
    pub high_watermark: i64,
    /// Next offset to assign (appended, maybe not yet durable).
    pub log_end_offset: i64,
    pub size_bytes: u64,
    pub segments: usize,
    pub producers: usize,
    pub produce_requests: u64,
    pub produce_bytes: u64,
    pub produce_errors: u64,
    pub append_latency: HistogramSnapshot,
    pub fetch_requests: u64,
    pub fetch_bytes: u64,
    pub fetch_errors: u64,
    pub flush_bytes: u64,
    pub flush_batches: u64,
    pub flush_latency: HistogramSnapshot,
}

impl PartitionSnapshot {
    pub fn new(ntp: &Ntp, m: &PartitionMetrics) -> PartitionSnapshot {
        PartitionSnapshot {
            topic: ntp.topic.to_string(),
            partition: ntp.partition.0,
            produce_requests: m.produce_requests.get(),
            produce_bytes: m.produce_bytes.get(),
            produce_errors: m.produce_errors.get(),
            append_latency: m.append_latency.snapshot(),
            fetch_requests: m.fetch_requests.get(),
            fetch_bytes: m.fetch_bytes.get(),
            fetch_errors: m.fetch_errors.get(),
            flush_bytes: m.flush_bytes.get(),
            flush_batches: m.flush_batches.get(),
            flush_latency: m.flush_latency.snapshot(),
            ..PartitionSnapshot::default()
        }
    }
}
