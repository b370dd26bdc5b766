//! ferrolog-cluster: the partition layer between storage and the Kafka
//! server.
//!
//! Owns, per shard, every partition log of that shard (the group
//! coordinator's internal partitions included) in one [`PartitionManager`]:
//! opening, closing and deleting them to match the published metadata
//! snapshot (`reconcile`), the placement of partitions on shards
//! (`placement`), each partition's idempotent producer state
//! (`producer_state`), its leader epoch, its high watermark and the long-poll
//! fetches waiting on it (`waiters`), the operations other shards call on
//! a partition's owner (`ops`), and each shard's copy of the ISRs of the
//! replicated partitions this node leads (`isr`, for Metadata). It knows nothing of Kafka requests; errors are
//! typed ([`PartitionError`]) and mapped to Kafka codes by the kafka crate.
//!
//! Threading: a `PartitionManager` lives on one data shard (`Rc`/`RefCell`,
//! reached with [`local`]) and is only touched by that shard's tasks. Work for
//! partitions owned elsewhere goes through [`ops::scatter`] (one cross-shard
//! call per owner); no borrow is held across an await.

pub mod admin_ops;
pub mod batch_policy;
pub mod error;
pub mod isr;
pub mod manager;
pub mod metrics;
pub mod ops;
pub mod partition;
pub mod placement;
pub mod producer_state;
pub mod reconcile;
pub mod repl_wire;
pub mod repl_xdp;
pub mod replicated;
pub mod turns;
pub mod waiters;

pub use error::PartitionError;
pub use manager::{install, local, ClusterConfig, InternalTopic, PartitionManager};
pub use partition::Partition;
pub use placement::Placement;
