//! ferrolog's vocabulary: the ids and offsets every other crate speaks, and a
//! zero-copy view of the Kafka RecordBatch v2 header with its CRC-32C check.
//!
//! This crate owns no state and does no I/O; everything here is plain data and
//! pure functions, usable from any shard or thread.

pub mod batch;
mod ids;

pub use batch::{BatchBuilder, BatchError, BatchHeader};
pub use ids::{Epoch, NodeId, Ntp, Offset, PartitionId, ShardId, TimestampMs};
