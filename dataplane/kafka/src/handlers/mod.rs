//! One module per Kafka API. Each declares `VERSIONS` (listed in
//! `registry::SUPPORTED`) and a `handle` that turns a decoded request into a
//! response. Handlers run on the shard that owns the connection and reach
//! partitions through `shard::scatter` and topics through the controller.

use crate::frame::Request;
use crate::session::Session;
use crate::shard::Shard;
use ferrolog_model::Epoch;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use std::rc::Rc;

pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod alter_replica_log_dirs;
pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_user_scram_credentials;
pub mod elect_leaders;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sasl_authenticate;
pub mod sasl_handshake;
pub mod sync_group;

/// What a handler needs besides its request body.
pub struct Ctx {
    pub shard: Rc<Shard>,
    pub version: i16,
    /// The request header's client id ("" if null).
    pub client_id: String,
    /// The client's address as Kafka prints it (`/ip`).
    pub peer: Rc<str>,
    /// The connection's state: its principal.
    pub session: Rc<Session>,
    /// Told when the request has its place in the order of the partitions
    /// it writes (Produce), so that the connection may start the next
    /// request; dropped with the context otherwise (see `server`).
    queued: std::cell::RefCell<Option<futures_channel::oneshot::Sender<()>>>,
}

impl Ctx {
    /// Lets the connection start its next request (see [`Ctx::queued`]).
    pub fn mark_queued(&self) {
        if let Some(q) = self.queued.borrow_mut().take() {
            let _ = q.send(());
        }
    }
}

/// Kafka config resource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// A request's current leader epoch for the KIP-320 check: -1 (also what
/// versions without the field decode to) asks for no check.
pub fn current_leader_epoch(v: i32) -> Option<Epoch> {
    (v != NO_LEADER_EPOCH).then_some(Epoch(v))
}

/// Kafka's NO_PARTITION_LEADER_EPOCH / UNDEFINED_EPOCH.
pub const NO_LEADER_EPOCH: i32 = -1;

/// Runs the handler for `req`. `None` means no response is sent (Produce with
/// acks=0).
/// `queued` is told (or dropped) once the next request of the connection may
/// start (see `server`).
///
/// Each handler's future is boxed: unboxed, this future (and the task the
/// server spawns per request around it) is as large as the largest handler's
/// state (13,728 bytes), allocated and copied for every request; boxed, the
/// task is 1,032 bytes and a request allocates only what its own handler
/// needs (perf of a 1 KiB produce loop: the spawn was about 2 us per
/// message; docs/benchmarks.md).
pub async fn dispatch(
    shard: Rc<Shard>,
    req: Request,
    session: &Rc<Session>,
    queued: Option<futures_channel::oneshot::Sender<()>>,
) -> Option<ResponseKind> {
    let ctx = Ctx {
        shard,
        version: req.header.request_api_version,
        client_id: req
            .header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        peer: session.peer.clone(),
        session: session.clone(),
        queued: std::cell::RefCell::new(queued),
    };
    Some(match req.body {
        RequestKind::ApiVersions(r) => ResponseKind::ApiVersions(api_versions::handle(&ctx, r)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(Box::pin(metadata::handle(&ctx, r)).await),
        RequestKind::Produce(r) => ResponseKind::Produce(Box::pin(produce::handle(&ctx, r)).await?),
        RequestKind::Fetch(r) => ResponseKind::Fetch(Box::pin(fetch::handle(&ctx, r)).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(Box::pin(list_offsets::handle(&ctx, r)).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(Box::pin(create_topics::handle(&ctx, r)).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(Box::pin(delete_topics::handle(&ctx, r)).await)
        }
        RequestKind::ElectLeaders(r) => {
            ResponseKind::ElectLeaders(Box::pin(elect_leaders::handle(&ctx, r)).await)
        }
        RequestKind::AlterPartitionReassignments(r) => ResponseKind::AlterPartitionReassignments(
            Box::pin(alter_partition_reassignments::handle(&ctx, r)).await,
        ),
        RequestKind::ListPartitionReassignments(r) => ResponseKind::ListPartitionReassignments(
            Box::pin(list_partition_reassignments::handle(&ctx, r)).await,
        ),
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(Box::pin(create_partitions::handle(&ctx, r)).await)
        }
        RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(describe_configs::handle(&ctx, r)),
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(Box::pin(alter_configs::handle(&ctx, r)).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(Box::pin(init_producer_id::handle(&ctx, r)).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(Box::pin(incremental_alter_configs::handle(&ctx, r)).await)
        }
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(find_coordinator::handle(&ctx, r)),
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(Box::pin(join_group::handle(&ctx, r)).await),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(Box::pin(sync_group::handle(&ctx, r)).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(Box::pin(heartbeat::handle(&ctx, r)).await),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(Box::pin(leave_group::handle(&ctx, r)).await),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(Box::pin(offset_commit::handle(&ctx, r)).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(Box::pin(offset_fetch::handle(&ctx, r)).await)
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(Box::pin(list_groups::handle(&ctx, r)).await),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(Box::pin(describe_groups::handle(&ctx, r)).await)
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(Box::pin(delete_groups::handle(&ctx, r)).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(Box::pin(offset_delete::handle(&ctx, r)).await)
        }
        RequestKind::DescribeCluster(r) => ResponseKind::DescribeCluster(describe_cluster::handle(&ctx, r)),
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(Box::pin(offset_for_leader_epoch::handle(&ctx, r)).await)
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(Box::pin(delete_records::handle(&ctx, r)).await)
        }
        RequestKind::DescribeLogDirs(r) => {
            ResponseKind::DescribeLogDirs(Box::pin(describe_log_dirs::handle(&ctx, r)).await)
        }
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(Box::pin(describe_producers::handle(&ctx, r)).await)
        }
        RequestKind::AlterReplicaLogDirs(r) => {
            ResponseKind::AlterReplicaLogDirs(alter_replica_log_dirs::handle(&ctx, r))
        }
        RequestKind::SaslHandshake(r) => ResponseKind::SaslHandshake(sasl_handshake::handle(&ctx, r)),
        RequestKind::SaslAuthenticate(r) => {
            ResponseKind::SaslAuthenticate(Box::pin(sasl_authenticate::handle(&ctx, r)).await)
        }
        RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
            Box::pin(alter_user_scram_credentials::handle(&ctx, r)).await,
        ),
        RequestKind::DescribeUserScramCredentials(r) => ResponseKind::DescribeUserScramCredentials(
            Box::pin(describe_user_scram_credentials::handle(&ctx, r)).await,
        ),
        RequestKind::CreateAcls(r) => ResponseKind::CreateAcls(Box::pin(create_acls::handle(&ctx, r)).await),
        RequestKind::DescribeAcls(r) => ResponseKind::DescribeAcls(describe_acls::handle(&ctx, r)),
        RequestKind::DeleteAcls(r) => ResponseKind::DeleteAcls(Box::pin(delete_acls::handle(&ctx, r)).await),
        other => unreachable!("decoder admitted an unregistered api: {other:?}"),
    })
}
