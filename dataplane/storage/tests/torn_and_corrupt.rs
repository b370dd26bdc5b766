//! Recovery from damage on disk: a torn last write cut at every byte, garbage
//! and zero padding after the last batch, flipped bits in sealed and active
//! segments, and missing or damaged index files. The damage is made with
//! plain file I/O between runs, as a crash or a bad disk would leave it.

mod common;

use bytes::Bytes;
use common::*;
use ferrolog_model::{BatchHeader, Offset, TimestampMs};
use ferrolog_storage::{
    index_path, time_index_path, Durability, Log, LogConfig, LogContext, OffsetEntry, OffsetIndex,
    ReadRequest, RecoveryReport, StorageError, TimeEntry, TimeIndex,
};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A batch as the log stores it: the producer's bytes with the assigned base offset.
#[derive(Clone, Debug)]
struct Stored {
    base: Offset,
    last: Offset,
    bytes: Bytes,
    timestamps: Vec<i64>,
}

fn contains(b: &Stored, o: Offset) -> bool {
    b.base <= o && o <= b.last
}

async fn append(log: &Log, timestamps: Vec<i64>, value_bytes: usize, seed: u64) -> Stored {
    let sent = timed_batch(&timestamps, value_bytes, seed);
    let a = log.append(sent.clone()).await.expect("append");
    let mut bytes = sent.to_vec();
    ferrolog_model::batch::set_base_offset(&mut bytes, a.base_offset);
    Stored {
        base: a.base_offset,
        last: a.last_offset,
        bytes: bytes.into(),
        timestamps,
    }
}

/// Appends `count` batches of 1..4 records with varied sizes and slightly
/// out-of-order timestamps around `1000 + 10 * i`.
async fn fill(log: &Log, rng: &mut Rng, count: usize, value_bytes_max: u64) -> Vec<Stored> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let records = rng.range(1, 5) as usize;
        let stamps = (0..records)
            .map(|_| 1000 + 10 * i as i64 + rng.range(0, 30) as i64)
            .collect();
        let value_bytes = rng.range(0, value_bytes_max) as usize;
        out.push(append(log, stamps, value_bytes, rng.next_u64()).await);
    }
    out
}

async fn reopen(dir: &Path, config: &LogConfig) -> (Rc<Log>, RecoveryReport) {
    Log::open(dir, config.clone(), LogContext::new(1 << 20))
        .await
        .expect("reopen")
}

fn assert_same_batches(got: &[Bytes], want: &[Stored]) {
    assert_eq!(got.len(), want.len(), "batch count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(*g == w.bytes, "batch {i} (base {}) differs", w.base);
    }
}

/// Reads at every offset of `want` (one batch, and several from each batch's
/// base) and checks each answer byte for byte.
async fn assert_reads_at_every_offset(log: &Log, want: &[Stored]) {
    let mut i = 0;
    for o in want[0].base.0..=want.last().expect("batches").last.0 {
        let o = Offset(o);
        while !contains(&want[i], o) {
            i += 1;
        }
        let sizes: &[usize] = if o == want[i].base { &[1, 16 << 10] } else { &[1] };
        for &max_bytes in sizes {
            let r = log
                .read(ReadRequest {
                    offset: o,
                    max_bytes,
                    end: None,
                })
                .await
                .unwrap_or_else(|e| panic!("read at {o}: {e}"));
            assert!(!r.batches.is_empty(), "read at {o} returned nothing");
            for (k, b) in r.batches.iter().enumerate() {
                BatchHeader::parse_verified(b).expect("served batch verifies");
                assert!(*b == want[i + k].bytes, "read at {o}: batch {k} differs");
            }
        }
    }
}

/// Every offset-for-timestamp answer from before the first record to past
/// the last matches the model.
async fn assert_offset_for_timestamp(log: &Log, want: &[Stored]) {
    let newest = want
        .iter()
        .flat_map(|b| b.timestamps.iter())
        .max()
        .expect("records");
    for ts in (900..newest + 10).step_by(7) {
        let expected = model_offset_for_timestamp(want.iter().map(|b| (b.base, &b.timestamps[..])), ts);
        let got = log
            .offset_for_timestamp(TimestampMs(ts))
            .await
            .expect("offset_for_timestamp");
        assert_eq!(got, expected, "offset_for_timestamp({ts})");
    }
}

/// Cuts the last batch of the active segment at every byte (a write torn
/// anywhere) and checks what recovery keeps, reports and serves.
#[test]
fn torn_last_batch_is_cut_at_every_byte() {
    let root = tmp();
    let src = root.path().join("src");
    // The log is built with fsync; the ~600 reopens of the copies use direct
    // mode, which only skips their fdatasyncs (recovery does not depend on it).
    let config = small_config(Durability::Direct);
    run(|| async {
        let log = Log::open(&src, small_config(Durability::Fsync), LogContext::new(1 << 20))
            .await
            .expect("open")
            .0;
        let mut rng = Rng::new(7);
        let mut written = fill(&log, &mut rng, 40, 3000).await;
        // The last batch: one record, about 300 bytes in all.
        written.push(append(&log, vec![5000], 220, 99).await);
        log.close().await.expect("close");

        let files = segment_files(&src);
        assert!(
            files.len() >= 2,
            "expected a sealed segment besides the active one"
        );
        let active_name = files
            .last()
            .expect("segments")
            .file_name()
            .expect("name")
            .to_owned();
        let on_disk = file_batches(files.last().expect("segments"));
        let (pos_last, h_last) = *on_disk.last().expect("active segment has batches");
        let last = written.last().expect("batches").clone();
        assert_eq!(h_last.base_offset, last.base);
        let len = last.bytes.len() as u64;
        assert!((250..=350).contains(&len), "last batch is {len} bytes");
        let original = std::fs::read(files.last().expect("segments")).expect("read");
        // The index close wrote points at the last batch, so the even cuts
        // (which keep it) tear a batch that a trusted index entry names.
        let index = std::fs::read(index_path(files.last().expect("segments"))).expect("index");
        let index = OffsetIndex::decode(&index, u64::MAX).expect("index decodes");
        assert_eq!(index.last().map(|e| u64::from(e.position)), Some(pos_last));
        assert_eq!(
            &original[pos_last as usize..(pos_last + len) as usize],
            &last.bytes[..]
        );

        for cut in 0..=len {
            // Odd cuts also lose the active segment's index files, as a crash
            // before close does; even cuts keep the ones close wrote.
            let dir = root.path().join(format!("cut-{cut}"));
            copy_dir(&src, &dir);
            let active = dir.join(&active_name);
            set_file_len(&active, pos_last + cut);
            if cut % 2 == 1 {
                std::fs::remove_file(index_path(&active)).expect("remove index");
                std::fs::remove_file(time_index_path(&active)).expect("remove time index");
            }

            let (log, report) = reopen(&dir, &config).await;
            let survivors = if cut == len {
                &written[..]
            } else {
                &written[..written.len() - 1]
            };
            let end = survivors.last().expect("survivors").last.plus(1);
            assert_eq!(log.offsets().start, Offset(0), "cut {cut}");
            assert_eq!(log.offsets().durable_next, end, "cut {cut}");
            assert!(report.corrupt.is_empty(), "cut {cut}: {report:?}");

            // A torn tail is reported unless every byte of it is zero: the
            // first bytes of a batch are the high bytes of a small base
            // offset, indistinguishable from the block padding a clean
            // close leaves, and dropping them loses nothing.
            let tail = &original[pos_last as usize..(pos_last + cut) as usize];
            let torn = cut > 0 && cut < len;
            if torn && cut >= 8 {
                assert!(tail.iter().any(|&b| b != 0), "cut {cut} should be visible damage");
            }
            if torn && tail.iter().any(|&b| b != 0) {
                assert_eq!(report.truncated.len(), 1, "cut {cut}: {report:?}");
                let t = &report.truncated[0];
                assert_eq!(t.path, active, "cut {cut}");
                assert_eq!(t.position, pos_last, "cut {cut}");
                assert_eq!(t.bytes, cut, "cut {cut}");
            } else {
                assert!(report.truncated.is_empty(), "cut {cut}: {report:?}");
            }
            // A torn batch is cut; an all-zero tail (padding, as far as
            // recovery can tell) is left for the next flush to overwrite.
            let kept = if cut == len || !tail.iter().any(|&b| b != 0) {
                pos_last + cut
            } else {
                pos_last
            };
            assert_eq!(std::fs::metadata(&active).expect("stat").len(), kept, "cut {cut}");

            assert_same_batches(&read_all_with(&log, Offset(0), 1 << 20).await, survivors);
            let next = append(&log, vec![6000, 6001], 50, 1000 + cut).await;
            assert_eq!(next.base, end, "cut {cut}: offsets continue after the cut");
            log.close().await.expect("close");

            let (log, report) = reopen(&dir, &config).await;
            assert!(report.truncated.is_empty(), "cut {cut}: {report:?}");
            assert_eq!(log.offsets().durable_next, next.last.plus(1), "cut {cut}");
            let mut want = survivors.to_vec();
            want.push(next);
            assert_same_batches(&read_all_with(&log, Offset(0), 1 << 20).await, &want);
            log.close().await.expect("close");
            std::fs::remove_dir_all(&dir).expect("remove cut dir");
        }
    });
}

/// Bytes after the last whole batch: garbage is cut and reported, zero
/// padding is kept silently (the next flush overwrites it), and no batch is
/// lost either way.
#[test]
fn garbage_after_the_last_batch_is_cut_and_zero_padding_kept() {
    let root = tmp();
    let src = root.path().join("src");
    let config = small_config(Durability::Direct);
    let mut rng = Rng::new(11);
    let written = run(|| async {
        let log = Log::open(&src, config.clone(), LogContext::new(1 << 20))
            .await
            .expect("open")
            .0;
        let written = fill(&log, &mut rng, 30, 1500).await;
        log.close().await.expect("close");
        written
    });
    let files = segment_files(&src);
    let active_name = files
        .last()
        .expect("segments")
        .file_name()
        .expect("name")
        .to_owned();
    let (pos_last, h_last) = *file_batches(files.last().expect("segments"))
        .last()
        .expect("batches");
    let end_pos = pos_last + h_last.total_bytes() as u64;
    let end = written.last().expect("batches").last.plus(1);
    assert_eq!(h_last.last_offset().plus(1), end);

    // A whole, valid batch that does not continue the offsets: stale data.
    let mut stale = written[0].bytes.to_vec();
    ferrolog_model::batch::set_base_offset(&mut stale, Offset(0));
    // The header of the next batch, whose body never made it to disk.
    let mut header_only = written[3].bytes[..100].to_vec();
    ferrolog_model::batch::set_base_offset(&mut header_only, end);
    let mut zeros_then_garbage = vec![0u8; 3000];
    zeros_then_garbage.extend(rng.non_zero_bytes(40));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage", rng.non_zero_bytes(1000), true),
        ("zeros then garbage", zeros_then_garbage, true),
        ("stale batch", stale, true),
        ("header without body", header_only, true),
        ("zero padding", vec![0u8; 3000], false),
        ("zero padding over blocks", vec![0u8; 9000], false),
    ];

    run(|| async {
        for (name, tail, reported) in &cases {
            let dir = root.path().join(name.replace(' ', "-"));
            copy_dir(&src, &dir);
            let active = dir.join(&active_name);
            set_file_len(&active, end_pos);
            append_to_file(&active, tail);

            let (log, report) = reopen(&dir, &config).await;
            assert_eq!(log.offsets().durable_next, end, "{name}");
            assert!(report.corrupt.is_empty(), "{name}: {report:?}");
            if *reported {
                assert_eq!(report.truncated.len(), 1, "{name}: {report:?}");
                let t = &report.truncated[0];
                assert_eq!(
                    (t.path.as_path(), t.position, t.bytes),
                    (active.as_path(), end_pos, tail.len() as u64),
                    "{name}"
                );
            } else {
                assert!(report.truncated.is_empty(), "{name}: {report:?}");
            }
            // Garbage is cut; zero padding of the active segment stays, to be
            // overwritten by the next flush.
            let want_len = if *reported {
                end_pos
            } else {
                end_pos + tail.len() as u64
            };
            assert_eq!(
                std::fs::metadata(&active).expect("stat").len(),
                want_len,
                "{name}"
            );
            assert_same_batches(&read_all(&log, Offset(0)).await, &written);

            let next = append(&log, vec![7000], 10, 5).await;
            assert_eq!(next.base, end, "{name}");
            log.close().await.expect("close");
            let (log, report) = reopen(&dir, &config).await;
            assert!(report.truncated.is_empty(), "{name}: {report:?}");
            let mut want = written.clone();
            want.push(next);
            assert_same_batches(&read_all(&log, Offset(0)).await, &want);
            log.close().await.expect("close");
        }
    });
}

/// Where the records of batch `h` at `pos` are: past the header, whose
/// baseOffset and partitionLeaderEpoch the CRC does not cover.
fn middle_of_records(pos: u64, h: &BatchHeader) -> u64 {
    let header = ferrolog_model::batch::HEADER_BYTES as u64;
    pos + header + (h.total_bytes() as u64 - header) / 2
}

/// A flipped byte inside a sealed segment: open succeeds, the damaged batch
/// is never served (reads that start in it fail with `Corrupt` naming file
/// and position), and everything around it stays readable.
#[test]
fn flipped_byte_in_a_sealed_segment_is_never_served() {
    let root = tmp();
    let src = root.path().join("src");
    let config = small_config(Durability::Fsync);
    let written = run(|| async {
        let log = Log::open(&src, config.clone(), LogContext::new(1 << 20))
            .await
            .expect("open")
            .0;
        let written = fill(&log, &mut Rng::new(3), 150, 2500).await;
        log.close().await.expect("close");
        written
    });
    let files = segment_files(&src);
    assert!(files.len() >= 3, "expected several segments, got {}", files.len());
    let seg0_name = files[0].file_name().expect("name").to_owned();
    let in_seg0 = file_batches(&files[0]);
    let k = in_seg0.len() / 2;
    let (pos_k, h_k) = in_seg0[k];
    let bad = &written[k];
    assert_eq!(h_k.base_offset, bad.base);
    let end = written.last().expect("batches").last.plus(1);

    run(|| async {
        // With the indexes the open scans only past the last index entry;
        // without them it scans the whole segment and must report the damage.
        for drop_indexes in [false, true] {
            let dir = root.path().join(format!("flip-{drop_indexes}"));
            copy_dir(&src, &dir);
            let seg0 = dir.join(&seg0_name);
            flip_byte(&seg0, middle_of_records(pos_k, &h_k), 0x5a);
            let damaged = std::fs::read(&seg0).expect("read");
            let span = pos_k as usize..pos_k as usize + h_k.total_bytes();
            assert!(BatchHeader::parse_verified(&damaged[span]).is_err());
            if drop_indexes {
                std::fs::remove_file(index_path(&seg0)).expect("remove index");
                std::fs::remove_file(time_index_path(&seg0)).expect("remove time index");
            }

            let (log, report) = reopen(&dir, &config).await;
            assert!(
                report.truncated.is_empty(),
                "sealed segments are never cut: {report:?}"
            );
            for (path, position, reason) in &report.corrupt {
                assert_eq!((path, *position), (&seg0, pos_k), "{reason}");
            }
            if drop_indexes {
                assert_eq!(report.corrupt.len(), 1, "{report:?}");
                assert!(report.corrupt[0].2.contains("CRC"), "{report:?}");
                assert!(report.rebuilt_indexes.contains(&index_path(&seg0)), "{report:?}");
            }
            assert_eq!(log.offsets().durable_next, end);

            for o in 0..end.0 {
                let o = Offset(o);
                let i = written
                    .iter()
                    .position(|b| contains(b, o))
                    .expect("offset in log");
                let r = log
                    .read(ReadRequest {
                        offset: o,
                        max_bytes: 1 << 20,
                        end: None,
                    })
                    .await;
                if i == k {
                    match r {
                        Err(e @ StorageError::Corrupt { .. }) => {
                            let StorageError::Corrupt { path, position, .. } = &e else {
                                unreachable!()
                            };
                            assert_eq!((path, *position), (&seg0, pos_k));
                            let msg = e.to_string();
                            assert!(msg.contains(&*seg0.to_string_lossy()), "{msg}");
                            assert!(msg.contains(&pos_k.to_string()), "{msg}");
                        }
                        other => panic!("read at {o} in the damaged batch: {other:?}"),
                    }
                    continue;
                }
                let r = r.unwrap_or_else(|e| panic!("read at {o}: {e}"));
                assert!(!r.batches.is_empty(), "read at {o}");
                for (n, b) in r.batches.iter().enumerate() {
                    BatchHeader::parse_verified(b).expect("served batch verifies");
                    assert!(*b == written[i + n].bytes, "read at {o}: batch {n} differs");
                }
                if i < k {
                    // Up to the damage, never into it: the segment is far
                    // smaller than 1 MiB, so the read ends right before it.
                    assert_eq!(r.batches.len(), k - i, "read at {o} should stop at the damage");
                }
            }

            let next = append(&log, vec![9000], 10, 1).await;
            assert_eq!(next.base, end);
            log.close().await.expect("close");
        }
    });
}

/// A flipped byte in the active segment after an unclean stop: recovery
/// cuts the log at the damaged batch and reports it; batches before it stay.
#[test]
fn flipped_byte_in_the_active_segment_is_cut_on_recovery() {
    // Without index files the open scans the whole active segment; with the
    // stale ones an earlier close wrote it scans from their last entry. (The
    // open after a close deletes them when it drops the block padding, so
    // the test puts them back: the state a close at a block boundary leaves.)
    for stale_indexes in [false, true] {
        let root = tmp();
        let dir = root.path().join("log");
        let config = small_config(Durability::Fsync);
        let (written, first_after_close, saved) = run(|| async {
            let mut rng = Rng::new(21);
            let log = Log::open(&dir, config.clone(), LogContext::new(1 << 20))
                .await
                .expect("open")
                .0;
            let mut written = fill(&log, &mut rng, 20, 700).await;
            let mut first_after_close = 0;
            let mut saved = Vec::new();
            let log = if stale_indexes {
                log.close().await.expect("close");
                first_after_close = written.len();
                let active = segment_files(&dir).pop().expect("segments");
                for path in [index_path(&active), time_index_path(&active)] {
                    saved.push((path.clone(), std::fs::read(&path).expect("index after close")));
                }
                reopen(&dir, &config).await.0
            } else {
                log
            };
            let more = fill(&log, &mut rng, 20, 700).await;
            written.extend(more);
            // Every append was acknowledged; drop the log without closing it.
            drop(log);
            (written, first_after_close, saved)
        });
        for (path, bytes) in &saved {
            std::fs::write(path, bytes).expect("restore index");
        }
        let files = segment_files(&dir);
        let active = files.last().expect("segments").clone();
        let in_active = file_batches(&active);
        let first_in_active = written.len() - in_active.len();
        assert_eq!(in_active[0].1.base_offset, written[first_in_active].base);
        if stale_indexes {
            assert_eq!(
                saved[0].0,
                index_path(&active),
                "one segment should span the close"
            );
            let index = OffsetIndex::decode(&saved[0].1, u64::MAX).expect("saved index decodes");
            let last_entry = index.last().expect("the saved index has entries");
            assert!(first_in_active < first_after_close);
            assert!(u64::from(last_entry.position) < in_active[first_after_close - first_in_active].0);
        }
        // Damage a batch past the close, with whole batches after it.
        let from = first_after_close.max(first_in_active);
        let k = from + (written.len() - from) / 2;
        assert!(k + 1 < written.len());
        let (pos_k, h_k) = in_active[k - first_in_active];
        assert_eq!(h_k.base_offset, written[k].base);
        let file_len = std::fs::metadata(&active).expect("stat").len();
        flip_byte(&active, middle_of_records(pos_k, &h_k), 0x01);

        run(|| async {
            let (log, report) = reopen(&dir, &config).await;
            assert_eq!(report.truncated.len(), 1, "{report:?}");
            let t = &report.truncated[0];
            assert_eq!((&t.path, t.position, t.bytes), (&active, pos_k, file_len - pos_k));
            assert!(t.reason.contains("CRC"), "{}", t.reason);
            assert!(report.corrupt.is_empty(), "{report:?}");
            assert_eq!(log.offsets().durable_next, written[k].base);
            assert_same_batches(&read_all(&log, Offset(0)).await, &written[..k]);

            let next = append(&log, vec![8000], 100, 2).await;
            assert_eq!(next.base, written[k].base, "offsets continue at the cut");
            log.close().await.expect("close");
            let (log, report) = reopen(&dir, &config).await;
            assert!(report.truncated.is_empty(), "{report:?}");
            let mut want = written[..k].to_vec();
            want.push(next);
            assert_same_batches(&read_all(&log, Offset(0)).await, &want);
            log.close().await.expect("close");
        });
    }
}

#[derive(Clone, Copy, Debug)]
enum IndexDamage {
    DeleteOffsetIndex,
    DeleteTimeIndex,
    DeleteBoth,
    RandomOffsetIndex,
    RandomTimeIndex,
    WrongCrcOffsetIndex,
    WrongCrcTimeIndex,
    FlippedEntryOffsetIndex,
    EmptyOffsetIndex,
    EmptyTimeIndex,
    /// Valid files, but another segment's.
    OtherSegmentsIndexes,
    /// Valid, consistent files whose last entry names the wrong offset.
    WrongLastEntry,
}

fn damage(seg: &Path, other: &Path, how: IndexDamage, rng: &mut Rng) {
    let index = index_path(seg);
    let time_index = time_index_path(seg);
    let wrong_crc = |path: &PathBuf| {
        let mut b = std::fs::read(path).expect("read index");
        b[12] ^= 0xff;
        std::fs::write(path, b).expect("write index");
    };
    match how {
        IndexDamage::DeleteOffsetIndex => std::fs::remove_file(&index).expect("rm"),
        IndexDamage::DeleteTimeIndex => std::fs::remove_file(&time_index).expect("rm"),
        IndexDamage::DeleteBoth => {
            std::fs::remove_file(&index).expect("rm");
            std::fs::remove_file(&time_index).expect("rm");
        }
        IndexDamage::RandomOffsetIndex => std::fs::write(&index, rng.non_zero_bytes(4096)).expect("w"),
        IndexDamage::RandomTimeIndex => std::fs::write(&time_index, rng.non_zero_bytes(4096)).expect("w"),
        IndexDamage::WrongCrcOffsetIndex => wrong_crc(&index),
        IndexDamage::WrongCrcTimeIndex => wrong_crc(&time_index),
        IndexDamage::FlippedEntryOffsetIndex => flip_byte(&index, 16 + 8 + 7, 0x04),
        IndexDamage::EmptyOffsetIndex => std::fs::write(&index, b"").expect("w"),
        IndexDamage::EmptyTimeIndex => std::fs::write(&time_index, b"").expect("w"),
        IndexDamage::OtherSegmentsIndexes => {
            std::fs::copy(index_path(other), &index).expect("copy");
            std::fs::copy(time_index_path(other), &time_index).expect("copy");
        }
        IndexDamage::WrongLastEntry => {
            let size = std::fs::metadata(seg).expect("stat").len();
            let old = OffsetIndex::decode(&std::fs::read(&index).expect("read"), size).expect("index");
            let old_time = TimeIndex::decode(&std::fs::read(&time_index).expect("read")).expect("index");
            let n = old.entries().len();
            let (mut new, mut new_time) = (OffsetIndex::default(), TimeIndex::default());
            for (i, (e, t)) in old.entries().iter().zip(old_time.entries()).enumerate() {
                let shift = u32::from(i + 1 == n);
                new.push(OffsetEntry {
                    rel_offset: e.rel_offset + shift,
                    ..*e
                });
                new_time.push(TimeEntry {
                    rel_offset: t.rel_offset + shift,
                    ..*t
                });
            }
            std::fs::write(&index, new.encode()).expect("write");
            std::fs::write(&time_index, new_time.encode()).expect("write");
        }
    }
}

/// Missing or damaged index files of a sealed segment are rebuilt from the
/// segment, reported, written back valid, and every read and time look-up
/// works as before.
#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    let root = tmp();
    let src = root.path().join("src");
    let config = small_config(Durability::Direct);
    let written = run(|| async {
        let log = Log::open(&src, config.clone(), LogContext::new(1 << 20))
            .await
            .expect("open")
            .0;
        let written = fill(&log, &mut Rng::new(5), 150, 2500).await;
        log.close().await.expect("close");
        written
    });
    let files = segment_files(&src);
    assert!(files.len() >= 4, "expected several segments, got {}", files.len());
    // Damage a middle segment, so relative offsets are not absolute ones.
    let seg_name = files[1].file_name().expect("name").to_owned();
    let seg_size = std::fs::metadata(&files[1]).expect("stat").len();
    // Another sealed segment whose index passes `decode` for this one (every
    // entry inside it), so only the check of its last entry can reject it.
    let other = files[2..files.len() - 1]
        .iter()
        .find(|f| OffsetIndex::decode(&std::fs::read(index_path(f)).expect("read"), seg_size).is_ok())
        .expect("a sealed segment whose index fits the damaged one");
    let other_name = other.file_name().expect("name").to_owned();
    let original_index = OffsetIndex::decode(&std::fs::read(index_path(&files[1])).expect("read"), seg_size)
        .expect("index written at roll decodes");
    let original_time_index =
        TimeIndex::decode(&std::fs::read(time_index_path(&files[1])).expect("read")).expect("decodes");
    assert!(
        original_index.entries().len() >= 4,
        "the index should have entries to lose"
    );

    let cases = [
        IndexDamage::DeleteOffsetIndex,
        IndexDamage::DeleteTimeIndex,
        IndexDamage::DeleteBoth,
        IndexDamage::RandomOffsetIndex,
        IndexDamage::RandomTimeIndex,
        IndexDamage::WrongCrcOffsetIndex,
        IndexDamage::WrongCrcTimeIndex,
        IndexDamage::FlippedEntryOffsetIndex,
        IndexDamage::EmptyOffsetIndex,
        IndexDamage::EmptyTimeIndex,
        IndexDamage::OtherSegmentsIndexes,
        IndexDamage::WrongLastEntry,
    ];
    run(|| async {
        let mut rng = Rng::new(17);
        for how in cases {
            let dir = root.path().join(format!("{how:?}"));
            copy_dir(&src, &dir);
            let seg = dir.join(&seg_name);
            damage(&seg, &dir.join(&other_name), how, &mut rng);

            let (log, report) = reopen(&dir, &config).await;
            assert_eq!(report.rebuilt_indexes, vec![index_path(&seg)], "{how:?}");
            assert!(
                report.truncated.is_empty() && report.corrupt.is_empty(),
                "{how:?}: {report:?}"
            );
            assert_eq!(
                log.offsets().durable_next,
                written.last().expect("batches").last.plus(1)
            );
            assert_reads_at_every_offset(&log, &written).await;
            assert_offset_for_timestamp(&log, &written).await;

            let index = std::fs::read(index_path(&seg)).expect("index rewritten");
            let time_index = std::fs::read(time_index_path(&seg)).expect("time index rewritten");
            assert_eq!(
                OffsetIndex::decode(&index, seg_size).as_ref(),
                Ok(&original_index),
                "{how:?}"
            );
            assert_eq!(
                TimeIndex::decode(&time_index).as_ref(),
                Ok(&original_time_index),
                "{how:?}"
            );
            log.close().await.expect("close");

            // The rewritten files are trusted on the next open.
            let (log, report) = reopen(&dir, &config).await;
            assert!(report.rebuilt_indexes.is_empty(), "{how:?}: {report:?}");
            assert_reads_at_every_offset(&log, &written).await;
            log.close().await.expect("close");
        }
    });
}
