//! Property test of the log against a simple in-memory model: random
//! sequences of appends, reads, truncations, retention, clean reopens,
//! unclean stops and time look-ups, with small segments so that rolls,
//! retention and truncation across segments happen often. The model keeps
//! every batch as stored (base offset assigned) and each segment's base and
//! size, and predicts every answer exactly.

mod common;

use bytes::Bytes;
use common::*;
use ferrolog_model::{BatchHeader, Offset, TimestampMs};
use ferrolog_storage::{
    index_path, log_file_name, Durability, Log, LogConfig, LogContext, ManualClock, ReadRequest, StorageError,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Clone, Debug)]
struct Setup {
    durability: Durability,
    segment_bytes: u64,
    index_interval_bytes: u32,
    retention_bytes: u64,
    /// 0 makes every read go to disk.
    cache_bytes: usize,
    write_chunk_bytes: usize,
    read_chunk_bytes: usize,
}

#[derive(Clone, Debug)]
enum Op {
    /// One batch: a timestamp per record, the value size, and a seed for the values.
    Append(Vec<i64>, usize, u64),
    Read {
        at: Index,
        max_bytes: MaxBytes,
        end: Option<Index>,
    },
    /// Below the start (when there is room) or past the end.
    ReadOutOfRange(Index),
    /// To a batch boundary; `near_end` picks among the last few, as
    /// replication's divergent-suffix truncation does.
    Truncate {
        at: Index,
        near_end: bool,
    },
    /// Inside a batch or past the end: must fail and change nothing.
    TruncateNotABoundary(Index),
    Retention,
    /// Close, open again with `retention_bytes` exactly the size of all but
    /// the oldest `at` segments (the boundary), and apply retention.
    RetentionAtExactSize(Index),
    /// Close and open again.
    Reopen,
    /// Drop the log without closing it (an unclean stop), then open again.
    Crash,
    OffsetForTimestamp(TimeQuery),
}

#[derive(Clone, Debug)]
enum MaxBytes {
    Fixed(usize),
    /// Exactly the size of this many whole batches from the read's first:
    /// the boundary of "the rest while within max_bytes".
    ExactBatches(Index),
}

#[derive(Clone, Debug)]
enum TimeQuery {
    Any(i64),
    /// A record timestamp in the log, plus -1, 0 or 1: the boundaries.
    NearRecord(Index, i64),
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(Durability::Fsync), Just(Durability::Direct)],
        prop_oneof![Just(4096u64), Just(12 << 10), Just(32 << 10)],
        prop_oneof![Just(1u32), Just(700), Just(4096)],
        6u64 << 10..64 << 10,
        prop_oneof![Just(0usize), Just(48 << 10), Just(1 << 20)],
        prop_oneof![Just(4096usize), Just(16 << 10)],
        prop_oneof![Just(4096usize), Just(64 << 10)],
    )
        .prop_map(
            |(durability, segment_bytes, index_interval_bytes, retention_bytes, cache_bytes, w, r)| Setup {
                durability,
                segment_bytes,
                index_interval_bytes,
                retention_bytes,
                cache_bytes,
                write_chunk_bytes: w,
                read_chunk_bytes: r,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (prop::collection::vec(0i64..2000, 1..=5), 0usize..3000, any::<u64>())
            .prop_map(|(stamps, value_bytes, seed)| Op::Append(stamps, value_bytes, seed)),
        6 => (
            any::<Index>(),
            prop_oneof![
                Just(MaxBytes::Fixed(1)),
                (0usize..20_000).prop_map(MaxBytes::Fixed),
                Just(MaxBytes::Fixed(1 << 20)),
                any::<Index>().prop_map(MaxBytes::ExactBatches),
            ],
            proptest::option::of(any::<Index>()),
        )
            .prop_map(|(at, max_bytes, end)| Op::Read { at, max_bytes, end }),
        1 => any::<Index>().prop_map(Op::ReadOutOfRange),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(at, near_end)| Op::Truncate { at, near_end }),
        1 => any::<Index>().prop_map(Op::TruncateNotABoundary),
        2 => Just(Op::Retention),
        1 => any::<Index>().prop_map(Op::RetentionAtExactSize),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        3 => prop_oneof![
            (0i64..2100).prop_map(TimeQuery::Any),
            (any::<Index>(), -1i64..=1).prop_map(|(at, d)| TimeQuery::NearRecord(at, d)),
        ]
        .prop_map(Op::OffsetForTimestamp),
    ]
}

struct MBatch {
    base: Offset,
    last: Offset,
    bytes: Bytes,
    timestamps: Vec<i64>,
    segment: Offset,
}

struct MSegment {
    base: Offset,
    size: u64,
}

/// What the log must hold: batches from the start offset on, and segments.
struct Model {
    segment_bytes: u64,
    batches: Vec<MBatch>,
    /// Oldest first; the last is the active one. Never empty.
    segments: Vec<MSegment>,
    next: Offset,
}

impl Model {
    fn new(segment_bytes: u64) -> Model {
        Model {
            segment_bytes,
            batches: Vec::new(),
            segments: vec![MSegment {
                base: Offset(0),
                size: 0,
            }],
            next: Offset(0),
        }
    }

    fn start(&self) -> Offset {
        self.segments[0].base
    }

    /// Rolls like the log: a non-empty active segment that the batch would
    /// grow past `segment_bytes` is sealed first.
    fn append(&mut self, sent: &Bytes, timestamps: Vec<i64>) -> Offset {
        let len = sent.len() as u64;
        let active = self.segments.last().expect("segments");
        if active.size > 0 && active.size + len > self.segment_bytes {
            self.segments.push(MSegment {
                base: self.next,
                size: 0,
            });
        }
        let active = self.segments.last_mut().expect("segments");
        active.size += len;
        let base = self.next;
        let mut bytes = sent.to_vec();
        ferrolog_model::batch::set_base_offset(&mut bytes, base);
        let last = base.plus(timestamps.len() as i64 - 1);
        self.batches.push(MBatch {
            base,
            last,
            bytes: bytes.into(),
            timestamps,
            segment: active.base,
        });
        self.next = last.plus(1);
        base
    }

    fn containing(&self, o: Offset) -> usize {
        self.batches
            .iter()
            .position(|b| b.base <= o && o <= b.last)
            .expect("offset inside the model")
    }

    /// Valid truncation points: every batch base and the end.
    fn boundaries(&self) -> Vec<Offset> {
        let mut v: Vec<Offset> = self.batches.iter().map(|b| b.base).collect();
        v.push(self.next);
        v
    }

    fn truncate(&mut self, o: Offset) {
        if o == self.next {
            return;
        }
        let keep = self
            .segments
            .iter()
            .rposition(|s| s.base <= o)
            .expect("o >= start");
        self.segments.truncate(keep + 1);
        self.batches.retain(|b| b.base < o);
        let base = self.segments[keep].base;
        self.segments[keep].size = self
            .batches
            .iter()
            .filter(|b| b.segment == base)
            .map(|b| b.bytes.len() as u64)
            .sum();
        self.next = o;
    }

    /// Deletes the oldest segments while the log is over `retention_bytes`,
    /// never the active one. Returns their bases.
    fn retain(&mut self, retention_bytes: u64) -> Vec<Offset> {
        let mut total: u64 = self.segments.iter().map(|s| s.size).sum();
        let mut deleted = Vec::new();
        while self.segments.len() > 1 && total > retention_bytes {
            let s = self.segments.remove(0);
            total -= s.size;
            deleted.push(s.base);
        }
        let start = self.start();
        self.batches.retain(|b| b.base >= start);
        deleted
    }

    /// What a read must return: whole batches from the one containing `o`,
    /// below `end`, the first always and the rest while within `max_bytes`.
    fn read(&self, o: Offset, end: Offset, max_bytes: usize) -> Vec<&MBatch> {
        let mut out = Vec::new();
        if o >= end {
            return out;
        }
        let mut total = 0;
        for b in &self.batches[self.containing(o)..] {
            if b.base >= end || (!out.is_empty() && total + b.bytes.len() > max_bytes) {
                break;
            }
            total += b.bytes.len();
            out.push(b);
        }
        out
    }
}

fn initial_config(s: &Setup) -> LogConfig {
    LogConfig {
        segment_bytes: s.segment_bytes,
        index_interval_bytes: s.index_interval_bytes,
        retention_bytes: Some(s.retention_bytes),
        retention_ms: None,
        durability: s.durability,
        write_chunk_bytes: s.write_chunk_bytes,
        read_chunk_bytes: s.read_chunk_bytes,
        ..LogConfig::default()
    }
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

async fn open_log(
    dir: &Path,
    config: &LogConfig,
    s: &Setup,
) -> Result<(Rc<Log>, ferrolog_storage::RecoveryReport), TestCaseError> {
    let ctx = LogContext::with_clock(s.cache_bytes, Rc::new(ManualClock::new(1_000_000)));
    Log::open(dir, config.clone(), ctx)
        .await
        .map_err(|e| fail(format!("open: {e}")))
}

/// Offsets, segments and size agree with the model.
fn check_shape(log: &Log, m: &Model) -> Result<(), TestCaseError> {
    let o = log.offsets();
    prop_assert_eq!(o.start, m.start());
    prop_assert_eq!(o.dirty_next, m.next);
    prop_assert_eq!(o.written_next, m.next);
    prop_assert_eq!(o.durable_next, m.next);
    let bases: Vec<Offset> = m.segments.iter().map(|s| s.base).collect();
    prop_assert_eq!(log.segment_bases(), bases);
    prop_assert_eq!(log.size_bytes(), m.segments.iter().map(|s| s.size).sum::<u64>());
    Ok(())
}

/// One read against the model. A read may return fewer batches than the
/// model allows only where the log's sources end: a read from disk stops at
/// the end of a segment, and one from the cache at a batch it does not hold.
async fn check_read(
    log: &Log,
    m: &Model,
    o: Offset,
    end: Option<Offset>,
    max_bytes: usize,
) -> Result<(), TestCaseError> {
    let r = log
        .read(ReadRequest {
            offset: o,
            max_bytes,
            end,
        })
        .await
        .map_err(|e| fail(format!("read at {o}: {e}")))?;
    let want = m.read(o, end.unwrap_or(m.next).min(m.next), max_bytes);
    prop_assert_eq!(
        r.batches.is_empty(),
        want.is_empty(),
        "read at {} end {:?}",
        o,
        end
    );
    prop_assert!(r.batches.len() <= want.len(), "read at {} returned too much", o);
    for (got, w) in r.batches.iter().zip(&want) {
        BatchHeader::parse_verified(got).map_err(|e| fail(format!("served batch: {e}")))?;
        prop_assert!(*got == w.bytes, "read at {}: batch {} differs", o, w.base);
    }
    if r.batches.len() < want.len() && !r.from_cache {
        let next = want[r.batches.len()];
        prop_assert_eq!(
            next.base,
            next.segment,
            "disk read at {} stopped inside a segment",
            o
        );
    }
    Ok(())
}

/// Walks the whole log with reads and compares it to the model.
async fn check_everything(log: &Log, m: &Model) -> Result<(), TestCaseError> {
    check_shape(log, m)?;
    let mut next = m.start();
    let mut i = 0;
    while next < m.next {
        let r = log
            .read(ReadRequest {
                offset: next,
                max_bytes: 16 << 10,
                end: None,
            })
            .await
            .map_err(|e| fail(format!("read at {next}: {e}")))?;
        prop_assert!(!r.batches.is_empty(), "read at {} returned nothing", next);
        for b in &r.batches {
            prop_assert!(*b == m.batches[i].bytes, "batch {} differs", m.batches[i].base);
            next = m.batches[i].last.plus(1);
            i += 1;
        }
    }
    prop_assert_eq!(i, m.batches.len());
    Ok(())
}

fn pick(at: &Index, lo: i64, hi_inclusive: i64) -> Offset {
    Offset(lo + at.index((hi_inclusive - lo + 1) as usize) as i64)
}

async fn run_case(s: &Setup, ops: &[Op], dir: &Path) -> Result<(), TestCaseError> {
    let mut m = Model::new(s.segment_bytes);
    let mut config = initial_config(s);
    let (mut log, _) = open_log(dir, &config, s).await?;
    for op in ops {
        match op {
            Op::Append(stamps, value_bytes, seed) => {
                let sent = timed_batch(stamps, *value_bytes, *seed);
                let a = log
                    .append(sent.clone())
                    .await
                    .map_err(|e| fail(format!("append: {e}")))?;
                let base = m.append(&sent, stamps.clone());
                prop_assert_eq!(a.base_offset, base);
                prop_assert_eq!(a.last_offset, m.next.plus(-1));
            }
            Op::Read { at, max_bytes, end } => {
                let o = pick(at, m.start().0, m.next.0);
                let end = end.as_ref().map(|e| pick(e, o.0, m.next.0));
                let max_bytes = match max_bytes {
                    MaxBytes::Fixed(n) => *n,
                    MaxBytes::ExactBatches(k) => {
                        let all = m.read(o, end.unwrap_or(m.next), usize::MAX);
                        let k = if all.is_empty() { 0 } else { 1 + k.index(all.len()) };
                        all[..k].iter().map(|b| b.bytes.len()).sum()
                    }
                };
                check_read(&log, &m, o, end, max_bytes).await?;
            }
            Op::ReadOutOfRange(at) => {
                let o = if m.start() > Offset(0) && at.index(2) == 0 {
                    pick(at, 0, m.start().0 - 1)
                } else {
                    pick(at, m.next.0 + 1, m.next.0 + 100)
                };
                let r = log
                    .read(ReadRequest {
                        offset: o,
                        max_bytes: 1 << 20,
                        end: None,
                    })
                    .await;
                match r {
                    Err(StorageError::OffsetOutOfRange {
                        requested,
                        start,
                        end,
                    }) => {
                        prop_assert_eq!((requested, start, end), (o, m.start(), m.next));
                    }
                    other => return Err(fail(format!("read at {o} out of range gave {other:?}"))),
                }
            }
            Op::Truncate { at, near_end } => {
                let points = m.boundaries();
                let o = if *near_end {
                    points[points.len() - 1 - at.index(points.len().min(4))]
                } else {
                    points[at.index(points.len())]
                };
                log.truncate(o)
                    .await
                    .map_err(|e| fail(format!("truncate to {o}: {e}")))?;
                m.truncate(o);
            }
            Op::TruncateNotABoundary(at) => {
                let inside: Vec<Offset> = m
                    .batches
                    .iter()
                    .flat_map(|b| (b.base.0 + 1..=b.last.0).map(Offset))
                    .collect();
                let o = if inside.is_empty() {
                    m.next.plus(1 + at.index(10) as i64)
                } else {
                    inside[at.index(inside.len())]
                };
                match log.truncate(o).await {
                    Err(StorageError::BadTruncation(x)) => prop_assert_eq!(x, o),
                    other => return Err(fail(format!("truncate to {o} gave {other:?}"))),
                }
            }
            Op::Retention | Op::RetentionAtExactSize(_) => {
                if let Op::RetentionAtExactSize(at) = op {
                    let keep_from = at.index(m.segments.len());
                    config.retention_bytes = Some(m.segments[keep_from..].iter().map(|s| s.size).sum());
                    log.close().await.map_err(|e| fail(format!("close: {e}")))?;
                    drop(log);
                    log = open_log(dir, &config, s).await?.0;
                }
                let out = log
                    .apply_retention()
                    .await
                    .map_err(|e| fail(format!("retention: {e}")))?;
                let deleted = m.retain(config.retention_bytes.expect("retention_bytes"));
                prop_assert_eq!(&out.deleted_segments, &deleted);
                prop_assert_eq!(out.start, m.start());
                for base in deleted {
                    prop_assert!(!dir.join(log_file_name(base)).exists());
                }
                if m.start() > Offset(0) {
                    let r = log
                        .read(ReadRequest {
                            offset: m.start().plus(-1),
                            max_bytes: 1,
                            end: None,
                        })
                        .await;
                    let below_start = matches!(r, Err(StorageError::OffsetOutOfRange { .. }));
                    prop_assert!(below_start, "read below the start gave {:?}", r);
                }
            }
            Op::Reopen => {
                log.close().await.map_err(|e| fail(format!("close: {e}")))?;
                drop(log);
                let (reopened, report) = open_log(dir, &config, s).await?;
                log = reopened;
                prop_assert!(
                    report.truncated.is_empty() && report.corrupt.is_empty(),
                    "clean close, yet recovery repaired: {:?}",
                    report
                );
                prop_assert!(
                    report.rebuilt_indexes.is_empty(),
                    "clean close left indexes to rebuild: {:?}",
                    report
                );
                check_everything(&log, &m).await?;
            }
            Op::Crash => {
                drop(log);
                let (reopened, report) = open_log(dir, &config, s).await?;
                log = reopened;
                // Every append was acknowledged, so nothing is torn; only
                // the active segment may lack indexes (close writes them),
                // and the one before it if the crash cut its seal short.
                prop_assert!(
                    report.truncated.is_empty() && report.corrupt.is_empty(),
                    "acknowledged data was repaired: {:?}",
                    report
                );
                let may_lack: Vec<PathBuf> = m
                    .segments
                    .iter()
                    .rev()
                    .take(2)
                    .map(|seg| index_path(&dir.join(log_file_name(seg.base))))
                    .collect();
                prop_assert!(
                    report.rebuilt_indexes.iter().all(|p| may_lack.contains(p)),
                    "a segment sealed before the last roll lost its indexes: {:?}",
                    report
                );
                check_everything(&log, &m).await?;
            }
            Op::OffsetForTimestamp(q) => {
                let stamps: Vec<i64> = m
                    .batches
                    .iter()
                    .flat_map(|b| b.timestamps.iter().copied())
                    .collect();
                let ts = &match q {
                    TimeQuery::NearRecord(at, d) if !stamps.is_empty() => stamps[at.index(stamps.len())] + d,
                    TimeQuery::NearRecord(_, d) => *d,
                    TimeQuery::Any(ts) => *ts,
                };
                let got = log
                    .offset_for_timestamp(TimestampMs(*ts))
                    .await
                    .map_err(|e| fail(format!("offset_for_timestamp: {e}")))?;
                let want =
                    model_offset_for_timestamp(m.batches.iter().map(|b| (b.base, &b.timestamps[..])), *ts);
                prop_assert_eq!(got, want, "offset_for_timestamp({})", ts);
            }
        }
        check_shape(&log, &m)?;
    }
    check_everything(&log, &m).await?;
    log.close().await.map_err(|e| fail(format!("close: {e}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(s in setup(), ops in prop::collection::vec(op(), 1..100)) {
        let dir = tmp();
        run(|| run_case(&s, &ops, dir.path()))?;
    }
}
