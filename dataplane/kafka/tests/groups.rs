//! The group coordinator through a real one-shard node (`harness`): the
//! JoinGroup / SyncGroup / Heartbeat / LeaveGroup protocol with its fencing
//! errors, committed offsets and group membership surviving a restart, and
//! compaction of the coordinator log keeping it bounded.

mod common;

use bytes::Bytes;
use common::*;
use ferrolog_kafka::harness::Harness;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;

const NONE: i16 = 0;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_REQUEST: i16 = 42;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;

fn group_id(g: &str) -> GroupId {
    GroupId(str_bytes(g))
}

fn join(
    h: &Harness,
    group: &str,
    member: &str,
    protocols: &[(&str, &[u8])],
    session_ms: i32,
) -> JoinGroupResponse {
    let req = JoinGroupRequest::default()
        .with_group_id(group_id(group))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(str_bytes(member))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocols(
            protocols
                .iter()
                .map(|(n, m)| {
                    JoinGroupRequestProtocol::default()
                        .with_name(str_bytes(n))
                        .with_metadata(Bytes::copy_from_slice(m))
                })
                .collect(),
        );
    let ResponseKind::JoinGroup(r) = call(h, ApiKey::JoinGroup, 7, RequestKind::JoinGroup(req)) else {
        panic!("not a JoinGroup response")
    };
    r
}

/// Joins as a new member the v4+ way (MEMBER_ID_REQUIRED, then rejoin).
fn join_new(h: &Harness, group: &str) -> JoinGroupResponse {
    let first = join(h, group, "", &[("range", b"meta")], 10_000);
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let r = join(h, group, &first.member_id, &[("range", b"meta")], 10_000);
    assert_eq!(r.error_code, NONE);
    assert_eq!(r.member_id, first.member_id);
    r
}

fn sync(
    h: &Harness,
    group: &str,
    member: &str,
    generation: i32,
    assignments: &[(&str, &[u8])],
) -> SyncGroupResponse {
    let req = SyncGroupRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id(generation)
        .with_member_id(str_bytes(member))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(str_bytes(m))
                        .with_assignment(Bytes::copy_from_slice(a))
                })
                .collect(),
        );
    let ResponseKind::SyncGroup(r) = call(h, ApiKey::SyncGroup, 3, RequestKind::SyncGroup(req)) else {
        panic!("not a SyncGroup response")
    };
    r
}

fn heartbeat(h: &Harness, group: &str, member: &str, generation: i32) -> i16 {
    let req = HeartbeatRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id(generation)
        .with_member_id(str_bytes(member));
    let ResponseKind::Heartbeat(r) = call(h, ApiKey::Heartbeat, 3, RequestKind::Heartbeat(req)) else {
        panic!("not a Heartbeat response")
    };
    r.error_code
}

/// Commits `(partition, offset)` of `topic`; returns each partition's error.
fn commit(
    h: &Harness,
    group: &str,
    member: &str,
    generation: i32,
    topic: &str,
    offsets: &[(i32, i64)],
    metadata: &str,
) -> Vec<i16> {
    let req = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(str_bytes(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(p, o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*o)
                            .with_committed_metadata(Some(str_bytes(metadata)))
                    })
                    .collect(),
            )]);
    let ResponseKind::OffsetCommit(r) = call(h, ApiKey::OffsetCommit, 8, RequestKind::OffsetCommit(req))
    else {
        panic!("not an OffsetCommit response")
    };
    r.topics[0].partitions.iter().map(|p| p.error_code).collect()
}

/// Committed offsets of `partitions` of `topic` (-1: none).
fn fetch_offsets(h: &Harness, group: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
    let req = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partition_indexes(partitions.to_vec())]));
    let ResponseKind::OffsetFetch(r) = call(h, ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(req)) else {
        panic!("not an OffsetFetch response")
    };
    assert_eq!(r.error_code, NONE);
    r.topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect()
}

fn describe(h: &Harness, group: &str) -> describe_groups_response::DescribedGroup {
    let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let ResponseKind::DescribeGroups(mut r) =
        call(h, ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(req))
    else {
        panic!("not a DescribeGroups response")
    };
    r.groups.remove(0)
}

fn delete_group(h: &Harness, group: &str) -> i16 {
    let req = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
    let ResponseKind::DeleteGroups(r) = call(h, ApiKey::DeleteGroups, 2, RequestKind::DeleteGroups(req))
    else {
        panic!("not a DeleteGroups response")
    };
    r.results[0].error_code
}

#[test]
fn one_member_joins_syncs_commits_and_is_fenced_correctly() {
    // Room for a JoinGroup with 2 MiB of metadata.
    let h = Harness::start_with(|c| c.max_request_bytes = 4 << 20).expect("harness");
    create_topic(&h, "t", 2);
    let j = join_new(&h, "g");
    assert_eq!(j.generation_id, 1);
    assert_eq!(j.leader, j.member_id, "the only member leads");
    assert_eq!(j.members.len(), 1);
    assert_eq!(
        j.protocol_name.as_ref().map(|p| p.to_string()),
        Some("range".into())
    );
    let m = j.member_id.to_string();
    let s = sync(&h, "g", &m, 1, &[(&m, b"assignment")]);
    assert_eq!((s.error_code, &s.assignment[..]), (NONE, &b"assignment"[..]));
    assert_eq!(heartbeat(&h, "g", &m, 1), NONE);
    assert_eq!(describe(&h, "g").group_state.to_string(), "Stable");

    // Commits: the member's own; then the fencing errors.
    assert_eq!(
        commit(&h, "g", &m, 1, "t", &[(0, 10), (1, 20)], ""),
        vec![NONE, NONE]
    );
    assert_eq!(fetch_offsets(&h, "g", "t", &[0, 1]), vec![10, 20]);
    assert_eq!(
        commit(&h, "g", "intruder", 1, "t", &[(0, 99)], ""),
        vec![UNKNOWN_MEMBER_ID]
    );
    assert_eq!(
        commit(&h, "g", &m, 0, "t", &[(0, 99)], ""),
        vec![ILLEGAL_GENERATION]
    );
    assert_eq!(
        commit(&h, "g", "", -1, "t", &[(0, 99)], ""),
        vec![UNKNOWN_MEMBER_ID],
        "the group has members"
    );
    let long = "x".repeat(4097);
    assert_eq!(
        commit(&h, "g", &m, 1, "t", &[(0, 99)], &long),
        vec![OFFSET_METADATA_TOO_LARGE]
    );
    assert_eq!(
        commit(&h, "g", &m, 1, "nope", &[(0, 99)], ""),
        vec![UNKNOWN_TOPIC_OR_PARTITION]
    );
    assert_eq!(
        fetch_offsets(&h, "g", "t", &[0, 1]),
        vec![10, 20],
        "refused commits changed nothing"
    );

    // Heartbeats: unknown group, unknown member, old generation.
    assert_eq!(heartbeat(&h, "no-such-group", &m, 1), UNKNOWN_MEMBER_ID);
    assert_eq!(heartbeat(&h, "g", "intruder", 1), UNKNOWN_MEMBER_ID);
    assert_eq!(heartbeat(&h, "g", &m, 7), ILLEGAL_GENERATION);
    assert_eq!(sync(&h, "g", &m, 7, &[]).error_code, ILLEGAL_GENERATION);

    // Joins that are refused.
    assert_eq!(
        join(&h, "", "", &[("range", b"")], 10_000).error_code,
        INVALID_GROUP_ID
    );
    assert_eq!(
        join(&h, "g", "", &[("range", b"")], 100).error_code,
        INVALID_SESSION_TIMEOUT
    );
    // As in Kafka, protocols are checked before a member id is handed out.
    let other = join(&h, "g", "", &[("other", b"")], 10_000);
    assert_eq!(other.error_code, INCONSISTENT_GROUP_PROTOCOL);
    let huge = vec![0u8; 2 << 20];
    let big = join(&h, "g", "", &[("range", &huge)], 10_000);
    assert_eq!(big.error_code, INVALID_REQUEST);
    assert_eq!(delete_group(&h, "g"), NON_EMPTY_GROUP);

    // The refused joins did not disturb the member.
    assert_eq!(heartbeat(&h, "g", &m, 1), NONE);

    // Leaving empties the group; then it can be deleted, offsets and all.
    let req = LeaveGroupRequest::default()
        .with_group_id(group_id("g"))
        .with_members(vec![MemberIdentity::default().with_member_id(str_bytes(&m))]);
    let ResponseKind::LeaveGroup(r) = call(&h, ApiKey::LeaveGroup, 4, RequestKind::LeaveGroup(req)) else {
        panic!("not a LeaveGroup response")
    };
    assert_eq!((r.error_code, r.members[0].error_code), (NONE, NONE));
    let d = describe(&h, "g");
    assert_eq!(
        (d.group_state.to_string(), d.members.len()),
        ("Empty".to_string(), 0)
    );
    assert_eq!(heartbeat(&h, "g", &m, 1), UNKNOWN_MEMBER_ID);
    assert_eq!(delete_group(&h, "g"), NONE);
    assert_eq!(delete_group(&h, "g"), GROUP_ID_NOT_FOUND);
    assert_eq!(fetch_offsets(&h, "g", "t", &[0, 1]), vec![-1, -1]);
    assert_eq!(describe(&h, "g").group_state.to_string(), "Dead");
}

#[test]
fn a_member_id_handed_out_does_not_rebalance_until_it_joins() {
    let h = Harness::start().expect("harness");
    let a = join_new(&h, "g2");
    let a_id = a.member_id.to_string();
    assert_eq!(sync(&h, "g2", &a_id, 1, &[(&a_id, b"all")]).error_code, NONE);
    // A second client gets a member id but does not join with it (the
    // harness serves one connection at a time, so a join that waits for the
    // rebalance cannot be shown here; the real-client tests do that).
    let first = join(&h, "g2", "", &[("range", b"meta")], 10_000);
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    assert_eq!(
        heartbeat(&h, "g2", &a_id, 1),
        NONE,
        "a handed-out id does not rebalance the group"
    );
}

#[test]
fn committed_offsets_and_membership_survive_a_restart() {
    let mut h = Harness::start().expect("harness");
    create_topic(&h, "t", 3);
    // A group with a member, and a client that manages its own assignment.
    let j = join_new(&h, "members");
    let m = j.member_id.to_string();
    assert_eq!(sync(&h, "members", &m, 1, &[(&m, b"A")]).error_code, NONE);
    assert_eq!(
        commit(&h, "members", &m, 1, "t", &[(0, 5), (2, 7)], "meta"),
        vec![NONE, NONE]
    );
    assert_eq!(commit(&h, "simple", "", -1, "t", &[(1, 42)], ""), vec![NONE]);
    assert_eq!(commit(&h, "simple", "", -1, "t", &[(1, 43)], ""), vec![NONE]);

    h.restart().expect("restart");

    assert_eq!(fetch_offsets(&h, "members", "t", &[0, 1, 2]), vec![5, -1, 7]);
    assert_eq!(fetch_offsets(&h, "simple", "t", &[1]), vec![43]);
    // The member carries on in its generation without rejoining.
    assert_eq!(heartbeat(&h, "members", &m, 1), NONE);
    assert_eq!(
        sync(&h, "members", &m, 1, &[]).assignment,
        Bytes::from_static(b"A")
    );
    assert_eq!(commit(&h, "members", &m, 1, "t", &[(0, 6)], ""), vec![NONE]);
    assert_eq!(fetch_offsets(&h, "members", "t", &[0]), vec![6]);

    // OffsetDelete refuses a topic the member consumes only if the
    // subscription says so; "range" metadata here is not a consumer
    // subscription, so the offsets of an Empty group are what it deletes.
    let req = OffsetDeleteRequest::default()
        .with_group_id(group_id("simple"))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(topic_name("t"))
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(1)
            ])]);
    let ResponseKind::OffsetDelete(r) = call(&h, ApiKey::OffsetDelete, 0, RequestKind::OffsetDelete(req))
    else {
        panic!("not an OffsetDelete response")
    };
    assert_eq!((r.error_code, r.topics[0].partitions[0].error_code), (NONE, NONE));
    h.restart().expect("restart");
    assert_eq!(
        fetch_offsets(&h, "simple", "t", &[1]),
        vec![-1],
        "deleted offsets stay deleted"
    );
    assert_eq!(fetch_offsets(&h, "members", "t", &[0]), vec![6]);
}

#[test]
fn compaction_keeps_the_coordinator_log_bounded_and_the_latest_offsets() {
    const SEGMENT: u64 = 64 << 10;
    let mut h = Harness::start_with(|c| c.groups.log_segment_bytes = SEGMENT).expect("harness");
    create_topic(&h, "t", 4);
    let metadata = "m".repeat(3000);
    // About 2.4 MB of commits into one coordinator partition (one group),
    // 40 times the compaction threshold's segment size.
    for round in 0..200i64 {
        let offsets: Vec<(i32, i64)> = (0..4).map(|p| (p, round * 10 + i64::from(p))).collect();
        assert_eq!(
            commit(&h, "busy", "", -1, "t", &offsets, &metadata),
            vec![NONE; 4]
        );
    }
    let dir = h.data_dir().join("__consumer_offsets");
    let bytes: u64 = walk_bytes(&dir);
    assert!(
        bytes < 8 * SEGMENT,
        "coordinator log holds {bytes} bytes after compaction (segment {SEGMENT})"
    );
    assert_eq!(
        fetch_offsets(&h, "busy", "t", &[0, 1, 2, 3]),
        vec![1990, 1991, 1992, 1993]
    );
    h.restart().expect("restart");
    assert_eq!(
        fetch_offsets(&h, "busy", "t", &[0, 1, 2, 3]),
        vec![1990, 1991, 1992, 1993]
    );
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = e.metadata().expect("metadata");
        total += if meta.is_dir() {
            walk_bytes(&e.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn rebalance_in_progress_is_reported_to_heartbeats() {
    let h = Harness::start().expect("harness");
    create_topic(&h, "t", 1);
    let a = join_new(&h, "g3");
    let a_id = a.member_id.to_string();
    assert_eq!(sync(&h, "g3", &a_id, 1, &[(&a_id, b"x")]).error_code, NONE);
    // The leader rejoining with new metadata starts a rebalance that it
    // completes alone (it is the only member).
    let again = join(&h, "g3", &a_id, &[("range", b"changed")], 10_000);
    assert_eq!((again.error_code, again.generation_id), (NONE, 2));
    assert_eq!(heartbeat(&h, "g3", &a_id, 1), ILLEGAL_GENERATION);
    assert_eq!(
        heartbeat(&h, "g3", &a_id, 2),
        NONE,
        "CompletingRebalance accepts heartbeats"
    );
    assert_eq!(
        commit(&h, "g3", &a_id, 2, "t", &[(0, 1)], ""),
        vec![REBALANCE_IN_PROGRESS]
    );
    assert_eq!(sync(&h, "g3", &a_id, 2, &[(&a_id, b"y")]).error_code, NONE);
    assert_eq!(commit(&h, "g3", &a_id, 2, "t", &[(0, 1)], ""), vec![NONE]);
}
