//! Internal errors to Kafka error codes: the one place they are mapped.

use crate::producer_state::SequenceError;
use crate::topics::TopicError;
use ferrolog_model::BatchError;
use ferrolog_shard::ShardError;
use ferrolog_storage::StorageError;
use kafka_protocol::error::ResponseError;

/// Errors from the partition's log.
pub fn storage(e: &StorageError) -> ResponseError {
    match e {
        StorageError::InvalidBatch(BatchError::CrcMismatch { .. }) => ResponseError::CorruptMessage,
        StorageError::InvalidBatch(BatchError::BadMagic(_)) => ResponseError::UnsupportedForMessageFormat,
        StorageError::InvalidBatch(_) => ResponseError::CorruptMessage,
        StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::Corrupt { .. } | StorageError::Io { .. } | StorageError::FlushFailed(_) => {
            ResponseError::KafkaStorageError
        }
        StorageError::BadTruncation(_) => ResponseError::UnknownServerError,
        // The partition is being deleted or the node is stopping: clients
        // refresh metadata and retry.
        StorageError::Closed => ResponseError::NotLeaderOrFollower,
    }
}

/// A call to another shard that did not complete.
pub fn shard(_e: &ShardError) -> ResponseError {
    // Only happens while the node shuts down: tell clients to go elsewhere.
    ResponseError::NotLeaderOrFollower
}

/// A batch refused by the idempotent-producer checks.
pub fn producer(e: &SequenceError) -> ResponseError {
    match e {
        SequenceError::StaleEpoch { .. } => ResponseError::InvalidProducerEpoch,
        SequenceError::NewEpochNotAtZero { .. } | SequenceError::OutOfOrder { .. } => {
            ResponseError::OutOfOrderSequenceNumber
        }
    }
}

pub fn topic(e: &TopicError) -> ResponseError {
    match e {
        TopicError::InvalidName(..) => ResponseError::InvalidTopicException,
        TopicError::InvalidConfig { .. } | TopicError::UnknownConfig(_) => ResponseError::InvalidConfig,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_kafka_protocol() {
        let crc = StorageError::InvalidBatch(BatchError::CrcMismatch {
            stored: 1,
            computed: 2,
        });
        assert_eq!(storage(&crc).code(), 2);
        assert_eq!(
            storage(&StorageError::BatchTooLarge { size: 2, max: 1 }).code(),
            10
        );
        assert_eq!(storage(&StorageError::Closed).code(), 6);
        let io = StorageError::Io {
            op: "write",
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(storage(&io).code(), 56);
        assert_eq!(topic(&TopicError::InvalidName("a/b".into(), "x")).code(), 17);
        assert_eq!(topic(&TopicError::UnknownConfig("x".into())).code(), 40);
        let stale = SequenceError::StaleEpoch {
            producer_id: 1,
            epoch: 0,
            current: 1,
        };
        assert_eq!(producer(&stale).code(), 47);
        let gap = SequenceError::OutOfOrder {
            producer_id: 1,
            epoch: 0,
            first_seq: 5,
            expected: 3,
        };
        assert_eq!(producer(&gap).code(), 45);
    }
}
