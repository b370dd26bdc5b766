//! ferrolog-controlplane: the cluster metadata and the code that changes it.
//!
//! - `topics`: the topic table (names, ids, configs, and per partition its
//!   replica set, leader and leader epoch), its validation and its file.
//! - `commands`: topic changes as data (`TopicCommand`, ids chosen by the
//!   proposer) and `apply`, the pure, deterministic state machine that applies
//!   them and says what changed (`TopicDelta`). It will be the state machine of
//!   the controller's Raft group: every node applies the same commands in the
//!   same order and reaches the same table.
//! - `metadata`: the immutable snapshot (live brokers + topic table) a node
//!   publishes to its shards.
//! - `peer_hints`: what this node's own connections say about its peers
//!   (a connection to a node ended, nothing heard since), for the Kafka
//!   layer's Metadata answers in the moments before the controller's verdict.
//! - `placement`: which brokers hold the replicas of new partitions (pure,
//!   deterministic, rack-aware, leaders spread evenly across topics).
//!
//! - `controller`: the one writer of the table, on the node's control
//!   executor (never a data shard): applies proposed commands in order, makes
//!   the table durable, then publishes a snapshot to the shards. Also the
//!   producer id allocator (`producer_ids`).
//! - `elections`: partition leader elections run by the controller leader
//!   (which partitions need one, the decision from the replicas' answers)
//!   and [`LocalReplicas`], the seam through which it reaches this node's
//!   replicas.
//! - `raft_log`: the durable Raft log (entries, HardState, ConfState,
//!   snapshot) behind raft-rs's `Storage`, for the controller's Raft group.
//!
//! `commands`, `topics`, `metadata` and `placement` are pure and synchronous
//! (`TopicTable`'s `load`/`store` read and write one file and run on a
//! blocking pool). Shards only read `Arc` snapshots. On a single node the
//! controller applies commands directly; the Raft issue puts them through a
//! replicated log first.

pub mod acls;
pub mod commands;
pub mod controller;
pub mod credentials;
pub mod elections;
pub mod metadata;
pub mod peer_hints;
pub mod placement;
pub mod producer_ids;
pub mod raft_core;
pub mod raft_log;
pub mod rpc;
pub mod state;
pub mod topic_configs;
pub mod topics;

pub use elections::LocalReplicas;
