//! Typed errors of the partition layer. The kafka crate maps them to Kafka
//! error codes (its `errors` module, the only place codes are made).

use crate::producer_state::SequenceError;
use ferrolog_model::{Epoch, Ntp, Offset};
use ferrolog_shard::ShardError;
use ferrolog_storage::StorageError;
use std::time::Duration;

/// Why an operation on one partition failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// This node has no open partition of that name (unknown, deleted, or
    /// not assigned to this node).
    #[error("{0} is not here")]
    NotHere(Ntp),
    /// The partition exists but this node does not lead it (a replica, or
    /// not assigned here): the client must ask the leader.
    #[error("this node does not lead {0}")]
    NotLeader(Ntp),
    /// The batch was appended here, but this node stopped leading before a
    /// majority of the replica set held it: a later leader may keep it or
    /// drop it. Not "not the leader", which clients read as "not written"
    /// (librdkafka then renumbers the retry after an epoch bump, and a kept
    /// copy would be read twice); Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND
    /// says "possibly written, retry".
    #[error("appended to {0}, but this node stopped leading before a majority held it")]
    NotCommitted(Ntp),
    /// The payload does not split into record batches.
    #[error("{0}")]
    CorruptBatch(String),
    /// A batch whose header breaks a producer rule (record count, offsets,
    /// sequence numbers).
    #[error("{0}")]
    InvalidRecord(String),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A retried batch whose first copy a failed flush discarded.
    #[error(
        "the first copy of this batch (offsets {base}..={last}) was lost to a failed write; send it again"
    )]
    LostToFailedWrite { base: Offset, last: Offset },
    /// acks=all was not satisfied within the request's timeout. The batch
    /// may still become durable later, as in Kafka.
    #[error("not acknowledged within the request timeout of {0:?}")]
    TimedOut(Duration),
    /// `min.insync.replicas` is not met: too few replicas are caught up.
    #[error("{insync} replicas in sync, {min} required")]
    NotEnoughReplicas { insync: usize, min: usize },
    /// The client's current leader epoch (KIP-320) is older than the
    /// partition's: its metadata is stale.
    #[error("leader epoch {asked} is older than the partition's {current}")]
    FencedLeaderEpoch { asked: Epoch, current: Epoch },
    /// The client's current leader epoch is newer than the partition's:
    /// this node has not heard of it yet.
    #[error("leader epoch {asked} is newer than the partition's {current}")]
    UnknownLeaderEpoch { asked: Epoch, current: Epoch },
    /// ListOffsets with a timestamp that is neither a time nor -1/-2.
    #[error("invalid timestamp query {0}")]
    BadTimestampQuery(i64),
    /// A CreateTime batch outside the topic's `message.timestamp.*.max.ms`
    /// bounds.
    #[error("{0}")]
    InvalidTimestamp(String),
    /// DeleteRecords to an offset beyond the high watermark.
    #[error("offset {asked} is beyond the high watermark {high_watermark}")]
    OffsetOutOfRange { asked: Offset, high_watermark: Offset },
    /// The owner shard could not be reached (the node is stopping).
    #[error(transparent)]
    Shard(#[from] ShardError),
}

impl PartitionError {
    /// Errors caused by what the client sent, not by the broker: they are
    /// not worth a warning in the log.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            PartitionError::CorruptBatch(_)
                | PartitionError::InvalidRecord(_)
                | PartitionError::Sequence(_)
                | PartitionError::BadTimestampQuery(_)
                | PartitionError::InvalidTimestamp(_)
                | PartitionError::OffsetOutOfRange { .. }
                | PartitionError::Storage(StorageError::InvalidBatch(_) | StorageError::BatchTooLarge { .. })
        )
    }
}
