//! Replication of one partition: Raft log replication whose elections are
//! made by the controller (Vertical Paxos; Kafka KRaft with majority
//! quorums), as a sans-IO state machine.
//!
//! - [`replica`]: one replica's state machine ([`Replica`]): role, leader
//!   epoch, each follower's durable matching log end, the high watermark.
//!   Inputs in, [`Action`]s out; the module doc states the commit rule, what
//!   is persisted and the flow-control bounds.
//! - [`epochs`]: the epoch -> start offset map of a log ([`EpochMap`]) and
//!   the divergence search of KIP-101/KIP-279 it serves.
//! - [`election`]: the controller's pure leader choice ([`choose_leader`]),
//!   which elects only from a majority of the replica set.
//!
//! Not wired into the broker yet: no adapter drives a [`Replica`] today.
//! The next step is a shard adapter on the partition's owner shard that
//! carries out the actions against the storage log and the data transport.
//! Until then the crate is exercised by its unit tests and by the seeded
//! simulation in `tests/sim.rs`.
//!
//! Concurrency contract: a [`Replica`] is plain data with no interior
//! mutability, owned by one thread (the partition's owner shard); nothing
//! here blocks, allocates per entry, or reads a clock.

pub mod election;
pub mod epochs;
pub mod replica;

pub use election::{choose_leader, majority, ElectionInfo};
pub use epochs::{EpochEnd, EpochMap, EpochMapError, EpochStart};
pub use replica::{
    Action, AppendError, AppendRequest, AppendResponse, AppendResult, ControlError, EntryId, EpochState,
    InsyncCheck, Message, Replica, ReplicaConfig, Restart, Role,
};
