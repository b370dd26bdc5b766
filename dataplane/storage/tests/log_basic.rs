//! Append / read / roll / reopen / retention / truncation on a real file system
//! (the work disk, which supports O_DIRECT; tmpfs is not enough).

mod common;

use common::*;
use ferrolog_model::{Offset, TimestampMs};
use ferrolog_storage::{Durability, Log, LogConfig, LogContext, ManualClock, ReadRequest, StorageError};
use std::rc::Rc;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir")
}

#[test]
fn append_assigns_contiguous_offsets_and_reads_back_byte_exact() {
    for durability in [Durability::Fsync, Durability::Direct] {
        let dir = tmp();
        run(|| async move {
            let log = open(dir.path(), small_config(durability)).await;
            let mut sent = Vec::new();
            for i in 0..50 {
                let b = batch(1 + i % 4, 100 + i * 37, 1000 + i as i64);
                let a = log.append(b.clone()).await.expect("append");
                let expected_base = sent.iter().map(|(_, n)| *n as i64).sum::<i64>();
                assert_eq!(a.base_offset, Offset(expected_base));
                sent.push((b, 1 + i % 4));
            }
            let o = log.offsets();
            assert_eq!(o.dirty_next, o.durable_next);
            assert!(
                log.segment_bases().len() > 1,
                "64 KiB segments should have rolled"
            );
            let got = read_all(&log, Offset(0)).await;
            assert_eq!(got.len(), sent.len());
            for (g, (s, _)) in got.iter().zip(&sent) {
                assert_eq!(strip_offset(g), s.to_vec());
            }
            log.close().await.expect("close");
        });
    }
}

#[test]
fn reads_from_disk_match_reads_from_cache() {
    let dir = tmp();
    run(|| async move {
        let config = small_config(Durability::Direct);
        let log = open(dir.path(), config.clone()).await;
        for i in 0..40 {
            log.append(batch(3, 300, i)).await.expect("append");
        }
        let cached = read_all(&log, Offset(0)).await;
        log.close().await.expect("close");
        // A fresh context has an empty cache: everything comes from disk.
        let (log, report) = Log::open(dir.path(), config, LogContext::new(1 << 20))
            .await
            .expect("reopen");
        assert!(report.truncated.is_empty(), "clean close left a tail: {report:?}");
        assert!(
            report.rebuilt_indexes.is_empty(),
            "indexes written at close must be trusted on reopen: {report:?}"
        );
        // ...and kept: a crash after this open must not force a full rescan.
        let active = *log.segment_bases().last().expect("a segment");
        let active_log = dir.path().join(ferrolog_storage::log_file_name(active));
        assert!(ferrolog_storage::index_path(&active_log).exists());
        assert!(ferrolog_storage::time_index_path(&active_log).exists());
        let r = log
            .read(ReadRequest {
                offset: Offset(7),
                max_bytes: 1,
                end: None,
            })
            .await
            .expect("read");
        assert!(!r.from_cache);
        assert_eq!(r.batches.len(), 1, "one whole batch even above max_bytes");
        let disk = read_all(&log, Offset(0)).await;
        assert_eq!(cached, disk);
    });
}

#[test]
fn reopen_continues_offsets_and_keeps_every_batch() {
    let dir = tmp();
    let config = small_config(Durability::Fsync);
    let d = dir.path().to_path_buf();
    let c = config.clone();
    run(|| async move {
        let log = open(&d, c).await;
        for i in 0..30 {
            log.append(batch(2, 500, i)).await.expect("append");
        }
        log.close().await.expect("close");
    });
    let d = dir.path().to_path_buf();
    run(|| async move {
        let log = open(&d, config).await;
        assert_eq!(log.offsets().durable_next, Offset(60));
        let a = log.append(batch(1, 10, 99)).await.expect("append after reopen");
        assert_eq!(a.base_offset, Offset(60));
        assert_eq!(read_all(&log, Offset(0)).await.len(), 31);
        assert!(log.append(batch(1, 1, 1)).await.is_ok());
        log.close().await.expect("close");
        assert!(matches!(
            log.append(batch(1, 1, 1)).await,
            Err(StorageError::Closed)
        ));
    });
}

#[test]
fn concurrent_appends_share_flushes_and_keep_order() {
    let dir = tmp();
    run(|| async move {
        let log = open(dir.path(), small_config(Durability::Fsync)).await;
        let flushes = observe_flushes(&log);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(
                async move { log.append(batch(1, 200, i)).await },
            ));
        }
        let mut bases = Vec::new();
        for t in tasks {
            bases.push(t.await.expect("append").base_offset.0);
        }
        bases.sort();
        assert_eq!(bases, (0..64).collect::<Vec<_>>());
        assert_eq!(read_all(&log, Offset(0)).await.len(), 64);
        let flushes = flushes.borrow();
        assert_eq!(
            flushes.iter().map(|f| f.batches).sum::<usize>(),
            64,
            "{flushes:?}"
        );
        assert!(flushes.len() < 64, "no flush was shared: {flushes:?}");
    });
}

#[test]
fn group_commit_window_gathers_appends_arriving_within_it() {
    let dir = tmp();
    run(|| async move {
        let config = LogConfig {
            // Far longer than the 20 ms over which the appends arrive, so
            // a slow machine still sees them all inside it.
            group_commit_window: std::time::Duration::from_secs(1),
            ..small_config(Durability::Fsync)
        };
        let log = open(dir.path(), config).await;
        let flushes = observe_flushes(&log);
        let mut tasks = Vec::new();
        for i in 0..10 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(
                async move { log.append(batch(1, 200, i)).await },
            ));
            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
        }
        for t in tasks {
            t.await.expect("append");
        }
        let flushes = flushes.borrow();
        assert_eq!(flushes.len(), 1, "{flushes:?}");
        assert_eq!(flushes[0].batches, 10);
        assert_eq!(flushes[0].bytes, 10 * batch(1, 200, 0).len());
    });
}

/// Every flush of `log` from now on.
fn observe_flushes(log: &Log) -> Rc<std::cell::RefCell<Vec<ferrolog_storage::FlushDone>>> {
    let seen = Rc::new(std::cell::RefCell::new(Vec::new()));
    let sink = seen.clone();
    log.set_flush_observer(move |f| sink.borrow_mut().push(*f));
    seen
}

#[test]
fn invalid_batches_are_rejected_and_leave_the_log_unchanged() {
    let dir = tmp();
    run(|| async move {
        let mut config = small_config(Durability::Direct);
        config.max_batch_bytes = 4096;
        let log = open(dir.path(), config).await;
        log.append(batch(1, 10, 0)).await.expect("append");
        let before = log.offsets();
        let good = batch(2, 10, 0);
        let mut bad_crc = good.to_vec();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        assert!(matches!(
            log.append(bad_crc.into()).await,
            Err(StorageError::InvalidBatch(_))
        ));
        let mut bad_magic = good.to_vec();
        bad_magic[16] = 1;
        assert!(matches!(
            log.append(bad_magic.into()).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert!(matches!(
            log.append(good.slice(..40)).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert!(matches!(
            log.append(batch(1, 5000, 0)).await,
            Err(StorageError::BatchTooLarge { .. })
        ));
        assert_eq!(log.offsets(), before);
        assert_eq!(read_all(&log, Offset(0)).await.len(), 1);
    });
}

#[test]
fn out_of_range_reads_are_typed_errors() {
    let dir = tmp();
    run(|| async move {
        let log = open(dir.path(), small_config(Durability::Direct)).await;
        log.append(batch(5, 10, 0)).await.expect("append");
        let r = log
            .read(ReadRequest {
                offset: Offset(5),
                max_bytes: 1000,
                end: None,
            })
            .await
            .expect("at end");
        assert!(r.batches.is_empty());
        assert!(matches!(
            log.read(ReadRequest {
                offset: Offset(6),
                max_bytes: 1000,
                end: None
            })
            .await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.read(ReadRequest {
                offset: Offset(-1),
                max_bytes: 1000,
                end: None
            })
            .await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn retention_by_size_and_age_moves_the_start_offset() {
    let dir = tmp();
    run(|| async move {
        let clock = Rc::new(ManualClock::new(1_000_000));
        let ctx = LogContext::with_clock(1 << 20, clock.clone());
        let mut config = small_config(Durability::Direct);
        config.retention_bytes = Some(200 << 10);
        config.retention_ms = Some(60_000);
        let (log, _) = Log::open(dir.path(), config, ctx).await.expect("open");
        for i in 0..200 {
            log.append(batch(1, 4000, 1_000_000 + i)).await.expect("append");
        }
        let before = log.segment_bases().len();
        let out = log.apply_retention().await.expect("retention");
        assert!(!out.deleted_segments.is_empty());
        assert!(
            log.size_bytes() <= 200 << 10,
            "size {} over bound",
            log.size_bytes()
        );
        assert_eq!(log.segment_bases().len(), before - out.deleted_segments.len());
        let start = log.offsets().start;
        assert_eq!(out.start, start);
        assert!(start > Offset(0));
        assert!(matches!(
            log.read(ReadRequest {
                offset: Offset(0),
                max_bytes: 1000,
                end: None
            })
            .await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log, start).await.len() as i64, 200 - start.0);
        for base in &out.deleted_segments {
            assert!(!dir.path().join(ferrolog_storage::log_file_name(*base)).exists());
        }
        // Everything but the active segment is older than retention_ms now.
        clock.advance(10 * 60_000);
        log.apply_retention().await.expect("retention by age");
        assert_eq!(log.segment_bases().len(), 1);
        assert_eq!(log.offsets().durable_next, Offset(200));
    });
}

#[test]
fn segment_ms_rolls_old_segments() {
    let dir = tmp();
    run(|| async move {
        let clock = Rc::new(ManualClock::new(0));
        let ctx = LogContext::with_clock(1 << 20, clock.clone());
        let mut config = small_config(Durability::Direct);
        config.segment_ms = 1000;
        let (log, _) = Log::open(dir.path(), config, ctx).await.expect("open");
        log.append(batch(1, 10, 0)).await.expect("append");
        log.append(batch(1, 10, 0)).await.expect("append");
        assert_eq!(log.segment_bases().len(), 1);
        clock.advance(1000);
        log.append(batch(1, 10, 0)).await.expect("append");
        assert_eq!(log.segment_bases(), vec![Offset(0), Offset(2)]);
    });
}

#[test]
fn truncate_drops_suffix_and_offsets_are_reassigned() {
    let dir = tmp();
    let config = small_config(Durability::Fsync);
    let d = dir.path().to_path_buf();
    let c = config.clone();
    run(|| async move {
        let log = open(&d, c).await;
        for i in 0..100 {
            log.append(batch(2, 700, i)).await.expect("append");
        }
        assert!(log.segment_bases().len() > 2);
        assert!(matches!(
            log.truncate(Offset(41)).await,
            Err(StorageError::BadTruncation(_))
        ));
        log.truncate(Offset(40)).await.expect("truncate");
        assert_eq!(log.offsets().durable_next, Offset(40));
        assert_eq!(read_all(&log, Offset(0)).await.len(), 20);
        let a = log.append(batch(3, 10, 5)).await.expect("append");
        assert_eq!(a.base_offset, Offset(40));
        log.close().await.expect("close");
    });
    let d = dir.path().to_path_buf();
    run(|| async move {
        let log = open(&d, config).await;
        assert_eq!(log.offsets().durable_next, Offset(43));
        assert_eq!(read_all(&log, Offset(0)).await.len(), 21);
    });
}

#[test]
fn offset_for_timestamp_finds_first_record_at_or_after() {
    let dir = tmp();
    run(|| async move {
        let log = open(dir.path(), small_config(Durability::Direct)).await;
        // Batch i holds 3 records, all at timestamp 1000 + 10 * i.
        for i in 0..60 {
            log.append(batch(3, 500, 1000 + 10 * i)).await.expect("append");
        }
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(0)).await.expect("ts"),
            Some(Offset(0))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1000)).await.expect("ts"),
            Some(Offset(0))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1001)).await.expect("ts"),
            Some(Offset(3))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1300)).await.expect("ts"),
            Some(Offset(90))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1590)).await.expect("ts"),
            Some(Offset(177))
        );
        assert_eq!(
            log.offset_for_timestamp(TimestampMs(1591)).await.expect("ts"),
            None
        );
    });
}

#[test]
fn disk_full_rolls_back_unacknowledged_appends_and_log_stays_usable() {
    for durability in [Durability::Fsync, Durability::Direct] {
        let dir = tmp();
        let config = small_config(durability);
        let d = dir.path().to_path_buf();
        let c = config.clone();
        run(|| async move {
            let ctx = LogContext::new(1 << 20);
            let faults = ctx.faults.clone();
            let (log, _) = Log::open(&d, c, ctx).await.expect("open");
            for i in 0..10 {
                log.append(batch(1, 100, i)).await.expect("append");
            }
            let before = log.offsets();
            faults.fail_writes_after(0);
            let e = log.append(batch(1, 100, 0)).await.expect_err("disk full");
            assert!(e.is_no_space(), "expected ENOSPC, got {e}");
            assert_eq!(log.offsets(), before, "a failed append must not move offsets");
            assert_eq!(read_all(&log, Offset(0)).await.len(), 10);
            // Concurrent appends covered by one failing flush all fail.
            let mut tasks = Vec::new();
            for i in 0..8 {
                let log = log.clone();
                tasks.push(glommio::spawn_local(
                    async move { log.append(batch(1, 100, i)).await },
                ));
            }
            for t in tasks {
                assert!(t.await.is_err());
            }
            assert_eq!(log.offsets(), before);
            faults.clear();
            let a = log
                .append(batch(1, 100, 0))
                .await
                .expect("append after space frees up");
            assert_eq!(a.base_offset, before.durable_next);
            if durability == Durability::Fsync {
                faults.fail_syncs(1);
                assert!(log.append(batch(1, 100, 0)).await.is_err());
                assert_eq!(log.offsets().durable_next, Offset(11));
            }
            log.append(batch(1, 100, 0)).await.expect("append");
            log.close().await.expect("close");
        });
        let d = dir.path().to_path_buf();
        run(|| async move {
            let log = open(&d, config).await;
            assert_eq!(log.offsets().durable_next, Offset(12));
            let all = read_all(&log, Offset(0)).await;
            assert_eq!(all.len(), 12);
        });
    }
}

#[test]
fn large_batches_span_many_write_chunks() {
    let dir = tmp();
    run(|| async move {
        let config = LogConfig {
            segment_bytes: 8 << 20,
            write_chunk_bytes: 64 << 10,
            ..small_config(Durability::Fsync)
        };
        let log = open(dir.path(), config.clone()).await;
        for i in 0..6 {
            log.append(batch(1024, 1000, i))
                .await
                .expect("append 1 MiB batch");
        }
        let a = read_all(&log, Offset(0)).await;
        log.close().await.expect("close");
        let log = open(dir.path(), config).await;
        assert_eq!(read_all(&log, Offset(0)).await, a);
    });
}

/// Small flushes write zeros ahead (so later small flushes overwrite instead
/// of extending the file); the zeros never show up as data, survive a reopen
/// harmlessly, and a sealed segment is cut back to exactly its batches.
#[test]
fn prezeroed_space_ahead_of_the_tail_is_invisible() {
    for durability in [Durability::Fsync, Durability::Direct] {
        let dir = tmp();
        run(|| async move {
            let config = LogConfig {
                segment_bytes: 256 << 10,
                prezero_bytes: 64 << 10,
                ..small_config(durability)
            };
            let log = open(dir.path(), config.clone()).await;
            let first = batch(2, 300, 1);
            log.append(first.clone()).await.expect("append");
            let seg = segment_files(dir.path())[0].clone();
            // Zeros ahead as many as the segment holds, at least 16 KiB (not the
            // whole prezero_bytes: a partition holding little costs little).
            let len = std::fs::metadata(&seg).expect("stat").len();
            assert!(
                ((16 << 10) + first.len() as u64..(64 << 10)).contains(&len),
                "{durability}: file is {len} bytes after a small flush; expected 16 KiB of zeros ahead"
            );
            let mut sent = vec![first];
            for i in 0..400 {
                let b = batch(1 + i % 3, 200 + i * 7, 2 + i as i64);
                log.append(b.clone()).await.expect("append");
                sent.push(b);
            }
            assert!(
                log.segment_bases().len() > 1,
                "256 KiB segments should have rolled"
            );
            let check = |got: Vec<bytes::Bytes>, sent: &[bytes::Bytes]| {
                assert_eq!(got.len(), sent.len());
                for (g, s) in got.iter().zip(sent) {
                    assert_eq!(strip_offset(g), s.to_vec());
                }
            };
            check(read_all(&log, Offset(0)).await, &sent);
            // Sealed segments hold exactly their batches: the zeros are cut.
            let files = segment_files(dir.path());
            for f in &files[..files.len() - 1] {
                let batches = file_batches(f);
                let end = batches.last().map_or(0, |(pos, h)| pos + h.total_bytes() as u64);
                assert_eq!(std::fs::metadata(f).expect("stat").len(), end, "{}", f.display());
            }
            drop(log);
            // Unclean reopen (no close): the active segment still has zeros past
            // its last batch; recovery keeps every batch and appends continue.
            let log = open(dir.path(), config).await;
            check(read_all(&log, Offset(0)).await, &sent);
            let next = log.offsets().dirty_next;
            let more = batch(1, 50, 999);
            assert_eq!(log.append(more.clone()).await.expect("append").base_offset, next);
            sent.push(more);
            check(read_all(&log, Offset(0)).await, &sent);
            log.close().await.expect("close");
        });
    }
}

#[test]
fn delete_before_drops_whole_segments_below_the_offset_only() {
    let dir = tmp();
    run(|| async move {
        let config = small_config(Durability::Fsync);
        let log = open(dir.path(), config.clone()).await;
        for i in 0..100 {
            log.append(batch(3, 1000, i)).await.expect("append");
        }
        let bases = log.segment_bases();
        assert!(bases.len() >= 3, "need several segments, got {bases:?}");
        // An offset inside the third segment keeps that segment whole.
        let cut = bases[2].plus(1);
        assert_eq!(log.delete_before(cut).await.expect("delete"), 2);
        assert_eq!(log.offsets().start, bases[2]);
        assert_eq!(log.segment_bases()[0], bases[2]);
        let err = log
            .read(ReadRequest {
                offset: Offset(0),
                max_bytes: 1 << 20,
                end: None,
            })
            .await
            .expect_err("below the start");
        assert!(matches!(err, StorageError::OffsetOutOfRange { .. }), "{err}");
        // The active segment is never deleted, whatever the offset.
        let end = log.offsets().durable_next;
        log.delete_before(end.plus(1000)).await.expect("delete");
        assert_eq!(log.segment_bases().len(), 1);
        let remaining = read_all(&log, log.offsets().start).await;
        log.close().await.expect("close");
        let (log, _) = Log::open(dir.path(), config, LogContext::new(1 << 20))
            .await
            .expect("reopen");
        assert_eq!(log.offsets().durable_next, end);
        assert_eq!(read_all(&log, log.offsets().start).await, remaining);
        log.close().await.expect("close");
    });
}

/// A rolled segment is sealed (fdatasync, trim, indexes) in the background:
/// appends into the new segment do not wait for it, and a seal that fails
/// fails no append and loses nothing; the next open finishes the job.
#[test]
fn a_failed_background_seal_fails_no_append_and_loses_nothing() {
    let dir = tmp();
    let config = small_config(Durability::Direct);
    let d = dir.path().to_path_buf();
    let c = config.clone();
    let sent = run(|| async move {
        let ctx = LogContext::new(1 << 20);
        let faults = ctx.faults.clone();
        let (log, _) = Log::open(&d, c, ctx).await.expect("open");
        // Direct mode syncs only when sealing or closing: this failure hits
        // the first roll's seal.
        faults.fail_syncs(1);
        let mut sent = Vec::new();
        while log.segment_bases().len() < 3 {
            let b = batch(2, 500, sent.len() as i64);
            log.append(b.clone())
                .await
                .expect("appends go on while a seal fails");
            sent.push(b);
        }
        log.close().await.expect("close");
        sent
    });
    let first = segment_files(dir.path()).into_iter().next().expect("a segment");
    let first_index = ferrolog_storage::index_path(&first);
    assert!(
        !first_index.exists(),
        "the seal stopped at its fdatasync, before writing indexes"
    );
    let d = dir.path().to_path_buf();
    run(|| async move {
        let (log, report) = Log::open(&d, config, LogContext::new(1 << 20))
            .await
            .expect("reopen");
        assert!(
            report.truncated.is_empty() && report.corrupt.is_empty(),
            "{report:?}"
        );
        assert_eq!(report.rebuilt_indexes, vec![first_index.clone()]);
        assert!(first_index.exists(), "recovery writes a sealed segment's indexes");
        let got = read_all(&log, Offset(0)).await;
        assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(strip_offset(g), s.to_vec());
        }
        log.close().await.expect("close");
    });
}

/// `direct_sync_bytes` starts a background fdatasync of the active segment
/// every that many bytes written (one at a time), and none without it.
#[test]
fn direct_mode_syncs_in_the_background_every_direct_sync_bytes() {
    for (direct_sync_bytes, expect_syncs) in [(0u64, false), (64 << 10, true)] {
        let dir = tmp();
        run(|| async move {
            let ctx = LogContext::new(1 << 20);
            let faults = ctx.faults.clone();
            let config = LogConfig {
                segment_bytes: 64 << 20,
                direct_sync_bytes,
                ..small_config(Durability::Direct)
            };
            let (log, _) = Log::open(dir.path(), config, ctx).await.expect("open");
            let mut syncs_seen = Vec::new();
            for i in 0..40 {
                log.append(batch(4, 4000, i)).await.expect("append");
                // Let a background sync run to completion before the next append.
                for _ in 0..50 {
                    futures_lite::future::yield_now().await;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                syncs_seen.push(faults.syncs());
            }
            let before_close = faults.syncs();
            assert_eq!(log.segment_bases().len(), 1, "no roll, so no seal syncs");
            if expect_syncs {
                // 40 x ~16 KiB = ~640 KiB written: about one sync per 64 KiB.
                assert!(
                    (3..=12).contains(&before_close),
                    "expected ~10 background syncs, saw {before_close}: {syncs_seen:?}"
                );
            } else {
                assert_eq!(before_close, 0, "no background syncs when off");
            }
            log.close().await.expect("close");
            assert_eq!(faults.syncs(), before_close + 1, "close syncs once");
        });
    }
}

fn offset_and_epoch(batch: &[u8]) -> (Offset, ferrolog_model::Epoch) {
    let h = ferrolog_model::BatchHeader::parse(batch).expect("parses");
    (h.base_offset, h.partition_leader_epoch)
}

/// `append` rewrites the base offset and leader epoch without touching the
/// producer's buffer (it is usually a slice of a request, shared), and what is
/// read back, from the cache and from disk, carries the assigned values.
#[test]
fn append_leaves_the_producers_buffer_untouched() {
    let dir = tmp();
    let config = small_config(Durability::Fsync);
    let d = dir.path().to_path_buf();
    let c = config.clone();
    run(|| async move {
        let log = open(&d, c).await;
        log.append(batch(3, 100, 1)).await.expect("append");
        let mine = batch(2, 300, 2);
        let kept = mine.clone();
        let a = log
            .append_with_epoch(mine, Some(ferrolog_model::Epoch(7)))
            .await
            .expect("append");
        assert_eq!(a.base_offset, Offset(3));
        let h = ferrolog_model::BatchHeader::parse(&kept).expect("parses");
        assert_eq!(h.base_offset, Offset(0), "the producer's bytes are not rewritten");
        let got = read_all(&log, Offset(3)).await;
        assert_eq!(offset_and_epoch(&got[0]), (Offset(3), ferrolog_model::Epoch(7)));
        assert_eq!(got[0][16..], kept[16..], "the rest is stored as sent");
        log.close().await.expect("close");
    });
    run(|| async move {
        let (log, _) = Log::open(dir.path(), config, LogContext::new(1 << 20))
            .await
            .expect("reopen");
        let got = read_all(&log, Offset(3)).await;
        assert_eq!(offset_and_epoch(&got[0]), (Offset(3), ferrolog_model::Epoch(7)));
        log.close().await.expect("close");
    });
}

fn open_paths(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

/// Files under `dir` this process holds open (from /proc/self/fd).
fn open_files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
fn sealed_segments_are_opened_on_read_within_the_shards_file_budget() {
    let dir = tmp();
    run(|| async move {
        let config = small_config(Durability::Fsync);
        let log = open(dir.path(), config.clone()).await;
        for i in 0..200 {
            log.append(batch(2, 1500, i)).await.expect("append");
        }
        let sent = read_all(&log, Offset(0)).await;
        log.close().await.expect("close");
        drop(log);
        // A fresh context: an empty batch cache, so reads go to the files.
        let ctx = LogContext::new(1 << 20);
        ctx.set_sealed_files_max(2);
        let (log, _) = Log::open(dir.path(), config, ctx.clone()).await.expect("reopen");
        let segments = log.segment_bases().len();
        assert!(segments > 4, "64 KiB segments should have rolled: {segments}");
        // Only the active segment's file stays open after recovery (glommio
        // closes a dropped file at its next I/O cycle, so let one pass).
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            open_files_under(dir.path()),
            1,
            "after open: {:?}",
            open_paths(dir.path())
        );
        assert_eq!(ctx.sealed_files().open, 0);
        // Every batch reads back, through at most 2 sealed files at a time.
        let got = read_all(&log, Offset(0)).await;
        assert_eq!(got, sent);
        let stats = ctx.sealed_files();
        assert_eq!(stats.open, 2, "{stats:?}");
        assert!(stats.opened >= (segments - 1) as u64, "{stats:?}");
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        assert!(open_files_under(dir.path()) <= 3, "active + 2 sealed");
        // A sealed file closed by the budget opens again.
        ctx.set_sealed_files_max(0);
        assert_eq!(read_all(&log, Offset(0)).await, sent);
        // Retention deletes segments and lets go of their files.
        ctx.set_sealed_files_max(8);
        assert_eq!(read_all(&log, Offset(0)).await, sent);
        log.set_config(LogConfig {
            retention_bytes: Some(0),
            ..log.config().as_ref().clone()
        });
        log.apply_retention().await.expect("retention");
        assert_eq!(log.segment_bases().len(), 1);
        assert_eq!(ctx.sealed_files().open, 0);
        log.close().await.expect("close");
        drop(log);
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(open_files_under(dir.path()), 0, "after close");
    });
}

/// A close whose active segment's indexes are what the open loaded leaves
/// their files alone (same inodes); one after appends that added entries
/// writes them, and the next open trusts what it wrote.
#[test]
fn close_rewrites_the_index_files_only_when_they_changed() {
    use std::os::unix::fs::MetadataExt;
    let dir = tmp();
    run(|| async move {
        let config = small_config(Durability::Fsync);
        let inodes = |log: &Log| {
            let active = *log.segment_bases().last().expect("a segment");
            let path = dir.path().join(ferrolog_storage::log_file_name(active));
            let ino = |p: std::path::PathBuf| std::fs::metadata(p).expect("index file").ino();
            (
                ino(ferrolog_storage::index_path(&path)),
                ino(ferrolog_storage::time_index_path(&path)),
            )
        };
        let log = open(dir.path(), config.clone()).await;
        for i in 0..10 {
            log.append(batch(2, 300, i)).await.expect("append");
        }
        log.close().await.expect("close");
        let reopen = || Log::open(dir.path(), config.clone(), LogContext::new(1 << 20));

        let (log, report) = reopen().await.expect("reopen");
        assert!(report.rebuilt_indexes.is_empty(), "{report:?}");
        let written = inodes(&log);
        log.close().await.expect("close unchanged");
        let (log, report) = reopen().await.expect("reopen");
        assert!(report.rebuilt_indexes.is_empty(), "{report:?}");
        assert_eq!(inodes(&log), written, "unchanged indexes are not written again");

        // Batches that add entries: written at close, trusted at the next open.
        for i in 0..5 {
            log.append(batch(2, 600, 200 + i)).await.expect("append");
        }
        let before = read_all(&log, Offset(0)).await;
        log.close().await.expect("close changed");
        let (log, report) = reopen().await.expect("reopen");
        assert!(report.rebuilt_indexes.is_empty(), "{report:?}");
        assert!(report.truncated.is_empty(), "{report:?}");
        assert_ne!(inodes(&log), written, "changed indexes are written");
        assert_eq!(read_all(&log, Offset(0)).await, before);
        log.close().await.expect("close");
    });
}

/// A log opened where no directory is (a new partition) creates nothing
/// until its first write: no directory, no file, at open or at close. The
/// first append creates both and is durable like any other; a reopen finds
/// it. A failed first write (the directory cannot be made) fails its append,
/// moves no offset, and the log works once the cause is gone.
#[test]
fn a_new_log_creates_nothing_until_its_first_write() {
    for durability in [Durability::Fsync, Durability::Direct] {
        let root = tmp();
        let dir = root.path().join("orders-0");
        let config = small_config(durability);
        let (d, c) = (dir.clone(), config.clone());
        run(|| async move {
            let log = open(&d, c.clone()).await;
            assert!(log.is_unborn());
            assert!(!d.exists(), "open created {}", d.display());
            let o = log.offsets();
            assert_eq!(
                (o.start, o.durable_next, o.dirty_next),
                (Offset(0), Offset(0), Offset(0))
            );
            let r = log
                .read(ReadRequest {
                    offset: Offset(0),
                    max_bytes: 1 << 20,
                    end: None,
                })
                .await
                .expect("read an empty log");
            assert!(r.batches.is_empty());
            assert_eq!(
                log.offset_for_timestamp(TimestampMs(0)).await.expect("lookup"),
                None
            );
            log.truncate(Offset(0)).await.expect("truncate to the end");
            log.close().await.expect("close");
            assert!(!d.exists(), "close created {}", d.display());

            // The directory's name taken by a file: the first write fails.
            std::fs::write(&d, b"in the way").expect("a file in the way");
            let log = open(&d, c.clone()).await;
            let e = log
                .append(batch(2, 100, 1))
                .await
                .expect_err("no directory can be made");
            assert!(e.to_string().contains("create dir"), "{e}");
            assert_eq!(
                log.offsets().dirty_next,
                Offset(0),
                "a failed append moved offsets"
            );
            assert!(log.is_unborn());
            std::fs::remove_file(&d).expect("remove the file");
            let a = log
                .append(batch(2, 100, 1))
                .await
                .expect("append once the way is clear");
            assert_eq!(a.base_offset, Offset(0));
            assert!(!log.is_unborn());
            assert_eq!(segment_files(&d).len(), 1, "one segment file");
            log.append(batch(3, 100, 2)).await.expect("append");
            log.close().await.expect("close");
        });
        run(|| async move {
            let log = open(&dir, config).await;
            assert!(!log.is_unborn());
            assert_eq!(log.offsets().durable_next, Offset(5));
            assert_eq!(read_all(&log, Offset(0)).await.len(), 2);
            log.close().await.expect("close");
        });
    }
}
