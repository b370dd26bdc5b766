//! The group coordinator: consumer groups (Kafka's classic protocol) and
//! their committed offsets. `group` is the state machine of one group,
//! `codec` the records of the coordinator log, `coordinator` the per-shard
//! runtime the group handlers call.

pub mod codec;
pub mod coordinator;
pub mod group;

pub use coordinator::{on_owner, GroupConfig};
