//! Log compaction against a model of what was appended: the latest value per
//! key survives at its original offset, superseded records and expired
//! tombstones go, offsets and CRCs stay valid, and a failure injected at
//! every step of the swap leaves a log that opens, verifies and reads the
//! same values.

mod common;

use bytes::Bytes;
use common::{read_all, run, tmp, Rng};
use ferrolog_model::{BatchBuilder, BatchHeader, Offset, TimestampMs};
use ferrolog_storage::{
    inspect, CompactStep, CompactionConfig, Log, LogConfig, LogContext, ManualClock, ReadRequest,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

const T0: i64 = 1_000_000;
const DELETE_RETENTION_MS: u64 = 60_000;

/// What was appended at each offset: key and value (`None`: tombstone).
type Model = BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>)>;
/// A record as read back: offset, key, value.
type Read = (i64, Vec<u8>, Option<Vec<u8>>);

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 1024,
        write_chunk_bytes: 16 << 10,
        retention_ms: None,
        compaction: CompactionConfig {
            enabled: true,
            delete_retention_ms: DELETE_RETENTION_MS,
            min_cleanable_dirty_ppm: 0,
            ..CompactionConfig::default()
        },
        ..LogConfig::default()
    }
}

async fn open(dir: &Path, clock: Rc<ManualClock>) -> Rc<Log> {
    let ctx = LogContext::with_clock(1 << 20, clock);
    Log::open(dir, config(), ctx).await.expect("open").0
}

/// Appends 240 batches of 3 keyed records (20 keys, about 1 in 12 a
/// tombstone) and returns the model.
async fn fill(log: &Log, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    for _ in 0..240 {
        let base = log.offsets().dirty_next.0;
        let mut b = BatchBuilder::new(TimestampMs(T0));
        let mut records = Vec::new();
        for i in 0..3 {
            let key = format!("key-{}", rng.next_u64() % 20).into_bytes();
            let value = (rng.next_u64() % 12 != 0)
                .then(|| format!("value-{}-{}", base + i, "x".repeat(60)).into_bytes());
            b = b.record_or_tombstone(TimestampMs(T0), Some(&key), value.as_deref());
            records.push((key, value));
        }
        let appended = log.append(Bytes::from(b.build())).await.expect("append");
        for (i, r) in records.into_iter().enumerate() {
            model.insert(appended.base_offset.0 + i as i64, r);
        }
    }
    model
}

/// Reads the whole log (every batch verified, offsets contiguous), checks
/// each record against what was appended at its offset and that a reader
/// replaying it ends with the model's latest value per key. Returns the
/// records read.
async fn check_view(log: &Log, model: &Model) -> Vec<Read> {
    let start = log.offsets().start;
    let batches = read_all(log, start).await;
    let mut read = Vec::new();
    let mut view: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for b in &batches {
        for r in ferrolog_model::batch::records(b).expect("uncompressed records parse") {
            let key = r.key.expect("every record has a key").to_vec();
            let value = r.value.map(<[u8]>::to_vec);
            assert_eq!(
                model.get(&r.offset.0),
                Some(&(key.clone(), value.clone())),
                "record at {} is not what was appended there",
                r.offset
            );
            match &value {
                Some(v) => view.insert(key.clone(), v.clone()),
                None => view.remove(&key),
            };
            read.push((r.offset.0, key, value));
        }
    }
    let mut expected: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (k, v) in model.values() {
        match v {
            Some(v) => expected.insert(k.clone(), v.clone()),
            None => expected.remove(k),
        };
    }
    assert_eq!(
        view, expected,
        "a reader of the log does not end with the latest value per key"
    );
    read
}

/// In the compacted prefix no key appears twice.
fn assert_compacted(read: &[Read], clean_next: Offset) {
    let mut seen = HashMap::new();
    for (offset, key, _) in read.iter().filter(|(o, _, _)| *o < clean_next.0) {
        if let Some(prev) = seen.insert(key.clone(), *offset) {
            panic!("key {key:?} at {prev} and {offset}, both below the clean point {clean_next}");
        }
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
        .collect()
}

#[test]
fn keeps_the_latest_value_per_key_and_drops_expired_tombstones() {
    run(|| async {
        let dir = tmp();
        let clock = Rc::new(ManualClock::new(T0));
        let log = open(dir.path(), clock.clone()).await;
        let model = fill(&log, 7).await;
        let before = check_view(&log, &model).await;
        let size_before = log.size_bytes();
        assert!(log.segment_bases().len() > 5, "the data spans several segments");

        // Above the high watermark nothing is compacted.
        let out = log.compact(log.offsets().start).await.expect("compact");
        assert!(out.skipped.is_some() && out.rewritten.is_empty());

        let end = log.offsets().durable_next;
        let out = log.compact(end).await.expect("compact");
        assert!(out.skipped.is_none(), "{out:?}");
        assert!(!out.rewritten.is_empty() && out.records_removed > 0);
        assert_eq!(
            out.tombstones_removed, 0,
            "tombstones younger than their retention stay"
        );
        let active = *log.segment_bases().last().expect("a segment");
        assert_eq!(
            out.clean_next, active,
            "every sealed segment is compacted, the active one not"
        );
        assert!(log.size_bytes() < size_before);
        let after = check_view(&log, &model).await;
        assert_compacted(&after, out.clean_next);
        assert!(after.len() < before.len());
        assert!(
            after.iter().any(|(o, _, v)| v.is_none() && *o < out.clean_next.0),
            "a latest-value tombstone is kept until its retention passes"
        );
        let report = inspect::inspect_log(dir.path()).expect("inspect");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // A read never answers with empty batches alone while records follow
        // (it goes on past segments that compaction emptied).
        for base in log.segment_bases() {
            let r = log
                .read(ReadRequest {
                    offset: base,
                    max_bytes: 1 << 20,
                    end: None,
                })
                .await
                .expect("read");
            assert!(
                r.batches
                    .iter()
                    .any(|b| BatchHeader::parse(b).expect("header").record_count > 0),
                "read at {base} returned only empty batches"
            );
        }

        // Nothing new: the next pass has nothing to do.
        let again = log.compact(end).await.expect("compact");
        assert!(again.skipped.is_some(), "{again:?}");

        // Once their retention passes, tombstones go too.
        clock.advance(DELETE_RETENTION_MS as i64 + 1);
        let out2 = log.compact(end).await.expect("compact");
        assert!(out2.tombstones_removed > 0, "{out2:?}");
        let final_read = check_view(&log, &model).await;
        assert!(final_read
            .iter()
            .all(|(o, _, v)| v.is_some() || *o >= out2.clean_next.0));
        assert_compacted(&final_read, out2.clean_next);

        // Reopened (indexes loaded from the files the swap wrote), the same.
        log.close().await.expect("close");
        drop(log);
        let log = open(dir.path(), clock.clone()).await;
        assert_eq!(check_view(&log, &model).await, final_read);
        let report = inspect::inspect_log(dir.path()).expect("inspect");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // The clean point survived the restart.
        let idle = log.compact(log.offsets().durable_next).await.expect("compact");
        assert!(idle.skipped.is_some(), "{idle:?}");
    });
}

#[test]
fn a_failure_at_any_step_leaves_a_log_that_recovers() {
    run(|| async {
        for step in CompactStep::ALL {
            for skip in [0u32, 2] {
                let dir = tmp();
                let clock = Rc::new(ManualClock::new(T0));
                let ctx = LogContext::with_clock(1 << 20, clock.clone());
                let log = Log::open(dir.path(), config(), ctx.clone())
                    .await
                    .expect("open")
                    .0;
                let model = fill(&log, 11).await;
                let end = log.offsets().durable_next;
                ctx.faults.fail_compaction_at(step, skip);
                let result = log.compact(end).await;
                if step == CompactStep::SaveCleanPoint && skip > 0 {
                    // Reached once per pass: the failure is never due.
                    assert!(result.is_ok(), "{result:?}");
                } else {
                    assert!(
                        result.is_err(),
                        "{step:?}/{skip}: the injected failure surfaces: {result:?}"
                    );
                }
                // The log still serves what it holds.
                check_view(&log, &model).await;
                // Crash: drop the log without closing it, then open again.
                drop(log);
                let log = open(dir.path(), clock.clone()).await;
                assert!(
                    leftovers(dir.path()).is_empty(),
                    "{step:?}/{skip}: {:?}",
                    leftovers(dir.path())
                );
                let report = inspect::inspect_log(dir.path()).expect("inspect");
                assert!(
                    report.problems.is_empty(),
                    "{step:?}/{skip}: {:?}",
                    report.problems
                );
                check_view(&log, &model).await;
                // And a later pass finishes the job.
                let out = log.compact(end).await.expect("compact after recovery");
                let read = check_view(&log, &model).await;
                if out.skipped.is_none() {
                    assert_compacted(&read, out.clean_next);
                }
                log.close().await.expect("close");
            }
        }
    });
}
