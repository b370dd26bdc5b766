//! `Log::advance_start` (DeleteRecords): the start moves up, reads below it
//! are refused, whole segments below it are deleted, and it survives a
//! reopen; offsets past the durable end are refused and change nothing.

mod common;

use common::*;
use ferrolog_model::Offset;
use ferrolog_storage::{Durability, Log, LogContext, ReadRequest, StorageError, START_OFFSET_FILE};

#[test]
fn advance_start_moves_the_start_deletes_segments_and_survives_reopen() {
    let dir = tmp();
    run(|| async move {
        let config = small_config(Durability::Fsync);
        let log = open(dir.path(), config.clone()).await;
        for i in 0..60 {
            log.append(batch(2, 2000, i)).await.expect("append");
        }
        let end = log.offsets().durable_next;
        let segments = log.segment_bases();
        assert!(
            segments.len() > 3,
            "small segments should have rolled: {segments:?}"
        );
        // Inside the third segment, not on a batch boundary.
        let cut = segments[2].plus(1);
        assert_eq!(log.advance_start(cut).await.expect("advance"), cut);
        assert_eq!(log.offsets().start, cut);
        assert_eq!(
            log.segment_bases()[0],
            segments[2],
            "the two segments below were deleted"
        );
        let below = log
            .read(ReadRequest {
                offset: cut.plus(-1),
                end: None,
                max_bytes: 1 << 20,
            })
            .await;
        assert!(
            matches!(below, Err(StorageError::OffsetOutOfRange { .. })),
            "{below:?}"
        );
        // A read at the start returns the batch holding it, whole.
        let got = read_all(&log, cut).await;
        let from_third = usize::try_from((end.0 - segments[2].0) / 2).expect("count");
        assert_eq!(got.len(), from_third, "the batch with the start and all after it");
        // Lower and equal offsets change nothing; beyond the end is refused.
        assert_eq!(log.advance_start(Offset(3)).await.expect("lower"), cut);
        let beyond = log.advance_start(end.plus(1)).await;
        assert!(
            matches!(beyond, Err(StorageError::OffsetOutOfRange { .. })),
            "{beyond:?}"
        );
        assert_eq!(log.offsets().start, cut);
        log.close().await.expect("close");

        let text = std::fs::read_to_string(dir.path().join(START_OFFSET_FILE)).expect("file");
        assert_eq!(text.trim(), cut.0.to_string());
        let (log, _) = Log::open(dir.path(), config.clone(), LogContext::new(1 << 20))
            .await
            .expect("reopen");
        assert_eq!(log.offsets().start, cut, "the start survives a reopen");
        assert_eq!(log.offsets().durable_next, end);
        // Up to the end: every record is gone; new appends carry on.
        assert_eq!(log.advance_start(end).await.expect("to the end"), end);
        let a = log.append(batch(1, 10, 99)).await.expect("append after");
        assert_eq!(a.base_offset, end);
        log.close().await.expect("close");

        std::fs::write(dir.path().join(START_OFFSET_FILE), "garbage").expect("damage");
        let damaged = Log::open(dir.path(), config, LogContext::new(1 << 20)).await;
        assert!(damaged.is_err(), "a damaged start file must not be ignored");
    });
}
