//! One appender configuration, for profiling and tracing (perf stat, perf
//! trace) without the rest of storage_bench around it.
//!
//! ```text
//! cargo run --release -p ferrolog-benches --bin append_probe -- \
//!     [--mode direct|fsync] [--batch BYTES] [--window N] [--chunk BYTES] \
//!     [--depth N] [--segment BYTES] [--total MIB] [--direct-sync BYTES] [--unique] \
//!     [--raw] [--sync-stall]
//! ```
//!
//! `--raw` instead writes the same bytes with 1 MiB O_DIRECT writes, one in
//! flight, to a fresh file. `--sync-stall` writes `--total` MiB to one file
//! without syncing, then fdatasyncs it while another task keeps writing 1 MiB
//! O_DIRECT writes to a second file, and reports how many of those completed
//! during the sync: whether the device keeps writing while it flushes. Same
//! env as storage_bench (`FERROLOG_BENCH_DIR`, `FERROLOG_BENCH_CPU`,
//! `FERROLOG_BENCH_SPIN_US`).

use bytes::Bytes;
use ferrolog_benches::{bench_dir, executor, make_batch, mb_per_s, run_window};
use ferrolog_storage::{Durability, Log, LogConfig, LogContext};
use glommio::io::OpenOptions;
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

struct Args {
    mode: Durability,
    batch: usize,
    window: usize,
    chunk: usize,
    depth: usize,
    segment: u64,
    total_mib: usize,
    direct_sync: u64,
    unique: bool,
    raw: bool,
    sync_stall: bool,
}

fn parse() -> io::Result<Args> {
    let d = LogConfig::default();
    let mut a = Args {
        mode: Durability::Direct,
        batch: 1 << 20,
        window: 8,
        chunk: d.write_chunk_bytes,
        depth: d.write_depth,
        segment: 1 << 30,
        total_mib: 512,
        direct_sync: d.direct_sync_bytes,
        unique: false,
        raw: false,
        sync_stall: false,
    };
    let mut it = std::env::args().skip(1);
    let bad = |what: &str| io::Error::other(format!("bad or missing value for {what}"));
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> io::Result<u64> {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| bad(name))
        };
        match arg.as_str() {
            "--mode" => {
                a.mode = it
                    .next()
                    .ok_or_else(|| bad("--mode"))?
                    .parse()
                    .map_err(io::Error::other)?
            }
            "--batch" => a.batch = num("--batch")? as usize,
            "--window" => a.window = num("--window")? as usize,
            "--chunk" => a.chunk = num("--chunk")? as usize,
            "--depth" => a.depth = num("--depth")? as usize,
            "--segment" => a.segment = num("--segment")?,
            "--total" => a.total_mib = num("--total")? as usize,
            "--direct-sync" => a.direct_sync = num("--direct-sync")?,
            "--unique" => a.unique = true,
            "--raw" => a.raw = true,
            "--sync-stall" => a.sync_stall = true,
            other => return Err(io::Error::other(format!("unexpected argument {other:?}"))),
        }
    }
    Ok(a)
}

async fn raw(dir: &std::path::Path, total: usize) -> io::Result<f64> {
    ferrolog_storage::probe_direct_io(dir)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let path = dir.join("raw.dat");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .dma_open(&path)
        .await
        .map_err(io::Error::from)?;
    let mut buf = file.alloc_dma_buffer(1 << 20);
    buf.as_bytes_mut().fill(7);
    let buf = Rc::new(buf);
    let start = Instant::now();
    for i in 0..total >> 20 {
        file.write_rc_at(buf.clone(), (i << 20) as u64)
            .await
            .map_err(io::Error::from)?;
    }
    let elapsed = start.elapsed();
    file.close().await.map_err(io::Error::from)?;
    Ok(mb_per_s(total as u64, elapsed))
}

/// What `--sync-stall` saw.
struct Stall {
    sync: Duration,
    /// 1 MiB writes to the other file that completed while the sync ran.
    writes_during: usize,
    longest_write: Duration,
}

async fn sync_stall(dir: &std::path::Path, total: usize) -> io::Result<Stall> {
    ferrolog_storage::probe_direct_io(dir)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    let synced = Rc::new(
        options
            .dma_open(dir.join("synced.dat"))
            .await
            .map_err(io::Error::from)?,
    );
    let other = options
        .dma_open(dir.join("other.dat"))
        .await
        .map_err(io::Error::from)?;
    let mut buf = synced.alloc_dma_buffer(1 << 20);
    buf.as_bytes_mut().fill(7);
    let buf = Rc::new(buf);
    for i in 0..total >> 20 {
        synced
            .write_rc_at(buf.clone(), (i << 20) as u64)
            .await
            .map_err(io::Error::from)?;
    }
    let file = synced.clone();
    let finished = Rc::new(Cell::new(false));
    let flag = finished.clone();
    let sync = glommio::spawn_local(async move {
        let start = Instant::now();
        let r = file.fdatasync().await.map(|()| start.elapsed());
        flag.set(true);
        r
    });
    let started = Instant::now();
    let mut done = Vec::new();
    let mut longest_write = Duration::ZERO;
    // Keep writing until the sync has ended, and a little past it.
    let mut i = 0;
    while !finished.get() || done.len() < 2 {
        let t = Instant::now();
        other
            .write_rc_at(buf.clone(), i << 20)
            .await
            .map_err(io::Error::from)?;
        longest_write = longest_write.max(t.elapsed());
        done.push(started.elapsed());
        i += 1;
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let sync = sync.await.map_err(io::Error::from)?;
    Ok(Stall {
        sync,
        writes_during: done.iter().filter(|t| **t < sync).count(),
        longest_write,
    })
}

/// Returns MB/s and the longest time between two consecutive acks.
async fn append(dir: &std::path::Path, a: &Args) -> io::Result<(f64, Duration)> {
    let d = LogConfig::default();
    let config = LogConfig {
        durability: a.mode,
        segment_bytes: a.segment,
        write_chunk_bytes: a.chunk,
        write_depth: a.depth,
        direct_sync_bytes: a.direct_sync,
        max_pending_bytes: d.max_pending_bytes.max(2 * a.window * a.batch),
        ..d
    };
    let sio = |e: ferrolog_storage::StorageError| io::Error::other(e.to_string());
    let (log, _) = Log::open(dir.join("log"), config, LogContext::new(64 << 20))
        .await
        .map_err(sio)?;
    let template = make_batch((a.batch / 1024).max(1), 1000, 1_700_000_000_000);
    let count = ((a.total_mib << 20) / template.len()).max(1);
    let mut unique: Vec<Option<Bytes>> = if a.unique {
        (0..count).map(|_| Some(Bytes::from(template.to_vec()))).collect()
    } else {
        Vec::new()
    };
    let start = Instant::now();
    // (last ack, longest gap between acks)
    let acks = Rc::new(Cell::new((start, Duration::ZERO)));
    run_window(count, a.window, |i| {
        let log = log.clone();
        let acks = acks.clone();
        let batch = match unique.get_mut(i) {
            Some(b) => b.take().expect("each batch is appended once"),
            None => template.clone(),
        };
        async move {
            let r = log.append(batch).await;
            let (last, gap) = acks.get();
            let now = Instant::now();
            acks.set((now, gap.max(now - last)));
            r
        }
    })
    .await
    .map_err(sio)?;
    let elapsed = start.elapsed();
    log.close().await.map_err(sio)?;
    Ok((mb_per_s((count * template.len()) as u64, elapsed), acks.get().1))
}

fn main() -> io::Result<()> {
    let a = parse()?;
    let tmp = bench_dir()?;
    let dir = tmp.path().to_path_buf();
    if a.sync_stall {
        let s = executor()?.run(sync_stall(&dir, a.total_mib << 20))?;
        println!(
            "fdatasync of {} MiB written without a sync: {:.1} ms; 1 MiB writes to another file \
             completed meanwhile: {}; longest of those writes {:.1} ms",
            a.total_mib,
            s.sync.as_secs_f64() * 1000.0,
            s.writes_during,
            s.longest_write.as_secs_f64() * 1000.0
        );
        return Ok(());
    }
    let (mb_s, gap) = executor()?.run(async {
        if a.raw {
            raw(&dir, a.total_mib << 20).await.map(|v| (v, Duration::ZERO))
        } else {
            append(&dir, &a).await
        }
    })?;
    if a.raw {
        println!("raw 1 MiB x1: {mb_s:.1} MB/s");
    } else {
        println!(
            "{} batch {} window {} chunk {} depth {} segment {} direct-sync {}{}: {mb_s:.1} MB/s, longest gap between acks {:.1} ms",
            a.mode,
            a.batch,
            a.window,
            a.chunk,
            a.depth,
            a.segment,
            a.direct_sync,
            if a.unique { " unique" } else { "" },
            gap.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
