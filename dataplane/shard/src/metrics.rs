//! Per-shard metric primitives: a monotonic [`Counter`] and a latency
//! [`Histogram`] with fixed bucket bounds.
//!
//! Ownership: each value lives on one shard and is touched only by that
//! shard's tasks, so they are plain `Cell`s (not `Send`): recording costs an
//! add, with no atomics and no locks. To read them from elsewhere, the owner
//! takes a [`HistogramSnapshot`] (plain `Send` data) or a counter's value and
//! ships it, e.g. with [`crate::Smp::invoke_on_all`].
//!
//! The bucket bounds are fixed ([`LATENCY_BUCKETS_US`]) so that snapshots of
//! different shards add up bucket by bucket.

use serde::Serialize;
use std::cell::Cell;
use std::time::Duration;

/// Upper bounds (inclusive, µs) of the latency buckets; one more bucket
/// counts everything slower. From 10 µs to 10 s: the range between a
/// loopback round trip and a stuck disk; 25-50 µs steps between 50 µs and
/// 300 µs, where a direct write and a produce answer fall on NVMe (and the
/// latency goals sit), then 1-1.5-2-2.5-5 and 1-2.5-5 steps.
pub const LATENCY_BUCKETS_US: [u64; 28] = [
    10, 25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 750, 1_000, 1_500, 2_000, 2_500, 5_000, 10_000,
    25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// A monotonic count.
#[derive(Default, Debug)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.set(self.0.get().wrapping_add(n));
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A latency histogram with the fixed [`LATENCY_BUCKETS_US`] bounds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [Cell<u64>; BUCKETS],
    sum_ns: Cell<u64>,
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        let c = &self.counts[bucket];
        c.set(c.get() + 1);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.set(self.sum_ns.get().saturating_add(ns));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(Cell::get).collect(),
            sum_ns: self.sum_ns.get(),
        }
    }
}

/// A histogram's values: per bucket (not cumulative), the last one being
/// the overflow bucket, and the sum of all recorded latencies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HistogramSnapshot {
    pub counts: Vec<u64>,
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_adds_and_wraps() {
        let c = Counter::default();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        c.add(u64::MAX);
        assert_eq!(c.get(), 41, "a counter wraps instead of panicking");
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::default();
        h.record(Duration::from_micros(10)); // bucket 0: <= 10 µs
        h.record(Duration::from_micros(11)); // bucket 1: <= 25 µs
        h.record(Duration::from_micros(10_000_000)); // last bounded bucket
        h.record(Duration::from_secs(20)); // overflow
        let s = h.snapshot();
        assert_eq!(s.counts.len(), LATENCY_BUCKETS_US.len() + 1);
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[LATENCY_BUCKETS_US.len() - 1], 1);
        assert_eq!(s.counts[LATENCY_BUCKETS_US.len()], 1);
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_ns, (10 + 11 + 10_000_000 + 20_000_000) * 1_000);
    }
}
