//! The idempotent producer (KIP-98, no transactions): InitProducerId through
//! a real one-shard node (`ferrolog_kafka::harness`), sequence checks on
//! Produce, and the producer state surviving a restart of the partition.

mod common;

use bytes::Bytes;
use common::{call, topic_name};
use ferrolog_cluster::ops::split_batches;
use ferrolog_cluster::partition::{Partition, ProducerStateSource, PRODUCER_SNAPSHOT_FILE};
use ferrolog_kafka::harness::Harness;
use ferrolog_model::{BatchBuilder, BatchHeader, Offset, TimestampMs};
use ferrolog_replication::InsyncCheck;
use ferrolog_storage::{Durability, Log, LogConfig, LogContext, ReadRequest};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, InitProducerIdRequest, ProduceRequest, ProducerId, RequestKind, ResponseKind,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use std::rc::Rc;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_REQUEST: i16 = 42;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const INVALID_RECORD: i16 = 87;

fn create_topic(h: &Harness, name: &str) {
    common::create_topic(h, name, 1);
}

/// InitProducerId at `version`; returns (error, producer id, epoch).
fn init_producer_id(h: &Harness, version: i16, transactional_id: Option<&str>) -> (i16, i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.into()))))
        .with_transaction_timeout_ms(60_000)
        // v3+ may name the producer's current id; non-transactional
        // producers still get a fresh one.
        .with_producer_id(ProducerId(if version >= 3 { 5 } else { -1 }))
        .with_producer_epoch(if version >= 3 { 3 } else { -1 });
    let ResponseKind::InitProducerId(r) = call(
        h,
        ApiKey::InitProducerId,
        version,
        RequestKind::InitProducerId(req),
    ) else {
        panic!("not an InitProducerId response")
    };
    assert_eq!(r.throttle_time_ms, 0);
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

/// A batch of `records` records of producer `pid` at `epoch`, first
/// sequence `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, records: usize, tag: &str) -> Vec<u8> {
    let ts = TimestampMs(1_700_000_000_000);
    (0..records)
        .fold(BatchBuilder::new(ts).producer(pid, epoch, seq), |b, i| {
            b.record(ts, None, format!("{tag}-{i}").as_bytes())
        })
        .build()
}

/// Produces at v9; returns (error code, base offset).
fn produce(h: &Harness, topic: &str, records: Vec<u8>) -> (i16, i64) {
    let body = RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(records)))])]),
    );
    let ResponseKind::Produce(r) = call(h, ApiKey::Produce, 9, body) else {
        panic!("not a Produce response")
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Every batch of partition 0 (one fetch; the test logs are small), as
/// (base offset, producer id, first sequence, record count).
fn log_batches(h: &Harness, topic: &str) -> Vec<(i64, i64, i32, i32)> {
    let body = RequestKind::Fetch(
        FetchRequest::default()
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]),
    );
    let ResponseKind::Fetch(r) = call(h, ApiKey::Fetch, 12, body) else {
        panic!("not a Fetch response")
    };
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let records = p.records.clone().unwrap_or_default();
    if records.is_empty() {
        return Vec::new();
    }
    split_batches(&records)
        .expect("whole batches")
        .iter()
        .map(|b| {
            let h = BatchHeader::parse_verified(b).expect("valid batch");
            (h.base_offset.0, h.producer_id, h.base_sequence, h.record_count)
        })
        .collect()
}

#[test]
fn init_producer_id_hands_out_fresh_ids_at_every_version() {
    let h = Harness::start().expect("harness");
    let mut ids = std::collections::BTreeSet::new();
    for version in 0..=4 {
        for _ in 0..2 {
            let (err, pid, epoch) = init_producer_id(&h, version, None);
            assert_eq!((err, epoch), (0, 0), "v{version}");
            assert!(pid >= 0);
            assert!(ids.insert(pid), "producer id {pid} handed out twice");
        }
    }
    // Transactions are not served: a clear, fatal error for clients.
    assert_eq!(
        init_producer_id(&h, 4, Some("txn-1")),
        (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1, -1)
    );
    assert_eq!(init_producer_id(&h, 1, Some("")), (INVALID_REQUEST, -1, -1));
}

#[test]
fn retries_are_answered_with_the_original_offsets_and_not_appended_twice() {
    let h = Harness::start().expect("harness");
    create_topic(&h, "idem");
    let (err, pid, epoch) = init_producer_id(&h, 4, None);
    assert_eq!(err, 0);
    assert_eq!(epoch, 0);

    let b0 = batch(pid, 0, 0, 2, "a");
    let b1 = batch(pid, 0, 2, 3, "b");
    assert_eq!(produce(&h, "idem", b0.clone()), (0, 0));
    assert_eq!(produce(&h, "idem", b1.clone()), (0, 2));
    // Retries of either remembered batch: success, original offsets.
    assert_eq!(produce(&h, "idem", b1.clone()), (0, 2));
    assert_eq!(produce(&h, "idem", b0), (0, 0));
    assert_eq!(produce(&h, "idem", b1), (0, 2));
    assert_eq!(
        log_batches(&h, "idem"),
        vec![(0, pid, 0, 2), (2, pid, 2, 3)],
        "each batch is in the log once"
    );

    // A gap: sequence 7 where 5 is next.
    let (err, _) = produce(&h, "idem", batch(pid, 0, 7, 1, "gap"));
    assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER);
    // A new epoch must start at sequence 0.
    let (err, _) = produce(&h, "idem", batch(pid, 1, 5, 1, "new-epoch"));
    assert_eq!(err, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(produce(&h, "idem", batch(pid, 1, 0, 1, "epoch-1")), (0, 5));
    // The old epoch is fenced now.
    let (err, _) = produce(&h, "idem", batch(pid, 0, 5, 1, "stale"));
    assert_eq!(err, INVALID_PRODUCER_EPOCH);
    // A batch with a producer id but no sequence is invalid.
    let (err, _) = produce(&h, "idem", batch(pid, 1, -1, 1, "no-seq"));
    assert_eq!(err, INVALID_RECORD);

    // Another producer and plain (non-idempotent) batches are unaffected.
    let (_, other, _) = init_producer_id(&h, 4, None);
    assert_eq!(produce(&h, "idem", batch(other, 0, 0, 1, "other")), (0, 6));
    let plain = BatchBuilder::new(TimestampMs(1))
        .record(TimestampMs(1), None, b"plain")
        .build();
    assert_eq!(produce(&h, "idem", plain.clone()), (0, 7));
    assert_eq!(
        produce(&h, "idem", plain),
        (0, 8),
        "no checks without a producer id"
    );
    assert_eq!(log_batches(&h, "idem").len(), 6);
}

// ---- the producer state across a restart, at the partition level (the
// harness always starts on a fresh data directory) ----

fn run<T, F: std::future::Future<Output = T>>(f: impl FnOnce() -> F) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(f())
}

fn log_config() -> LogConfig {
    LogConfig {
        // Small segments, so the rebuild crosses segment boundaries.
        segment_bytes: 8 << 10,
        durability: Durability::Fsync,
        ..LogConfig::default()
    }
}

async fn open_partition(dir: &std::path::Path, ctx: Rc<LogContext>) -> (Partition, ProducerStateSource) {
    let (log, _) = Log::open(dir, log_config(), ctx).await.expect("open log");
    Partition::recover(ferrolog_model::Ntp::new("idem", 0), log)
        .await
        .expect("recover producer state")
}

async fn batch_count(log: &Log) -> usize {
    let mut n = 0;
    let mut at = log.offsets().start;
    while at < log.offsets().durable_next {
        let r = log
            .read(ReadRequest {
                offset: at,
                max_bytes: 1 << 20,
                end: None,
            })
            .await
            .expect("read");
        for b in &r.batches {
            at = BatchHeader::parse(b).expect("header").last_offset().plus(1);
            n += 1;
        }
    }
    n
}

/// Producer 1's `i`-th batch: two records, sequences 2i and 2i+1.
fn batch_a(i: i32) -> Bytes {
    Bytes::from(batch(1, 0, i * 2, 2, &format!("a{i}-{}", "x".repeat(100))))
}

/// Producer 2's `i`-th batch: one record, sequence 1000 + i, epoch 3.
fn batch_b(i: i32) -> Bytes {
    Bytes::from(batch(2, 3, 1000 + i, 1, &format!("b{i}-{}", "y".repeat(100))))
}

/// Appends rounds `from..to` (a batch of each producer per round), checking
/// that round `i` starts at offset 3i.
async fn append_rounds(p: &Partition, from: i32, to: i32) {
    for i in from..to {
        let base = Offset(i64::from(i) * 3);
        assert_eq!(
            p.append_producer_batch(batch_a(i), InsyncCheck::Skip).await.ok(),
            Some(base)
        );
        assert_eq!(
            p.append_producer_batch(batch_b(i), InsyncCheck::Skip).await.ok(),
            Some(base.plus(2))
        );
    }
}

/// After `rounds` rounds: retries of each producer's last batches are
/// answered with their offsets and not appended; the sequences go on where
/// they were.
async fn assert_retries_recognised(p: &Partition, rounds: i32) {
    let end = p.log.offsets().durable_next;
    assert_eq!(end, Offset(i64::from(rounds) * 3));
    assert_eq!(p.producer_count(), 2);
    for i in rounds - 5..rounds {
        let base = Offset(i64::from(i) * 3);
        assert_eq!(
            p.append_producer_batch(batch_a(i), InsyncCheck::Skip).await.ok(),
            Some(base),
            "a{i}"
        );
        assert_eq!(
            p.append_producer_batch(batch_b(i), InsyncCheck::Skip).await.ok(),
            Some(base.plus(2)),
            "b{i}"
        );
    }
    assert_eq!(p.log.offsets().durable_next, end, "nothing appended");
    assert_eq!(batch_count(&p.log).await, 2 * rounds as usize);
    let gap = Bytes::from(batch(1, 0, rounds * 2 + 1, 1, "gap"));
    let e = p
        .append_producer_batch(gap, InsyncCheck::Skip)
        .await
        .expect_err("a gap");
    assert_eq!(
        ferrolog_kafka::errors::partition(&e).code(),
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );
}

/// The snapshot file's length; 0 if it is missing.
fn snapshot_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join(PRODUCER_SNAPSHOT_FILE)).map_or(0, |m| m.len())
}

/// A clean close leaves a snapshot that the next open uses and keeps: after
/// a crash that came after more appends, the open replays only the batches
/// after the snapshot's end. A damaged or cut snapshot is not used, and a
/// truncation empties it first (below).
#[test]
fn restart_recognises_retries_from_the_snapshot_or_by_scanning() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let snapshot = dir.path().join(PRODUCER_SNAPSHOT_FILE);
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(source, ProducerStateSource::Scan);
        append_rounds(&p, 0, 100).await;
        assert!(p.log.segment_bases().len() > 3, "the log should span segments");
        p.close().await.expect("close");
    });
    let at_close = std::fs::read(&snapshot).expect("a clean close leaves a snapshot");
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(source, ProducerStateSource::Snapshot);
        assert_eq!(
            std::fs::read(d.join(PRODUCER_SNAPSHOT_FILE)).expect("snapshot"),
            at_close,
            "kept as it was at open"
        );
        assert_retries_recognised(&p, 100).await;
        append_rounds(&p, 100, 110).await;
        // Dropped without a close, like a kill -9 after the
        // acknowledgements (fsync mode: every acknowledged batch is durable).
    });
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(
            source,
            ProducerStateSource::SnapshotAndTail,
            "the snapshot of offset 300 and the 30 offsets after it"
        );
        assert_retries_recognised(&p, 110).await;
        append_rounds(&p, 110, 111).await;
        p.close().await.expect("close");
    });
    // A damaged snapshot is not used either.
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&snapshot, &bytes).expect("damage the snapshot");
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(source, ProducerStateSource::Scan);
        assert_retries_recognised(&p, 111).await;
        p.close().await.expect("close");
    });
    // Nor one cut short (the close writes in place: a kill in the middle).
    let bytes = std::fs::read(&snapshot).expect("snapshot");
    assert!(bytes.len() > 8, "the close wrote a snapshot again");
    std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).expect("cut the snapshot");
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(source, ProducerStateSource::Scan);
        assert_retries_recognised(&p, 111).await;
        p.close().await.expect("close");
    });
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (_p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(
            source,
            ProducerStateSource::Snapshot,
            "a clean close after a scan leaves a whole snapshot"
        );
    });
}

/// A retry that arrives while its original still waits for its flush is
/// answered once the original is durable; if that flush fails, the
/// original is gone and the retry is told to send again, and then goes in.
#[test]
fn a_retry_of_an_unflushed_batch_waits_for_it_and_learns_of_its_loss() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let d = dir.path().to_path_buf();
    run(|| async move {
        let ctx = LogContext::new(1 << 20);
        let faults = ctx.faults.clone();
        let p = Rc::new(open_partition(&d, ctx).await.0);
        p.append_producer_batch(Bytes::from(batch(9, 0, 0, 1, "first")), InsyncCheck::Skip)
            .await
            .expect("append");

        let twice = |b: Vec<u8>| {
            let (p1, p2) = (p.clone(), p.clone());
            let b1 = Bytes::from(b);
            let b2 = b1.clone();
            let first =
                glommio::spawn_local(async move { p1.append_producer_batch(b1, InsyncCheck::Skip).await });
            let retry =
                glommio::spawn_local(async move { p2.append_producer_batch(b2, InsyncCheck::Skip).await });
            async move { (first.await, retry.await) }
        };

        // Both in flight together: the retry gets the original's offset.
        let (first, retry) = twice(batch(9, 0, 1, 2, "second")).await;
        assert_eq!(first.ok(), Some(Offset(1)));
        assert_eq!(retry.ok(), Some(Offset(1)));
        assert_eq!(p.log.offsets().durable_next, Offset(3));

        // The flush carrying the original fails: both fail, and the batch
        // is not remembered as appended.
        faults.fail_syncs(1);
        let (first, retry) = twice(batch(9, 0, 3, 1, "third")).await;
        assert!(first.is_err(), "{first:?}");
        assert!(retry.is_err(), "{retry:?}");
        assert_eq!(p.log.offsets().durable_next, Offset(3));
        let again = p
            .append_producer_batch(Bytes::from(batch(9, 0, 3, 1, "third")), InsyncCheck::Skip)
            .await;
        assert_eq!(again.ok(), Some(Offset(3)), "sent again, it goes in");
        assert_eq!(batch_count(&p.log).await, 3);
        p.log.close().await.expect("close");
    });
}

/// How long rebuilding the producer state takes at startup: fills a
/// partition with `REBUILD_MIB` (default 200) MiB of idempotent batches of
/// each size in `REBUILD_BATCH_BYTES` (default "1024,16384"), reopens it and
/// times `Log::open` and the rebuild. Prints the numbers; asserts nothing
/// about time. Run in release mode:
/// `cargo nextest run --release -p ferrolog-kafka --test idempotent_producer
/// --run-ignored only --no-capture rebuild_time`.
#[test]
#[ignore = "a measurement; run on demand in release mode"]
fn rebuild_time() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let mib: usize = env("REBUILD_MIB", "200").parse().expect("REBUILD_MIB");
    let sizes: Vec<usize> = env("REBUILD_BATCH_BYTES", "1024,16384")
        .split(',')
        .map(|s| s.trim().parse().expect("REBUILD_BATCH_BYTES"))
        .collect();
    const PRODUCERS: usize = 16;
    for batch_bytes in sizes {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
        let config = LogConfig {
            durability: Durability::Direct,
            ..LogConfig::default()
        };
        let (d, c) = (dir.path().to_path_buf(), config.clone());
        let (batches, bytes, fill) = run(|| async move {
            let started = std::time::Instant::now();
            let (log, _) = Log::open(&d, c, LogContext::new(1 << 20)).await.expect("open");
            let p = Rc::new(Partition::new(ferrolog_model::Ntp::new("idem", 0), log));
            let per_producer = (mib << 20) / batch_bytes / PRODUCERS;
            let value = vec![b'v'; batch_bytes.saturating_sub(80).max(1)];
            let tasks: Vec<_> = (0..PRODUCERS)
                .map(|t| {
                    let (p, value) = (p.clone(), value.clone());
                    glommio::spawn_local(async move {
                        let ts = TimestampMs(1_700_000_000_000);
                        for seq in 0..per_producer as i32 {
                            let b = BatchBuilder::new(ts)
                                .producer(t as i64, 0, seq)
                                .record(ts, None, &value)
                                .build();
                            p.append_producer_batch(Bytes::from(b), InsyncCheck::Skip)
                                .await
                                .expect("append");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let bytes = p.log.size_bytes();
            p.log.close().await.expect("close");
            (per_producer * PRODUCERS, bytes, started.elapsed())
        });
        // Reopen twice: first the log is scanned (the fill ended with a
        // plain log close, no snapshot); that open's clean close leaves a
        // snapshot for the second.
        for want in [ProducerStateSource::Scan, ProducerStateSource::Snapshot] {
            let (d, c) = (dir.path().to_path_buf(), config.clone());
            run(|| async move {
                let started = std::time::Instant::now();
                let (log, _) = Log::open(&d, c, LogContext::new(1 << 20)).await.expect("open");
                let opened = started.elapsed();
                let (p, source) = Partition::recover(ferrolog_model::Ntp::new("idem", 0), log)
                    .await
                    .expect("recover");
                let recovered = started.elapsed() - opened;
                assert_eq!(source, want);
                assert_eq!(p.producer_count(), PRODUCERS);
                println!(
                    "{:.0} MiB in {batches} batches of {batch_bytes} bytes ({} segments; filled in {:.1} s): \
                     Log::open {:.1} ms, producer state from {source:?} {:.1} ms ({:.0} MiB/s)",
                    bytes as f64 / (1 << 20) as f64,
                    p.log.segment_bases().len(),
                    fill.as_secs_f64(),
                    opened.as_secs_f64() * 1e3,
                    recovered.as_secs_f64() * 1e3,
                    bytes as f64 / (1 << 20) as f64 / recovered.as_secs_f64(),
                );
                p.close().await.expect("close");
            });
        }
    }
}

/// A truncation empties the producer snapshot (durably) before it cuts the
/// log: a snapshot of the old end would otherwise match a log refilled to
/// the same end after a crash, and retries of the removed batches would be
/// answered as duplicates of batches that are gone.
#[test]
fn a_truncation_empties_the_snapshot_before_the_log_refills() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, _) = open_partition(&d, LogContext::new(1 << 20)).await;
        append_rounds(&p, 0, 20).await;
        p.close().await.expect("close");
    });
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(source, ProducerStateSource::Snapshot);
        // Round 19 (offsets 57-59) is a divergent suffix.
        p.truncate(Offset(57)).await.expect("truncate");
        assert_eq!(snapshot_len(&d), 0, "emptied by the truncation");
        // Refilled to the same end by another producer's batch, then a crash.
        let refill = Bytes::from(batch(7, 0, 0, 3, "refill"));
        assert_eq!(
            p.append_producer_batch(refill, InsyncCheck::Skip).await.ok(),
            Some(Offset(57))
        );
        assert_eq!(p.log.offsets().durable_next, Offset(60));
    });
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (p, source) = open_partition(&d, LogContext::new(1 << 20)).await;
        assert_eq!(source, ProducerStateSource::Scan);
        assert_eq!(p.producer_count(), 3);
        // The removed round is new again: appended, not answered as a retry.
        assert_eq!(
            p.append_producer_batch(batch_a(19), InsyncCheck::Skip).await.ok(),
            Some(Offset(60))
        );
        p.close().await.expect("close");
    });
}
