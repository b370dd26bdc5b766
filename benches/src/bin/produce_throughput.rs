//! Produce throughput of a running broker against the disk's raw O_DIRECT
//! bandwidth measured in the same run (issue 16 item 3).
//!
//! ```text
//! produce_throughput --bootstrap HOST:PORT --raw-dir DIR [--broker-pid PID]
//!     [--partitions N] [--records-per-batch N] [--depth N] [--seconds S]
//!     [--warmup-s S] [--durability direct|fsync] [--json PATH]
//! ```
//!
//! Each of N connections (threads) produces to its own partition of a fresh
//! topic: ProduceRequests (v8, acks=-1) of one RecordBatch of
//! `--records-per-batch` records with 1 KiB values, batched by this client
//! as librdkafka batches them (no compression), `--depth` requests in flight
//! per connection (the broker answers them in order). No client library: a
//! librdkafka producer tops out at about 0.7 M msg/s of 1 KiB on one core of
//! this machine (docs/benchmarks.md), which is the client's limit, not the
//! broker's. Pin this tool and the broker to different CPUs
//! (`benches/throughput.sh` does).
//!
//! Raw bandwidth: 1 GiB of sequential 1 MiB `pwrite`s on an O_DIRECT file in
//! `--raw-dir` (put it on the broker's data disk), one at a time, before and
//! after the produce phase. The report gives the acknowledged bytes per
//! second (batch bytes as stored: records, keys, values and headers), the
//! messages per second, the ratio to the lower and to the mean raw
//! bandwidth, and, with `--broker-pid`, the broker's CPU (cores, and
//! CPU-seconds per GB acknowledged) over the measured window.

use bytes::{Bytes, BytesMut};
use ferrolog_benches::{
    make_batch, mb_per_s, process_cpu_seconds, produce_answer, AlignedBuf, Json, ProduceFrame,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRODUCE_VERSION: i16 = 8;
const VALUE_BYTES: usize = 1024;
const RESPONSE_BYTES_MAX: usize = 1 << 20;
const REQUEST_TIMEOUT_MS: i32 = 30_000;
const RAW_TOTAL_BYTES: usize = 1 << 30;
const RAW_WRITE_BYTES: usize = 1 << 20;

struct Opts {
    bootstrap: String,
    raw_dir: PathBuf,
    broker_pid: Option<u32>,
    partitions: usize,
    records_per_batch: usize,
    depth: usize,
    seconds: f64,
    warmup_s: f64,
    durability: String,
    json: Option<PathBuf>,
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        bootstrap: String::new(),
        raw_dir: PathBuf::new(),
        broker_pid: None,
        partitions: 4,
        records_per_batch: 256,
        depth: 4,
        seconds: 20.0,
        warmup_s: 3.0,
        durability: "direct".into(),
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--bootstrap" => o.bootstrap = value()?,
            "--raw-dir" => o.raw_dir = PathBuf::from(value()?),
            "--broker-pid" => o.broker_pid = Some(value()?.parse().map_err(|e| format!("{a}: {e}"))?),
            "--partitions" => o.partitions = num(value()?)? as usize,
            "--records-per-batch" => o.records_per_batch = num(value()?)? as usize,
            "--depth" => o.depth = num(value()?)? as usize,
            "--seconds" => o.seconds = num(value()?)?,
            "--warmup-s" => o.warmup_s = num(value()?)?,
            "--durability" => o.durability = value()?,
            "--json" => o.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("produce_throughput.rs")
                        .lines()
                        .take(8)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.bootstrap.is_empty() || o.raw_dir.as_os_str().is_empty() {
        return Err("--bootstrap and --raw-dir are required".into());
    }
    if o.partitions == 0 || o.records_per_batch == 0 || o.depth == 0 || o.seconds <= 0.0 {
        return Err("--partitions, --records-per-batch, --depth and --seconds must be positive".into());
    }
    Ok(o)
}

/// Sequential 1 MiB O_DIRECT writes of 1 GiB, one at a time; MB/s.
fn raw_bandwidth(dir: &Path) -> io::Result<f64> {
    let path = dir.join(format!("produce_throughput.raw.{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)?;
    let buf = AlignedBuf::new(RAW_WRITE_BYTES);
    let start = Instant::now();
    let mut at = 0usize;
    while at < RAW_TOTAL_BYTES {
        file.write_all_at(buf.as_slice(), at as u64)?;
        at += RAW_WRITE_BYTES;
    }
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(mb_per_s(RAW_TOTAL_BYTES as u64, elapsed))
}

fn create_topic(o: &Opts, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &o.bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let partitions = i32::try_from(o.partitions).map_err(|e| e.to_string())?;
    let topic_def = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("ferrolog.durability", &o.durability);
    let rt = futures_lite::future::block_on(admin.create_topics([&topic_def], &AdminOptions::new()));
    for r in rt.map_err(|e| e.to_string())? {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Counters shared by the connections.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    batches: AtomicU64,
}

/// One connection producing to `partition`, `depth` requests in flight,
/// until `stop`; adds every acknowledged batch to `progress`.
fn connection(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    batch: Bytes,
    depth: usize,
    stop: &AtomicBool,
    progress: &Progress,
) -> io::Result<()> {
    let mut stream = TcpStream::connect(bootstrap)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(
        u64::try_from(REQUEST_TIMEOUT_MS).unwrap_or(0) + 5_000,
    )))?;
    let mut request = BytesMut::new();
    let mut response = Vec::with_capacity(256);
    let mut next_id = 0i32;
    let mut oldest_id = 0i32;
    let mut in_flight = 0usize;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while !stopping && in_flight < depth {
            ProduceFrame {
                version: PRODUCE_VERSION,
                correlation_id: next_id,
                client_id: "ferrolog-produce-throughput",
                acks: -1,
                timeout_ms: REQUEST_TIMEOUT_MS,
                topic,
                partition,
                records: batch.clone(),
            }
            .encode(&mut request)?;
            stream.write_all(&request)?;
            next_id = next_id.wrapping_add(1);
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(());
        }
        let mut size = [0u8; 4];
        stream.read_exact(&mut size)?;
        let size = u32::from_be_bytes(size) as usize;
        if size > RESPONSE_BYTES_MAX {
            return Err(other(format!("a ProduceResponse of {size} bytes")));
        }
        response.resize(size, 0);
        stream.read_exact(&mut response)?;
        let answer = produce_answer(&response, PRODUCE_VERSION)?;
        if answer.correlation_id != oldest_id {
            return Err(other(format!(
                "response {} where {oldest_id} was due: answers out of request order",
                answer.correlation_id
            )));
        }
        if answer.error_code != 0 {
            return Err(other(format!(
                "partition {partition}: error code {}",
                answer.error_code
            )));
        }
        oldest_id = oldest_id.wrapping_add(1);
        in_flight -= 1;
        progress.bytes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        progress.batches.fetch_add(1, Ordering::Relaxed);
    }
}

fn run(o: &Opts) -> Result<(), String> {
    let topic = format!("produce-throughput-{}", std::process::id());
    println!(
        "raw O_DIRECT bandwidth (1 GiB of 1 MiB writes in {}) ...",
        o.raw_dir.display()
    );
    let raw_before = raw_bandwidth(&o.raw_dir).map_err(|e| format!("raw writes: {e}"))?;
    println!("  before: {raw_before:.1} MB/s");
    create_topic(o, &topic)?;
    let batch = make_batch(o.records_per_batch, VALUE_BYTES, 0);
    println!(
        "producing to {topic}: {} connections/partitions, batches of {} records ({} bytes), {} in flight each, durability {}",
        o.partitions,
        o.records_per_batch,
        batch.len(),
        o.depth,
        o.durability
    );
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let workers: Vec<_> = (0..o.partitions)
        .map(|i| {
            let (stop, progress, batch) = (stop.clone(), progress.clone(), batch.clone());
            let (bootstrap, topic, depth) = (o.bootstrap.clone(), topic.clone(), o.depth);
            std::thread::spawn(move || {
                let partition = i32::try_from(i).unwrap_or(0);
                connection(&bootstrap, &topic, partition, batch, depth, &stop, &progress)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.warmup_s));
    let (b0, n0, t0) = (
        progress.bytes.load(Ordering::Relaxed),
        progress.batches.load(Ordering::Relaxed),
        Instant::now(),
    );
    let cpu0 = o.broker_pid.and_then(process_cpu_seconds);
    let own0 = ferrolog_benches::own_cpu_seconds();
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    let (b1, n1, elapsed) = (
        progress.bytes.load(Ordering::Relaxed),
        progress.batches.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    let cpu1 = o.broker_pid.and_then(process_cpu_seconds);
    let own1 = ferrolog_benches::own_cpu_seconds();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join()
            .map_err(|_| "a connection thread panicked".to_string())?
            .map_err(|e| format!("a connection failed: {e}"))?;
    }
    let raw_after = raw_bandwidth(&o.raw_dir).map_err(|e| format!("raw writes: {e}"))?;
    println!("  raw after: {raw_after:.1} MB/s");

    let bytes = b1 - b0;
    let msgs = (n1 - n0) * o.records_per_batch as u64;
    let secs = elapsed.as_secs_f64();
    let rate = mb_per_s(bytes, elapsed);
    let raw_min = raw_before.min(raw_after);
    let raw_mean = (raw_before + raw_after) / 2.0;
    let broker = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let gb = bytes as f64 / 1e9;
    println!(
        "acknowledged: {rate:.1} MB/s, {:.0} msg/s over {secs:.1} s; {:.0}% of the lower raw bandwidth ({raw_min:.1} MB/s), {:.0}% of the mean ({raw_mean:.1} MB/s)",
        msgs as f64 / secs,
        100.0 * rate / raw_min,
        100.0 * rate / raw_mean
    );
    if let Some(cpu) = broker {
        println!(
            "broker CPU: {:.2} cores, {:.2} CPU-s per GB acknowledged; this client: {:.2} cores",
            cpu / secs,
            cpu / gb,
            (own1 - own0) / secs
        );
    }
    if let Some(path) = &o.json {
        let num = |x: f64| Json::Num(x);
        let j = Json::obj([
            ("partitions", num(o.partitions as f64)),
            ("records_per_batch", num(o.records_per_batch as f64)),
            ("batch_bytes", num(batch.len() as f64)),
            ("depth", num(o.depth as f64)),
            ("durability", Json::str(o.durability.clone())),
            ("seconds", num(secs)),
            ("acked_bytes", num(bytes as f64)),
            ("mb_per_s", num(rate)),
            ("msgs_per_s", num(msgs as f64 / secs)),
            ("raw_before_mb_per_s", num(raw_before)),
            ("raw_after_mb_per_s", num(raw_after)),
            ("broker_cpu_s", broker.map_or(Json::Null, num)),
            ("client_cpu_s", num(own1 - own0)),
        ]);
        std::fs::write(path, j.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("produce_throughput: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&o) {
        eprintln!("produce_throughput: {e}");
        std::process::exit(1);
    }
}
