//! The report of a run: the per-second progress lines, the final counts, throughput and
//! latency percentiles, the verdict, the text summary and the JSON.

use crate::options::Workload;
use crate::schedule::Phase;
use crate::stats::LatencySummary;
use crate::tracker::Integrity;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt;

/// Bytes of a "MB" in rates (decimal, like a network link's).
pub const BYTES_PER_MB: f64 = 1e6;

/// What happened during one interval (about a second) of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalCounts {
    /// Length of the interval, ns.
    pub length_ns: u64,
    /// Delivery reports without error.
    pub acked: u64,
    /// Messages received.
    pub consumed: u64,
    /// Messages sent so far minus messages received so far.
    pub backlog: i64,
    /// Errors so far: failed deliveries, sends the client refused, client errors.
    pub errors: u64,
}

/// One entry of the time series (and one progress line).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// End of the interval, seconds since the producers started.
    pub t_s: f64,
    pub phase: Phase,
    pub publish_msgs_per_s: f64,
    pub publish_mb_per_s: f64,
    pub consume_msgs_per_s: f64,
    pub consume_mb_per_s: f64,
    /// Publish latency (from the intended send time) of the interval's delivery reports.
    pub publish_p50_us: Option<u64>,
    pub publish_p99_us: Option<u64>,
    pub publish_max_us: Option<u64>,
    /// End-to-end latency of the interval's receipts.
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
    pub backlog: i64,
    pub errors: u64,
}

fn quantile(h: &Histogram<u64>, q: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q))
}

impl Interval {
    pub fn new(
        t_s: f64,
        phase: Phase,
        counts: &IntervalCounts,
        message_bytes: usize,
        publish: &Histogram<u64>,
        e2e: &Histogram<u64>,
    ) -> Interval {
        let seconds = (counts.length_ns as f64 / 1e9).max(1e-9);
        let rate = |n: u64| n as f64 / seconds;
        let mb = |n: u64| n as f64 * message_bytes as f64 / BYTES_PER_MB / seconds;
        Interval {
            t_s,
            phase,
            publish_msgs_per_s: rate(counts.acked),
            publish_mb_per_s: mb(counts.acked),
            consume_msgs_per_s: rate(counts.consumed),
            consume_mb_per_s: mb(counts.consumed),
            publish_p50_us: quantile(publish, 0.5),
            publish_p99_us: quantile(publish, 0.99),
            publish_max_us: (!publish.is_empty()).then(|| publish.max()),
            e2e_p50_us: quantile(e2e, 0.5),
            e2e_p99_us: quantile(e2e, 0.99),
            backlog: counts.backlog,
            errors: counts.errors,
        }
    }
}

/// Milliseconds with three decimals, or `-`.
fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_string(), |us| format!("{:.3}", us as f64 / 1e3))
}

/// The progress line.
impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Warmup => "warmup",
            Phase::Measure => "measure",
            Phase::Drain => "drain",
        };
        write!(
            f,
            "{:>7.1}s {phase:<7} | pub {:>9.0} msg/s {:>8.2} MB/s | cons {:>9.0} msg/s {:>8.2} MB/s \
             | pub lat ms p50 {} p99 {} max {} | e2e ms p50 {} p99 {} | backlog {} | err {}",
            self.t_s,
            self.publish_msgs_per_s,
            self.publish_mb_per_s,
            self.consume_msgs_per_s,
            self.consume_mb_per_s,
            ms(self.publish_p50_us),
            ms(self.publish_p99_us),
            ms(self.publish_max_us),
            ms(self.e2e_p50_us),
            ms(self.e2e_p99_us),
            self.backlog,
            self.errors
        )
    }
}

/// Message counts of the whole run (warm-up included unless named `measured_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Messages the client accepted (`send` returned Ok).
    pub sent: u64,
    /// Delivery reports without error.
    pub acked: u64,
    /// Delivery reports with an error.
    pub failed: u64,
    /// Receipts of this run's messages (duplicates included).
    pub consumed: u64,
    /// Receipts of messages that are not this run's (other writers of the topic).
    pub foreign: u64,
    /// Sends the client refused for a reason other than a full queue.
    pub send_errors: u64,
    /// Messages due in the schedule that were never sent (the producers were still behind
    /// when the drain deadline came).
    pub schedule_missed: u64,
    /// Errors librdkafka reported through its error callback (connection errors and the like).
    pub client_errors: u64,
    /// Messages sent (intended send time) within the measurement.
    pub measured_sent: u64,
    /// Of those, acknowledged.
    pub measured_acked: u64,
    /// Receipts during the measurement.
    pub measured_consumed: u64,
    #[serde(flatten)]
    pub integrity: Integrity,
}

/// Rates over the measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Throughput {
    pub window_s: f64,
    /// Acknowledged messages sent within the measurement, per second of it.
    pub publish_msgs_per_s: f64,
    pub publish_mb_per_s: f64,
    /// Receipts during the measurement, per second of it.
    pub consume_msgs_per_s: f64,
    pub consume_mb_per_s: f64,
}

impl Throughput {
    pub fn new(window_s: f64, counts: &Counts, message_bytes: usize) -> Throughput {
        let w = window_s.max(1e-9);
        let mb = message_bytes as f64 / BYTES_PER_MB;
        Throughput {
            window_s,
            publish_msgs_per_s: counts.measured_acked as f64 / w,
            publish_mb_per_s: counts.measured_acked as f64 * mb / w,
            consume_msgs_per_s: counts.measured_consumed as f64 / w,
            consume_mb_per_s: counts.measured_consumed as f64 * mb / w,
        }
    }
}

/// Latency percentiles of the messages sent within the measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// Delivery report time minus intended send time (coordinated-omission corrected).
    pub publish: LatencySummary,
    /// Delivery report time minus the time `send` was called.
    pub publish_uncorrected: LatencySummary,
    /// Receipt time minus the intended send time embedded in the message.
    pub end_to_end: LatencySummary,
}

/// The whole report, as written to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub librdkafka_version: String,
    pub workload: Workload,
    /// The topic was created by this run.
    pub topic_created: bool,
    /// Partitions of the topic as used (an existing topic keeps its own count).
    pub partitions: u32,
    pub counts: Counts,
    /// Consumers reached every acknowledged offset before the drain deadline.
    pub drained: bool,
    pub throughput: Throughput,
    pub latency_us: Latencies,
    pub time_series: Vec<Interval>,
    /// No problem below: the exit status is 0.
    pub ok: bool,
    /// What makes the run fail.
    pub problems: Vec<String>,
    /// What is worth a look but does not fail the run.
    pub warnings: Vec<String>,
}

/// Problems (which fail the run) and warnings of a run with `consumers` consumers.
pub fn verdict(counts: &Counts, consumers: u32) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if counts.failed > 0 {
        problems.push(format!("{} messages failed delivery", counts.failed));
    }
    if counts.send_errors > 0 {
        problems.push(format!("the client refused {} sends", counts.send_errors));
    }
    let reported = counts.acked + counts.failed;
    if reported < counts.sent {
        problems.push(format!(
            "{} sent messages got no delivery report",
            counts.sent - reported
        ));
    }
    if consumers > 0 && counts.integrity.gaps > 0 {
        problems.push(format!(
            "{} acknowledged messages were not consumed by the drain deadline",
            counts.integrity.gaps
        ));
    }
    if counts.integrity.duplicates > 0 {
        warnings.push(format!(
            "{} duplicate receipts of acknowledged messages",
            counts.integrity.duplicates
        ));
    }
    if counts.integrity.unacked_received > 0 {
        warnings.push(format!(
            "{} receipts of messages that were never acknowledged",
            counts.integrity.unacked_received
        ));
    }
    if counts.foreign > 0 {
        warnings.push(format!(
            "{} messages received that this run did not send (other writers on the topic?)",
            counts.foreign
        ));
    }
    if counts.schedule_missed > 0 {
        warnings.push(format!(
            "{} messages due in the schedule were never sent: the producers were still behind \
             at the drain deadline",
            counts.schedule_missed
        ));
    }
    if counts.client_errors > 0 {
        warnings.push(format!(
            "librdkafka reported {} errors (the first ones are on stderr)",
            counts.client_errors
        ));
    }
    (problems, warnings)
}

fn latency_row(name: &str, l: &LatencySummary) -> String {
    if l.samples == 0 {
        return format!("  {name:<22} (no samples)");
    }
    let cells: Vec<String> = l
        .ordered()
        .iter()
        .map(|&us| format!("{:>9.3}", us as f64 / 1e3))
        .collect();
    format!("  {name:<22} {} {:>9}", cells.join(" "), l.samples)
}

/// The summary printed at the end.
pub fn summary(r: &Report) -> String {
    let w = &r.workload;
    let c = &r.counts;
    let t = &r.throughput;
    let mode = if w.closed_loop() {
        "max rate (closed loop)".to_string()
    } else {
        format!("{} msg/s (open loop)", w.rate_msgs_per_s)
    };
    let mut lines = vec![
        format!(
            "ferrolog-loadgen {} (librdkafka {}) against {}",
            r.version, r.librdkafka_version, w.bootstrap
        ),
        format!(
            "workload: topic {} ({} partitions{}), {} producers, {} consumers, {} B messages, \
             acks={}, compression {}, linger.ms {}, batch {} B, keys {}, {mode}, warm-up {} s, \
             measured {} s",
            w.topic,
            r.partitions,
            if r.topic_created {
                ", created"
            } else {
                ", existing"
            },
            w.producers,
            w.consumers,
            w.message_bytes,
            w.acks.as_str(),
            w.compression.as_str(),
            w.linger_ms,
            w.batch_bytes,
            w.key_distribution.as_str(),
            w.warmup_s,
            w.duration_s
        ),
        format!(
            "messages: sent {}, acked {}, failed {}, consumed {} (unique {}, duplicates {}, gaps {}, \
             unacked received {}, foreign {}){}",
            c.sent,
            c.acked,
            c.failed,
            c.consumed,
            c.integrity.consumed_unique,
            c.integrity.duplicates,
            c.integrity.gaps,
            c.integrity.unacked_received,
            c.foreign,
            if w.consumers > 0 && !r.drained {
                "; consumers did NOT catch up"
            } else {
                ""
            }
        ),
        format!(
            "throughput over {:.1} s: publish {:.1} msg/s {:.3} MB/s, consume {:.1} msg/s {:.3} MB/s",
            t.window_s, t.publish_msgs_per_s, t.publish_mb_per_s, t.consume_msgs_per_s, t.consume_mb_per_s
        ),
        format!(
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "samples"
        ),
        latency_row("publish", &r.latency_us.publish),
        latency_row("publish (uncorrected)", &r.latency_us.publish_uncorrected),
    ];
    if w.consumers > 0 {
        lines.push(latency_row("end-to-end", &r.latency_us.end_to_end));
    }
    for warning in &r.warnings {
        lines.push(format!("warning: {warning}"));
    }
    if r.ok {
        lines.push("result: OK".to_string());
    } else {
        lines.push(format!("result: FAILED: {}", r.problems.join("; ")));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Cli;
    use crate::stats::{new_histogram, record_ns};
    use clap::Parser;

    fn workload(consumers: &str) -> Workload {
        Cli::try_parse_from([
            "x",
            "--bootstrap",
            "h:1",
            "--consumers",
            consumers,
            "--message-size",
            "1000",
        ])
        .map_err(|e| e.to_string())
        .and_then(|c| c.validate(3))
        .expect("valid workload")
    }

    fn report(counts: Counts, consumers: &str) -> Report {
        let w = workload(consumers);
        let (problems, warnings) = verdict(&counts, w.consumers);
        let mut h = new_histogram();
        for ns in [1_000_000, 2_000_000, 3_000_000] {
            record_ns(&mut h, ns);
        }
        let l = LatencySummary::from_histogram(&h);
        Report {
            tool: "ferrolog-loadgen".into(),
            version: "0.1.0".into(),
            librdkafka_version: "2.12.1".into(),
            partitions: 3,
            topic_created: true,
            throughput: Throughput::new(10.0, &counts, w.message_bytes),
            workload: w,
            counts,
            drained: true,
            latency_us: Latencies {
                publish: l,
                publish_uncorrected: l,
                end_to_end: l,
            },
            time_series: Vec::new(),
            ok: problems.is_empty(),
            problems,
            warnings,
        }
    }

    #[test]
    fn interval_rates_and_line() {
        let mut p = new_histogram();
        record_ns(&mut p, 500_000);
        record_ns(&mut p, 1_500_000);
        let e = new_histogram();
        let counts = IntervalCounts {
            length_ns: 500_000_000,
            acked: 1000,
            consumed: 500,
            backlog: 7,
            errors: 1,
        };
        let i = Interval::new(3.0, Phase::Measure, &counts, 1000, &p, &e);
        assert_eq!(i.publish_msgs_per_s, 2000.0);
        assert_eq!(i.publish_mb_per_s, 2.0);
        assert_eq!(i.consume_msgs_per_s, 1000.0);
        assert_eq!(i.publish_p50_us, Some(500));
        assert_eq!(i.e2e_p50_us, None);
        let line = i.to_string();
        for part in [
            "3.0s",
            "measure",
            "2000 msg/s",
            "p50 0.500",
            "e2e ms p50 -",
            "backlog 7",
            "err 1",
        ] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
    }

    #[test]
    fn throughput_counts_the_measurement_only() {
        let counts = Counts {
            measured_acked: 5000,
            measured_consumed: 2500,
            ..Counts::default()
        };
        let t = Throughput::new(10.0, &counts, 1000);
        assert_eq!((t.publish_msgs_per_s, t.publish_mb_per_s), (500.0, 0.5));
        assert_eq!((t.consume_msgs_per_s, t.consume_mb_per_s), (250.0, 0.25));
    }

    #[test]
    fn a_clean_run_is_ok() {
        let counts = Counts {
            sent: 10,
            acked: 10,
            consumed: 10,
            integrity: Integrity {
                consumed_unique: 10,
                ..Integrity::default()
            },
            ..Counts::default()
        };
        let r = report(counts, "1");
        assert!(r.ok, "{:?}", r.problems);
        assert!(r.warnings.is_empty());
        let text = summary(&r);
        assert!(text.contains("result: OK"), "{text}");
        assert!(text.contains("end-to-end"), "{text}");
    }

    #[test]
    fn failures_and_gaps_fail_the_run() {
        let counts = Counts {
            sent: 12,
            acked: 9,
            failed: 2,
            send_errors: 1,
            integrity: Integrity {
                gaps: 4,
                duplicates: 2,
                ..Integrity::default()
            },
            ..Counts::default()
        };
        let (problems, warnings) = verdict(&counts, 1);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("2 messages failed")));
        assert!(problems
            .iter()
            .any(|p| p.contains("1 sent messages got no delivery report")));
        assert!(problems
            .iter()
            .any(|p| p.contains("4 acknowledged messages were not consumed")));
        assert!(warnings.iter().any(|w| w.contains("2 duplicate")));
        // Without consumers nothing is expected to be consumed.
        let (problems, _) = verdict(&counts, 0);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn report_json_has_the_documented_fields() {
        let r = report(Counts::default(), "0");
        let json = serde_json::to_value(&r).expect("json");
        for key in [
            "workload",
            "counts",
            "throughput",
            "latency_us",
            "time_series",
            "ok",
            "partitions",
        ] {
            assert!(json.get(key).is_some(), "no {key} in {json}");
        }
        for key in [
            "sent",
            "acked",
            "failed",
            "consumed",
            "duplicates",
            "gaps",
            "per_partition",
        ] {
            assert!(json["counts"].get(key).is_some(), "no counts.{key}");
        }
        for key in [
            "p50_us",
            "p90_us",
            "p99_us",
            "p99_9_us",
            "p99_99_us",
            "max_us",
            "samples",
        ] {
            assert!(
                json["latency_us"]["publish"].get(key).is_some(),
                "no publish.{key}"
            );
        }
        assert!(json["latency_us"]["publish_uncorrected"].is_object());
        assert!(json["latency_us"]["end_to_end"].is_object());
        assert!(
            !summary(&r).contains("end-to-end"),
            "no e2e row without consumers"
        );
    }
}
