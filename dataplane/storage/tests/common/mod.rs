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
    ex.run(f())
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

/// Every batch from `from` to the committed end, read in max_bytes pieces.
pub async fn read_all(log: &Log, from: Offset) -> Vec<Bytes> {
    let end = log.offsets().committed_next;
    let mut out = Vec::new();
    let mut next = from;
    while next < end {
        let r = log
            .read(ReadRequest {
                offset: next,
                max_bytes: 8192,
                end: None,
            })
            .await
            .expect("read");
        assert!(
            !r.batches.is_empty(),
            "read at {next} returned nothing before end {end}"
        );
        for b in r.batches {
            let h = ferrolog_model::BatchHeader::parse_verified(&b).expect("served batch verifies");
            assert!(h.last_offset() >= next);
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
