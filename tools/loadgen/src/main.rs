//! `ferrolog-loadgen`: drives a Kafka-compatible broker with an OpenMessaging-Benchmark-style
//! workload through librdkafka and reports throughput, publish and end-to-end latency, and
//! whether every acknowledged message came back (see tools/README.md).
//!
//! Threads: main (setup, the once-a-second progress line, the drain, the report); one per
//! producer, pacing and sending, each with the polling thread of its librdkafka
//! `ThreadedProducer`, which runs the delivery callbacks; one per consumer, polling its
//! `BaseConsumer` (rebalance callbacks run there). They share [`driver::shared::Shared`]
//! (atomics) and one mutex-guarded stats block per client; no async runtime.

mod driver;

use clap::Parser;
use driver::consumer::{self, ConsumerCtx, ConsumerStats};
use driver::producer::{self, ProducerCtx, ProducerPlan, ProducerStats};
use driver::setup::{self, PlainCtx};
use driver::shared::{lock, Notes, Shared};
use ferrolog_loadgen::options::{Acks, Cli, Workload};
use ferrolog_loadgen::payload::{KeyChooser, SplitMix64};
use ferrolog_loadgen::report::{self, Counts, Interval, IntervalCounts, Latencies, Report, Throughput};
use ferrolog_loadgen::schedule::{OpenSchedule, Window, NS_PER_S};
use ferrolog_loadgen::stats::{new_histogram, LatencySummary};
use ferrolog_loadgen::svg::{self, Series};
use ferrolog_loadgen::tracker::{self, ReceiveLog};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::ThreadedProducer;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the consumers may take to join the group and get every partition.
const GROUP_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The first message is due this long after the producers are started (their threads are
/// running by then).
const START_LEAD_NS: u64 = 20_000_000;
/// The main thread's longest sleep between checks.
const MAIN_LOOP_SLEEP: Duration = Duration::from_millis(20);
/// A last, partial progress interval is reported if it is at least this long.
const LAST_INTERVAL_MIN_NS: u64 = 100_000_000;
/// Bound of the topic deletion at the end.
const DELETE_TOPIC_TIMEOUT: Duration = Duration::from_secs(10);
/// Colors of the plot's curves.
const PUBLISH_COLOR: &str = "#1f77b4";
const E2E_COLOR: &str = "#d62728";
/// End-to-end latency is often publish latency plus a little: dashed, both curves stay visible.
const E2E_DASH: &str = "7 4";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let seed = seed();
    let workload = match cli.validate(seed) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("ferrolog-loadgen: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(workload, seed) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferrolog-loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A seed that differs between runs (topic and group names, filler, keys).
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Stops and joins the consumer threads, also when setup fails half-way.
struct ConsumerThreads {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl ConsumerThreads {
    /// Joins them; `false` if one panicked.
    fn stop(&mut self) -> bool {
        self.shared.stop_consumers.store(true, Ordering::Release);
        let mut ok = true;
        for h in self.handles.drain(..) {
            ok &= h.join().is_ok();
        }
        ok
    }
}

impl Drop for ConsumerThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until every consumer got an assignment and together they hold every partition.
fn wait_group_ready(ctxs: &[Arc<ConsumerCtx>], partitions: u32, shared: &Shared) -> Result<(), String> {
    let started = shared.now_ns();
    let deadline = started + GROUP_READY_TIMEOUT.as_nanos() as u64;
    loop {
        let all_assigned = ctxs.iter().all(|c| c.assignments.load(Ordering::Acquire) > 0);
        let held: i64 = ctxs.iter().map(|c| c.assigned.load(Ordering::Acquire)).sum();
        if all_assigned && held == i64::from(partitions) {
            eprintln!(
                "consumer group ready after {:.1} s",
                (shared.now_ns() - started) as f64 / NS_PER_S as f64
            );
            return Ok(());
        }
        if shared.now_ns() >= deadline {
            return Err(format!(
                "the consumers did not get the topic's partitions within {GROUP_READY_TIMEOUT:?}: \
                 {held} of {partitions} assigned, {} of {} consumers have an assignment",
                ctxs.iter()
                    .filter(|c| c.assignments.load(Ordering::Acquire) > 0)
                    .count(),
                ctxs.len()
            ));
        }
        std::thread::sleep(MAIN_LOOP_SLEEP);
    }
}

fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from)
        .unwrap_or_else(|e| panic!("latency histograms share their bounds, yet adding failed: {e}"));
}

/// The per-second progress lines.
struct Progress<'a> {
    w: &'a Workload,
    shared: &'a Shared,
    window: Window,
    producers: &'a [Arc<Mutex<ProducerStats>>],
    consumers: &'a [Arc<Mutex<ConsumerStats>>],
    last_ns: u64,
    series: Vec<Interval>,
}

impl Progress<'_> {
    /// Reports the interval from the last report to `now`.
    fn tick(&mut self, now: u64) {
        let mut publish = new_histogram();
        let mut e2e = new_histogram();
        let (mut acked, mut consumed) = (0, 0);
        for s in self.producers {
            let mut st = lock(s);
            merge(&mut publish, &st.interval_publish);
            st.interval_publish.reset();
            acked += std::mem::take(&mut st.interval_acked);
        }
        for s in self.consumers {
            let mut st = lock(s);
            merge(&mut e2e, &st.interval_e2e);
            st.interval_e2e.reset();
            consumed += std::mem::take(&mut st.interval_consumed);
        }
        let sh = self.shared;
        let sent = sh.sent.load(Ordering::Relaxed);
        let received = sh.consumed.load(Ordering::Relaxed);
        let counts = IntervalCounts {
            length_ns: now.saturating_sub(self.last_ns),
            acked,
            consumed,
            backlog: sent as i64 - received as i64,
            errors: sh.delivery_failures.load(Ordering::Relaxed)
                + sh.send_errors.load(Ordering::Relaxed)
                + sh.notes.client_errors(),
        };
        let interval = Interval::new(
            now.saturating_sub(self.window.start_ns) as f64 / NS_PER_S as f64,
            self.window.phase(self.last_ns),
            &counts,
            self.w.message_bytes,
            &publish,
            &e2e,
        );
        eprintln!("{interval}");
        self.series.push(interval);
        self.last_ns = now;
    }
}

/// Reports progress until the producers are done and the consumers have every acknowledged
/// message (or the drain deadline passed); returns whether the consumers caught up.
fn monitor(progress: &mut Progress<'_>, producer_threads: &[JoinHandle<()>]) -> bool {
    let (w, shared, window) = (progress.w, progress.shared, progress.window);
    let mut next_tick = window.start_ns + NS_PER_S;
    let drained = loop {
        let now = shared.now_ns();
        if now >= next_tick {
            progress.tick(now);
            next_tick += NS_PER_S;
            if next_tick <= now {
                next_tick = now + NS_PER_S;
            }
        }
        if producer_threads.iter().all(JoinHandle::is_finished) {
            if w.consumers == 0 {
                break true;
            }
            // With acks, each delivery report names the offset the group must pass; with
            // acks=0 there is none, so every reported message must have come back.
            let caught_up = if w.acks != Acks::None {
                shared.reached(&shared.acked_ends())
            } else {
                shared.consumed.load(Ordering::Relaxed) >= shared.acked.load(Ordering::Relaxed)
            };
            if caught_up {
                break true;
            }
            if now >= window.drain_deadline_ns {
                break false;
            }
        }
        let until_tick = Duration::from_nanos(next_tick.saturating_sub(shared.now_ns()));
        std::thread::sleep(MAIN_LOOP_SLEEP.min(until_tick));
    };
    let now = shared.now_ns();
    if now >= progress.last_ns + LAST_INTERVAL_MIN_NS {
        progress.tick(now);
    }
    drained
}

/// Deletes the topic the run created under a generated name.
fn delete_topic(w: &Workload, notes: &Arc<Notes>) {
    let settings = setup::admin_settings(w);
    let ctx = PlainCtx {
        role: "admin",
        notes: Arc::clone(notes),
    };
    let admin: AdminClient<PlainCtx> = match setup::create(&settings, ctx) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("could not delete topic {}: {e}", w.topic);
            return;
        }
    };
    let opts = AdminOptions::new()
        .operation_timeout(Some(DELETE_TOPIC_TIMEOUT))
        .request_timeout(Some(DELETE_TOPIC_TIMEOUT));
    match futures_lite::future::block_on(admin.delete_topics(&[w.topic.as_str()], &opts)) {
        Ok(results) => {
            for r in results {
                if let Err((name, code)) = r {
                    eprintln!("could not delete topic {name}: {code}");
                }
            }
        }
        Err(e) => eprintln!("could not delete topic {}: {e}", w.topic),
    }
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Runs the workload; `Ok(false)` if the run completed with problems.
fn run(w: Workload, seed: u64) -> Result<bool, String> {
    let notes = Arc::new(Notes::default());
    let (_, librdkafka_version) = rdkafka::util::get_rdkafka_version();
    eprintln!(
        "ferrolog-loadgen {} (librdkafka {librdkafka_version}) against {}",
        env!("CARGO_PKG_VERSION"),
        w.bootstrap
    );
    setup::check_client_configs(&w, &notes)?;
    let meta = setup::metadata_client(&w, &notes)?;
    let topic = setup::prepare_topic(&w, &meta, &notes)?;
    drop(meta);
    eprintln!(
        "topic {}: {} partitions ({})",
        w.topic,
        topic.partitions,
        if topic.created { "created" } else { "existing" }
    );
    let shared = Arc::new(Shared::new(
        Arc::clone(&notes),
        w.topic.clone(),
        w.message_bytes,
        w.producers,
        &topic.start_offsets,
    ));

    // Consumers first: the group must hold every partition before the first message is sent.
    let group = format!("loadgen-group-{:016x}", SplitMix64::new(seed ^ 0x9e37).next_u64());
    let mut consumer_threads = ConsumerThreads {
        shared: Arc::clone(&shared),
        handles: Vec::new(),
    };
    let mut consumer_stats = Vec::new();
    let mut consumer_ctxs = Vec::new();
    for i in 0..w.consumers {
        let ctx = ConsumerCtx::new(i, Arc::clone(&notes), Arc::clone(&shared));
        let c: BaseConsumer<ConsumerCtx> = setup::create(&w.consumer_settings(&group, i), ctx)
            .map_err(|e| format!("creating consumer {i}: {e}"))?;
        c.subscribe(&[w.topic.as_str()])
            .map_err(|e| format!("consumer {i}: subscribing to {}: {e}", w.topic))?;
        consumer_ctxs.push(Arc::clone(c.context()));
        let stats = Arc::new(Mutex::new(ConsumerStats::new()));
        let handle = consumer::spawn(c, Arc::clone(&stats), Arc::clone(&shared))
            .map_err(|e| format!("starting consumer thread {i}: {e}"))?;
        consumer_threads.handles.push(handle);
        consumer_stats.push(stats);
    }
    if w.consumers > 0 {
        wait_group_ready(&consumer_ctxs, topic.partitions, &shared)?;
    }

    let mut producers = Vec::new();
    let mut producer_stats = Vec::new();
    for i in 0..w.producers {
        let stats = Arc::new(Mutex::new(ProducerStats::new()));
        let ctx = ProducerCtx {
            index: i,
            notes: Arc::clone(&notes),
            shared: Arc::clone(&shared),
            stats: Arc::clone(&stats),
        };
        let p: ThreadedProducer<ProducerCtx> =
            setup::create(&w.producer_settings(i), ctx).map_err(|e| format!("creating producer {i}: {e}"))?;
        producers.push(p);
        producer_stats.push(stats);
    }
    let start = shared.now_ns() + START_LEAD_NS;
    let window = Window::new(start, w.warmup_s, w.duration_s, w.drain_timeout_s);
    shared.set_window(window);
    let mut producer_threads = Vec::new();
    for (i, p) in (0..w.producers).zip(producers) {
        let plan = ProducerPlan {
            index: i,
            schedule: (!w.closed_loop()).then(|| OpenSchedule::new(start, w.rate_msgs_per_s, w.producers, i)),
            keys: KeyChooser::new(w.key_distribution, seed ^ (u64::from(i) << 8) ^ 0x6b),
            filler_seed: seed ^ (u64::from(i) << 8) ^ 0xf1,
        };
        let handle = producer::spawn(plan, p, Arc::clone(&shared), window)
            .map_err(|e| format!("starting producer thread {i}: {e}"))?;
        producer_threads.push(handle);
    }

    let mut progress = Progress {
        w: &w,
        shared: &shared,
        window,
        producers: &producer_stats,
        consumers: &consumer_stats,
        last_ns: window.start_ns,
        series: Vec::new(),
    };
    let drained = monitor(&mut progress, &producer_threads);
    let time_series = progress.series;
    let mut thread_problems = Vec::new();
    for (i, h) in producer_threads.into_iter().enumerate() {
        if h.join().is_err() {
            thread_problems.push(format!("producer thread {i} panicked"));
        }
    }
    if !consumer_threads.stop() {
        thread_problems.push("a consumer thread panicked".to_string());
    }

    // Results.
    let mut publish = new_histogram();
    let mut publish_uncorrected = new_histogram();
    let mut e2e = new_histogram();
    let mut acks = Vec::new();
    let mut counts = Counts::default();
    for s in &producer_stats {
        let mut st = lock(s);
        merge(&mut publish, &st.publish);
        merge(&mut publish_uncorrected, &st.publish_uncorrected);
        counts.acked += st.acked;
        counts.failed += st.failed;
        counts.measured_acked += st.measured_acked;
        acks.push(std::mem::take(&mut st.acks));
    }
    let mut receipts = ReceiveLog::default();
    for s in &consumer_stats {
        let mut st = lock(s);
        merge(&mut e2e, &st.e2e);
        counts.measured_consumed += st.measured_consumed;
        let r = std::mem::take(&mut st.receipts);
        receipts.merge(&r);
    }
    counts.sent = shared.sent.load(Ordering::Relaxed);
    counts.measured_sent = shared.sent_measured.load(Ordering::Relaxed);
    counts.consumed = shared.consumed.load(Ordering::Relaxed);
    counts.foreign = shared.foreign.load(Ordering::Relaxed);
    counts.send_errors = shared.send_errors.load(Ordering::Relaxed);
    counts.schedule_missed = shared.schedule_missed.load(Ordering::Relaxed);
    counts.client_errors = notes.client_errors();
    counts.integrity = tracker::check(&acks, &receipts, topic.partitions, w.consumers > 0);
    drop(acks);
    drop(receipts);

    let (mut problems, warnings) = report::verdict(&counts, w.consumers);
    problems.extend(thread_problems);
    let report = Report {
        tool: "ferrolog-loadgen".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        librdkafka_version,
        topic_created: topic.created,
        partitions: topic.partitions,
        throughput: Throughput::new(window.measured_s(), &counts, w.message_bytes),
        counts,
        drained,
        latency_us: Latencies {
            publish: LatencySummary::from_histogram(&publish),
            publish_uncorrected: LatencySummary::from_histogram(&publish_uncorrected),
            end_to_end: LatencySummary::from_histogram(&e2e),
        },
        time_series,
        ok: problems.is_empty(),
        problems,
        warnings,
        workload: w,
    };
    println!("{}", report::summary(&report));

    let w = &report.workload;
    let mut written = Ok(());
    if let Some(path) = &w.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| format!("encoding the JSON report: {e}"))?;
        written = written.and(write_file(path, &(json + "\n")));
    }
    if let Some(path) = &w.svg {
        let rate = if w.closed_loop() {
            "max rate".to_string()
        } else {
            format!("{} msg/s", w.rate_msgs_per_s)
        };
        let title = format!(
            "ferrolog-loadgen: {} B, {rate}, {} producers, {} consumers, {} partitions, acks={}",
            w.message_bytes,
            w.producers,
            w.consumers,
            report.partitions,
            w.acks.as_str()
        );
        let mut series = vec![Series {
            name: "publish",
            color: PUBLISH_COLOR,
            dash: None,
            histogram: &publish,
        }];
        if w.consumers > 0 {
            series.push(Series {
                name: "end-to-end",
                color: E2E_COLOR,
                dash: Some(E2E_DASH),
                histogram: &e2e,
            });
        }
        written = written.and(write_file(path, &svg::percentile_plot(&title, &series)));
    }
    if topic.created && !w.topic_given && !w.keep_topic {
        if report.ok {
            delete_topic(w, &notes);
        } else {
            eprintln!("keeping topic {} for inspection (the run failed)", w.topic);
        }
    }
    written?;
    Ok(report.ok)
}
