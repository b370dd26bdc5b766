//! Micro-benchmarks of the CPU-side hot paths of the storage engine:
//! CRC-32C, batch header verification, index look-ups and the batch cache.
//!
//! ```text
//! cargo bench -p ferrolog-benches --bench micro
//! ```

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferrolog_benches::make_batch;
use ferrolog_model::batch::set_base_offset;
use ferrolog_model::{BatchHeader, Offset};
use ferrolog_storage::{BatchCache, OffsetEntry, OffsetIndex};
use std::time::Duration;

fn crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [1usize << 10, 16 << 10, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{} KiB", size >> 10), |b| {
            b.iter(|| crc32c::crc32c(black_box(&data)))
        });
    }
    g.finish();
}

fn parse_verified(c: &mut Criterion) {
    // 16 records of 1000-byte values: a ~16 KiB batch.
    let batch = make_batch(16, 1000, 1_700_000_000_000);
    let mut g = c.benchmark_group("batch_header");
    g.throughput(Throughput::Bytes(batch.len() as u64));
    g.bench_function(format!("parse_verified {} B", batch.len()), |b| {
        b.iter(|| BatchHeader::parse_verified(black_box(&batch)).expect("valid batch"))
    });
    g.finish();
}

fn index_lookup(c: &mut Criterion) {
    const ENTRIES: u32 = 250_000;
    let mut index = OffsetIndex::default();
    for i in 0..ENTRIES {
        index.push(OffsetEntry {
            rel_offset: i * 16,
            position: i * 4096 + 1,
        });
    }
    let max_rel = ENTRIES * 16;
    let mut g = c.benchmark_group("offset_index");
    g.bench_function("lookup in 250k entries", |b| {
        // A cheap LCG spreads the keys over the whole index.
        let mut x: u32 = 12345;
        b.iter(|| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            index.lookup(black_box(x % max_rel))
        })
    });
    g.finish();
}

fn batch_cache(c: &mut Criterion) {
    let template = make_batch(16, 1000, 1_700_000_000_000);
    let records = 16i64;
    let batches: Vec<Bytes> = (0..1024)
        .map(|i| {
            let mut v = template.to_vec();
            set_base_offset(&mut v, Offset(i * records));
            Bytes::from(v)
        })
        .collect();
    let mut g = c.benchmark_group("batch_cache");
    g.throughput(Throughput::Elements(1));
    // Steady state: a cache holding ~256 batches, each insert evicting the oldest.
    g.bench_function("insert 16 KiB (evicting)", |b| {
        let mut cache = BatchCache::new(256 * template.len());
        let mut i = 0usize;
        b.iter(|| {
            let batch = &batches[i % batches.len()];
            let base = (i as i64) * records;
            cache.insert(0, Offset(base), batch.clone());
            i += 1;
        })
    });
    // 64 insert + read pairs per iteration, on a fresh cache each time.
    g.throughput(Throughput::Elements(64));
    g.bench_function("insert+read tail 16 KiB, x64", |b| {
        b.iter_batched_ref(
            || BatchCache::new(256 * template.len()),
            |cache| {
                for (i, batch) in batches.iter().take(64).enumerate() {
                    let base = Offset(i as i64 * records);
                    cache.insert(0, base, batch.clone());
                    let got = cache.read(0, base, Offset(base.0 + records), 1 << 20);
                    black_box(got);
                }
            },
            BatchSize::SmallInput,
        )
    });
    let mut full = BatchCache::new(2048 * template.len());
    for (i, batch) in batches.iter().enumerate() {
        full.insert(0, Offset(i as i64 * records), batch.clone());
    }
    let end = Offset(batches.len() as i64 * records);
    g.throughput(Throughput::Elements(1));
    g.bench_function("read 1 MiB from 1024 cached batches", |b| {
        let mut x: i64 = 7;
        b.iter(|| {
            x = (x * 1_103_515_245 + 12_345) & 0x7fff_ffff;
            let at = Offset(x % end.0);
            black_box(full.read(0, at, end, 1 << 20))
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = micro;
    config = config();
    targets = crc32c, parse_verified, index_lookup, batch_cache
}
criterion_main!(micro);
