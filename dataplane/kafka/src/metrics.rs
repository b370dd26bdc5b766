//! Counters and latency histograms of one shard and of the partitions it
//! owns, and their rendering as Prometheus text and as the JSON of
//! `/v1/status` (the admin listener, `admin.rs`, serves both).
//!
//! Ownership: [`ShardMetrics`] sits in the shard's `Shard`, a
//! [`PartitionMetrics`] (ferrolog-cluster) in each `Partition`; both are plain `Cell`s touched
//! only by their shard's tasks, so recording costs an add, no atomics and no
//! locks. A scrape asks every shard for a [`ShardSnapshot`] (plain `Send`
//! data) over the cross-shard channels and renders them on the admin shard.
//!
//! Histograms have fixed bucket bounds ([`LATENCY_BUCKETS_US`]), so that
//! Prometheus can sum them over shards and partitions; percentiles for
//! benchmarking come from the load generator's HdrHistograms, not from here.

pub use ferrolog_cluster::metrics::{PartitionMetrics, PartitionSnapshot};
pub use ferrolog_shard::metrics::{Counter, Histogram, HistogramSnapshot, LATENCY_BUCKETS_US};
use kafka_protocol::messages::ApiKey;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Requests of one API on one shard (the shard of the connection).
#[derive(Debug, Default)]
pub struct ApiMetrics {
    pub requests: Counter,
    /// From the decoded request to the encoded response; a long-poll fetch
    /// includes its wait, as Kafka's request metrics do.
    pub latency: Histogram,
}

/// One shard's counters. See the module doc for ownership.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// By API key, with the API's name.
    apis: RefCell<BTreeMap<i16, (String, std::rc::Rc<ApiMetrics>)>>,
    /// Frames that could not be decoded or answered: the connection closed.
    pub request_errors: Counter,
    pub connections_accepted: Counter,
    /// Refused at accept: the shard's connection limit was reached.
    pub connections_rejected: Counter,
    /// Closed by the broker because of an error (bad frame, timeout).
    pub connections_failed: Counter,
    pub connections_open: Cell<u64>,
    /// Times the reactor was late by more than the stall threshold.
    pub reactor_stalls: Counter,
    /// How late the reactor ran the stall probe's timer.
    pub reactor_lag: Histogram,
}

impl ShardMetrics {
    /// The metrics of `api`, created at first use.
    pub fn api(&self, api: ApiKey) -> std::rc::Rc<ApiMetrics> {
        let mut apis = self.apis.borrow_mut();
        let (_, m) = apis
            .entry(api as i16)
            .or_insert_with(|| (format!("{api:?}"), Default::default()));
        m.clone()
    }

    fn api_snapshots(&self) -> Vec<ApiSnapshot> {
        self.apis
            .borrow()
            .values()
            .map(|(name, m)| ApiSnapshot {
                api: name.clone(),
                requests: m.requests.get(),
                latency: m.latency.snapshot(),
            })
            .collect()
    }
}

/// A plain copy of one shard's metrics, sent to the admin shard.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardSnapshot {
    pub shard: u32,
    pub cpu: Option<usize>,
    pub apis: Vec<ApiSnapshot>,
    pub request_errors: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_rejected: u64,
    pub connections_failed: u64,
    pub cross_shard_calls_sent: u64,
    pub cross_shard_calls_served: u64,
    pub reactor_stalls: u64,
    pub reactor_lag: HistogramSnapshot,
    pub batch_cache_bytes: u64,
    pub batch_cache_hits: u64,
    pub batch_cache_misses: u64,
    pub partitions: Vec<PartitionSnapshot>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiSnapshot {
    pub api: String,
    pub requests: u64,
    pub latency: HistogramSnapshot,
}

impl ShardSnapshot {
    /// The shard-level part; the caller fills in the rest.
    pub fn new(shard: u32, m: &ShardMetrics) -> ShardSnapshot {
        ShardSnapshot {
            shard,
            apis: m.api_snapshots(),
            request_errors: m.request_errors.get(),
            connections_open: m.connections_open.get(),
            connections_accepted: m.connections_accepted.get(),
            connections_rejected: m.connections_rejected.get(),
            connections_failed: m.connections_failed.get(),
            reactor_stalls: m.reactor_stalls.get(),
            reactor_lag: m.reactor_lag.snapshot(),
            ..ShardSnapshot::default()
        }
    }
}

/// One metric family: its help text, type and samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(out: &mut String, name: &str, kind: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &HistogramSnapshot) {
        let mut cumulative = 0u64;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = match LATENCY_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(self.out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(self.out, "{name}_sum{{{labels}}} {}", h.sum_ns as f64 / 1e9);
        let _ = writeln!(self.out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Escapes a label value per the Prometheus text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

type ShardValue = fn(&ShardSnapshot) -> u64;
type PartitionValue = fn(&PartitionSnapshot) -> u64;

/// Renders every shard's snapshot in the Prometheus text exposition format
/// (version 0.0.4): one family per metric, samples labelled by shard, and
/// partition samples by topic and partition too.
pub fn render_prometheus(shards: &[ShardSnapshot]) -> String {
    let mut out = String::new();
    let shard_labels = |s: &ShardSnapshot| format!("shard=\"{}\"", s.shard);
    let shard_counters: [(&str, &str, &str, ShardValue); 11] = [
        (
            "ferrolog_request_errors_total",
            "counter",
            "Request frames that could not be decoded or answered (the connection was closed).",
            |s| s.request_errors,
        ),
        (
            "ferrolog_connections_open",
            "gauge",
            "Open client connections.",
            |s| s.connections_open,
        ),
        (
            "ferrolog_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            |s| s.connections_accepted,
        ),
        (
            "ferrolog_connections_rejected_total",
            "counter",
            "Client connections refused at the per-shard connection limit.",
            |s| s.connections_rejected,
        ),
        (
            "ferrolog_connections_failed_total",
            "counter",
            "Client connections the broker closed because of an error (bad frame, timeout).",
            |s| s.connections_failed,
        ),
        (
            "ferrolog_cross_shard_calls_sent_total",
            "counter",
            "Calls this shard sent to another shard (cross-shard hops).",
            |s| s.cross_shard_calls_sent,
        ),
        (
            "ferrolog_cross_shard_calls_served_total",
            "counter",
            "Calls from other shards this shard ran.",
            |s| s.cross_shard_calls_served,
        ),
        (
            "ferrolog_reactor_stalls_total",
            "counter",
            "Times the shard's reactor ran a timer later than the stall threshold.",
            |s| s.reactor_stalls,
        ),
        (
            "ferrolog_batch_cache_bytes",
            "gauge",
            "Bytes held by the shard's batch cache.",
            |s| s.batch_cache_bytes,
        ),
        (
            "ferrolog_batch_cache_hits_total",
            "counter",
            "Batch reads served by the batch cache.",
            |s| s.batch_cache_hits,
        ),
        (
            "ferrolog_batch_cache_misses_total",
            "counter",
            "Batch reads that went to disk.",
            |s| s.batch_cache_misses,
        ),
    ];
    for (name, kind, help, value) in shard_counters {
        Family::header(&mut out, name, kind, help);
        let mut f = Family { out: &mut out };
        for s in shards {
            f.sample(name, &shard_labels(s), value(s));
        }
    }
    let name = "ferrolog_reactor_lag_seconds";
    Family::header(
        &mut out,
        name,
        "histogram",
        "How late the reactor ran its 10 ms probe timer.",
    );
    for s in shards {
        Family { out: &mut out }.histogram(name, &shard_labels(s), &s.reactor_lag);
    }

    let name = "ferrolog_requests_total";
    Family::header(&mut out, name, "counter", "Kafka requests handled, by API.");
    for s in shards {
        for a in &s.apis {
            let labels = format!("{},api=\"{}\"", shard_labels(s), label(&a.api));
            Family { out: &mut out }.sample(name, &labels, a.requests);
        }
    }
    let name = "ferrolog_request_latency_seconds";
    Family::header(
        &mut out,
        name,
        "histogram",
        "Time from a decoded request to its encoded response, by API.",
    );
    for s in shards {
        for a in &s.apis {
            let labels = format!("{},api=\"{}\"", shard_labels(s), label(&a.api));
            Family { out: &mut out }.histogram(name, &labels, &a.latency);
        }
    }

    let partition_labels = |s: &ShardSnapshot, p: &PartitionSnapshot| {
        format!(
            "shard=\"{}\",topic=\"{}\",partition=\"{}\"",
            s.shard,
            label(&p.topic),
            p.partition
        )
    };
    let partition_values: [(&str, &str, &str, PartitionValue); 12] = [
        (
            "ferrolog_partition_start_offset",
            "gauge",
            "First offset still in the log.",
            |p| p.start_offset as u64,
        ),
        (
            "ferrolog_partition_high_watermark",
            "gauge",
            "Next offset past the committed records.",
            |p| p.high_watermark as u64,
        ),
        (
            "ferrolog_partition_log_end_offset",
            "gauge",
            "Next offset to assign.",
            |p| p.log_end_offset as u64,
        ),
        (
            "ferrolog_partition_size_bytes",
            "gauge",
            "Bytes in the partition's segments.",
            |p| p.size_bytes,
        ),
        (
            "ferrolog_partition_produce_requests_total",
            "counter",
            "Produce entries for this partition.",
            |p| p.produce_requests,
        ),
        (
            "ferrolog_partition_produce_bytes_total",
            "counter",
            "Record batch bytes produced to this partition.",
            |p| p.produce_bytes,
        ),
        (
            "ferrolog_partition_produce_errors_total",
            "counter",
            "Produce entries answered with an error.",
            |p| p.produce_errors,
        ),
        (
            "ferrolog_partition_fetch_requests_total",
            "counter",
            "Fetch reads of this partition.",
            |p| p.fetch_requests,
        ),
        (
            "ferrolog_partition_fetch_bytes_total",
            "counter",
            "Record batch bytes fetched from this partition.",
            |p| p.fetch_bytes,
        ),
        (
            "ferrolog_partition_fetch_errors_total",
            "counter",
            "Fetch reads answered with an error.",
            |p| p.fetch_errors,
        ),
        (
            "ferrolog_partition_flushed_bytes_total",
            "counter",
            "Batch bytes the log made durable.",
            |p| p.flush_bytes,
        ),
        (
            "ferrolog_partition_flushed_batches_total",
            "counter",
            "Batches the log made durable; over the flush count, the group-commit factor.",
            |p| p.flush_batches,
        ),
    ];
    for (name, kind, help, value) in partition_values {
        Family::header(&mut out, name, kind, help);
        for s in shards {
            for p in &s.partitions {
                Family { out: &mut out }.sample(name, &partition_labels(s, p), value(p));
            }
        }
    }
    type PartitionHistogram = fn(&PartitionSnapshot) -> &HistogramSnapshot;
    let partition_histograms: [(&str, &str, PartitionHistogram); 2] = [
        (
            "ferrolog_partition_append_latency_seconds",
            "From a produce entry's first append to its acknowledgement.",
            |p| &p.append_latency,
        ),
        (
            "ferrolog_partition_flush_latency_seconds",
            "Time of one log flush (group commit): the writes, plus fdatasync in fsync mode.",
            |p| &p.flush_latency,
        ),
    ];
    for (name, help, value) in partition_histograms {
        Family::header(&mut out, name, "histogram", help);
        for s in shards {
            for p in &s.partitions {
                Family { out: &mut out }.histogram(name, &partition_labels(s, p), value(p));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_model::Ntp;
    use std::time::Duration;

    const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(11));
        h.record(Duration::from_millis(1));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.counts[0], 1, "10 µs is in the le=10µs bucket");
        assert_eq!(s.counts[1], 1, "11 µs is in the le=25µs bucket");
        assert_eq!(s.counts[6], 1, "1 ms is in the le=1ms bucket");
        assert_eq!(s.counts[BUCKETS - 1], 1, "60 s overflows");
        assert_eq!(s.sum_ns, 10_000 + 11_000 + 1_000_000 + 60_000_000_000);
    }

    fn parse_samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("a sample line is `name{labels} value`");
                (k.to_owned(), v.parse().expect("a sample value is a number"))
            })
            .collect()
    }

    #[test]
    fn prometheus_text_has_families_labels_and_cumulative_buckets() {
        let sm = ShardMetrics::default();
        sm.connections_accepted.add(3);
        let produce = sm.api(ApiKey::Produce);
        produce.requests.add(2);
        produce.latency.record(Duration::from_micros(40));
        produce.latency.record(Duration::from_micros(300));
        let pm = PartitionMetrics::default();
        pm.produce_bytes.add(1234);
        pm.flush_latency.record(Duration::from_micros(700));
        let mut shard = ShardSnapshot::new(1, &sm);
        let mut p = PartitionSnapshot::new(&Ntp::new("we\"ird".to_owned(), 4), &pm);
        p.high_watermark = 42;
        shard.partitions.push(p);
        let text = render_prometheus(&[shard]);
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.contains('{') && l.contains("} "), "malformed sample line {l:?}");
        }
        let samples = parse_samples(&text);
        assert_eq!(samples["ferrolog_connections_accepted_total{shard=\"1\"}"], 3.0);
        assert_eq!(
            samples["ferrolog_requests_total{shard=\"1\",api=\"Produce\"}"],
            2.0
        );
        let bucket = |le: &str| {
            samples[&format!(
                "ferrolog_request_latency_seconds_bucket{{shard=\"1\",api=\"Produce\",le=\"{le}\"}}"
            )]
        };
        assert_eq!(bucket("0.00001"), 0.0);
        assert_eq!(bucket("0.00005"), 1.0);
        assert_eq!(bucket("0.0005"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        let labels = "shard=\"1\",topic=\"we\\\"ird\",partition=\"4\"";
        assert_eq!(
            samples[&format!("ferrolog_partition_high_watermark{{{labels}}}")],
            42.0
        );
        assert_eq!(
            samples[&format!("ferrolog_partition_produce_bytes_total{{{labels}}}")],
            1234.0
        );
        assert_eq!(
            samples[&format!("ferrolog_partition_flush_latency_seconds_count{{{labels}}}")],
            1.0
        );
        let sum = samples[&format!("ferrolog_partition_flush_latency_seconds_sum{{{labels}}}")];
        assert!((sum - 0.0007).abs() < 1e-12, "{sum}");
        // Every family is declared once, before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let distinct: std::collections::BTreeSet<&&str> = types.iter().collect();
        assert_eq!(types.len(), distinct.len());
    }
}
