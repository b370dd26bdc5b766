//! Storage bench: the physical limits of the disk under a directory and the
//! ferrolog appender measured against them, in one run on one file system.
//!
//! ```text
//! cargo run --release -p ferrolog-benches --bin storage_bench -- [--quick] [--json PATH]
//! ```
//!
//! Env: `FERROLOG_BENCH_DIR` (parent of the scratch directory; default the
//! system temp dir), `FERROLOG_BENCH_CPU` (`unbound` or a CPU; default 0),
//! `FERROLOG_BENCH_SPIN_US` (the executor's spin before parking; default 0).
//! Prints tables and writes JSON (default `target/storage_bench.json`).
//! Every file it writes lives in a temp dir removed at the end.

use bytes::Bytes;
use ferrolog_benches::{
    bench_dir, executor, fmt_us, fs_description, load_average, make_batch, mb_per_s, new_histogram,
    placement_name, record, run_window, AlignedBuf, CpuSnapshot, Json, Latency, BLOCK,
};
use ferrolog_storage::{Durability, Log, LogConfig, LogContext};
use glommio::io::OpenOptions;
use hdrhistogram::Histogram;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Warm-up iterations before each latency loop, not recorded.
const WARMUP: usize = 50;

struct Sizes {
    seq_bytes: usize,
    write_samples: usize,
    sync_samples: usize,
    append_bytes: usize,
    append_samples: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                seq_bytes: 128 * MIB,
                write_samples: 1000,
                sync_samples: 500,
                append_bytes: 128 * MIB,
                append_samples: 1000,
            }
        } else {
            Sizes {
                seq_bytes: 512 * MIB,
                write_samples: 5000,
                sync_samples: 3000,
                append_bytes: 512 * MIB,
                append_samples: 5000,
            }
        }
    }
}

fn gio(e: glommio::GlommioError<()>) -> io::Error {
    e.into()
}

fn sio(e: ferrolog_storage::StorageError) -> io::Error {
    io::Error::other(e.to_string())
}

// ---------------------------------------------------------------------------
// Physical limits

/// How the file a sequential write run goes to starts out.
#[derive(Clone, Copy, PartialEq)]
enum SeqFile {
    /// New and empty: every write extends it (what a log segment sees).
    Fresh,
    /// New, with its blocks reserved by `fallocate` (size set) first.
    Fallocated,
    /// The file the previous run wrote, overwritten in place.
    Overwrite,
}

#[derive(Clone, Copy)]
struct SeqCase {
    file: SeqFile,
    chunk: usize,
    depth: usize,
    /// `fdatasync` after every this many bytes (writes drain first).
    sync_every: Option<usize>,
    /// With `sync_every`: the next group's writes start while the previous
    /// group's `fdatasync` runs (at most one in flight), as a pipelined log
    /// flushes.
    overlap_sync: bool,
}

impl SeqCase {
    fn name(&self) -> String {
        format!(
            "{} KiB writes, {} in flight, {}{}",
            self.chunk >> 10,
            self.depth,
            match self.file {
                SeqFile::Fresh => "fresh file",
                SeqFile::Fallocated => "fallocated file",
                SeqFile::Overwrite => "overwriting written file",
            },
            self.sync_every
                .map(|n| format!(
                    ", fdatasync every {} MiB{}",
                    n / MIB,
                    if self.overlap_sync { " overlapped" } else { "" }
                ))
                .unwrap_or_default()
        )
    }
}

/// Sequential O_DIRECT writes through glommio. Returns MB/s.
async fn raw_seq_write(path: &Path, total: usize, case: SeqCase) -> io::Result<f64> {
    if case.file != SeqFile::Overwrite {
        let _ = std::fs::remove_file(path);
    }
    let file = OpenOptions::new()
        .write(true)
        .create(case.file != SeqFile::Overwrite)
        .dma_open(path)
        .await
        .map_err(gio)?;
    if case.file == SeqFile::Fallocated {
        file.pre_allocate(total as u64, false).await.map_err(gio)?;
    }
    let file = Rc::new(file);
    let mut buf = file.alloc_dma_buffer(case.chunk);
    for (i, b) in buf.as_bytes_mut().iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    let buf = Rc::new(buf);
    let group = case.sync_every.unwrap_or(total);
    let chunk = case.chunk;
    let start = Instant::now();
    let mut done = 0;
    let mut syncing: Option<glommio::task::JoinHandle<io::Result<()>>> = None;
    while done < total {
        let n = group.min(total - done);
        run_window(n / chunk, case.depth, |i| {
            let file = file.clone();
            let buf = buf.clone();
            async move {
                let n = file
                    .write_rc_at(buf, (done + i * chunk) as u64)
                    .await
                    .map_err(gio)?;
                if n != chunk {
                    return Err(io::Error::other(format!("short write {n}")));
                }
                Ok::<_, io::Error>(())
            }
        })
        .await?;
        if case.sync_every.is_some() {
            if let Some(previous) = syncing.take() {
                previous
                    .await
                    .unwrap_or_else(|| Err(io::Error::other("sync task cancelled")))?;
            }
            if case.overlap_sync {
                let file = file.clone();
                syncing =
                    Some(glommio::spawn_local(async move { file.fdatasync().await.map_err(gio) }).detach());
            } else {
                file.fdatasync().await.map_err(gio)?;
            }
        }
        done += n;
    }
    if let Some(last) = syncing.take() {
        last.await
            .unwrap_or_else(|| Err(io::Error::other("sync task cancelled")))?;
    }
    let elapsed = start.elapsed();
    Rc::try_unwrap(file)
        .map_err(|_| io::Error::other("file still shared"))?
        .close()
        .await
        .map_err(gio)?;
    Ok(mb_per_s(total as u64, elapsed))
}

/// How the glommio latency loop makes a write durable.
#[derive(Clone, Copy, PartialEq)]
enum Sync {
    None,
    /// `fdatasync` after each write.
    Fdatasync,
    /// The file is opened `O_DSYNC`: each write is durable when it completes.
    Dsync,
}

#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    /// Every write extends a fresh file by one block.
    Append,
    /// Writes cycle over the first 1 MiB of an already-written file.
    Overwrite,
}

impl Pattern {
    fn pos(self, i: usize) -> u64 {
        match self {
            Pattern::Append => (i * BLOCK) as u64,
            Pattern::Overwrite => ((i % (MIB / BLOCK)) * BLOCK) as u64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pattern::Append => "append",
            Pattern::Overwrite => "overwrite",
        }
    }
}

fn prepare_file(path: &Path, pattern: Pattern) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    if pattern == Pattern::Overwrite {
        std::fs::write(path, vec![0u8; MIB])?;
        std::fs::File::open(path)?.sync_all()?;
    }
    Ok(())
}

/// One 4 KiB `pwrite` on an O_DIRECT fd at a time, optionally each followed
/// by `fdatasync` — plain syscalls, no runtime: the floor.
struct RawWriter {
    file: std::fs::File,
    path: PathBuf,
    buf: AlignedBuf,
    pattern: Pattern,
    sync: bool,
    next: usize,
}

impl RawWriter {
    fn open(path: &Path, pattern: Pattern, sync: bool) -> io::Result<RawWriter> {
        prepare_file(path, pattern)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            buf: AlignedBuf::new(BLOCK),
            pattern,
            sync,
            next: 0,
        })
    }

    /// Runs `n` writes, recording each one's latency into `h` if given.
    fn run(&mut self, n: usize, mut h: Option<&mut Histogram<u64>>) -> io::Result<()> {
        for _ in 0..n {
            let t = Instant::now();
            let written = self
                .file
                .write_at(self.buf.as_slice(), self.pattern.pos(self.next))?;
            if written != BLOCK {
                return Err(io::Error::other(format!("short write {written}")));
            }
            if self.sync {
                self.file.sync_data()?;
            }
            self.next += 1;
            if let Some(h) = h.as_deref_mut() {
                record(h, t.elapsed());
            }
        }
        Ok(())
    }

    fn remove(self) -> io::Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.path)
    }
}

fn libc_write_loop(path: &Path, samples: usize, pattern: Pattern, sync: bool) -> io::Result<Latency> {
    let mut w = RawWriter::open(path, pattern, sync)?;
    w.run(WARMUP, None)?;
    let mut h = new_histogram();
    w.run(samples, Some(&mut h))?;
    w.remove()?;
    Ok(Latency::from_histogram(&h))
}

/// The same loop through glommio (io_uring, executor wake-up included).
async fn glommio_write_loop(
    path: &Path,
    samples: usize,
    pattern: Pattern,
    sync: Sync,
) -> io::Result<Latency> {
    prepare_file(path, pattern)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(if sync == Sync::Dsync { libc::O_DSYNC } else { 0 })
        .dma_open(path)
        .await
        .map_err(gio)?;
    let mut buf = file.alloc_dma_buffer(BLOCK);
    buf.as_bytes_mut().fill(7);
    let buf = Rc::new(buf);
    let mut h = new_histogram();
    for i in 0..samples + WARMUP {
        let t = Instant::now();
        let n = file.write_rc_at(buf.clone(), pattern.pos(i)).await.map_err(gio)?;
        if n != BLOCK {
            return Err(io::Error::other(format!("short write {n}")));
        }
        if sync == Sync::Fdatasync {
            file.fdatasync().await.map_err(gio)?;
        }
        if i >= WARMUP {
            record(&mut h, t.elapsed());
        }
    }
    file.close().await.map_err(gio)?;
    std::fs::remove_file(path)?;
    Ok(Latency::from_histogram(&h))
}

// ---------------------------------------------------------------------------
// The appender

#[derive(Clone)]
struct AppendCase {
    durability: Durability,
    batch_bytes: usize,
    window: usize,
    segment_bytes: u64,
    chunk_bytes: usize,
    depth: usize,
    /// Hand `append` uniquely owned batches built before the clock starts, so
    /// it need not copy them (it copies a shared `Bytes` to rewrite the offset).
    unique: bool,
}

impl AppendCase {
    fn config(&self) -> LogConfig {
        let d = LogConfig::default();
        LogConfig {
            durability: self.durability,
            segment_bytes: self.segment_bytes,
            write_chunk_bytes: self.chunk_bytes,
            write_depth: self.depth,
            // Cover the window, so back-pressure is not what is measured.
            max_pending_bytes: d.max_pending_bytes.max(2 * self.window * self.batch_bytes),
            ..d
        }
    }

    fn is_default_io(&self) -> bool {
        let d = LogConfig::default();
        self.chunk_bytes == d.write_chunk_bytes && self.depth == d.write_depth
    }

    fn label(&self) -> String {
        format!(
            "{} {} batches, {} in flight, seg {} MiB, chunk {} KiB x{}{}",
            self.durability,
            size_name(self.batch_bytes),
            self.window,
            self.segment_bytes >> 20,
            self.chunk_bytes >> 10,
            self.depth,
            if self.unique { ", unique batches" } else { "" }
        )
    }
}

fn size_name(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// A batch of ~1 KiB records totalling about `batch_bytes`.
fn record_batch(batch_bytes: usize) -> Bytes {
    // A 1000-byte value plus key and record framing is ~1 KiB per record.
    make_batch((batch_bytes / 1024).max(1), 1000, 1_700_000_000_000)
}

struct Throughput {
    mb_s: f64,
    bytes: u64,
    batches: usize,
    elapsed: Duration,
    /// CPU time of the executor thread over the run, as a share of the wall time.
    exec_cpu: f64,
    /// CPU time of the whole process (io_uring workers included), same scale.
    proc_cpu: f64,
}

/// User + system CPU time of this thread (`RUSAGE_THREAD`) or process.
fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: `ru` is a valid out-pointer for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn append_throughput(dir: &Path, case: &AppendCase, total: usize) -> io::Result<Throughput> {
    let _ = std::fs::remove_dir_all(dir);
    let (log, _) = Log::open(dir, case.config(), LogContext::new(64 * MIB))
        .await
        .map_err(sio)?;
    let template = record_batch(case.batch_bytes);
    let count = (total / template.len()).max(1);
    let mut unique: Vec<Option<Bytes>> = if case.unique {
        (0..count).map(|_| Some(Bytes::from(template.to_vec()))).collect()
    } else {
        Vec::new()
    };
    let (thread0, proc0) = (cpu_time(libc::RUSAGE_THREAD), cpu_time(libc::RUSAGE_SELF));
    let start = Instant::now();
    run_window(count, case.window, |i| {
        let log = log.clone();
        // By default a shared `Bytes`, like a batch sliced from a request buffer.
        let batch = match unique.get_mut(i) {
            Some(b) => b.take().expect("each batch is appended once"),
            None => template.clone(),
        };
        async move { log.append(batch).await }
    })
    .await
    .map_err(sio)?;
    let elapsed = start.elapsed();
    let exec_cpu = (cpu_time(libc::RUSAGE_THREAD) - thread0).as_secs_f64() / elapsed.as_secs_f64();
    let proc_cpu = (cpu_time(libc::RUSAGE_SELF) - proc0).as_secs_f64() / elapsed.as_secs_f64();
    let written = log.size_bytes();
    log.close().await.map_err(sio)?;
    drop(log);
    std::fs::remove_dir_all(dir)?;
    let bytes = (count * template.len()) as u64;
    assert_eq!(written, bytes, "log size differs from bytes appended");
    Ok(Throughput {
        mb_s: mb_per_s(bytes, elapsed),
        bytes,
        batches: count,
        elapsed,
        exec_cpu,
        proc_cpu,
    })
}

/// Blocks the latency runs are split into, alternating raw and ferrolog, so
/// drift in the machine hits both alike.
const BLOCKS: usize = 10;

/// Single-batch appends, one in flight (the time from `append` to its ack),
/// interleaved block by block with the matching raw loop: 4 KiB O_DIRECT
/// `pwrite`s appending to a file, each followed by `fdatasync` in fsync mode.
/// Returns (ferrolog, raw, batch length).
async fn append_latency(
    dir: &Path,
    raw_path: &Path,
    durability: Durability,
    samples: usize,
    raw_samples: usize,
) -> io::Result<(Latency, Latency, usize)> {
    let _ = std::fs::remove_dir_all(dir);
    let config = LogConfig {
        durability,
        segment_bytes: 1 << 30,
        ..LogConfig::default()
    };
    let (log, _) = Log::open(dir, config, LogContext::new(64 * MIB))
        .await
        .map_err(sio)?;
    let mut raw = RawWriter::open(raw_path, Pattern::Append, durability == Durability::Fsync)?;
    let batch = make_batch(1, 1000, 1_700_000_000_000);
    let mut h = new_histogram();
    let mut h_raw = new_histogram();
    raw.run(WARMUP, None)?;
    for _ in 0..WARMUP {
        log.append(batch.clone()).await.map_err(sio)?;
    }
    for block in 0..BLOCKS {
        let share = |total: usize| total / BLOCKS + usize::from(block < total % BLOCKS);
        raw.run(share(raw_samples), Some(&mut h_raw))?;
        for _ in 0..share(samples) {
            let b = batch.clone();
            let t = Instant::now();
            log.append(b).await.map_err(sio)?;
            record(&mut h, t.elapsed());
        }
    }
    raw.remove()?;
    log.close().await.map_err(sio)?;
    drop(log);
    std::fs::remove_dir_all(dir)?;
    Ok((
        Latency::from_histogram(&h),
        Latency::from_histogram(&h_raw),
        batch.len(),
    ))
}

// ---------------------------------------------------------------------------
// Report

struct BwRow {
    name: String,
    mb_s: f64,
    /// CPU cores busy outside this process during the measurement.
    others: f64,
}

struct LatRow {
    name: String,
    lat: Latency,
    others: f64,
}

struct AppendRow {
    case: AppendCase,
    result: Throughput,
    /// Throughput over the raw O_DIRECT bandwidth limit.
    ratio: f64,
    /// Mean of the raw runs (1 MiB writes, 1 in flight) just before and after.
    paired_raw: f64,
    ratio_paired: f64,
    /// fsync mode only: throughput over the paired durable raw bandwidth (the
    /// mean of raw runs of the same size with one fdatasync at the end, timed
    /// until it returns, just before and after).
    ratio_sync: Option<f64>,
    others: f64,
}

struct AppendLat {
    durability: Durability,
    batch_len: usize,
    lat: Latency,
    limit: Latency,
    /// p99 over the matching raw limit's p99.
    ratio: f64,
    others: f64,
}

struct Target {
    name: String,
    value: f64,
    bound: f64,
    /// True when the value must be at least the bound; else at most.
    at_least: bool,
}

impl Target {
    fn pass(&self) -> bool {
        if self.at_least {
            self.value >= self.bound
        } else {
            self.value <= self.bound
        }
    }
}

fn pass_word(p: bool) -> &'static str {
    if p {
        "PASS"
    } else {
        "MISS"
    }
}

struct Report {
    bw: Vec<BwRow>,
    raw_bw_limit: f64,
    raw_sync_bw: f64,
    /// Raw writes plus one fdatasync at the end: bytes on stable storage per second.
    raw_durable_bw: f64,
    lat: Vec<LatRow>,
    appends: Vec<AppendRow>,
    append_lat: Vec<AppendLat>,
    drift_bw: f64,
    targets: Vec<Target>,
    others_total: f64,
    load_before: f64,
    load_after: f64,
}

/// The appender cases the throughput target is judged on: 1 MiB batches,
/// default write settings, 1 GiB segments.
fn is_target_case(c: &AppendCase) -> bool {
    c.batch_bytes == MIB && c.segment_bytes == 1 << 30 && c.is_default_io() && !c.unique
}

fn seq(file: SeqFile, chunk: usize, depth: usize, sync_every: Option<usize>) -> SeqCase {
    SeqCase {
        file,
        chunk,
        depth,
        sync_every,
        overlap_sync: false,
    }
}

async fn run(dir: PathBuf, sizes: &Sizes) -> io::Result<Report> {
    let load_before = load_average();
    let whole = CpuSnapshot::now();
    ferrolog_storage::probe_direct_io(&dir).await.map_err(sio)?;
    let raw = dir.join("raw.dat");
    let t0 = Instant::now();
    let progress = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());

    progress("warm-up");
    raw_seq_write(&raw, 64 * MIB, seq(SeqFile::Fresh, MIB, 4, None)).await?;

    progress("raw sequential O_DIRECT writes");
    let sync_case = seq(SeqFile::Fresh, MIB, 4, Some(8 * MIB));
    let cases = [
        seq(SeqFile::Fresh, MIB, 1, None),
        seq(SeqFile::Fresh, MIB, 4, None),
        // Diagnostics: what the chunk size, extending the file and syncing cost.
        seq(SeqFile::Overwrite, MIB, 4, None),
        seq(SeqFile::Fresh, 256 << 10, 1, None),
        seq(SeqFile::Fresh, 256 << 10, 4, None),
        seq(SeqFile::Fallocated, MIB, 4, None),
        seq(SeqFile::Fallocated, 256 << 10, 4, None),
        SeqCase {
            overlap_sync: true,
            ..sync_case
        },
        // Durable bandwidth: the clock stops after one fdatasync at the end.
        seq(SeqFile::Fresh, MIB, 4, Some(sizes.seq_bytes)),
        sync_case,
    ];
    let mut bw = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        let snap = CpuSnapshot::now();
        let mb_s = raw_seq_write(&raw, sizes.seq_bytes, case).await?;
        let others = snap.others_cores();
        let name = if i < 2 {
            case.name()
        } else if case.sync_every == Some(sizes.seq_bytes) {
            format!(
                "(info) {} KiB writes, {} in flight, fresh file, one fdatasync at the end",
                case.chunk >> 10,
                case.depth
            )
        } else {
            format!("(info) {}", case.name())
        };
        eprintln!("          {name}: {mb_s:.1} MB/s");
        bw.push(BwRow { name, mb_s, others });
    }
    std::fs::remove_file(&raw)?;
    let raw_bw_limit = bw[0].mb_s.max(bw[1].mb_s);
    let raw_sync_bw = bw.last().map_or(f64::NAN, |r| r.mb_s);
    let raw_durable_bw = bw
        .iter()
        .find(|r| r.name.contains("one fdatasync at the end"))
        .map_or(f64::NAN, |r| r.mb_s);

    // The two LIMIT rows are measured later, interleaved with the appender's
    // latency runs; these are diagnostics.
    progress("raw 4 KiB write latency variants");
    let mut lat = Vec::new();
    let (w, s) = (sizes.write_samples, sizes.sync_samples);
    for (sync, n) in [(false, w), (true, s)] {
        let snap = CpuSnapshot::now();
        let l = libc_write_loop(&raw, n, Pattern::Overwrite, sync)?;
        lat.push(LatRow {
            name: format!("(info) pwrite{}, overwrite", if sync { "+fdatasync" } else { "" }),
            lat: l,
            others: snap.others_cores(),
        });
    }
    for (pattern, sync, n) in [
        (Pattern::Append, Sync::None, w),
        (Pattern::Overwrite, Sync::None, w),
        (Pattern::Append, Sync::Fdatasync, s),
        (Pattern::Append, Sync::Dsync, s),
    ] {
        let snap = CpuSnapshot::now();
        let l = glommio_write_loop(&raw, n, pattern, sync).await?;
        lat.push(LatRow {
            name: format!(
                "(info) glommio write_at{}, {}",
                match sync {
                    Sync::None => "",
                    Sync::Fdatasync => "+fdatasync",
                    Sync::Dsync => " on O_DSYNC file",
                },
                pattern.name()
            ),
            lat: l,
            others: snap.others_cores(),
        });
    }

    let log_dir = dir.join("log");
    let d = LogConfig::default();
    let mut cases = Vec::new();
    for durability in [Durability::Direct, Durability::Fsync] {
        let case = |batch_bytes, window, segment_bytes, chunk_bytes, depth, unique| AppendCase {
            durability,
            batch_bytes,
            window,
            segment_bytes,
            chunk_bytes,
            depth,
            unique,
        };
        let (dc, dd) = (d.write_chunk_bytes, d.write_depth);
        cases.extend([
            case(16 << 10, 32, 1 << 30, dc, dd, false),
            case(16 << 10, 32, 1 << 30, MIB, 4, false),
            case(MIB, 8, 1 << 30, dc, dd, false),
            case(MIB, 8, 1 << 30, MIB, 4, false),
            // Diagnostics: one write in flight; default 128 MiB segments;
            // batches `append` need not copy.
            case(MIB, 8, 1 << 30, MIB, 1, false),
            case(MIB, 8, d.segment_bytes, dc, dd, false),
            case(MIB, 8, 1 << 30, dc, dd, true),
        ]);
    }
    let mut appends = Vec::new();
    // Paired raw runs (1 MiB writes, 1 in flight, fresh file, same size) around
    // every case, because this machine's bandwidth drifts within seconds: a
    // case is compared with the mean of the runs just before and just after.
    let paired = |raw: PathBuf, bytes: usize| async move {
        let mb_s = raw_seq_write(&raw, bytes, seq(SeqFile::Fresh, MIB, 1, None)).await?;
        std::fs::remove_file(&raw)?;
        Ok::<f64, io::Error>(mb_s)
    };
    // fsync cases are also paired with durable raw runs: the same bytes with
    // one fdatasync at the end, timed until it returns.
    let paired_durable = |raw: PathBuf, bytes: usize| async move {
        let mb_s = raw_seq_write(&raw, bytes, seq(SeqFile::Fresh, MIB, 4, Some(bytes))).await?;
        std::fs::remove_file(&raw)?;
        Ok::<f64, io::Error>(mb_s)
    };
    let mut before = paired(raw.clone(), sizes.append_bytes).await?;
    let mut durable_before = None;
    for case in cases {
        progress(&format!("append throughput: {}", case.label()));
        if case.durability == Durability::Fsync && durable_before.is_none() {
            durable_before = Some(paired_durable(raw.clone(), sizes.append_bytes).await?);
        }
        let snap = CpuSnapshot::now();
        let result = append_throughput(&log_dir, &case, sizes.append_bytes).await?;
        let others = snap.others_cores();
        let after = paired(raw.clone(), sizes.append_bytes).await?;
        let paired_raw = (before + after) / 2.0;
        before = after;
        let ratio = result.mb_s / raw_bw_limit;
        let ratio_sync = match (case.durability, durable_before) {
            (Durability::Fsync, Some(durable)) => {
                let after = paired_durable(raw.clone(), sizes.append_bytes).await?;
                durable_before = Some(after);
                Some(result.mb_s / ((durable + after) / 2.0))
            }
            _ => None,
        };
        let ratio_paired = result.mb_s / paired_raw;
        appends.push(AppendRow {
            case,
            result,
            ratio,
            paired_raw,
            ratio_paired,
            ratio_sync,
            others,
        });
    }

    let mut append_lat = Vec::new();
    for durability in [Durability::Direct, Durability::Fsync] {
        progress(&format!(
            "append latency, interleaved with the raw loop: {durability}"
        ));
        let raw_samples = match durability {
            Durability::Direct => sizes.write_samples,
            Durability::Fsync => sizes.sync_samples,
        };
        let snap = CpuSnapshot::now();
        let (l, limit, batch_len) =
            append_latency(&log_dir, &raw, durability, sizes.append_samples, raw_samples).await?;
        let others = snap.others_cores();
        lat.insert(
            append_lat.len(),
            LatRow {
                name: match durability {
                    Durability::Direct => "pwrite, append [LIMIT for direct]".into(),
                    Durability::Fsync => "pwrite+fdatasync, append [LIMIT for fsync]".into(),
                },
                lat: limit,
                others,
            },
        );
        append_lat.push(AppendLat {
            durability,
            batch_len,
            lat: l,
            limit,
            ratio: l.p99_us / limit.p99_us,
            others,
        });
    }

    progress("raw sequential O_DIRECT writes again (drift check)");
    let drift_bw = raw_seq_write(&raw, sizes.seq_bytes, seq(SeqFile::Fresh, MIB, 4, None)).await?;
    std::fs::remove_file(&raw)?;
    progress("done");

    let mut targets = Vec::new();
    for row in &appends {
        if is_target_case(&row.case) {
            targets.push(Target {
                name: format!(
                    "{} 1 MiB batches >= 80% of raw O_DIRECT bandwidth (paired)",
                    row.case.durability
                ),
                value: row.ratio_paired,
                bound: 0.8,
                at_least: true,
            });
            if let Some(ratio) = row.ratio_sync {
                // What a durable writer can reach on this disk: what the
                // host or device must write back is paid by fdatasync.
                targets.push(Target {
                    name: "(fsync 1 MiB batches vs durable raw bandwidth, paired)".into(),
                    value: ratio,
                    bound: 0.8,
                    at_least: true,
                });
            }
        }
    }
    for a in &append_lat {
        let (name, bound) = match a.durability {
            Durability::Direct => ("direct single-batch p99 <= 1.5x raw 4K O_DIRECT write p99", 1.5),
            Durability::Fsync => ("fsync single-batch p99 <= 1.2x raw 4K write+fdatasync p99", 1.2),
        };
        targets.push(Target {
            name: name.into(),
            value: a.ratio,
            bound,
            at_least: false,
        });
    }

    Ok(Report {
        bw,
        raw_bw_limit,
        raw_sync_bw,
        raw_durable_bw,
        lat,
        appends,
        append_lat,
        drift_bw,
        targets,
        others_total: whole.others_cores(),
        load_before,
        load_after: load_average(),
    })
}

fn print_report(r: &Report, header: &str) {
    println!("{header}");
    println!(
        "load average before {:.2}, after {:.2}; CPU busy outside the bench over the run: {:.2} cores",
        r.load_before, r.load_after, r.others_total
    );
    println!(
        "(\"other CPU\" = cores busy outside this process during that row, kernel I/O threads included)"
    );
    println!();
    println!("Physical limits: sequential bandwidth (MB = 10^6 bytes)");
    println!(
        "| {:<72} | {:>8} | {:>9} |",
        "raw O_DIRECT sequential writes (glommio DmaFile::write_at)", "MB/s", "other CPU"
    );
    println!("|{:-<74}|{:->10}|{:->11}|", "", "", "");
    for row in &r.bw {
        println!("| {:<72} | {:>8.1} | {:>9.2} |", row.name, row.mb_s, row.others);
    }
    println!(
        "| {:<72} | {:>8.1} | {:>9} |",
        "LIMIT: better of the first two", r.raw_bw_limit, ""
    );
    println!(
        "| {:<72} | {:>8.1} | {:>9} |",
        "(drift check) 1024 KiB writes, 4 in flight, fresh file, at the end", r.drift_bw, ""
    );
    println!();
    println!("Physical limits: 4 KiB write latency, one in flight (µs)");
    println!(
        "| {:<46} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9} |",
        "measurement", "p50", "p99", "p99.9", "max", "samples", "other CPU"
    );
    println!(
        "|{:-<48}|{:->10}|{:->10}|{:->10}|{:->10}|{:->9}|{:->11}|",
        "", "", "", "", "", "", ""
    );
    for row in &r.lat {
        println!(
            "| {:<46} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9.2} |",
            row.name,
            fmt_us(row.lat.p50_us),
            fmt_us(row.lat.p99_us),
            fmt_us(row.lat.p999_us),
            fmt_us(row.lat.max_us),
            row.lat.samples,
            row.others
        );
    }
    println!();
    println!("ferrolog appender: throughput (1 KiB records; MB = 10^6 bytes)");
    println!(
        "| {:<6} | {:>6} | {:>9} | {:>8} | {:>11} | {:>7} | {:>7} | {:>10} | {:>9} | {:>8} | {:>11} | {:>8} | {:>8} | {:>9} |",
        "mode",
        "batch",
        "in flight",
        "segment",
        "chunk x dep",
        "batches",
        "MB/s",
        "paired raw",
        "vs paired",
        "vs LIMIT",
        "vs durable",
        "exec CPU",
        "proc CPU",
        "other CPU"
    );
    println!(
        "|{:-<8}|{:->8}|{:->11}|{:->10}|{:->13}|{:->9}|{:->9}|{:->12}|{:->11}|{:->10}|{:->13}|{:->10}|{:->10}|{:->11}|",
        "", "", "", "", "", "", "", "", "", "", "", "", "", ""
    );
    for row in &r.appends {
        let c = &row.case;
        println!(
            "| {:<6} | {:>6} | {:>9} | {:>8} | {:>11} | {:>7} | {:>7.1} | {:>10.1} | {:>8.0}% | {:>7.0}% | {:>11} | {:>7.0}% | {:>7.0}% | {:>9.2} |",
            c.durability.to_string(),
            size_name(c.batch_bytes),
            c.window,
            format!("{} MiB", c.segment_bytes >> 20),
            format!("{}K x{}", c.chunk_bytes >> 10, c.depth),
            if c.unique { "unique" } else { "shared" },
            row.result.mb_s,
            row.paired_raw,
            row.ratio_paired * 100.0,
            row.ratio * 100.0,
            row.ratio_sync.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "-".into()),
            row.result.exec_cpu * 100.0,
            row.result.proc_cpu * 100.0,
            row.others
        );
    }
    println!("(paired raw = 1 MiB O_DIRECT writes, 1 in flight, fresh file, same size, mean of the runs just before and just after the row; vs LIMIT = / {:.1} MB/s; vs durable = / mean of raw runs of the same size with one fdatasync at the end, just before and after the row; at the start: {:.1} MB/s)", r.raw_bw_limit, r.raw_durable_bw);
    println!("(batches: shared = one `Bytes` cloned per append, which `append` copies; unique = pre-built owned copies)");
    println!("(exec CPU = executor thread CPU time / wall time; proc CPU = whole process, io_uring workers included)");
    println!();
    println!("ferrolog appender: single-batch latency, one in flight (µs)");
    println!(
        "| {:<7} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9} | {:>11} | {:>9} |",
        "mode", "batch", "p50", "p99", "p99.9", "max", "samples", "limit p99", "p99 / limit", "other CPU"
    );
    println!(
        "|{:-<9}|{:->8}|{:->10}|{:->10}|{:->10}|{:->10}|{:->9}|{:->11}|{:->13}|{:->11}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for a in &r.append_lat {
        println!(
            "| {:<7} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} | {:>9} | {:>10.2}x | {:>9.2} |",
            a.durability.to_string(),
            format!("{} B", a.batch_len),
            fmt_us(a.lat.p50_us),
            fmt_us(a.lat.p99_us),
            fmt_us(a.lat.p999_us),
            fmt_us(a.lat.max_us),
            a.lat.samples,
            fmt_us(a.limit.p99_us),
            a.ratio,
            a.others
        );
    }
    println!("(limit: direct = raw 4K O_DIRECT pwrite append p99; fsync = raw 4K pwrite+fdatasync append p99; each measured interleaved with the ferrolog loop in {BLOCKS} alternating blocks)");
    println!();
    println!("Targets (throughput judged against the paired raw runs; see below for the run-wide LIMIT)");
    for t in &r.targets {
        let value = if t.at_least {
            format!("{:.0}% (need >= {:.0}%)", t.value * 100.0, t.bound * 100.0)
        } else {
            format!("{:.2}x (need <= {:.1}x)", t.value, t.bound)
        };
        println!("  {:<4}  {:<62} {}", pass_word(t.pass()), t.name, value);
    }
    for row in r.appends.iter().filter(|a| is_target_case(&a.case)) {
        println!(
            "  {:<4}  {:<62} {:.0}% (need >= 80%)",
            pass_word(row.ratio >= 0.8),
            format!(
                "({} 1 MiB batches vs the run-wide LIMIT {:.0} MB/s)",
                row.case.durability, r.raw_bw_limit
            ),
            row.ratio * 100.0
        );
    }
}

fn report_json(r: &Report, meta: Vec<(&str, Json)>) -> Json {
    let mut fields: Vec<(String, Json)> = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    fields.push(("load_average_before".into(), Json::Num(r.load_before)));
    fields.push(("load_average_after".into(), Json::Num(r.load_after)));
    fields.push(("other_cpu_cores_whole_run".into(), Json::Num(r.others_total)));
    fields.push((
        "physical_bandwidth_mb_s".into(),
        Json::Arr(
            r.bw.iter()
                .map(|b| {
                    Json::obj([
                        ("name", Json::str(&b.name)),
                        ("mb_s", Json::Num(b.mb_s)),
                        ("other_cpu_cores", Json::Num(b.others)),
                    ])
                })
                .collect(),
        ),
    ));
    fields.push(("raw_bandwidth_limit_mb_s".into(), Json::Num(r.raw_bw_limit)));
    fields.push((
        "raw_bandwidth_with_fdatasync_every_8mib_mb_s".into(),
        Json::Num(r.raw_sync_bw),
    ));
    fields.push(("raw_durable_bandwidth_mb_s".into(), Json::Num(r.raw_durable_bw)));
    fields.push(("drift_check_mb_s".into(), Json::Num(r.drift_bw)));
    fields.push((
        "physical_latency".into(),
        Json::Arr(
            r.lat
                .iter()
                .map(|l| {
                    Json::obj([
                        ("name", Json::str(&l.name)),
                        ("latency", l.lat.into()),
                        ("other_cpu_cores", Json::Num(l.others)),
                    ])
                })
                .collect(),
        ),
    ));
    fields.push((
        "append_throughput".into(),
        Json::Arr(
            r.appends
                .iter()
                .map(|a| {
                    let c = &a.case;
                    Json::obj([
                        ("durability", Json::str(c.durability.to_string())),
                        ("batch_bytes", Json::Num(c.batch_bytes as f64)),
                        ("in_flight", Json::Num(c.window as f64)),
                        ("segment_bytes", Json::Num(c.segment_bytes as f64)),
                        ("write_chunk_bytes", Json::Num(c.chunk_bytes as f64)),
                        ("write_depth", Json::Num(c.depth as f64)),
                        ("unique_batches", Json::Bool(c.unique)),
                        ("bytes", Json::Num(a.result.bytes as f64)),
                        ("batches", Json::Num(a.result.batches as f64)),
                        ("seconds", Json::Num(a.result.elapsed.as_secs_f64())),
                        ("mb_s", Json::Num(a.result.mb_s)),
                        ("ratio_to_raw", Json::Num(a.ratio)),
                        ("paired_raw_mb_s", Json::Num(a.paired_raw)),
                        ("ratio_to_paired_raw", Json::Num(a.ratio_paired)),
                        ("ratio_to_raw_durable", a.ratio_sync.map_or(Json::Null, Json::Num)),
                        ("exec_cpu_share", Json::Num(a.result.exec_cpu)),
                        ("proc_cpu_share", Json::Num(a.result.proc_cpu)),
                        ("other_cpu_cores", Json::Num(a.others)),
                    ])
                })
                .collect(),
        ),
    ));
    fields.push((
        "append_latency".into(),
        Json::Arr(
            r.append_lat
                .iter()
                .map(|a| {
                    Json::obj([
                        ("durability", Json::str(a.durability.to_string())),
                        ("batch_bytes", Json::Num(a.batch_len as f64)),
                        ("latency", a.lat.into()),
                        ("limit_p99_us", Json::Num(a.limit.p99_us)),
                        ("p99_ratio_to_limit", Json::Num(a.ratio)),
                        ("other_cpu_cores", Json::Num(a.others)),
                    ])
                })
                .collect(),
        ),
    ));
    fields.push((
        "targets".into(),
        Json::Arr(
            r.targets
                .iter()
                .map(|t| {
                    Json::obj([
                        ("name", Json::str(&t.name)),
                        ("value", Json::Num(t.value)),
                        ("bound", Json::Num(t.bound)),
                        ("pass", Json::Bool(t.pass())),
                    ])
                })
                .collect(),
        ),
    ));
    Json::Obj(fields)
}

fn main() -> io::Result<()> {
    let mut quick = false;
    let mut json_path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/storage_bench.json"
    ));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => {
                json_path = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| io::Error::other("--json needs a path"))?;
            }
            "-h" | "--help" => {
                println!("usage: storage_bench [--quick] [--json PATH]");
                return Ok(());
            }
            // `cargo bench` passes --bench; ignore it and other flags.
            other if other.starts_with("--") => {}
            other => return Err(io::Error::other(format!("unexpected argument {other:?}"))),
        }
    }
    let sizes = Sizes::new(quick);
    let tmp = bench_dir()?;
    let dir = tmp.path().to_path_buf();
    let fs = fs_description(&dir);
    let header = format!(
        "storage_bench ({} mode) in {} ({fs}), executor on CPU {}",
        if quick { "quick" } else { "full" },
        dir.display(),
        placement_name()
    );
    eprintln!("{header}");
    let ex = executor()?;
    let report = ex.run(run(dir.clone(), &sizes))?;
    print_report(&report, &header);
    let meta = vec![
        ("mode", Json::str(if quick { "quick" } else { "full" })),
        ("dir", Json::str(dir.display().to_string())),
        ("file_system", Json::str(fs)),
        ("cpu", Json::str(placement_name())),
        (
            "unix_time",
            Json::Num(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            ),
        ),
    ];
    let json = report_json(&report, meta);
    if let Some(parent) = json_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&json_path, format!("{json}\n"))?;
    println!();
    println!("JSON written to {}", json_path.display());
    drop(tmp);
    Ok(())
}
