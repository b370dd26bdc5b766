//! `Log::append_guarded` and the discard listener: the guard sees the
//! offsets the batch will take, a refusal leaves the log untouched, and
//! batches lost to a failed flush or a truncation are reported.

mod common;

use common::*;
use ferrolog_model::Offset;
use ferrolog_storage::{Appended, Durability, Log, LogContext};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir")
}

#[test]
fn guard_sees_the_offsets_and_a_refusal_leaves_the_log_unchanged() {
    let dir = tmp();
    run(|| async move {
        let log = open(dir.path(), small_config(Durability::Fsync)).await;
        log.append(batch(2, 10, 1)).await.expect("append");

        let seen = Cell::new(None);
        let a = log
            .append_guarded(batch(3, 10, 2), None, |at| {
                seen.set(Some(at));
                true
            })
            .await
            .expect("append")
            .expect("the guard agreed");
        let want = Appended {
            base_offset: Offset(2),
            last_offset: Offset(4),
        };
        assert_eq!(seen.get(), Some(want));
        assert_eq!(a, want);

        let before = log.offsets();
        let refused = log
            .append_guarded(batch(1, 10, 3), None, |at| {
                assert_eq!(at.base_offset, Offset(5));
                false
            })
            .await
            .expect("no I/O error");
        assert_eq!(refused, None);
        assert_eq!(log.offsets(), before, "a refused batch must not move offsets");
        assert_eq!(read_all(&log, Offset(0)).await.len(), 2);

        // The refused batch's offsets go to the next one.
        let a = log.append(batch(1, 10, 4)).await.expect("append");
        assert_eq!(a.base_offset, Offset(5));
        log.close().await.expect("close");
    });
}

/// Concurrent guarded appends: each guard sees exactly the offsets its batch
/// gets, so a guard's bookkeeping never disagrees with the log.
#[test]
fn concurrent_guards_see_the_offsets_their_batches_take() {
    let dir = tmp();
    run(|| async move {
        let log = open(dir.path(), small_config(Durability::Fsync)).await;
        let decided: Rc<RefCell<Vec<(usize, Appended)>>> = Rc::default();
        let mut tasks = Vec::new();
        for i in 0..16usize {
            let log = log.clone();
            let decided = decided.clone();
            tasks.push(glommio::spawn_local(async move {
                let r = log
                    .append_guarded(batch(1 + i % 3, 100, i as i64), None, |at| {
                        decided.borrow_mut().push((i, at));
                        i % 4 != 3
                    })
                    .await
                    .expect("append");
                (i, r)
            }));
        }
        for t in tasks {
            let (i, r) = t.await;
            let seen = decided
                .borrow()
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, a)| *a)
                .expect("guard ran");
            match r {
                Some(a) => assert_eq!(a, seen, "batch {i}"),
                None => assert_eq!(i % 4, 3, "batch {i} refused"),
            }
        }
        let total: i64 = (0..16usize)
            .filter(|i| i % 4 != 3)
            .map(|i| 1 + (i % 3) as i64)
            .sum();
        assert_eq!(log.offsets().durable_next, Offset(total));
        log.close().await.expect("close");
    });
}

#[test]
fn failed_flush_and_truncation_tell_the_discard_listener() {
    let dir = tmp();
    let d = dir.path().to_path_buf();
    run(|| async move {
        let ctx = LogContext::new(1 << 20);
        let faults = ctx.faults.clone();
        let (log, _) = Log::open(&d, small_config(Durability::Fsync), ctx)
            .await
            .expect("open");
        let discarded: Rc<RefCell<Vec<Offset>>> = Rc::default();
        let d2 = discarded.clone();
        log.set_discard_listener(move |from| d2.borrow_mut().push(from));
        for i in 0..5 {
            log.append(batch(1, 100, i)).await.expect("append");
        }
        assert!(discarded.borrow().is_empty());

        faults.fail_syncs(1);
        let e = log
            .append_guarded(batch(2, 100, 9), None, |at| {
                assert_eq!(at.base_offset, Offset(5));
                true
            })
            .await
            .expect_err("the flush fails");
        assert!(matches!(e, ferrolog_storage::StorageError::Io { .. }), "{e}");
        assert_eq!(*discarded.borrow(), vec![Offset(5)]);
        assert_eq!(log.offsets().dirty_next, Offset(5));

        log.append(batch(1, 100, 10)).await.expect("append");
        log.truncate(Offset(3)).await.expect("truncate");
        assert_eq!(*discarded.borrow(), vec![Offset(5), Offset(3)]);
        log.close().await.expect("close");
    });
}

/// `append_queued` returns with the batches in the log but not written:
/// readable, not durable; one flush writes every batch queued so far (what
/// a follower relies on to write a leader's pipelined requests together);
/// a reopened log holds them.
#[test]
fn queued_appends_are_readable_at_once_and_durable_after_one_flush() {
    for durability in [Durability::Fsync, Durability::Direct] {
        let dir = tmp();
        run(|| async move {
            let log = open(dir.path(), small_config(durability)).await;
            log.append(batch(1, 10, 1)).await.expect("append");
            let mut ends = Vec::new();
            for i in 0..3 {
                let a = log
                    .append_queued(batch(2, 100, 2 + i), None, |_| true)
                    .await
                    .expect("queue")
                    .expect("the guard agreed");
                ends.push(a.last_offset);
            }
            assert_eq!(ends, vec![Offset(2), Offset(4), Offset(6)]);
            let o = log.offsets();
            assert_eq!(o.dirty_next, Offset(7));
            assert_eq!(
                o.durable_next,
                Offset(1),
                "queued batches were written before a flush"
            );
            assert_eq!(log.read_cached(Offset(1), Offset(7), 1 << 20).len(), 3);
            let refused = log
                .append_queued(batch(1, 10, 9), None, |_| false)
                .await
                .expect("no I/O error");
            assert_eq!(refused, None);
            log.flush().await.expect("flush");
            assert_eq!(log.offsets().durable_next, Offset(7));
            log.close().await.expect("close");
            let log = open(dir.path(), small_config(durability)).await;
            assert_eq!(log.offsets().durable_next, Offset(7));
            assert_eq!(read_all(&log, Offset(0)).await.len(), 4);
            log.close().await.expect("close");
        });
    }
}
