//! Internal errors to Kafka error codes: the one place they are mapped.

use crate::sasl::SaslError;
use crate::topics::TopicError;
use ferrolog_cluster::producer_state::SequenceError;
use ferrolog_cluster::PartitionError;
use ferrolog_controlplane::commands::CommandError;
use ferrolog_controlplane::controller::ControllerError;
use ferrolog_controlplane::credentials::CredentialError;
use ferrolog_controlplane::placement::PlacementError;
use ferrolog_controlplane::state::{StateError, TopicErrorKind};
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

/// Errors of the partition layer.
pub fn partition(e: &PartitionError) -> ResponseError {
    match e {
        PartitionError::NotHere(_) => ResponseError::UnknownTopicOrPartition,
        PartitionError::NotLeader(_) => ResponseError::NotLeaderOrFollower,
        PartitionError::NotCommitted(_) => ResponseError::NotEnoughReplicasAfterAppend,
        PartitionError::CorruptBatch(_) => ResponseError::CorruptMessage,
        PartitionError::InvalidRecord(_) => ResponseError::InvalidRecord,
        PartitionError::Sequence(e) => producer(e),
        PartitionError::Storage(e) => storage(e),
        PartitionError::LostToFailedWrite { .. } => ResponseError::KafkaStorageError,
        PartitionError::TimedOut(_) => ResponseError::RequestTimedOut,
        PartitionError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        PartitionError::BadTimestampQuery(_) => ResponseError::InvalidRequest,
        PartitionError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        PartitionError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
        PartitionError::InvalidTimestamp(_) => ResponseError::InvalidTimestamp,
        PartitionError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        PartitionError::Shard(e) => shard(e),
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

/// A topic command the controller's state machine refused.
pub fn command(e: &CommandError) -> ResponseError {
    match e {
        CommandError::TopicExists { .. } => ResponseError::TopicAlreadyExists,
        CommandError::UnknownTopic { .. } => ResponseError::UnknownTopicOrPartition,
        CommandError::IdMismatch { .. } => ResponseError::UnknownTopicId,
        CommandError::DuplicateTopicId { .. } => ResponseError::InvalidRequest,
        CommandError::InvalidName(e) | CommandError::InvalidConfig { source: e, .. } => topic(e),
        CommandError::InvalidPartitionCount { .. } => ResponseError::InvalidPartitions,
        CommandError::InvalidAssignment { .. } => ResponseError::InvalidReplicaAssignment,
    }
}

/// New partitions that cannot be placed on the live brokers.
pub fn placement(e: &PlacementError) -> ResponseError {
    match e {
        PlacementError::ReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
    }
}

/// An operation of the controller that failed.
pub fn controller(e: &ControllerError) -> ResponseError {
    match e {
        ControllerError::Command(e) => command(e),
        ControllerError::Rejected(StateError::Topic(t)) => match t.kind {
            TopicErrorKind::TopicExists => ResponseError::TopicAlreadyExists,
            TopicErrorKind::UnknownTopic => ResponseError::UnknownTopicOrPartition,
            TopicErrorKind::IdMismatch => ResponseError::UnknownTopicId,
            TopicErrorKind::DuplicateTopicId => ResponseError::InvalidRequest,
            TopicErrorKind::InvalidName => ResponseError::InvalidTopicException,
            TopicErrorKind::InvalidConfig => ResponseError::InvalidConfig,
            TopicErrorKind::InvalidPartitionCount => ResponseError::InvalidPartitions,
            TopicErrorKind::InvalidAssignment => ResponseError::InvalidReplicaAssignment,
        },
        ControllerError::Rejected(StateError::ProducerIdsExhausted) => ResponseError::UnknownServerError,
        ControllerError::Rejected(StateError::Credential(e)) => credential(e),
        ControllerError::Rejected(_) => ResponseError::InvalidRequest,
        // Retriable in the clients: they look for the controller again.
        ControllerError::NoLeader | ControllerError::Forward(_) | ControllerError::Stopping => {
            ResponseError::NotController
        }
        ControllerError::Timeout(_) => ResponseError::RequestTimedOut,
        // KAFKA_STORAGE_ERROR is retriable in the clients.
        ControllerError::Failed(_) => ResponseError::KafkaStorageError,
    }
}

/// A SCRAM credential change the controller refused.
pub fn credential(e: &CredentialError) -> ResponseError {
    match e {
        CredentialError::NotFound { .. } => ResponseError::ResourceNotFound,
        CredentialError::BadUserName
        | CredentialError::BadIterations(_)
        | CredentialError::BadSalt
        | CredentialError::BadSaltedPassword { .. } => ResponseError::UnacceptableCredential,
    }
}

/// A failed SASL step.
pub fn sasl(e: &SaslError) -> ResponseError {
    match e {
        SaslError::Failed(_) | SaslError::Malformed(_) => ResponseError::SaslAuthenticationFailed,
        SaslError::IllegalState(_) => ResponseError::IllegalSaslState,
        SaslError::UnsupportedMechanism(_) => ResponseError::UnsupportedSaslMechanism,
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
        let timeout = PartitionError::TimedOut(std::time::Duration::from_millis(5));
        assert_eq!(partition(&timeout).code(), 7);
        assert_eq!(
            partition(&PartitionError::NotHere(ferrolog_model::Ntp::new("t", 0))).code(),
            3
        );
        assert_eq!(partition(&PartitionError::InvalidRecord("x".into())).code(), 87);
        let (asked, current) = (ferrolog_model::Epoch(1), ferrolog_model::Epoch(2));
        assert_eq!(
            partition(&PartitionError::FencedLeaderEpoch { asked, current }).code(),
            74
        );
        assert_eq!(
            partition(&PartitionError::UnknownLeaderEpoch { asked, current }).code(),
            75
        );
        let rf = PlacementError::ReplicationFactor { rf: 2, brokers: 1 };
        assert_eq!(placement(&rf).code(), 38);
        assert_eq!(sasl(&SaslError::Failed("x".into())).code(), 58);
        assert_eq!(sasl(&SaslError::Malformed("x".into())).code(), 58);
        assert_eq!(sasl(&SaslError::IllegalState("x".into())).code(), 34);
        assert_eq!(sasl(&SaslError::UnsupportedMechanism("x".into())).code(), 33);
        let absent = CredentialError::NotFound {
            user: "u".into(),
            mechanism: ferrolog_controlplane::credentials::ScramMechanism::Sha256,
        };
        assert_eq!(credential(&absent).code(), 91);
        assert_eq!(credential(&CredentialError::BadIterations(1)).code(), 93);
    }
}
