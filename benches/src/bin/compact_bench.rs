//! Log compaction benchmark (docs/benchmarks.md, "Log compaction").
//!
//! On one glommio executor, in a directory of the work disk:
//! 1. the physical limits of this run: sequential O_DIRECT write (1 MiB
//!    writes, then fdatasync) and read of a file the size of the log;
//! 2. compaction throughput: a log of keyed batches (`--log-mib`, 8 MiB
//!    segments, `--keys` keys) is compacted in one pass; MB/s of segments
//!    rewritten (their size before) and of segment bytes read;
//! 3. its effect on produce latency: single 1 KiB batches appended one at a
//!    time (`direct` durability, one every `--gap-us`) to another log of the
//!    same executor, first alone, then while a second copy of the keyed log
//!    is compacted; p50/p99/p99.9 of each.
//!
//! usage: compact_bench [--log-mib N] [--keys N] [--gap-us N] [--io-limit-mbps N]
//! (`--io-limit-mbps`: the compactor's I/O rate limit, 0 = none)

use bytes::Bytes;
use ferrolog_model::{BatchBuilder, TimestampMs};
use ferrolog_storage::{CompactionConfig, Durability, Log, LogConfig, LogContext};
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::cell::Cell;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const RECORDS_PER_BATCH: usize = 16;
const VALUE_BYTES: usize = 1024;

fn gio(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::other(e.to_string())
}

fn sio(e: ferrolog_storage::StorageError) -> io::Error {
    io::Error::other(e.to_string())
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

struct Args {
    log_mib: usize,
    keys: u64,
    gap_us: u64,
    io_limit_mbps: u64,
}

fn args() -> io::Result<Args> {
    let mut a = Args {
        log_mib: 128,
        keys: 1000,
        gap_us: 500,
        io_limit_mbps: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> io::Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other(format!("{flag} needs a number")))
        };
        match flag.as_str() {
            "--log-mib" => a.log_mib = value()? as usize,
            "--keys" => a.keys = value()?.max(1),
            "--gap-us" => a.gap_us = value()?,
            "--io-limit-mbps" => a.io_limit_mbps = value()?,
            "--bench" => {}
            other => return Err(io::Error::other(format!("unexpected argument {other:?}"))),
        }
    }
    Ok(a)
}

/// Raw sequential O_DIRECT write then read of `bytes`; MB/s of each.
async fn raw_limits(path: &Path, bytes: usize) -> io::Result<(f64, f64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(gio)?;
    let start = Instant::now();
    for i in 0..bytes / MIB {
        let mut buf = file.alloc_dma_buffer(MIB);
        buf.as_bytes_mut().fill((i % 251) as u8);
        file.write_at(buf, (i * MIB) as u64).await.map_err(gio)?;
    }
    file.fdatasync().await.map_err(gio)?;
    let write = mb_per_s(bytes as u64, start.elapsed());
    file.close().await.map_err(gio)?;
    let file = DmaFile::open(path).await.map_err(gio)?;
    let start = Instant::now();
    for i in 0..bytes / MIB {
        let r = file.read_at((i * MIB) as u64, MIB).await.map_err(gio)?;
        assert_eq!(r.len(), MIB);
    }
    let read = mb_per_s(bytes as u64, start.elapsed());
    file.close().await.map_err(gio)?;
    std::fs::remove_file(path)?;
    Ok((write, read))
}

fn compacted_config(io_limit_mbps: u64) -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 20,
        durability: Durability::Direct,
        retention_ms: None,
        compaction: CompactionConfig {
            enabled: true,
            min_cleanable_dirty_ppm: 0,
            io_bytes_per_sec: io_limit_mbps * 1_000_000,
            ..CompactionConfig::default()
        },
        ..LogConfig::default()
    }
}

/// A log of `mib` MiB of batches of 16 records with random keys out of `keys`.
async fn fill(dir: &Path, ctx: Rc<LogContext>, a: &Args, seed: u64) -> io::Result<Rc<Log>> {
    let (mib, keys) = (a.log_mib, a.keys);
    let (log, _) = Log::open(dir, compacted_config(a.io_limit_mbps), ctx)
        .await
        .map_err(sio)?;
    let mut x = seed;
    let value = vec![7u8; VALUE_BYTES];
    while log.size_bytes() < (mib * MIB) as u64 {
        let mut b = BatchBuilder::new(TimestampMs(1));
        for _ in 0..RECORDS_PER_BATCH {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("key-{}", (x >> 33) % keys);
            b = b.record(TimestampMs(1), Some(key.as_bytes()), &value);
        }
        log.append(Bytes::from(b.build())).await.map_err(sio)?;
    }
    // The active (last) segment is never compacted; the rest are sealed.
    Ok(log)
}

struct Latencies {
    hist: Histogram<u64>,
}

impl Latencies {
    fn line(&self, what: &str) -> String {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64;
        format!(
            "{what}: n={} p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            self.hist.len(),
            q(0.50),
            q(0.99),
            q(0.999),
            self.hist.max() as f64
        )
    }
}

/// Appends one 1 KiB batch every `gap` until `until()` says stop (and at
/// least `min_samples`), recording each append's latency in µs.
async fn produce(
    log: &Log,
    gap: Duration,
    min_samples: u64,
    until: impl Fn() -> bool,
) -> io::Result<Latencies> {
    let mut hist = Histogram::<u64>::new(3).map_err(|e| io::Error::other(e.to_string()))?;
    let batch = Bytes::from(
        BatchBuilder::new(TimestampMs(1))
            .record(TimestampMs(1), Some(b"p"), &[1u8; VALUE_BYTES])
            .build(),
    );
    loop {
        let t = Instant::now();
        log.append(batch.clone()).await.map_err(sio)?;
        hist.record(t.elapsed().as_micros() as u64)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if until() && hist.len() >= min_samples {
            break;
        }
        glommio::timer::sleep(gap).await;
    }
    Ok(Latencies { hist })
}

async fn run(dir: &Path, a: &Args) -> io::Result<()> {
    ferrolog_storage::probe_direct_io(dir).await.map_err(sio)?;
    let (write, read) = raw_limits(&dir.join("raw"), a.log_mib * MIB).await?;
    println!(
        "raw O_DIRECT, {} MiB, 1 MiB I/Os: write+fdatasync {write:.0} MB/s, read {read:.0} MB/s",
        a.log_mib
    );

    // Compaction alone.
    let ctx = LogContext::new(8 << 20);
    let log = fill(&dir.join("alone"), ctx.clone(), a, 1).await?;
    let size = log.size_bytes();
    let start = Instant::now();
    let out = log.compact(log.offsets().durable_next).await.map_err(sio)?;
    let took = start.elapsed();
    let physical = 1.0 / (2.0 / read + (out.bytes_after as f64 / out.bytes_before.max(1) as f64) / write);
    println!(
        "compaction alone: {} of {} MiB in {} segments rewritten to {:.1} MiB in {:.2} s: {:.0} MB/s rewritten \
         ({:.0} MB/s read); physical bound for 2 reads + the kept writes {:.0} MB/s, ratio {:.2}",
        out.bytes_before / MIB as u64,
        size / MIB as u64,
        out.rewritten.len(),
        out.bytes_after as f64 / MIB as f64,
        took.as_secs_f64(),
        mb_per_s(out.bytes_before, took),
        mb_per_s(out.bytes_read, took),
        physical,
        mb_per_s(out.bytes_before, took) / physical,
    );
    log.close().await.map_err(sio)?;

    // Produce latency alone, then while compacting.
    let gap = Duration::from_micros(a.gap_us);
    let (plog, _) = Log::open(
        dir.join("produce"),
        LogConfig {
            durability: Durability::Direct,
            ..LogConfig::default()
        },
        ctx.clone(),
    )
    .await
    .map_err(sio)?;
    let alone = produce(&plog, gap, 5000, || true).await?;
    println!("{}", alone.line("produce alone (1 KiB batches, direct)"));

    let log = fill(&dir.join("busy"), ctx.clone(), a, 2).await?;
    let done = Rc::new(Cell::new(false));
    let (d, l) = (done.clone(), log.clone());
    let end = l.offsets().durable_next;
    let compaction = glommio::spawn_local(async move {
        let start = Instant::now();
        let out = l.compact(end).await;
        d.set(true);
        (out, start.elapsed())
    })
    .detach();
    let busy = produce(&plog, gap, 0, || done.get()).await?;
    let (out, took) = compaction
        .await
        .ok_or_else(|| io::Error::other("compaction task lost"))?;
    let out = out.map_err(sio)?;
    println!(
        "compaction with produce beside it: {} MiB rewritten in {:.2} s: {:.0} MB/s",
        out.bytes_before / MIB as u64,
        took.as_secs_f64(),
        mb_per_s(out.bytes_before, took)
    );
    println!("{}", busy.line("produce while compacting"));
    println!(
        "produce p99 while compacting / alone: {:.2}",
        busy.hist.value_at_quantile(0.99) as f64 / alone.hist.value_at_quantile(0.99).max(1) as f64
    );
    log.close().await.map_err(sio)?;
    plog.close().await.map_err(sio)?;
    Ok(())
}

fn main() -> io::Result<()> {
    let a = args()?;
    let tmp = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))?;
    let dir = tmp.path().to_path_buf();
    println!("compact_bench in {}", dir.display());
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .map_err(|e| io::Error::other(e.to_string()))?;
    ex.run(async move { run(&dir, &a).await })
}
