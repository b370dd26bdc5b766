//! What a harness node answers from partition state and the metadata
//! snapshot: produce's acks and timeout_ms, and the leader epoch that the
//! topic table gives each partition (Metadata, ListOffsets, and the epoch
//! stamped into every appended batch).

use bytes::Bytes;
use ferrolog_controlplane::commands::{apply, TopicCommand};
use ferrolog_controlplane::topics::TopicTable;
use ferrolog_kafka::harness::Harness;
use ferrolog_model::{BatchBuilder, BatchHeader, Epoch, NodeId, TimestampMs};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FindCoordinatorRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest,
    RequestKind, ResponseKind,
};

mod common;

use common::{call, create_topic, request, str_bytes, topic_name};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::CreateTopicsRequest;

const REQUEST_TIMED_OUT: i16 = 7;

fn batch(value: &str) -> Bytes {
    let ts = TimestampMs(1_700_000_000_000);
    Bytes::from(BatchBuilder::new(ts).record(ts, None, value.as_bytes()).build())
}

fn produce_body(topic: &str, partition: i32, acks: i16, timeout_ms: i32, records: Bytes) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))])]),
    )
}

/// (error code, base offset) of a Produce v9.
fn produce(
    h: &Harness,
    topic: &str,
    partition: i32,
    acks: i16,
    timeout_ms: i32,
    records: Bytes,
) -> (i16, i64) {
    let body = produce_body(topic, partition, acks, timeout_ms, records);
    let ResponseKind::Produce(r) = call(h, ApiKey::Produce, 9, body) else {
        panic!("not a Produce response")
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// The record bytes a Fetch v12 from `offset` returns.
fn fetch(h: &Harness, topic: &str, partition: i32, offset: i64) -> Bytes {
    let body = RequestKind::Fetch(
        FetchRequest::default()
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]),
    );
    let ResponseKind::Fetch(r) = call(h, ApiKey::Fetch, 12, body) else {
        panic!("not a Fetch response")
    };
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "fetch {topic}/{partition} at {offset}");
    p.records.clone().unwrap_or_default()
}

#[test]
fn acks_all_is_bounded_by_timeout_ms_and_a_timed_out_batch_still_lands() {
    let h = Harness::start().expect("harness");
    create_topic(&h, "slow", 1);
    // acks=all must be answered within timeout_ms; 0 ms cannot cover an
    // fsync, so the answer is REQUEST_TIMED_OUT. As in Kafka, the batch is
    // not taken back: it becomes durable and readable anyway.
    let (err, _) = produce(&h, "slow", 0, -1, 0, batch("late"));
    assert_eq!(err, REQUEST_TIMED_OUT);
    let got = fetch(&h, "slow", 0, 0);
    let header = BatchHeader::parse(&got).expect("the timed-out batch is in the log");
    assert_eq!(header.base_offset.0, 0);
    // acks=1 waits for the leader only; Kafka does not apply the timeout to it.
    let (err, base) = produce(&h, "slow", 0, 1, 0, batch("leader only"));
    assert_eq!((err, base), (0, 1));
    // acks=0 gets no answer at all, and the batch is appended all the same.
    let bytes = request(
        ApiKey::Produce,
        9,
        &produce_body("slow", 0, 0, 0, batch("fire and forget")),
    );
    let out = h.feed(&bytes);
    assert_eq!((out.frames, out.responses.len(), out.closed), (1, 0, None));
    let (err, base) = produce(&h, "slow", 0, -1, 5000, batch("in time"));
    assert_eq!((err, base), (0, 3));
}

/// Writes a single-node broker's topic table naming `topic` with one
/// partition per epoch, led by node 0 at those leader epochs, as a
/// controller that moved leadership would have left it. The Raft
/// controller imports it into its first snapshot.
fn store_table_with_epochs(data_dir: &std::path::Path, topic: &str, epochs: &[i32]) {
    let mut table = TopicTable::default();
    let cmd = TopicCommand::CreateTopic {
        name: topic.into(),
        id: 0x5eed,
        config: Default::default(),
        assignments: vec![vec![NodeId(0)]; epochs.len()],
    };
    apply(&mut table, &cmd).expect("create");
    let meta = table.topics.get_mut(topic).expect("created");
    for (a, e) in meta.assignments.iter_mut().zip(epochs) {
        a.leader_epoch = Epoch(*e);
    }
    std::fs::create_dir_all(data_dir).expect("data dir");
    table.store(data_dir).expect("store the table");
}

#[test]
fn metadata_list_offsets_and_appends_carry_the_leader_epoch_of_the_table() {
    let mut h =
        Harness::start_with(|c| store_table_with_epochs(&c.data_dir, "epochs", &[5, 7])).expect("harness");
    // The epochs come from the Raft log now, across restarts too.
    h.restart().expect("restart");

    let body = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name("epochs"))),
    ])));
    let ResponseKind::Metadata(m) = call(&h, ApiKey::Metadata, 12, body) else {
        panic!("not a Metadata response")
    };
    let parts = &m.topics[0].partitions;
    let epochs: Vec<i32> = parts.iter().map(|p| p.leader_epoch).collect();
    assert_eq!(epochs, vec![5, 7]);
    for p in parts {
        assert_eq!(p.leader_id.0, 0);
        assert_eq!(p.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0]);
    }
    assert_eq!(m.brokers.len(), 1);
    assert_eq!(m.controller_id.0, 0);

    let (err, base) = produce(&h, "epochs", 1, -1, 5000, batch("stamped"));
    assert_eq!((err, base), (0, 0));
    let got = fetch(&h, "epochs", 1, 0);
    let header = BatchHeader::parse(&got).expect("batch");
    assert_eq!(
        header.partition_leader_epoch.0, 7,
        "the append stamps the partition's epoch"
    );

    let body = RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
        ListOffsetsTopic::default()
            .with_name(topic_name("epochs"))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(1)
                .with_timestamp(-1)]),
    ]));
    let ResponseKind::ListOffsets(l) = call(&h, ApiKey::ListOffsets, 6, body) else {
        panic!("not a ListOffsets response")
    };
    let p = &l.topics[0].partitions[0];
    assert_eq!((p.error_code, p.offset, p.leader_epoch), (0, 1, 7));

    let body = RequestKind::FindCoordinator(
        FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![str_bytes("g")]),
    );
    let ResponseKind::FindCoordinator(f) = call(&h, ApiKey::FindCoordinator, 4, body) else {
        panic!("not a FindCoordinator response")
    };
    let c = &f.coordinators[0];
    assert_eq!((c.error_code, c.node_id.0), (0, 0));
    assert_eq!(
        c.host.as_str(),
        m.brokers[0].host.as_str(),
        "the snapshot's broker address"
    );
}

/// The group coordinator's logs are partitions of the node's internal topic
/// `__consumer_offsets`: no client topic may take that name (it would share
/// their logs), and clients can neither produce to nor fetch from it.
#[test]
fn the_internal_topic_cannot_be_created_or_written_by_clients() {
    let h = Harness::start().expect("harness");
    let body = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(
        vec![
        CreatableTopic::default()
            .with_name(topic_name("__consumer_offsets"))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ],
    ));
    let ResponseKind::CreateTopics(r) = call(&h, ApiKey::CreateTopics, 5, body) else {
        panic!("not a CreateTopics response")
    };
    assert_eq!(r.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");
    let (err, _) = produce(&h, "__consumer_offsets", 0, -1, 5000, batch("intruder"));
    assert_eq!(err, 3, "UNKNOWN_TOPIC_OR_PARTITION");
}

/// A partition this node holds as a replica but does not lead answers
/// NOT_LEADER_OR_FOLLOWER to produce, fetch and list offsets (clients then
/// refresh their metadata and go to the leader).
#[test]
fn a_replica_that_does_not_lead_refuses_produce_fetch_and_list_offsets() {
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    let h = Harness::start_with(|c| {
        let mut table = TopicTable::default();
        let cmd = TopicCommand::CreateTopic {
            name: "followed".into(),
            id: 0xf011,
            config: Default::default(),
            // Partition 0 is led by node 1 (node 0, this one, is a replica);
            // partition 1 by node 0.
            assignments: vec![vec![NodeId(1), NodeId(0)], vec![NodeId(0), NodeId(1)]],
        };
        apply(&mut table, &cmd).expect("create");
        std::fs::create_dir_all(&c.data_dir).expect("data dir");
        table.store(&c.data_dir).expect("store the table");
    })
    .expect("harness");
    let (err, _) = produce(&h, "followed", 0, -1, 5000, batch("to a replica"));
    assert_eq!(err, NOT_LEADER_OR_FOLLOWER, "a replica took a produce");
    // The leader of partition 1 takes it once its epoch marker (offset 0)
    // is written; acks=1, since its one follower never runs here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (err, base) = loop {
        let got = produce(&h, "followed", 1, 1, 5000, batch("to the leader"));
        if got.0 != NOT_LEADER_OR_FOLLOWER || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!((err, base), (0, 1));
    // acks=all needs the follower: refused within its timeout.
    const REQUEST_TIMED_OUT: i16 = 7;
    let (err, _) = produce(&h, "followed", 1, -1, 300, batch("needs a majority"));
    assert_eq!(err, REQUEST_TIMED_OUT, "acks=all answered without a majority");

    let body = RequestKind::Fetch(
        FetchRequest::default()
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("followed"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]),
    );
    let ResponseKind::Fetch(r) = call(&h, ApiKey::Fetch, 12, body) else {
        panic!("not a Fetch response")
    };
    assert_eq!(r.responses[0].partitions[0].error_code, NOT_LEADER_OR_FOLLOWER);

    let body = RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
        ListOffsetsTopic::default()
            .with_name(topic_name("followed"))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)]),
    ]));
    let ResponseKind::ListOffsets(l) = call(&h, ApiKey::ListOffsets, 6, body) else {
        panic!("not a ListOffsets response")
    };
    assert_eq!(l.topics[0].partitions[0].error_code, NOT_LEADER_OR_FOLLOWER);
}
