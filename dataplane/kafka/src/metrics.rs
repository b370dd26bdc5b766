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
pub use ferrolog_cluster::repl_xdp::XdpSnapshot;
pub use ferrolog_cluster::replicated::ReplNetSnapshot;
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
    /// Requests started while an earlier request of the same connection was
    /// still in progress (pipelining, `network.pipeline_depth`).
    pub requests_pipelined: Counter,
    /// Metadata answers that waited for the controller's verdict on a
    /// partition leader this node had just lost its connection to.
    pub metadata_waits_for_lost_leaders: Counter,
    pub connections_accepted: Counter,
    /// Refused at accept: the shard's connection limit was reached.
    pub connections_rejected: Counter,
    /// Closed by the broker because of an error (bad frame, timeout).
    pub connections_failed: Counter,
    pub connections_open: Cell<u64>,
    /// Connections handed to the shard that owns the partitions of their
    /// requests (`network.move_connections`), counted where they left.
    pub connections_moved_out: Counter,
    /// Connections taken over from another shard, counted where they came.
    pub connections_moved_in: Counter,
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
    pub requests_pipelined: u64,
    pub metadata_waits_for_lost_leaders: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_rejected: u64,
    pub connections_failed: u64,
    pub connections_moved_out: u64,
    pub connections_moved_in: u64,
    pub cross_shard_calls_sent: u64,
    pub cross_shard_calls_served: u64,
    pub reactor_stalls: u64,
    pub reactor_lag: HistogramSnapshot,
    pub batch_cache_bytes: u64,
    pub batch_cache_hits: u64,
    pub batch_cache_misses: u64,
    pub partitions: Vec<PartitionSnapshot>,
    /// Replication frames over TCP and AF_XDP.
    pub replication: ReplNetSnapshot,
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
            requests_pipelined: m.requests_pipelined.get(),
            metadata_waits_for_lost_leaders: m.metadata_waits_for_lost_leaders.get(),
            connections_open: m.connections_open.get(),
            connections_accepted: m.connections_accepted.get(),
            connections_rejected: m.connections_rejected.get(),
            connections_failed: m.connections_failed.get(),
            connections_moved_out: m.connections_moved_out.get(),
            connections_moved_in: m.connections_moved_in.get(),
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
    let shard_counters: [(&str, &str, &str, ShardValue); 15] = [
        (
            "ferrolog_request_errors_total",
            "counter",
            "Request frames that could not be decoded or answered (the connection was closed).",
            |s| s.request_errors,
        ),
        (
            "ferrolog_requests_pipelined_total",
            "counter",
            "Requests started while an earlier request of the same connection was still in progress.",
            |s| s.requests_pipelined,
        ),
        (
            "ferrolog_metadata_waits_for_lost_leader_total",
            "counter",
            "Metadata answers that waited for the controller's verdict on a partition leader this node had just lost its connection to.",
            |s| s.metadata_waits_for_lost_leaders,
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
            "ferrolog_connections_moved_out_total",
            "counter",
            "Client connections this shard handed to the shard that owns the partitions of their requests.",
            |s| s.connections_moved_out,
        ),
        (
            "ferrolog_connections_moved_in_total",
            "counter",
            "Client connections this shard took over from another shard.",
            |s| s.connections_moved_in,
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
    render_replication(&mut out, shards);
    out
}

/// The replication transport's families: frames by transport and
/// direction, AF_XDP bytes, datagrams and drops by reason (only shards with
/// an AF_XDP socket have those), refusals and the leaders' resends.
fn render_replication(out: &mut String, shards: &[ShardSnapshot]) {
    let shard_labels = |s: &ShardSnapshot| format!("shard=\"{}\"", s.shard);
    let name = "ferrolog_replication_frames_total";
    Family::header(
        out,
        name,
        "counter",
        "Replication frames by transport (tcp, af_xdp) and direction (sent, received).",
    );
    for s in shards {
        let r = &s.replication;
        let mut f = Family { out: &mut *out };
        for (transport, direction, n) in [
            ("tcp", "sent", r.tcp_frames_sent),
            ("tcp", "received", r.tcp_frames_received),
        ] {
            let labels = format!(
                "{},transport=\"{transport}\",direction=\"{direction}\"",
                shard_labels(s)
            );
            f.sample(name, &labels, n);
        }
        if let Some(x) = &r.xdp {
            for (direction, n) in [("sent", x.tx_frames), ("received", x.rx_frames)] {
                let labels = format!(
                    "{},transport=\"af_xdp\",direction=\"{direction}\"",
                    shard_labels(s)
                );
                f.sample(name, &labels, n);
            }
        }
    }
    type XdpValue = fn(&crate::metrics::XdpSnapshot) -> [(&'static str, u64); 2];
    let xdp_pairs: [(&str, &str, XdpValue); 2] = [
        (
            "ferrolog_xdp_bytes_total",
            "Replication frame bytes over AF_XDP, by direction.",
            |x| [("sent", x.tx_bytes), ("received", x.rx_bytes)],
        ),
        (
            "ferrolog_xdp_datagrams_total",
            "UDP datagrams over AF_XDP, by direction (a frame is one or more).",
            |x| [("sent", x.tx_datagrams), ("received", x.rx_datagrams)],
        ),
    ];
    for (name, help, value) in xdp_pairs {
        Family::header(out, name, "counter", help);
        for s in shards {
            let Some(x) = &s.replication.xdp else { continue };
            let mut f = Family { out: &mut *out };
            for (direction, n) in value(x) {
                let labels = format!(
                    "{},queue=\"{}\",direction=\"{direction}\"",
                    shard_labels(s),
                    x.queue
                );
                f.sample(name, &labels, n);
            }
        }
    }
    let name = "ferrolog_xdp_drops_total";
    Family::header(
        out,
        name,
        "counter",
        "AF_XDP datagrams or frames lost or refused, by reason (the receive checks, the kernel's \
         kernel_* counters, the send side's).",
    );
    for s in shards {
        let Some(x) = &s.replication.xdp else { continue };
        let mut f = Family { out: &mut *out };
        for (reason, n) in &x.drops {
            let labels = format!(
                "{},queue=\"{}\",reason=\"{}\"",
                shard_labels(s),
                x.queue,
                label(reason)
            );
            f.sample(name, &labels, n);
        }
    }
    let shard_counters: [(&str, &str, ShardValue); 4] = [
        (
            "ferrolog_replication_frames_refused_total",
            "Replication frames that could not be queued (no address, a full link or socket queue); the replica resends.",
            |s| s.replication.frames_refused,
        ),
        (
            "ferrolog_replication_frames_invalid_total",
            "Received replication frames that did not decode.",
            |s| s.replication.frames_invalid,
        ),
        (
            "ferrolog_replication_frames_forwarded_total",
            "Received replication frames handed to the shard that owns their partition (a hop between shards).",
            |s| s.replication.frames_forwarded,
        ),
        (
            "ferrolog_replication_resends_total",
            "Times a leader replica went back to a follower's acknowledged offset after no progress (lost frames).",
            |s| s.replication.resends,
        ),
    ];
    for (name, help, value) in shard_counters {
        Family::header(out, name, "counter", help);
        let mut f = Family { out: &mut *out };
        for s in shards {
            f.sample(name, &shard_labels(s), value(s));
        }
    }
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
        let one_ms = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| b == 1_000)
            .expect("a 1 ms bound");
        assert_eq!(s.counts[one_ms], 1, "1 ms is in the le=1ms bucket");
        assert_eq!(s.counts[one_ms - 1] + s.counts[one_ms + 1], 0);
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

    #[test]
    fn replication_families_split_tcp_and_af_xdp_and_name_drop_reasons() {
        let sm = ShardMetrics::default();
        let mut with_xdp = ShardSnapshot::new(0, &sm);
        with_xdp.replication = ReplNetSnapshot {
            tcp_frames_sent: 5,
            resends: 2,
            xdp: Some(XdpSnapshot {
                queue: 3,
                tx_frames: 7,
                rx_bytes: 900,
                drops: vec![("bad_checksum".into(), 4)],
                ..XdpSnapshot::default()
            }),
            ..ReplNetSnapshot::default()
        };
        let tcp_only = ShardSnapshot::new(1, &sm);
        let text = render_prometheus(&[with_xdp, tcp_only]);
        let samples = parse_samples(&text);
        let frames = |shard: u32, transport: &str, direction: &str| {
            samples.get(&format!(
                "ferrolog_replication_frames_total{{shard=\"{shard}\",transport=\"{transport}\",direction=\"{direction}\"}}"
            )).copied()
        };
        assert_eq!(frames(0, "tcp", "sent"), Some(5.0));
        assert_eq!(frames(0, "af_xdp", "sent"), Some(7.0));
        assert_eq!(frames(1, "tcp", "sent"), Some(0.0));
        assert_eq!(frames(1, "af_xdp", "sent"), None, "no socket, no AF_XDP samples");
        assert_eq!(
            samples["ferrolog_xdp_bytes_total{shard=\"0\",queue=\"3\",direction=\"received\"}"],
            900.0
        );
        assert_eq!(
            samples["ferrolog_xdp_drops_total{shard=\"0\",queue=\"3\",reason=\"bad_checksum\"}"],
            4.0
        );
        assert_eq!(samples["ferrolog_replication_resends_total{shard=\"0\"}"], 2.0);
    }
}
