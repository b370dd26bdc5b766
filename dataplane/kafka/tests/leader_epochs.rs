//! Leader epochs as clients see them on a harness node (node 0):
//! OffsetForLeaderEpoch, the KIP-320 current_leader_epoch check of Fetch,
//! ListOffsets and OffsetForLeaderEpoch, `min.insync.replicas`, and the ISR
//! in Metadata. Replicated partitions here have two replicas, node 0 leading
//! and node 1, which never runs: the leader writes its epoch marker at
//! offset 0, takes acks=1, and never has a follower in sync.

use bytes::Bytes;
use ferrolog_controlplane::commands::{apply, TopicCommand};
use ferrolog_controlplane::topics::{ConfigOverrides, TopicTable};
use ferrolog_kafka::harness::Harness;
use ferrolog_model::{BatchBuilder, Epoch, NodeId, TimestampMs};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, FetchRequest, IncrementalAlterConfigsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetForLeaderEpochRequest, ProduceRequest, RequestKind,
    ResponseKind,
};
use std::time::{Duration, Instant};

mod common;

use common::{call, request, str_bytes, topic_name};

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const REQUEST_TIMED_OUT: i16 = 7;
const NOT_ENOUGH_REPLICAS: i16 = 19;
const INVALID_CONFIG: i16 = 40;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// The epoch of the single-replica topic's partition.
const SINGLE_EPOCH: i32 = 5;
/// The epoch the replicated topics' leader (node 0) leads.
const REPL_EPOCH: i32 = 3;

fn batch(value: &str) -> Bytes {
    let ts = TimestampMs(1_700_000_000_000);
    Bytes::from(BatchBuilder::new(ts).record(ts, None, value.as_bytes()).build())
}

/// A table with `single` (node 0 alone, epoch 5), `repl` (nodes 0 and 1,
/// epoch 3) and `strict` (as `repl`, min.insync.replicas=2), imported by
/// the harness node's controller at its first start.
fn start() -> Harness {
    Harness::start_with(|c| {
        let mut table = TopicTable::default();
        let strict: ConfigOverrides = [("min.insync.replicas".to_string(), "2".to_string())].into();
        let topics = [
            (
                "single",
                0x51,
                vec![NodeId(0)],
                ConfigOverrides::new(),
                SINGLE_EPOCH,
            ),
            (
                "repl",
                0x52,
                vec![NodeId(0), NodeId(1)],
                ConfigOverrides::new(),
                REPL_EPOCH,
            ),
            ("strict", 0x53, vec![NodeId(0), NodeId(1)], strict, REPL_EPOCH),
        ];
        for (name, id, replicas, config, epoch) in topics {
            let cmd = TopicCommand::CreateTopic {
                name: name.into(),
                id,
                config,
                assignments: vec![replicas],
            };
            apply(&mut table, &cmd).expect("create");
            let meta = table.topics.get_mut(name).expect("created");
            meta.assignments[0].leader_epoch = Epoch(epoch);
        }
        std::fs::create_dir_all(&c.data_dir).expect("data dir");
        table.store(&c.data_dir).expect("store the table");
    })
    .expect("harness")
}

/// (error code, base offset) of a Produce v9 to partition 0.
fn produce(h: &Harness, topic: &str, acks: i16, timeout_ms: i32, records: Bytes) -> (i16, i64) {
    let body = RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records))])]),
    );
    if acks == 0 {
        let out = h.feed(&request(ApiKey::Produce, 9, &body));
        assert_eq!((out.frames, out.responses.len(), out.closed), (1, 0, None));
        return (0, -1);
    }
    let ResponseKind::Produce(r) = call(h, ApiKey::Produce, 9, body) else {
        panic!("not a Produce response")
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// An acks=1 produce, retried while the replicated leader has not written
/// its epoch marker yet.
fn produce_to_leader(h: &Harness, topic: &str, value: &str) -> (i16, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = produce(h, topic, 1, 5000, batch(value));
        if got.0 != NOT_LEADER_OR_FOLLOWER || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (error code, leader epoch, end offset) of an OffsetForLeaderEpoch.
fn epoch_end(
    h: &Harness,
    version: i16,
    topic: &str,
    partition: i32,
    current: i32,
    epoch: i32,
) -> (i16, i32, i64) {
    let body = RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default().with_topics(vec![
        OffsetForLeaderTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)]),
    ]));
    let ResponseKind::OffsetForLeaderEpoch(r) = call(h, ApiKey::OffsetForLeaderEpoch, version, body) else {
        panic!("not an OffsetForLeaderEpoch response")
    };
    assert_eq!(r.topics[0].topic.0.as_str(), topic);
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.partition, partition);
    (p.error_code, p.leader_epoch, p.end_offset)
}

/// The error code of a Fetch of partition 0 from offset 0.
fn fetch_error(h: &Harness, version: i16, topic: &str, current: i32) -> i16 {
    let body = RequestKind::Fetch(FetchRequest::default().with_max_wait_ms(0).with_topics(
        vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_fetch_offset(0)
                    .with_current_leader_epoch(current)
                    .with_partition_max_bytes(1 << 20)])],
    ));
    let ResponseKind::Fetch(r) = call(h, ApiKey::Fetch, version, body) else {
        panic!("not a Fetch response")
    };
    r.responses[0].partitions[0].error_code
}

/// (error code, offset) of a ListOffsets latest of partition 0.
fn latest(h: &Harness, version: i16, topic: &str, current: i32) -> (i16, i64) {
    let body = RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
        ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_current_leader_epoch(current)
                .with_timestamp(-1)]),
    ]));
    let ResponseKind::ListOffsets(r) = call(h, ApiKey::ListOffsets, version, body) else {
        panic!("not a ListOffsets response")
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset)
}

fn isr(h: &Harness, topic: &str) -> Vec<i32> {
    let body = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
    ])));
    let ResponseKind::Metadata(m) = call(h, ApiKey::Metadata, 12, body) else {
        panic!("not a Metadata response")
    };
    m.topics[0].partitions[0].isr_nodes.iter().map(|b| b.0).collect()
}

#[test]
fn offset_for_leader_epoch_is_offered_in_api_versions() {
    let h = Harness::start().expect("harness");
    let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
    let ResponseKind::ApiVersions(r) = call(&h, ApiKey::ApiVersions, 3, body) else {
        panic!("not an ApiVersions response")
    };
    let k = r
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::OffsetForLeaderEpoch as i16)
        .expect("OffsetForLeaderEpoch is listed");
    assert_eq!((k.min_version, k.max_version), (2, 4));
}

/// KIP-101/KIP-320 on a replicated partition: its epoch runs are the
/// marker's epoch from offset 0, so the current epoch ends at the log end,
/// an older one below every run gives itself and offset 0, a newer one
/// (-1, -1); a current_leader_epoch other than the leader's is fenced or
/// unknown on every API that carries it.
#[test]
fn a_replicated_leader_answers_epochs_from_its_epoch_runs_and_checks_current_epochs() {
    let h = start();
    assert_eq!(produce_to_leader(&h, "repl", "one"), (0, 1), "after the marker");
    for version in [2, 3, 4] {
        assert_eq!(
            epoch_end(&h, version, "repl", 0, -1, REPL_EPOCH),
            (0, REPL_EPOCH, 2)
        );
        assert_eq!(
            epoch_end(&h, version, "repl", 0, REPL_EPOCH, REPL_EPOCH),
            (0, REPL_EPOCH, 2)
        );
    }
    assert_eq!(
        epoch_end(&h, 4, "repl", 0, -1, REPL_EPOCH - 1),
        (0, REPL_EPOCH - 1, 0)
    );
    assert_eq!(epoch_end(&h, 4, "repl", 0, -1, REPL_EPOCH + 1), (0, -1, -1));
    assert_eq!(
        epoch_end(&h, 4, "repl", 0, REPL_EPOCH - 1, REPL_EPOCH),
        (FENCED_LEADER_EPOCH, -1, -1)
    );
    assert_eq!(
        epoch_end(&h, 4, "repl", 0, REPL_EPOCH + 1, REPL_EPOCH),
        (UNKNOWN_LEADER_EPOCH, -1, -1)
    );
    assert_eq!(
        epoch_end(&h, 4, "repl", 1, -1, 0),
        (UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
    );
    assert_eq!(
        epoch_end(&h, 4, "nowhere", 0, -1, 0),
        (UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
    );

    // Fetch from v9, ListOffsets from v4; older versions carry no epoch.
    assert_eq!(fetch_error(&h, 12, "repl", REPL_EPOCH), 0);
    assert_eq!(fetch_error(&h, 12, "repl", -1), 0);
    assert_eq!(fetch_error(&h, 9, "repl", REPL_EPOCH - 1), FENCED_LEADER_EPOCH);
    assert_eq!(fetch_error(&h, 12, "repl", REPL_EPOCH + 1), UNKNOWN_LEADER_EPOCH);
    assert_eq!(
        fetch_error(&h, 8, "repl", REPL_EPOCH + 1),
        0,
        "v8 has no current epoch"
    );
    // The high watermark stays 0: the follower never acknowledges.
    assert_eq!(latest(&h, 6, "repl", REPL_EPOCH), (0, 0));
    assert_eq!(latest(&h, 4, "repl", REPL_EPOCH - 1).0, FENCED_LEADER_EPOCH);
    assert_eq!(latest(&h, 6, "repl", REPL_EPOCH + 1).0, UNKNOWN_LEADER_EPOCH);
    assert_eq!(
        latest(&h, 3, "repl", REPL_EPOCH + 1),
        (0, 0),
        "v3 has no current epoch"
    );

    // Only the leader is in sync: its follower never answers.
    assert_eq!(isr(&h, "repl"), vec![0]);
}

/// A single-replica partition keeps no epoch runs: it answers its current
/// epoch with its high watermark, and (-1, -1) for any other epoch.
#[test]
fn a_single_replica_answers_its_current_epoch_only() {
    let h = start();
    assert_eq!(produce(&h, "single", 1, 5000, batch("a")), (0, 0));
    assert_eq!(produce(&h, "single", 1, 5000, batch("b")), (0, 1));
    assert_eq!(
        epoch_end(&h, 4, "single", 0, -1, SINGLE_EPOCH),
        (0, SINGLE_EPOCH, 2)
    );
    assert_eq!(
        epoch_end(&h, 2, "single", 0, SINGLE_EPOCH, SINGLE_EPOCH),
        (0, SINGLE_EPOCH, 2)
    );
    assert_eq!(epoch_end(&h, 4, "single", 0, -1, SINGLE_EPOCH - 1), (0, -1, -1));
    assert_eq!(epoch_end(&h, 4, "single", 0, -1, SINGLE_EPOCH + 1), (0, -1, -1));
    assert_eq!(
        epoch_end(&h, 3, "single", 0, 0, SINGLE_EPOCH),
        (FENCED_LEADER_EPOCH, -1, -1)
    );
    assert_eq!(
        epoch_end(&h, 4, "single", 0, 9, SINGLE_EPOCH),
        (UNKNOWN_LEADER_EPOCH, -1, -1)
    );
    assert_eq!(fetch_error(&h, 12, "single", SINGLE_EPOCH), 0);
    assert_eq!(
        fetch_error(&h, 12, "single", SINGLE_EPOCH - 1),
        FENCED_LEADER_EPOCH
    );
    assert_eq!(latest(&h, 6, "single", SINGLE_EPOCH), (0, 2));
    assert_eq!(latest(&h, 6, "single", SINGLE_EPOCH + 1).0, UNKNOWN_LEADER_EPOCH);
    assert_eq!(isr(&h, "single"), vec![0]);
}

fn alter_min_insync(h: &Harness, topic: &str, value: &str) -> i16 {
    let body = RequestKind::IncrementalAlterConfigs(
        IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(str_bytes(topic))
            .with_configs(vec![AlterableConfig::default()
                .with_name(str_bytes("min.insync.replicas"))
                .with_config_operation(0)
                .with_value(Some(str_bytes(value)))])]),
    );
    let ResponseKind::IncrementalAlterConfigs(r) = call(h, ApiKey::IncrementalAlterConfigs, 1, body) else {
        panic!("not an IncrementalAlterConfigs response")
    };
    r.responses[0].error_code
}

/// min.insync.replicas=2 on two replicas whose follower never runs: acks=all
/// is refused at once with NOT_ENOUGH_REPLICAS, acks=1 and acks=0 are taken
/// (Kafka checks the setting for acks=all only). Lowered to 1, acks=all is
/// taken and waits for the high watermark instead (here: until its timeout).
#[test]
fn min_insync_replicas_refuses_acks_all_only() {
    let h = start();
    assert_eq!(produce_to_leader(&h, "strict", "one"), (0, 1));
    assert_eq!(
        produce(&h, "strict", -1, 5000, batch("all")).0,
        NOT_ENOUGH_REPLICAS
    );
    produce(&h, "strict", 0, 5000, batch("none"));
    assert_eq!(
        produce(&h, "strict", 1, 5000, batch("two")),
        (0, 3),
        "acks=0 was appended"
    );

    assert_eq!(alter_min_insync(&h, "strict", "0"), INVALID_CONFIG);
    assert_eq!(alter_min_insync(&h, "strict", "1"), 0);
    assert_eq!(produce(&h, "strict", -1, 300, batch("all")).0, REQUEST_TIMED_OUT);
    assert_eq!(alter_min_insync(&h, "strict", "2"), 0);
    assert_eq!(
        produce(&h, "strict", -1, 5000, batch("all")).0,
        NOT_ENOUGH_REPLICAS
    );

    // A single replica is the only one in sync: min.insync.replicas=2
    // refuses its acks=all too, as in Kafka.
    assert_eq!(produce(&h, "single", -1, 5000, batch("a")), (0, 0));
    assert_eq!(alter_min_insync(&h, "single", "2"), 0);
    assert_eq!(produce(&h, "single", -1, 5000, batch("b")).0, NOT_ENOUGH_REPLICAS);
    assert_eq!(produce(&h, "single", 1, 5000, batch("c")), (0, 1));
}

#[test]
fn create_topics_validates_min_insync_replicas() {
    let h = Harness::start().expect("harness");
    let create = |name: &str, value: &str| {
        let body =
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(
                vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(1)
                .with_replication_factor(1)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(str_bytes("min.insync.replicas"))
                    .with_value(Some(str_bytes(value)))])],
            ));
        let ResponseKind::CreateTopics(r) = call(&h, ApiKey::CreateTopics, 5, body) else {
            panic!("not a CreateTopics response")
        };
        r.topics[0].error_code
    };
    for bad in ["0", "-1", "32768", "x"] {
        assert_eq!(create("bad", bad), INVALID_CONFIG, "{bad}");
    }
    assert_eq!(create("one", "1"), 0);
    assert_eq!(create("many", "32767"), 0);
}
