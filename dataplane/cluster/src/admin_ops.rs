//! Admin operations run on a partition's owner shard (see `ops` for the
//! pattern): DeleteRecords, DescribeProducers, and the partition sizes of
//! DescribeLogDirs. Each `*_local` returns one answer per item, in order.

use crate::error::PartitionError;
use crate::manager;
use crate::ops::led;
use crate::producer_state::ProducerView;
use ferrolog_model::{Ntp, Offset};

/// DeleteRecords for one partition: move its log start up to `offset`
/// (-1: the high watermark).
pub struct DeleteRecordsItem {
    pub ntp: Ntp,
    pub offset: i64,
}

/// Kafka's "delete up to the high watermark".
pub const DELETE_TO_HIGH_WATERMARK: i64 = -1;

/// On the leader: the new log start (the low watermark), or why not. An
/// offset beyond the high watermark, or negative other than -1, is
/// OFFSET_OUT_OF_RANGE, as in Kafka. On a replicated partition only the
/// leader's log moves (docs/operations.md).
pub async fn delete_records_local(items: Vec<DeleteRecordsItem>) -> Vec<Result<Offset, PartitionError>> {
    let m = manager::local();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let answer = async {
            let p = led(&m, &item.ntp)?;
            let hw = p.high_watermark();
            let target = match item.offset {
                DELETE_TO_HIGH_WATERMARK => hw,
                o if (0..=hw.0).contains(&o) => Offset(o),
                o => {
                    return Err(PartitionError::OffsetOutOfRange {
                        asked: Offset(o),
                        high_watermark: hw,
                    })
                }
            };
            Ok(p.log.advance_start(target).await?)
        }
        .await;
        out.push(answer);
    }
    out
}

/// On the leader: the producers the partition holds state for.
pub async fn describe_producers_local(items: Vec<Ntp>) -> Vec<Result<Vec<ProducerView>, PartitionError>> {
    let m = manager::local();
    items
        .into_iter()
        .map(|ntp| led(&m, &ntp).map(|p| p.producers()))
        .collect()
}

/// On any replica: the partition's size in bytes on this node, `None` if
/// the partition is not open here.
pub async fn log_size_local(items: Vec<Ntp>) -> Vec<Option<u64>> {
    let m = manager::local();
    items
        .into_iter()
        .map(|ntp| m.partition(&ntp).map(|p| p.log.size_bytes()))
        .collect()
}
