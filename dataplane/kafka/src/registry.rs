//! The one list of supported APIs and version ranges. Each handler module
//! declares its own `VERSIONS`; ApiVersions answers from this table and the
//! frame decoder rejects anything outside it.

use crate::handlers;
use kafka_protocol::messages::ApiKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    pub min: i16,
    pub max: i16,
}

impl Versions {
    pub const fn new(min: i16, max: i16) -> Versions {
        Versions { min, max }
    }

    pub fn contains(&self, v: i16) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

/// Every API this broker serves.
pub const SUPPORTED: &[(ApiKey, Versions)] = &[
    (ApiKey::Produce, handlers::produce::VERSIONS),
    (ApiKey::Fetch, handlers::fetch::VERSIONS),
    (ApiKey::ListOffsets, handlers::list_offsets::VERSIONS),
    (ApiKey::Metadata, handlers::metadata::VERSIONS),
    (ApiKey::ApiVersions, handlers::api_versions::VERSIONS),
    (ApiKey::CreateTopics, handlers::create_topics::VERSIONS),
    (ApiKey::DeleteTopics, handlers::delete_topics::VERSIONS),
    (ApiKey::DescribeConfigs, handlers::describe_configs::VERSIONS),
    (ApiKey::AlterConfigs, handlers::alter_configs::VERSIONS),
    (ApiKey::CreatePartitions, handlers::create_partitions::VERSIONS),
    (
        ApiKey::IncrementalAlterConfigs,
        handlers::incremental_alter_configs::VERSIONS,
    ),
    (ApiKey::InitProducerId, handlers::init_producer_id::VERSIONS),
    (ApiKey::FindCoordinator, handlers::find_coordinator::VERSIONS),
    (ApiKey::JoinGroup, handlers::join_group::VERSIONS),
    (ApiKey::SyncGroup, handlers::sync_group::VERSIONS),
    (ApiKey::Heartbeat, handlers::heartbeat::VERSIONS),
    (ApiKey::LeaveGroup, handlers::leave_group::VERSIONS),
    (ApiKey::OffsetCommit, handlers::offset_commit::VERSIONS),
    (ApiKey::OffsetFetch, handlers::offset_fetch::VERSIONS),
    (ApiKey::ListGroups, handlers::list_groups::VERSIONS),
    (ApiKey::DescribeGroups, handlers::describe_groups::VERSIONS),
    (ApiKey::DeleteGroups, handlers::delete_groups::VERSIONS),
    (ApiKey::OffsetDelete, handlers::offset_delete::VERSIONS),
    (ApiKey::DescribeCluster, handlers::describe_cluster::VERSIONS),
    (ApiKey::ElectLeaders, handlers::elect_leaders::VERSIONS),
    (
        ApiKey::AlterPartitionReassignments,
        handlers::alter_partition_reassignments::VERSIONS,
    ),
    (
        ApiKey::ListPartitionReassignments,
        handlers::list_partition_reassignments::VERSIONS,
    ),
    (
        ApiKey::OffsetForLeaderEpoch,
        handlers::offset_for_leader_epoch::VERSIONS,
    ),
    (ApiKey::DeleteRecords, handlers::delete_records::VERSIONS),
    (ApiKey::DescribeLogDirs, handlers::describe_log_dirs::VERSIONS),
    (ApiKey::DescribeProducers, handlers::describe_producers::VERSIONS),
    (
        ApiKey::AlterReplicaLogDirs,
        handlers::alter_replica_log_dirs::VERSIONS,
    ),
    (ApiKey::SaslHandshake, handlers::sasl_handshake::VERSIONS),
    (ApiKey::SaslAuthenticate, handlers::sasl_authenticate::VERSIONS),
    (
        ApiKey::DescribeUserScramCredentials,
        handlers::describe_user_scram_credentials::VERSIONS,
    ),
    (
        ApiKey::AlterUserScramCredentials,
        handlers::alter_user_scram_credentials::VERSIONS,
    ),
    (ApiKey::DescribeAcls, handlers::describe_acls::VERSIONS),
    (ApiKey::CreateAcls, handlers::create_acls::VERSIONS),
    (ApiKey::DeleteAcls, handlers::delete_acls::VERSIONS),
];

pub fn versions(api: ApiKey) -> Option<Versions> {
    SUPPORTED.iter().find(|(k, _)| *k == api).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    /// Our ranges must lie inside what the codec crate can decode and encode.
    #[test]
    fn ranges_fit_the_codec() {
        fn check<Req: Message, Resp: Message>(v: Versions) {
            assert!(
                Req::VERSIONS.min <= v.min && v.max <= Req::VERSIONS.max,
                "request {v:?}"
            );
            assert!(
                Resp::VERSIONS.min <= v.min && v.max <= Resp::VERSIONS.max,
                "response {v:?}"
            );
        }
        for (api, v) in SUPPORTED {
            assert!(v.min <= v.max, "{api:?}");
            match api {
                ApiKey::Produce => check::<ProduceRequest, ProduceResponse>(*v),
                ApiKey::Fetch => check::<FetchRequest, FetchResponse>(*v),
                ApiKey::ListOffsets => check::<ListOffsetsRequest, ListOffsetsResponse>(*v),
                ApiKey::Metadata => check::<MetadataRequest, MetadataResponse>(*v),
                ApiKey::ApiVersions => check::<ApiVersionsRequest, ApiVersionsResponse>(*v),
                ApiKey::CreateTopics => check::<CreateTopicsRequest, CreateTopicsResponse>(*v),
                ApiKey::DeleteTopics => check::<DeleteTopicsRequest, DeleteTopicsResponse>(*v),
                ApiKey::DescribeConfigs => check::<DescribeConfigsRequest, DescribeConfigsResponse>(*v),
                ApiKey::AlterConfigs => check::<AlterConfigsRequest, AlterConfigsResponse>(*v),
                ApiKey::CreatePartitions => check::<CreatePartitionsRequest, CreatePartitionsResponse>(*v),
                ApiKey::IncrementalAlterConfigs => {
                    check::<IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse>(*v)
                }
                ApiKey::InitProducerId => check::<InitProducerIdRequest, InitProducerIdResponse>(*v),
                ApiKey::FindCoordinator => check::<FindCoordinatorRequest, FindCoordinatorResponse>(*v),
                ApiKey::JoinGroup => check::<JoinGroupRequest, JoinGroupResponse>(*v),
                ApiKey::SyncGroup => check::<SyncGroupRequest, SyncGroupResponse>(*v),
                ApiKey::Heartbeat => check::<HeartbeatRequest, HeartbeatResponse>(*v),
                ApiKey::LeaveGroup => check::<LeaveGroupRequest, LeaveGroupResponse>(*v),
                ApiKey::OffsetCommit => check::<OffsetCommitRequest, OffsetCommitResponse>(*v),
                ApiKey::OffsetFetch => check::<OffsetFetchRequest, OffsetFetchResponse>(*v),
                ApiKey::ListGroups => check::<ListGroupsRequest, ListGroupsResponse>(*v),
                ApiKey::DescribeGroups => check::<DescribeGroupsRequest, DescribeGroupsResponse>(*v),
                ApiKey::DeleteGroups => check::<DeleteGroupsRequest, DeleteGroupsResponse>(*v),
                ApiKey::OffsetDelete => check::<OffsetDeleteRequest, OffsetDeleteResponse>(*v),
                ApiKey::DescribeCluster => check::<DescribeClusterRequest, DescribeClusterResponse>(*v),
                ApiKey::ElectLeaders => check::<ElectLeadersRequest, ElectLeadersResponse>(*v),
                ApiKey::AlterPartitionReassignments => {
                    check::<AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse>(*v)
                }
                ApiKey::ListPartitionReassignments => {
                    check::<ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse>(*v)
                }
                ApiKey::OffsetForLeaderEpoch => {
                    check::<OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse>(*v)
                }
                ApiKey::DeleteRecords => check::<DeleteRecordsRequest, DeleteRecordsResponse>(*v),
                ApiKey::DescribeLogDirs => check::<DescribeLogDirsRequest, DescribeLogDirsResponse>(*v),
                ApiKey::DescribeProducers => check::<DescribeProducersRequest, DescribeProducersResponse>(*v),
                ApiKey::AlterReplicaLogDirs => {
                    check::<AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse>(*v)
                }
                ApiKey::SaslHandshake => check::<SaslHandshakeRequest, SaslHandshakeResponse>(*v),
                ApiKey::SaslAuthenticate => check::<SaslAuthenticateRequest, SaslAuthenticateResponse>(*v),
                ApiKey::DescribeUserScramCredentials => {
                    check::<DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse>(*v)
                }
                ApiKey::AlterUserScramCredentials => {
                    check::<AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse>(*v)
                }
                ApiKey::DescribeAcls => check::<DescribeAclsRequest, DescribeAclsResponse>(*v),
                ApiKey::CreateAcls => check::<CreateAclsRequest, CreateAclsResponse>(*v),
                ApiKey::DeleteAcls => check::<DeleteAclsRequest, DeleteAclsResponse>(*v),
                other => panic!("{other:?} has no codec check"),
            }
        }
    }
}
