//! What a harness node (one live broker, node 0) says about the cluster:
//! DescribeCluster, Metadata's brokers and per-partition leader, replicas,
//! ISR and offline replicas, and the replication factors CreateTopics and
//! CreatePartitions refuse because the live brokers cannot hold them.

use ferrolog_controlplane::commands::{apply, TopicCommand};
use ferrolog_controlplane::topics::{ConfigOverrides, TopicTable};
use ferrolog_kafka::harness::Harness;
use ferrolog_model::NodeId;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DescribeClusterRequest,
    DescribeClusterResponse, MetadataRequest, RequestKind, ResponseKind,
};

mod common;

use common::{call, create_topic, topic_name};

const LEADER_NOT_AVAILABLE: i16 = 5;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;
/// The harness node's settings (`harness::server_config`).
const CLUSTER_ID: &str = "ferrolog-harness";
const HOST: &str = "127.0.0.1";
const PORT: i32 = 9092;

fn describe_cluster(h: &Harness, version: i16, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let body = RequestKind::DescribeCluster(req);
    let ResponseKind::DescribeCluster(r) = call(h, ApiKey::DescribeCluster, version, body) else {
        panic!("not a DescribeCluster response")
    };
    r
}

/// (error code, error message) per topic of a CreateTopics v5.
fn create_topics(h: &Harness, topics: &[(&str, i32, i16)], validate_only: bool) -> Vec<(i16, String)> {
    let topics = topics
        .iter()
        .map(|&(name, partitions, rf)| {
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(rf)
        })
        .collect();
    let body = RequestKind::CreateTopics(
        CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_validate_only(validate_only)
            .with_topics(topics),
    );
    let ResponseKind::CreateTopics(r) = call(h, ApiKey::CreateTopics, 5, body) else {
        panic!("not a CreateTopics response")
    };
    r.topics
        .iter()
        .map(|t| {
            let message = t
                .error_message
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            (t.error_code, message)
        })
        .collect()
}

/// The partitions of `topic` in a Metadata v12, in index order.
fn partitions(h: &Harness, topic: &str) -> Vec<MetadataResponsePartition> {
    let body = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
    ])));
    let ResponseKind::Metadata(r) = call(h, ApiKey::Metadata, 12, body) else {
        panic!("not a Metadata response")
    };
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].error_code, 0, "metadata of {topic}");
    let mut parts = r.topics[0].partitions.clone();
    parts.sort_by_key(|p| p.partition_index);
    parts
}

/// (error, leader, replicas, isr, offline) of one partition.
fn view(p: &MetadataResponsePartition) -> (i16, i32, Vec<i32>, Vec<i32>, Vec<i32>) {
    let ids = |v: &[kafka_protocol::messages::BrokerId]| v.iter().map(|b| b.0).collect::<Vec<i32>>();
    (
        p.error_code,
        p.leader_id.0,
        ids(&p.replica_nodes),
        ids(&p.isr_nodes),
        ids(&p.offline_replicas),
    )
}

#[test]
fn describe_cluster_answers_the_cluster_id_the_controller_and_the_live_brokers() {
    let h = Harness::start().expect("harness");
    let ResponseKind::ApiVersions(v) = call(
        &h,
        ApiKey::ApiVersions,
        3,
        RequestKind::ApiVersions(ApiVersionsRequest::default()),
    ) else {
        panic!("not an ApiVersions response")
    };
    let advertised = v
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::DescribeCluster as i16)
        .map(|k| (k.min_version, k.max_version));
    assert_eq!(advertised, Some((0, 2)));

    for version in 0..=2 {
        for operations in [false, true] {
            let req = DescribeClusterRequest::default()
                .with_include_cluster_authorized_operations(operations)
                .with_include_fenced_brokers(version >= 2);
            let r = describe_cluster(&h, version, req);
            assert_eq!(
                (r.error_code, r.error_message.as_deref()),
                (0, None),
                "v{version}"
            );
            assert_eq!(r.cluster_id.to_string(), CLUSTER_ID);
            assert_eq!(r.controller_id.0, 0);
            assert_eq!(r.endpoint_type, 1);
            assert_eq!(r.cluster_authorized_operations, i32::MIN);
            let brokers: Vec<_> = r
                .brokers
                .iter()
                .map(|b| {
                    (
                        b.broker_id.0,
                        b.host.to_string(),
                        b.port,
                        b.rack.clone(),
                        b.is_fenced,
                    )
                })
                .collect();
            assert_eq!(
                brokers,
                vec![(0, HOST.to_string(), PORT, None, false)],
                "v{version}"
            );
        }
    }
}

#[test]
fn describe_cluster_refuses_endpoint_types_a_broker_does_not_serve() {
    let h = Harness::start().expect("harness");
    let controllers = describe_cluster(&h, 1, DescribeClusterRequest::default().with_endpoint_type(2));
    assert_eq!(controllers.error_code, MISMATCHED_ENDPOINT_TYPE);
    assert!(controllers.brokers.is_empty());
    let unknown = describe_cluster(&h, 2, DescribeClusterRequest::default().with_endpoint_type(9));
    assert_eq!(unknown.error_code, UNSUPPORTED_ENDPOINT_TYPE);
    assert!(unknown.error_message.is_some_and(|m| m.contains('9')));
}

#[test]
fn a_replication_factor_the_live_brokers_cannot_hold_is_refused() {
    let h = Harness::start().expect("harness");
    for validate_only in [true, false] {
        let answers = create_topics(
            &h,
            &[
                ("two", 1, 2),
                ("zero", 1, 0),
                ("negative", 1, -3),
                ("default", 2, -1),
            ],
            validate_only,
        );
        let codes: Vec<i16> = answers.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            codes,
            vec![
                INVALID_REPLICATION_FACTOR,
                INVALID_REPLICATION_FACTOR,
                INVALID_REPLICATION_FACTOR,
                0
            ],
            "validate_only={validate_only}: {answers:?}"
        );
        assert_eq!(
            answers[0].1,
            "replication factor 2 with 1 live broker(s): it must be in 1..=1"
        );
        assert!(answers[2].1.contains("-3"), "{:?}", answers[2]);
        if validate_only {
            continue;
        }
        let parts = partitions(&h, "default");
        let views: Vec<_> = parts.iter().map(view).collect();
        assert_eq!(views, vec![(0, 0, vec![0], vec![0], vec![]); 2]);
    }
}

#[test]
fn metadata_lists_the_brokers_and_each_partitions_leader_replicas_and_isr() {
    let h = Harness::start().expect("harness");
    create_topic(&h, "orders", 3);
    let body = RequestKind::Metadata(MetadataRequest::default().with_topics(None));
    let ResponseKind::Metadata(r) = call(&h, ApiKey::Metadata, 12, body) else {
        panic!("not a Metadata response")
    };
    assert_eq!(r.controller_id.0, 0);
    assert_eq!(r.cluster_id.as_deref(), Some(CLUSTER_ID));
    let brokers: Vec<_> = r
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port, b.rack.clone()))
        .collect();
    assert_eq!(brokers, vec![(0, HOST.to_string(), PORT, None)]);
    let parts = partitions(&h, "orders");
    let views: Vec<_> = parts.iter().map(view).collect();
    assert_eq!(views, vec![(0, 0, vec![0], vec![0], vec![]); 3]);
    assert!(parts.iter().all(|p| p.leader_epoch == 0));
}

/// Adds `topic` to the stored table with the given replica sets (first
/// replica leads), as a controller of a larger cluster would have.
/// Writes a single-node broker's topic table naming `topic` into a data
/// directory before the broker's first start (the Raft controller imports
/// it into its first snapshot).
fn store_topic(data_dir: &std::path::Path, topic: &str, replicas: &[&[i32]]) {
    let mut table = TopicTable::default();
    let cmd = TopicCommand::CreateTopic {
        name: topic.into(),
        id: 0xfe22_0109,
        config: ConfigOverrides::new(),
        assignments: replicas
            .iter()
            .map(|set| set.iter().map(|&n| NodeId(n)).collect())
            .collect(),
    };
    apply(&mut table, &cmd).expect("a valid topic");
    std::fs::create_dir_all(data_dir).expect("data dir");
    table.store(data_dir).expect("store topics.toml");
}

#[test]
fn partitions_on_brokers_that_are_not_live_show_offline_and_cannot_grow() {
    // Node 1 is named by the table but is not a live broker of the snapshot.
    let mut h =
        Harness::start_with(|c| store_topic(&c.data_dir, "wide", &[&[0, 1], &[1, 0]])).expect("harness");
    h.restart().expect("restart");

    let parts = partitions(&h, "wide");
    let views: Vec<_> = parts.iter().map(view).collect();
    assert_eq!(
        views,
        vec![
            (0, 0, vec![0, 1], vec![0], vec![1]),
            (LEADER_NOT_AVAILABLE, -1, vec![1, 0], vec![1], vec![1]),
        ]
    );

    // Growing keeps the topic's replication factor, 2, which one live
    // broker cannot hold.
    let body = RequestKind::CreatePartitions(
        CreatePartitionsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name("wide"))
                .with_count(3)
                .with_assignments(None)]),
    );
    let ResponseKind::CreatePartitions(r) = call(&h, ApiKey::CreatePartitions, 3, body) else {
        panic!("not a CreatePartitions response")
    };
    assert_eq!(r.results[0].error_code, INVALID_REPLICATION_FACTOR);
    assert_eq!(
        r.results[0].error_message.as_deref(),
        Some("replication factor 2 with 1 live broker(s): it must be in 1..=1")
    );
    assert_eq!(partitions(&h, "wide").len(), 2);
}
