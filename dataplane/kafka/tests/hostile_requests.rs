//! Hostile and malformed requests against a real one-shard node, through the
//! per-frame path real connections use (`ferrolog_kafka::harness`). The fuzz
//! target in `dataplane/kafka/fuzz` drives the same harness; these tests keep
//! that path exercised in CI on stable Rust.

use bytes::{Bytes, BytesMut};
use ferrolog_kafka::harness::{FeedOutcome, Harness, MAX_REQUEST_BYTES};
use ferrolog_model::{BatchBuilder, TimestampMs};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest, RequestHeader,
    RequestKind, ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable, StrBytes};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

// The same guard the broker binary installs: the hostile array counts below
// would otherwise make the codec ask the system allocator for hundreds of
// GiB, and Rust aborts when that fails.
#[global_allocator]
static ALLOC: ferrolog_kafka::alloc_guard::GuardedAlloc = ferrolog_kafka::alloc_guard::GuardedAlloc;

const CORRUPT_MESSAGE: i16 = 2;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_RECORD: i16 = 87;
const UNSUPPORTED_VERSION: i16 = 35;

fn harness() -> Harness {
    Harness::start().expect("harness node starts")
}

/// A whole request frame (size prefix included).
fn request(api: ApiKey, version: i16, correlation_id: i32, body: &RequestKind) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("hostile-test")));
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0; 4]);
    encode_request_header_into_buffer(&mut out, &header).expect("encode header");
    body.encode(&mut out, version).expect("encode body");
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    out.to_vec()
}

/// Decodes a response frame of a request of `api` at `version`.
fn response(api: ApiKey, version: i16, frame: &[u8]) -> (ResponseHeader, ResponseKind) {
    let size = i32::from_be_bytes(frame[..4].try_into().expect("size prefix"));
    assert_eq!(size as usize, frame.len() - 4, "response size prefix");
    let mut body = Bytes::copy_from_slice(&frame[4..]);
    let header =
        ResponseHeader::decode(&mut body, api.response_header_version(version)).expect("response header");
    let kind = ResponseKind::decode(api, &mut body, version).expect("response body");
    assert!(
        body.is_empty(),
        "{} bytes left after the {api:?} v{version} response",
        body.len()
    );
    (header, kind)
}

/// Feeds one request and decodes its one response.
fn call(h: &Harness, api: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
    let correlation_id = 4242;
    let bytes = request(api, version, correlation_id, &body);
    let out = h.feed(&bytes);
    assert_eq!(out.closed, None, "{api:?} v{version} closed the connection");
    out.check(&bytes).expect("the response answers the request");
    assert_eq!(out.responses.len(), 1, "{api:?} v{version}");
    let (header, kind) = response(api, version, &out.responses[0]);
    assert_eq!(header.correlation_id, correlation_id);
    kind
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn create_topic(h: &Harness, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let body = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(
        vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(configs)],
    ));
    let ResponseKind::CreateTopics(r) = call(h, ApiKey::CreateTopics, 5, body) else {
        panic!("not a CreateTopics response")
    };
    assert_eq!(r.topics.len(), 1);
    assert_eq!(
        r.topics[0].error_code, 0,
        "create {name}: {:?}",
        r.topics[0].error_message
    );
}

fn batch(values: &[&[u8]]) -> Vec<u8> {
    let ts = TimestampMs(1_700_000_000_000);
    values
        .iter()
        .fold(BatchBuilder::new(ts), |b, v| b.record(ts, Some(b"k"), v))
        .build()
}

fn produce_body(topic: &str, partition: i32, records: Vec<u8>) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(Bytes::from(records)))])]),
    )
}

/// Produces at v9; returns (error code, base offset).
fn produce(h: &Harness, topic: &str, partition: i32, records: Vec<u8>) -> (i16, i64) {
    let ResponseKind::Produce(r) = call(h, ApiKey::Produce, 9, produce_body(topic, partition, records))
    else {
        panic!("not a Produce response")
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_body(topic: &str, partition: i32, offset: i64) -> RequestKind {
    RequestKind::Fetch(
        FetchRequest::default()
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])]),
    )
}

/// Fetches at v12; returns (error code, records).
fn fetch(h: &Harness, topic: &str, partition: i32, offset: i64) -> (i16, Bytes) {
    let ResponseKind::Fetch(r) = call(h, ApiKey::Fetch, 12, fetch_body(topic, partition, offset)) else {
        panic!("not a Fetch response")
    };
    assert_eq!(r.error_code, 0);
    let p = &r.responses[0].partitions[0];
    (p.error_code, p.records.clone().unwrap_or_default())
}

/// `batch` as the log stores it at `base_offset` (leader epoch stays 0).
fn at_offset(mut batch: Vec<u8>, base_offset: i64) -> Vec<u8> {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
    batch
}

/// Produce then fetch back: the broker must hand back the producer's bytes.
fn assert_round_trip(h: &Harness, topic: &str, value: &[u8]) {
    let sent = batch(&[value, b"second record"]);
    let (err, base) = produce(h, topic, 0, sent.clone());
    assert_eq!(err, 0, "produce to {topic}");
    assert!(base >= 0);
    let (err, got) = fetch(h, topic, 0, base);
    assert_eq!(err, 0, "fetch from {topic}");
    let want = at_offset(sent, base);
    assert_eq!(
        &got[..want.len().min(got.len())],
        &want[..],
        "fetched bytes differ"
    );
}

fn assert_malformed_close(out: &FeedOutcome) {
    let reason = out.closed.as_deref().expect("the connection is closed");
    assert!(reason.contains("malformed"), "close reason: {reason}");
    assert!(out.responses.is_empty());
}

/// Kafka-protocol PR #152: a Metadata v0 request whose topic array claims
/// 0x033c0c00 (or i32::MAX) entries in a handful of bytes.
#[test]
fn hostile_array_count_closes_the_connection() {
    let h = harness();
    for count in [0x033c_0c00_i32, i32::MAX] {
        let mut payload = vec![0, 3, 0, 0, 0, 0, 0, 7, 0xff, 0xff];
        payload.extend_from_slice(&count.to_be_bytes());
        let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let out = h.feed(&frame);
        assert_malformed_close(&out);
        assert!(out
            .closed
            .as_deref()
            .is_some_and(|r| r.contains("correlation id 7")));
    }
    // Flexible version: Metadata v9, a compact array of 2^32 - 2 entries
    // (unsigned varint 0xffff_ffff = count + 1).
    let mut payload = vec![0, 3, 0, 9, 0, 0, 0, 8, 0xff, 0xff, 0];
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    assert_malformed_close(&h.feed(&frame));
    // The node is still up and serving.
    let ResponseKind::ApiVersions(r) = call(
        &h,
        ApiKey::ApiVersions,
        3,
        RequestKind::ApiVersions(api_versions()),
    ) else {
        panic!("not an ApiVersions response")
    };
    assert_eq!(r.error_code, 0);
}

fn api_versions() -> ApiVersionsRequest {
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("hostile-test"))
        .with_client_software_version(StrBytes::from_static_str("1"))
}

#[test]
fn well_formed_sequence_round_trips_a_batch() {
    let h = harness();
    let ResponseKind::ApiVersions(r) = call(
        &h,
        ApiKey::ApiVersions,
        3,
        RequestKind::ApiVersions(api_versions()),
    ) else {
        panic!("not an ApiVersions response")
    };
    assert_eq!(r.error_code, 0);
    let range = |api: ApiKey| {
        r.api_keys
            .iter()
            .find(|k| k.api_key == api as i16)
            .map(|k| (k.min_version, k.max_version))
    };
    assert_eq!(range(ApiKey::Produce), Some((3, 9)));
    assert_eq!(range(ApiKey::Fetch), Some((4, 12)));

    create_topic(&h, "orders", 2, &[]);
    let sent = batch(&[b"hello", b"world"]);
    assert_eq!(produce(&h, "orders", 1, sent.clone()), (0, 0));
    let second = batch(&[b"again"]);
    assert_eq!(produce(&h, "orders", 1, second.clone()), (0, 2));
    let (err, got) = fetch(&h, "orders", 1, 0);
    assert_eq!(err, 0);
    let mut want = sent;
    want.extend_from_slice(&at_offset(second, 2));
    assert_eq!(&got[..], &want[..]);
    // The other partition is empty, and an offset past the end is out of range.
    assert_eq!(fetch(&h, "orders", 0, 0), (0, Bytes::new()));
    assert_eq!(fetch(&h, "orders", 1, 99).0, 1);
}

#[test]
fn api_versions_of_an_unknown_version_answers_35_as_v0() {
    let h = harness();
    // Header v1 fields only: the body of an unknown version is never read.
    let payload = [0, 18, 0, 99, 0, 0, 0, 42, 0xff, 0xff];
    let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let out = h.feed(&frame);
    assert_eq!(out.closed, None);
    assert_eq!(out.responses.len(), 1);
    let (header, kind) = response(ApiKey::ApiVersions, 0, &out.responses[0]);
    assert_eq!(header.correlation_id, 42);
    let ResponseKind::ApiVersions(r) = kind else {
        panic!("not an ApiVersions response")
    };
    assert_eq!(r.error_code, UNSUPPORTED_VERSION);
    assert!(r.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn corrupt_batch_is_rejected_and_not_appended() {
    let h = harness();
    create_topic(&h, "crc", 1, &[]);
    let mut bad = batch(&[b"payload"]);
    // The last byte is record data, covered by the CRC.
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    assert_eq!(produce(&h, "crc", 0, bad).0, CORRUPT_MESSAGE);
    assert_eq!(produce(&h, "crc", 0, batch(&[b"good"])), (0, 0));
}

/// CRC-32C over attributes..end, as a producer computes it.
fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[test]
fn batch_whose_offsets_do_not_match_its_records_is_invalid() {
    let h = harness();
    create_topic(&h, "lying", 1, &[]);
    // lastOffsetDelta (bytes 23..27) claims a million records; the CRC is
    // valid, so only the header check can catch it.
    let mut skip = batch(&[b"one"]);
    skip[23..27].copy_from_slice(&1_000_000i32.to_be_bytes());
    assert_eq!(produce(&h, "lying", 0, with_crc(skip)).0, INVALID_RECORD);
    // recordCount (bytes 57..61) of zero.
    let mut empty = batch(&[b"one"]);
    empty[57..61].copy_from_slice(&0i32.to_be_bytes());
    assert_eq!(produce(&h, "lying", 0, with_crc(empty)).0, INVALID_RECORD);
    // Nothing was appended and no offset was skipped.
    assert_eq!(produce(&h, "lying", 0, batch(&[b"good"])), (0, 0));
}

/// One small Fetch naming the same partition hundreds of times must not make
/// the broker build a response far larger than its fetch size cap.
#[test]
fn fetch_naming_a_partition_many_times_is_bounded() {
    let h = harness();
    create_topic(&h, "amp", 1, &[("max.message.bytes", "2000000")]);
    let big = vec![3u8; 500_000];
    assert_eq!(produce(&h, "amp", 0, batch(&[&big])).0, 0);
    let parts: Vec<FetchPartition> = (0..400)
        .map(|_| {
            FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    let body = RequestKind::Fetch(
        FetchRequest::default()
            .with_max_wait_ms(10)
            .with_min_bytes(1)
            .with_max_bytes(i32::MAX)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("amp"))
                .with_partitions(parts)]),
    );
    let ResponseKind::Fetch(r) = call(&h, ApiKey::Fetch, 12, body) else {
        panic!("not a Fetch response")
    };
    let total: usize = r.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, |b| b.len()))
        .sum();
    assert!(total > 0, "the first listing gets the data");
    assert!(
        total <= ferrolog_kafka::harness::FETCH_RESPONSE_MAX_BYTES + big.len() + 1024,
        "response carries {total} record bytes"
    );
}

#[test]
fn batch_over_max_message_bytes_is_too_large() {
    let h = harness();
    create_topic(&h, "small", 1, &[("max.message.bytes", "1000")]);
    let value = vec![7u8; 2000];
    assert_eq!(produce(&h, "small", 0, batch(&[&value])).0, MESSAGE_TOO_LARGE);
    assert_eq!(produce(&h, "small", 0, batch(&[b"fits"])), (0, 0));
}

#[test]
fn unservable_frames_close_and_the_next_connection_works() {
    let h = harness();
    let metadata = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![])));
    let unknown_key = {
        let payload = [0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
        let mut f = (payload.len() as i32).to_be_bytes().to_vec();
        f.extend_from_slice(&payload);
        f
    };
    let produce_v2 = {
        let payload = [0, 0, 0, 2, 0, 0, 0, 1, 0xff, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut f = (payload.len() as i32).to_be_bytes().to_vec();
        f.extend_from_slice(&payload);
        f
    };
    let truncated = {
        let mut f = request(ApiKey::Metadata, 9, 3, &metadata);
        f.truncate(f.len() - 2);
        f
    };
    let too_large = ((MAX_REQUEST_BYTES + 1) as i32).to_be_bytes().to_vec();
    let negative = (-1i32).to_be_bytes().to_vec();
    for (what, bytes, reason) in [
        ("unknown api key", unknown_key, "unknown api key"),
        ("produce v2", produce_v2, "not supported"),
        ("truncated frame", truncated, "mid-request"),
        ("frame above the limit", too_large, "exceeds the maximum"),
        ("negative frame size", negative, "negative"),
    ] {
        // A good request first: its answer comes back before the close.
        let mut stream = request(ApiKey::Metadata, 9, 1, &metadata);
        stream.extend_from_slice(&bytes);
        let out = h.feed(&stream);
        let closed = out
            .closed
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: not closed"));
        assert!(closed.contains(reason), "{what}: {closed}");
        assert_eq!(out.responses.len(), 1, "{what}");
        let ResponseKind::Metadata(_) = call(&h, ApiKey::Metadata, 9, metadata.clone()) else {
            panic!("{what}: not a Metadata response")
        };
    }
    create_topic(&h, "after", 1, &[]);
    assert_round_trip(&h, "after", b"still serving");
}

/// Request frames a client could send, to mutate.
fn seed_frames() -> Vec<Vec<u8>> {
    let meta_topic = |name: &str| MetadataRequestTopic::default().with_name(Some(topic_name(name)));
    vec![
        request(
            ApiKey::ApiVersions,
            3,
            1,
            &RequestKind::ApiVersions(api_versions()),
        ),
        request(
            ApiKey::ApiVersions,
            0,
            2,
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ),
        request(
            ApiKey::Metadata,
            9,
            3,
            &RequestKind::Metadata(
                MetadataRequest::default()
                    .with_topics(Some(vec![meta_topic("fuzz")]))
                    .with_allow_auto_topic_creation(true),
            ),
        ),
        request(
            ApiKey::Metadata,
            1,
            4,
            &RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![meta_topic("fuzz")]))),
        ),
        request(
            ApiKey::Produce,
            9,
            5,
            &produce_body("fuzz", 0, batch(&[b"a", b"bb"])),
        ),
        request(ApiKey::Produce, 3, 6, &produce_body("fuzz", 1, batch(&[b"ccc"]))),
        request(ApiKey::Fetch, 12, 7, &fetch_body("fuzz", 0, 0)),
        request(ApiKey::Fetch, 4, 8, &fetch_body("fuzz", 1, 0)),
        request(
            ApiKey::ListOffsets,
            6,
            9,
            &RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name("fuzz"))
                    .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(-1)]),
            ])),
        ),
    ]
}

/// Seeds for the fuzzer's corpus: the frames above, the admin APIs (left
/// out of the property test: a mutated partition count can legitimately
/// take the node a minute to create), and a produce-then-fetch stream.
fn corpus_seeds() -> Vec<Vec<u8>> {
    let create = RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(
        vec![CreatableTopic::default()
            .with_name(topic_name("fuzz-admin"))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("max.message.bytes"))
                .with_value(Some(StrBytes::from_static_str("1000")))])],
    ));
    let describe = RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("fuzz-admin")),
    ]));
    let grow = RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
        CreatePartitionsTopic::default()
            .with_name(topic_name("fuzz-admin"))
            .with_count(2),
    ]));
    let delete = RequestKind::DeleteTopics(
        DeleteTopicsRequest::default().with_topic_names(vec![topic_name("fuzz-admin")]),
    );
    let mut seeds = seed_frames();
    seeds.extend([
        request(ApiKey::CreateTopics, 7, 20, &create),
        request(ApiKey::DescribeConfigs, 4, 21, &describe),
        request(ApiKey::CreatePartitions, 3, 22, &grow),
        request(ApiKey::DeleteTopics, 6, 23, &delete),
    ]);
    let all: Vec<u8> = seeds.concat();
    seeds.push(all);
    seeds
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

/// Mutates the payload of a whole frame. With `fix_size` the size prefix is
/// rewritten to the new length, so the mutation reaches the decoder instead
/// of the framing.
fn mutate(frame: &[u8], mutations: &[Mutation], fix_size: bool) -> Vec<u8> {
    let (prefix, payload) = frame.split_at(4);
    let mut payload = payload.to_vec();
    for m in mutations {
        let len = payload.len().max(1);
        match m {
            Mutation::Flip { at, mask } => {
                if let Some(b) = payload.get_mut(at % len) {
                    *b ^= mask;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = payload.get_mut(at % len) {
                    *b = *byte;
                }
            }
            Mutation::Truncate { at } => payload.truncate(at % len),
            Mutation::Insert { at, bytes } => {
                let at = (at % len).min(payload.len());
                payload.splice(at..at, bytes.iter().copied());
            }
        }
    }
    let mut out = if fix_size {
        (payload.len() as i32).to_be_bytes().to_vec()
    } else {
        prefix.to_vec()
    };
    out.extend_from_slice(&payload);
    out
}

/// A well-framed request with a random body, mostly of a served api and
/// version.
fn random_request() -> impl Strategy<Value = Vec<u8>> {
    let served = proptest::sample::select(ferrolog_kafka::registry::SUPPORTED)
        .prop_flat_map(|(api, v)| (Just(api as i16), v.min..=v.max));
    let any_key = (0..80i16, 0..16i16);
    (
        prop_oneof![3 => served, 1 => any_key],
        any::<i32>(),
        proptest::collection::vec(any::<u8>(), 0..128),
    )
        .prop_map(|((key, version), correlation_id, body)| {
            let mut payload = Vec::with_capacity(8 + body.len());
            payload.extend_from_slice(&key.to_be_bytes());
            payload.extend_from_slice(&version.to_be_bytes());
            payload.extend_from_slice(&correlation_id.to_be_bytes());
            payload.extend_from_slice(&body);
            let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            frame
        })
}

/// A stream: a few frames, each a seed (mutated or not) or a random request,
/// or plain random bytes.
fn stream(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let seeded = (
        0..n,
        proptest::collection::vec(mutation(), 0..4),
        prop::bool::weighted(0.9),
    )
        .prop_map(move |(i, ms, fix_size)| mutate(&seeds[i], &ms, fix_size));
    let frame = prop_oneof![4 => seeded, 1 => random_request()];
    prop_oneof![
        6 => proptest::collection::vec(frame, 1..4).prop_map(|frames| frames.concat()),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// Cases fed to one node: enough to hit every decoder with mutated input,
/// few enough to keep the test within seconds.
const PROPTEST_CASES: u32 = 500;

#[test]
fn random_and_mutated_streams_never_break_the_node() {
    let h = harness();
    let mut runner = TestRunner::new(Config {
        // PROPTEST_CASES=N runs a longer search locally.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PROPTEST_CASES),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&stream(seed_frames()), |bytes| {
        let out = h.feed(&bytes);
        if std::env::var("HOSTILE_DEBUG").is_ok() {
            eprintln!(
                "frames={} responses={} closed={:?}",
                out.frames,
                out.responses.len(),
                out.closed
            );
        }
        out.check(&bytes).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    create_topic(&h, "survivor", 1, &[]);
    assert_round_trip(&h, "survivor", b"after the storm");
}

/// Writes the corpus seeds where cargo-fuzz looks for them (see
/// fuzz/README.md): `cargo nextest run -p ferrolog-kafka --run-ignored only
/// write_fuzz_corpus`. Each seed is also fed to a node first, so only
/// streams that are answered in full are written.
#[test]
#[ignore = "writes the fuzz corpus; run on demand"]
fn write_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let h = harness();
    for (i, seed) in corpus_seeds().iter().enumerate() {
        let out = h.feed(seed);
        assert_eq!(out.closed, None, "seed {i}");
        out.check(seed).expect("seed answered");
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
    }
}

/// One Fetch of six partitions, most of them read from disk (the harness's
/// batch cache is 1 MiB): read at once when their limits fit the response,
/// each partition still answers with its own records, in the request's
/// order (answers taken out of order fail this, checked); when they do not
/// fit, the response is filled in order until full. The shard reads those
/// one after the other only to read no more than the response takes: the
/// handler's trim would give clients the same answer either way.
#[test]
fn a_fetch_of_many_partitions_answers_each_with_its_own_records() {
    let h = harness();
    create_topic(&h, "six", 6, &[("max.message.bytes", "2000000")]);
    let sent: Vec<Vec<u8>> = (0..6u8)
        .map(|p| {
            let value = vec![b'a' + p; 300_000];
            let b = batch(&[&value]);
            assert_eq!(produce(&h, "six", i32::from(p), b.clone()), (0, 0));
            at_offset(b, 0)
        })
        .collect();
    let fetch_all = |max_bytes: i32| {
        let parts: Vec<FetchPartition> = (0..6)
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect();
        let body = RequestKind::Fetch(
            FetchRequest::default()
                .with_max_wait_ms(10)
                .with_min_bytes(1)
                .with_max_bytes(max_bytes)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name("six"))
                    .with_partitions(parts)]),
        );
        let ResponseKind::Fetch(r) = call(&h, ApiKey::Fetch, 12, body) else {
            panic!("not a Fetch response")
        };
        r.responses[0]
            .partitions
            .iter()
            .map(|p| {
                assert_eq!(p.error_code, 0);
                (p.partition_index, p.records.clone().unwrap_or_default())
            })
            .collect::<Vec<_>>()
    };
    // 6 x 1 MiB limits fit a 50 MiB response: read at once.
    let got = fetch_all(50 << 20);
    assert_eq!(
        got.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    for ((p, records), want) in got.iter().zip(&sent) {
        assert_eq!(&records[..], &want[..], "partition {p}");
    }
    // A 700,000-byte response: the first two batches fit, the rest wait.
    let got = fetch_all(700_000);
    for (p, records) in &got {
        let want: &[u8] = if *p < 2 { &sent[*p as usize] } else { &[] };
        assert_eq!(&records[..], want, "partition {p}");
    }
}
