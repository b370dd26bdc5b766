//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use ferrolog_model::Offset;
use ferrolog_model::{BatchBuilder, TimestampMs};
use ferrolog_storage::{Durability, Log, LogConfig, LogContext, ReadRequest};
use glommio::{LocalExecutorBuilder, Placement};
use std::future::Future;
use std::path::Path;
use std::rc::Rc;

/// Runs `f` on a fresh glommio executor sized for an 8 MiB memlock limit.
///
/// A watchdog thread reports a stall: if the executor's thread gets no CPU time for a
/// minute (`FERROLOG_STALL_REPORT_S`) while `f` runs, it prints what the process is waiting
/// for (its threads' wait channels, its io_uring rings' heads and tails, the block devices'
/// requests in flight) to stderr, once per period. It does not interfere: no timer or
/// wake-up is added to the executor, whose sleeps are what it watches. (On 2026-12-05 one
/// run of model_prop took 183 s instead of 3: its executor was parked with nothing in flight
/// and went on when a debugger attached, which interrupts that sleep. Not reproduced since.)
pub fn run<T, F: Future<Output = T>>(f: impl FnOnce() -> F) -> T {
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(
            std::env::var("IOMEM")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 20),
        )
        .make()
        .expect("executor");
    let _watchdog = Watchdog::start();
    ex.run(f())
}

/// How long the executor may go without CPU time before the watchdog reports;
/// `FERROLOG_STALL_REPORT_S` overrides it.
fn stall_report_after() -> std::time::Duration {
    let secs = std::env::var("FERROLOG_STALL_REPORT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    std::time::Duration::from_secs(secs)
}

/// See [`run`]. Stops when dropped.
struct Watchdog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let report_after = stall_report_after();
        let thread = std::thread::spawn(move || {
            let cpu = || {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            };
            let mut last = cpu();
            let mut since = std::time::Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let now = cpu();
                if now != last {
                    last = now;
                    since = std::time::Instant::now();
                } else if since.elapsed() >= report_after {
                    eprintln!("{}", stall_report(tid, since.elapsed()));
                    since = std::time::Instant::now();
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stall_report(tid: i32, idle: std::time::Duration) -> String {
    let read = |p: String| std::fs::read_to_string(&p).unwrap_or_else(|e| format!("({p}: {e})"));
    let mut out = format!(
        "STALL: the executor thread {tid} got no CPU time for {idle:?}; what the process waits for:\n"
    );
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let p = t.path();
            out += &format!(
                "  thread {} {}: wchan {}\n",
                t.file_name().to_string_lossy(),
                read(format!("{}/comm", p.display())).trim(),
                read(format!("{}/wchan", p.display())).trim()
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if target.to_string_lossy().contains("io_uring") {
                let info = read(format!("/proc/self/fdinfo/{}", fd.file_name().to_string_lossy()));
                let heads: Vec<&str> = info
                    .lines()
                    .filter(|l| {
                        [
                            "SqHead",
                            "SqTail",
                            "CachedSqHead",
                            "CqHead",
                            "CqTail",
                            "CachedCqTail",
                            "SQEs",
                            "CQEs",
                        ]
                        .iter()
                        .any(|k| l.starts_with(k))
                    })
                    .collect();
                out += &format!(
                    "  io_uring fd {}: {}\n",
                    fd.file_name().to_string_lossy(),
                    heads.join(", ")
                );
            }
        }
    }
    if let Ok(blocks) = std::fs::read_dir("/sys/block") {
        for b in blocks.flatten() {
            let name = b.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let inflight = read(format!("{}/inflight", b.path().display()));
            out += &format!(
                "  /sys/block/{name} inflight (reads writes): {}\n",
                inflight.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    out
}

/// An uncompressed batch of `records` records of `value_bytes` each, all at `ts`.
pub fn batch(records: usize, value_bytes: usize, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new(TimestampMs(ts));
    for i in 0..records {
        let value = vec![(i % 251) as u8; value_bytes];
        b = b.record(TimestampMs(ts), Some(format!("k{i}").as_bytes()), &value);
    }
    Bytes::from(b.build())
}

pub fn small_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        durability,
        write_chunk_bytes: 16 << 10,
        ..LogConfig::default()
    }
}

pub async fn open(dir: &Path, config: LogConfig) -> Rc<Log> {
    let ctx = LogContext::new(1 << 20);
    Log::open(dir, config, ctx).await.expect("open").0
}

/// Every batch from `from` to the committed end, read 8 KiB at a time.
pub async fn read_all(log: &Log, from: Offset) -> Vec<Bytes> {
    read_all_with(log, from, 8192).await
}

/// Every batch from `from` to the committed end, in reads of up to
/// `max_bytes`; each batch must verify and start where the previous one ended
/// (the first one must contain `from`).
pub async fn read_all_with(log: &Log, from: Offset, max_bytes: usize) -> Vec<Bytes> {
    let end = log.offsets().durable_next;
    let mut out: Vec<Bytes> = Vec::new();
    let mut next = from;
    while next < end {
        let r = log
            .read(ReadRequest {
                offset: next,
                max_bytes,
                end: None,
            })
            .await
            .unwrap_or_else(|e| panic!("read at {next}: {e}"));
        assert!(
            !r.batches.is_empty(),
            "read at {next} returned nothing before end {end}"
        );
        for b in r.batches {
            let h = ferrolog_model::BatchHeader::parse_verified(&b).expect("served batch verifies");
            if out.is_empty() {
                assert!(
                    h.base_offset <= next && h.last_offset() >= next,
                    "first batch does not hold {next}"
                );
            } else {
                assert_eq!(h.base_offset, next, "batches do not follow on");
            }
            next = h.last_offset().plus(1);
            out.push(b);
        }
    }
    out
}

/// The bytes of a batch with its broker-assigned base offset zeroed, to
/// compare with what the producer sent.
pub fn strip_offset(b: &Bytes) -> Vec<u8> {
    let mut v = b.to_vec();
    ferrolog_model::batch::set_base_offset(&mut v, Offset(0));
    v
}

/// A fresh directory on the work disk (O_DIRECT capable; tmpfs is not).
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir")
}

/// SplitMix64: a small seeded generator, so runs are reproducible without an
/// extra dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi, "empty range {lo}..{hi}");
        lo + self.next_u64() % (hi - lo)
    }

    /// `n` bytes, none of them zero.
    pub fn non_zero_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.range(1, 256) as u8).collect()
    }
}

/// An uncompressed batch with one record per entry of `timestamps`, each
/// value `value_bytes` long and filled from `seed` so that batches differ.
/// The base timestamp is the first record's, as Kafka producers set it, so
/// the batch's max timestamp is the newest record's.
pub fn timed_batch(timestamps: &[i64], value_bytes: usize, seed: u64) -> Bytes {
    let mut b = BatchBuilder::new(TimestampMs(timestamps[0]));
    for (i, &ts) in timestamps.iter().enumerate() {
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(i as u64));
        let value: Vec<u8> = (0..value_bytes).map(|_| rng.next_u64() as u8).collect();
        b = b.record(TimestampMs(ts), Some(format!("s{seed}-{i}").as_bytes()), &value);
    }
    Bytes::from(b.build())
}

/// The answer `Log::offset_for_timestamp` must give for a log holding
/// `batches` (base offset and record timestamps, in offset order): the first
/// batch whose newest record is at least `ts`, and in it the first record
/// that is.
pub fn model_offset_for_timestamp<'a>(
    batches: impl IntoIterator<Item = (Offset, &'a [i64])>,
    ts: i64,
) -> Option<Offset> {
    batches.into_iter().find_map(|(base, stamps)| {
        if stamps.iter().copied().max()? < ts {
            return None;
        }
        let i = stamps.iter().position(|&t| t >= ts).expect("max >= ts");
        Some(base.plus(i as i64))
    })
}

/// File positions and headers of the whole, CRC-valid batches at the start of
/// a segment file, read with plain (buffered) I/O.
pub fn file_batches(path: &Path) -> Vec<(u64, ferrolog_model::BatchHeader)> {
    let data = std::fs::read(path).expect("read segment file");
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Ok(h) = ferrolog_model::BatchHeader::parse(&data[pos..]) {
        let end = pos + h.total_bytes();
        if end > data.len() || ferrolog_model::BatchHeader::parse_verified(&data[pos..end]).is_err() {
            break;
        }
        out.push((pos as u64, h));
        pos = end;
    }
    out
}

/// The `.log` files of a log directory, oldest segment first.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(ferrolog_storage::parse_log_file_name)
                .is_some()
        })
        .collect();
    files.sort();
    files
}

/// Copies every file of the log directory `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("list log dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
        }
    }
}

/// Sets the length of the file at `path` (a torn or padded write on disk).
pub fn set_file_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for set_len")
        .set_len(len)
        .expect("set_len");
}

/// Appends raw bytes to the file at `path`.
pub fn append_to_file(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append")
        .write_all(bytes)
        .expect("append bytes");
}

/// XORs one byte of the file at `path`.
pub fn flip_byte(path: &Path, pos: u64, mask: u8) {
    let mut data = std::fs::read(path).expect("read file");
    data[pos as usize] ^= mask;
    std::fs::write(path, data).expect("write file");
}
