//! Micro-benchmarks of the CPU-side hot paths: CRC-32C, batch header
//! verification, index look-ups, the batch cache, Kafka request decoding and
//! response encoding, a cross-shard hop, and recording a metric.
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

/// A Produce v9 request frame (no size prefix) carrying `batch` for one
/// partition, as librdkafka sends it.
fn produce_frame(batch: &Bytes) -> Bytes {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{encode_request_header_into_buffer, Encodable, StrBytes};
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("bench")));
    let body = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.clone()))])]);
    let mut out = bytes::BytesMut::new();
    encode_request_header_into_buffer(&mut out, &header).expect("header");
    body.encode(&mut out, 9).expect("body");
    out.freeze()
}

fn request_codec(c: &mut Criterion) {
    use ferrolog_kafka::frame::{decode_request, encode_response, Decoded};
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let batch = make_batch(16, 1000, 1_700_000_000_000);
    let frame = produce_frame(&batch);
    let mut g = c.benchmark_group("kafka_codec");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function(format!("decode Produce v9 {} B", frame.len()), |b| {
        b.iter(|| match decode_request(black_box(frame.clone())) {
            Ok(Decoded::Request(r)) => r,
            _ => panic!("the bench frame decodes"),
        })
    });
    // A fetch answer for 8 partitions of one 16 KiB batch each.
    let partitions = (0..8)
        .map(|i| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(1000)
                .with_records(Some(batch.clone()))
        })
        .collect();
    let response = ResponseKind::Fetch(FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("bench")))
            .with_partitions(partitions),
    ]));
    g.throughput(Throughput::Bytes(8 * batch.len() as u64));
    g.bench_function("encode Fetch v12, 8 x 16 KiB", |b| {
        b.iter(|| encode_response(ApiKey::Fetch, 12, 1, black_box(&response)).expect("encodes"))
    });
    g.finish();
}

/// One round trip from shard 0 to shard 1 and back through `Smp::submit_to`
/// (the hop a request for a partition of another shard takes). The two
/// executors run for the whole benchmark; criterion asks shard 0 for timed
/// runs of N hops over a std channel.
fn cross_shard_hop(c: &mut Criterion) {
    use ferrolog_model::ShardId;
    use ferrolog_shard::{RuntimeConfig, Smp};
    use std::rc::Rc;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    type Jobs = Arc<Mutex<Option<mpsc::Receiver<(u64, mpsc::Sender<Duration>)>>>>;
    let (jobs_tx, jobs_rx) = mpsc::channel::<(u64, mpsc::Sender<Duration>)>();
    let jobs: Jobs = Arc::new(Mutex::new(Some(jobs_rx)));
    let cpus: Vec<usize> = ferrolog_hw_profiles::online_cpus().into_iter().take(2).collect();
    let cpus = if cpus.len() == 2 {
        cpus
    } else {
        vec![cpus[0], cpus[0]]
    };
    let runtime = std::thread::spawn(move || {
        let config = RuntimeConfig {
            cpus,
            io_memory_bytes: 64 << 10,
            ring_depth: 16,
            // FERROLOG_BENCH_SPIN_US: the profile's spin_before_park_us (default 0, the dev
            // profile: a parked shard is woken through its eventfd).
            spin_before_park: Duration::from_micros(
                std::env::var("FERROLOG_BENCH_SPIN_US")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
            channel_capacity: 64,
        };
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        ferrolog_shard::run(config, move |smp: Rc<Smp>| {
            let jobs = jobs.clone();
            let done = done.clone();
            async move {
                if smp.shard_id() != ShardId(0) {
                    // Serve hops until shard 0 has no more jobs.
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                    return Ok(());
                }
                let rx = jobs.lock().expect("jobs").take().expect("one receiver");
                // Blocking on the std channel is fine: shard 0 does nothing else,
                // and shard 1 serves hops on its own thread.
                while let Ok((n, reply)) = rx.recv() {
                    let start = std::time::Instant::now();
                    for i in 0..n {
                        let v = smp
                            .submit_to(ShardId(1), move || async move { i + 1 })
                            .await
                            .expect("shard 1 answers");
                        black_box(v);
                    }
                    let _ = reply.send(start.elapsed());
                }
                done.store(true, std::sync::atomic::Ordering::Release);
                Ok(())
            }
        })
        .expect("runtime starts")
    });
    let mut g = c.benchmark_group("shard");
    g.bench_function("submit_to round trip", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = mpsc::channel();
            jobs_tx.send((iters, tx)).expect("shard 0 takes jobs");
            rx.recv().expect("shard 0 reports")
        })
    });
    g.finish();
    drop(jobs_tx);
    runtime.join().expect("runtime thread");
}

fn metrics(c: &mut Criterion) {
    let h = ferrolog_kafka::metrics::Histogram::default();
    let mut g = c.benchmark_group("metrics");
    g.bench_function("histogram record", |b| {
        let mut us = 1u64;
        b.iter(|| {
            us = (us * 7 + 13) % 20_000;
            h.record(black_box(Duration::from_micros(us)))
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
    targets = crc32c, parse_verified, index_lookup, batch_cache, request_codec, cross_shard_hop, metrics
}
criterion_main!(micro);
